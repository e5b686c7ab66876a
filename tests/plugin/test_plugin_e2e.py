"""The plugin with the real operator process, the simulator and anvil: a Manual approval done with
``kubectl cpls approve``, and ``kubectl cpls diff``/``refresh`` around a change made on the server."""

from __future__ import annotations

import json

import pytest
from plugin_kit import APPROVED, HASH_B, Cpls

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

COMPOSE_HASH_ADDED = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"

pytestmark = pytest.mark.slow


def registrations(anvil: Anvil, contract: str, compose_hash: str) -> int:
    logs = anvil.web3().eth.get_logs(
        {"address": contract, "fromBlock": 0, "toBlock": "latest", "topics": [COMPOSE_HASH_ADDED]}
    )
    wanted = compose_hash.lower().removeprefix("0x")
    return sum(1 for log in logs if bytes(log["data"]).hex() == wanted)


def test_manual_approval_with_kubectl_cpls(
    setup: Workbench,
    onchain_cvm: SimTarget,
    anvil: Anvil,
    operator_factory: OperatorFactory,
    cpls: Cpls,
) -> None:
    assert onchain_cvm.contract is not None
    operator_factory()
    setup.create(onchain_cvm, on_chain={"approval": "Manual"})
    waiting = setup.wait(
        "app",
        lambda body: bool(((body.get("status") or {}).get("pendingApproval") or {}).get("composeHash")),
        "a pending approval",
    )
    pending = waiting["status"]["pendingApproval"]
    compose_hash = pending["composeHash"]
    assert waiting["status"]["phase"] == "AwaitingApproval"
    assert pending["cvmId"] == onchain_cvm.id
    assert pending["appContract"].lower() == onchain_cvm.contract.address.lower()
    assert pending["chainId"] == anvil.chain_id

    shown = cpls("status", "app")
    assert shown.code == 0, shown.err
    assert f"compose hash:   {compose_hash}" in shown.out

    # A wrong hash is refused, and nothing is approved or registered.
    wrong = cpls("approve", "app", "--hash", HASH_B)
    assert wrong.code == 1
    assert f"pending hash is {compose_hash}, not {HASH_B}" in wrong.err
    resource = json.loads(setup.cp.kubectl("get", "cpls", "app", "-n", setup.namespace, "-o", "json").stdout)
    assert APPROVED not in (resource["metadata"].get("annotations") or {})
    assert registrations(anvil, onchain_cvm.contract.address, compose_hash) == 0

    approved = cpls("approve", "app", "--hash", compose_hash)
    assert approved.code == 0, approved.err
    assert f"approved compose hash {compose_hash}" in approved.out

    synced = setup.synced()
    assert synced["status"]["composeHash"] == compose_hash
    assert "pendingApproval" not in synced["status"]
    assert registrations(anvil, onchain_cvm.contract.address, compose_hash) == 1
    # Nothing is pending any more: a second approval is refused.
    again = cpls("approve", "app")
    assert again.code == 1 and "nothing pending approval" in again.err


def test_diff_after_a_server_side_change_then_refresh(
    setup: Workbench,
    offchain_cvm: SimTarget,
    sim: SimulatorServer,
    operator_factory: OperatorFactory,
    cpls: Cpls,
) -> None:
    operator_factory()
    setup.create(offchain_cvm, driftPolicy="Report")
    setup.synced()
    env = {"PHALA_CLOUD_API_URL": sim.base_url}
    assert cpls("diff", "app", env=env).code == 0

    # Someone changes the script on Phala Cloud's side (the dashboard, another tool).
    sim.admin.update_cvm(offchain_cvm.id, pre_launch_script="#!/bin/sh\necho 'changed by hand'\n")

    changed = cpls("diff", "app", env=env)
    assert changed.code == 1, changed.err
    assert "-echo 'changed by hand'\n" in changed.out
    assert "+echo 'configured by the operator: v1'\n" in changed.out

    # A refresh re-applies the desired script (Report only reports what a periodic check finds).
    before = setup.synced()["status"].get("lastSyncTime")
    assert cpls("refresh", "app").code == 0
    setup.wait(
        "app",
        lambda body: (
            (body.get("status") or {}).get("lastSyncTime") != before
            and (body.get("status") or {}).get("phase") == "Synced"
        ),
        "a new sync",
    )
    assert sim.admin.cvm_state(offchain_cvm.id)["pre_launch_script"] == SCRIPT_V1
    assert cpls("diff", "app", env=env).code == 0
