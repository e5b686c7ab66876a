"""The full on-chain flow over HTTP with a plain httpx client and web3.py, against anvil."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable

import httpx
from simtest_helpers import SendTx, hash_bytes, wait_for_operation

from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer, compose_hash

NEW_SCRIPT = "#!/bin/sh\necho v2: registered on chain\n"


def test_full_onchain_flow_over_http(
    sim: SimulatorServer,
    sim_onchain_cvm: SimTarget,
    api: Callable[[SimTarget], httpx.Client],
    send_tx: SendTx,
) -> None:
    client = api(sim_onchain_cvm)
    cvm_id = sim_onchain_cvm.id
    before = client.get(f"/cvms/{cvm_id}").json()
    assert before["kms_type"] in ("ethereum", "base")
    assert before["kms_info"]["dstack_app_address"].lower() == sim_onchain_cvm.contract.address.lower()
    # The attestation's app-compose is the exact text whose sha256 is the compose hash.
    current_text = client.get(f"/cvms/{cvm_id}/attestation").json()["tcb_info"]["app_compose"]
    assert hashlib.sha256(current_text.encode()).hexdigest() == before["compose_hash"]

    phase1 = client.patch(
        f"/cvms/{cvm_id}/pre-launch-script",
        content=NEW_SCRIPT.encode(),
        headers={"Content-Type": "text/plain"},
    )
    assert phase1.status_code == 465
    details = {d["field"]: d["value"] for d in phase1.json()["details"]}
    announced = details["compose_hash"]
    assert announced.startswith("0x")
    # The client can reproduce the hash: current app-compose with the new script, re-serialised.
    expected_compose = json.loads(current_text) | {"pre_launch_script": NEW_SCRIPT}
    assert compose_hash(expected_compose) == announced[2:]
    assert details["app_id"] == sim_onchain_cvm.contract.address[2:].lower()

    tx_hash = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))

    phase2 = client.patch(
        f"/cvms/{cvm_id}/pre-launch-script",
        content=NEW_SCRIPT.encode(),
        headers={"Content-Type": "text/plain", "X-Compose-Hash": announced, "X-Transaction-Hash": tx_hash},
    )
    assert phase2.status_code == 202, phase2.text
    body = phase2.json()
    assert set(body) == {"status", "message", "correlation_id"}
    assert body["status"] == "in_progress"

    during = client.get(f"/cvms/{cvm_id}").json()
    assert during["in_progress"] is True
    assert during["progress"]["correlation_id"] == body["correlation_id"]

    operation = wait_for_operation(client, cvm_id, body["correlation_id"])
    assert operation["status"] == "completed"
    after = client.get(f"/cvms/{cvm_id}").json()
    assert after["compose_hash"] == announced[2:]
    assert after["pre_launch_script_hash"] == hashlib.sha256(NEW_SCRIPT.encode()).hexdigest()
    assert after["in_progress"] is False and after["status"] == "running"
    assert client.get(f"/cvms/{cvm_id}/pre-launch-script").json() == NEW_SCRIPT
    state = sim.admin.cvm_state(cvm_id)
    assert state["compose_hash"] == announced[2:]
    assert hashlib.sha256(state["app_compose"].encode()).hexdigest() == announced[2:]
