"""The operator process against the real API server, the simulator and anvil: the two flows, edits,
restarts, and exactly which calls reach Phala Cloud."""

from __future__ import annotations

import hashlib
import time

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, SCRIPT_V2, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

COMPOSE_HASH_ADDED = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"


def api_calls(sim: SimulatorServer, cvm: str) -> list[str]:
    """`METHOD path [phase-2]` for every API request about one CVM, in order."""
    calls = []
    for req in sim.admin.requests():
        if req.cvm != cvm and cvm not in req.path:
            continue
        marker = " +hashes" if req.header("x-compose-hash") else ""
        path = req.path.split("/cvms/", 1)[-1].split("/", 1)
        calls.append(f"{req.method} {path[1] if len(path) > 1 else '{id}'}{marker}")
    return calls


def writes(calls: list[str]) -> list[str]:
    return [c for c in calls if not c.startswith("GET")]


def registrations_on_chain(anvil: Anvil, contract: str, compose_hash: str) -> int:
    logs = anvil.web3().eth.get_logs(
        {"address": contract, "fromBlock": 0, "toBlock": "latest", "topics": [COMPOSE_HASH_ADDED]}
    )
    wanted = compose_hash.lower().removeprefix("0x")
    return sum(1 for log in logs if bytes(log["data"]).hex() == wanted)


def test_off_chain_sync_edit_and_restart(
    setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    operator = operator_factory()
    setup.create(offchain_cvm)
    body = setup.synced()

    status = body["status"]
    assert status["scriptSha256"] == hashlib.sha256(SCRIPT_V1.encode()).hexdigest()
    assert status["correlationId"]
    assert status["source"]["configMapName"] == "app-script"
    state = sim.admin.cvm_state(offchain_cvm.id)
    assert state["pre_launch_script"] == SCRIPT_V1
    assert status["composeHash"] == "0x" + state["compose_hash"]
    assert status["lastSyncTime"] and status["observedGeneration"] == body["metadata"]["generation"]
    calls = api_calls(sim, offchain_cvm.id)
    assert writes(calls) == ["PATCH pre-launch-script"], calls
    patch = next(r for r in sim.admin.requests() if r.method == "PATCH")
    assert patch.body == SCRIPT_V1.encode()
    assert patch.header(
        "content-type",
    ).startswith("text/plain")

    # A ConfigMap edit re-syncs.
    sim.admin.clear_requests()
    scenario.patch_configmap(setup.cp, setup.namespace, "app-script", {"pre-launch.sh": SCRIPT_V2})
    setup.wait(
        "app",
        lambda b: (
            scenario.is_synced(b)
            and b["status"]["scriptSha256"] == hashlib.sha256(SCRIPT_V2.encode()).hexdigest()
        ),
        "re-synced to v2",
    )
    assert sim.admin.cvm_state(offchain_cvm.id)["pre_launch_script"] == SCRIPT_V2
    assert writes(api_calls(sim, offchain_cvm.id)) == ["PATCH pre-launch-script"]

    # A restart with everything synced makes no remote write.
    operator.stop()
    sim.admin.clear_requests()
    before = scenario.get(setup.cp, setup.namespace, "app")["metadata"]["resourceVersion"]
    restarted = operator_factory()
    restarted.wait_for_log("starting")
    time.sleep(3)
    assert writes(api_calls(sim, offchain_cvm.id)) == []
    assert scenario.get(setup.cp, setup.namespace, "app")["metadata"]["resourceVersion"] == before


def test_on_chain_sync_registers_once(
    setup: Workbench,
    onchain_cvm: SimTarget,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    operator_factory()
    setup.create(onchain_cvm)
    body = setup.synced()

    status = body["status"]
    state = sim.admin.cvm_state(onchain_cvm.id)
    assert state["pre_launch_script"] == SCRIPT_V1
    assert status["composeHash"] == "0x" + state["compose_hash"]
    assert status["chainId"] == anvil.chain_id
    assert status["appContract"].lower() == onchain_cvm.contract.address.lower()  # type: ignore[union-attr]
    receipt = anvil.web3().eth.get_transaction_receipt(status["transactionHash"])
    assert receipt["status"] == 1
    assert registrations_on_chain(anvil, onchain_cvm.contract.address, status["composeHash"]) == 1  # type: ignore[union-attr]

    calls = api_calls(sim, onchain_cvm.id)
    assert writes(calls) == ["PATCH pre-launch-script", "PATCH pre-launch-script +hashes"], calls
    phase1, phase2 = [r for r in sim.admin.requests() if r.method == "PATCH"]
    assert phase1.body == phase2.body == SCRIPT_V1.encode()  # byte-identical between phases
    assert phase2.header("x-transaction-hash") == status["transactionHash"]
    events = setup.cp.kubectl(
        "get", "events", "-n", setup.namespace, "-o", "jsonpath={range .items[*]}{.reason}{'\\n'}{end}"
    ).stdout.split()
    for reason in ("RegistrationSent", "RegistrationConfirmed", "UpdateAccepted", "Applied"):
        assert reason in events
