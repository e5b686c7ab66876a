"""Issue 10 on real parts (API server, simulator, anvil, the operator process): inputs changed
mid-flight, records that can never succeed, bounded following, bounds on the spec and on drift."""

from __future__ import annotations

import json
from typing import Any

import pytest
from chain_kit import (
    COMPOSE_HASH_ADDED,
    broadcast_on,
    events_of,
    flight,
    mining,
    owner_of,
    registrations_of,
    set_owner,
    step_is,
)
from eth_account import Account

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.kube import KubectlError
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_localenv.scenario import SCRIPT_V1, Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

APPROVED = "cloud.phala.com/approved-compose-hash"
REQUESTED_AT = "cloud.phala.com/requested-at"


def phase2_requests(sim: SimulatorServer) -> list[Any]:
    return [r for r in sim.admin.requests() if r.method == "PATCH" and r.header("x-compose-hash")]


def test_cvm_changed_while_awaiting_approval_goes_to_the_new_cvm_only(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    first = sim_cvm_factory(onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n")
    second = sim_cvm_factory(
        onchain=True,
        allow_any_device=True,
        pre_launch_script="#!/bin/sh\necho v0\n",
        workspace=first.cvm.workspace_id,
    )
    operator_factory()
    setup.create(first, on_chain={"approval": "Manual"})
    setup.wait(
        "app",
        lambda b: ((b.get("status") or {}).get("pendingApproval") or {}).get("cvmId") == first.id,
        "pending on the first CVM",
    )
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"cvmId": second.id})
    body = setup.wait(
        "app",
        lambda b: ((b.get("status") or {}).get("pendingApproval") or {}).get("cvmId") == second.id,
        "pending on the second CVM",
    )
    pending = body["status"]["pendingApproval"]
    assert pending["appContract"].lower() == second.contract.address.lower()  # type: ignore[union-attr]
    scenario.annotate(setup.cp, setup.namespace, "app", {APPROVED: pending["composeHash"]})
    setup.synced()
    assert first.contract is not None and second.contract is not None
    # Nothing went to the old contract or the old CVM; the new one runs the script.
    old_logs = anvil.web3().eth.get_logs(
        {
            "address": first.contract.address,
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [COMPOSE_HASH_ADDED],
        }
    )
    assert old_logs == []
    assert all(r.cvm == second.id for r in phase2_requests(sim))
    assert len(registrations_of(anvil, second.contract.address, pending["composeHash"])) == 1
    assert sim.admin.cvm_state(second.id)["pre_launch_script"] == SCRIPT_V1


def test_on_chain_removed_mid_flight_stalls_then_moving_to_an_off_chain_cvm_syncs(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    account = anvil.accounts[5]
    onchain = sim_cvm_factory(
        onchain=True, allow_any_device=True, owner=account, pre_launch_script="#!/bin/sh\necho v0\n"
    )
    offchain = sim_cvm_factory(
        onchain=False, pre_launch_script="#!/bin/sh\necho v0\n", workspace=onchain.cvm.workspace_id
    )
    operator = operator_factory()
    with mining(anvil):  # the registration stays pending
        setup.create(onchain, signer=5)
        setup.wait("app", broadcast_on(anvil), "a broadcast registration")
        setup.cp.kubectl(
            "patch",
            "cpls",
            "app",
            "-n",
            setup.namespace,
            "--type=json",
            "-p",
            json.dumps([{"op": "remove", "path": "/spec/onChain"}]),
        )
        body = setup.reason("app", "InvalidSpec")
        assert scenario.condition(body, "Stalled")["status"] == "True"
        assert "inFlight" not in body["status"]
        kept = body["status"]["unsettledTransactions"][0]
        assert kept["transactions"][0]["txHash"]
        scenario.patch_spec(setup.cp, setup.namespace, "app", {"cvmId": offchain.id})
        setup.synced()
    assert sim.admin.cvm_state(offchain.id)["pre_launch_script"] == SCRIPT_V1
    assert "Traceback" not in operator.logs() and "AssertionError" not in operator.logs()


def test_nonce_consumed_by_another_wallet_while_the_broadcast_is_held(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    anvil_proxy: JsonRpcProxy,
    operator_factory: OperatorFactory,
) -> None:
    account = anvil.accounts[6]
    target = sim_cvm_factory(
        onchain=True, allow_any_device=True, owner=account, pre_launch_script="#!/bin/sh\necho v0\n"
    )
    operator_factory()
    anvil_proxy.hold_sends()  # the operator's broadcast never reaches the node
    setup.create(target, signer=6, on_chain={"rpcUrl": anvil_proxy.url})
    body = setup.wait("app", step_is("Registering", with_transactions=True), "a held registration")
    ours = flight(body)["transactions"][0]
    compose_hash = flight(body)["composeHash"]
    # The same key, in another wallet, registers the same hash with the same nonce.
    w3 = anvil.web3()
    contract = w3.eth.contract(address=target.contract.address, abi=target.contract.abi)  # type: ignore[union-attr]
    tx = contract.functions.addComposeHash(bytes.fromhex(compose_hash.removeprefix("0x"))).build_transaction(
        {"from": account.address, "nonce": ours["nonce"], "chainId": anvil.chain_id, "gas": 200_000}
    )
    signed = Account.from_key(account.private_key.reveal()).sign_transaction(tx)
    theirs = w3.eth.send_raw_transaction(signed.raw_transaction).hex()
    anvil.wait_for_receipt("0x" + theirs.removeprefix("0x"))
    anvil_proxy.drop_held()
    anvil_proxy.reset_faults()
    body = setup.synced(timeout=90)
    assert len(registrations_of(anvil, target.contract.address, compose_hash)) == 1  # type: ignore[union-attr]
    assert body["status"]["transactionHash"].removeprefix("0x") == theirs.removeprefix("0x")
    reasons = [e["reason"] for e in events_of(setup.cp, setup.namespace, "app")]
    assert "TransactionReplaced" in reasons
    assert len([r for r in phase2_requests(sim) if r.status == 202]) == 1


def test_a_revert_after_ownership_moved_stalls_without_a_record_and_recovers(
    setup: Workbench, sim_cvm_factory: SimCvmFactory, anvil: Anvil, operator_factory: OperatorFactory
) -> None:
    account = anvil.accounts[7]
    target = sim_cvm_factory(
        onchain=True, allow_any_device=True, owner=account, pre_launch_script="#!/bin/sh\necho v0\n"
    )
    assert target.contract is not None
    operator_factory()
    with mining(anvil):
        setup.create(target, signer=7)
        body = setup.wait("app", broadcast_on(anvil), "a pending registration")
        compose_hash = flight(body)["composeHash"]
        set_owner(anvil, target.contract.address, anvil.accounts[8].address)  # between signing and mining
        anvil.mine(1)
        body = setup.reason("app", "NotContractOwner")
        assert scenario.condition(body, "Stalled")["status"] == "True"
        assert "inFlight" not in body["status"]  # the record that can never succeed is gone
        set_owner(anvil, target.contract.address, owner_of(target))
        scenario.annotate(setup.cp, setup.namespace, "app", {REQUESTED_AT: "2026-11-30T00:00:00Z"})
        anvil.set_interval_mining(1)
        setup.synced(timeout=90)
    assert len(registrations_of(anvil, target.contract.address, compose_hash)) == 1


def test_an_operation_that_never_completes_times_out(
    setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    sim.admin.settings(operation_seconds=3600.0)
    operator_factory(extra_env={"OPERATION_TIMEOUT": "4s", "OPERATION_POLL_SECONDS": "1"})
    setup.create(offchain_cvm)
    body = setup.reason("app", "OperationTimedOut", timeout=60)
    message = scenario.condition(body)["message"]
    correlation = [r for r in sim.admin.requests() if r.method == "PATCH" and r.status == 202]
    assert correlation
    assert body["status"]["correlationId"] in message
    assert scenario.condition(body, "Stalled")["status"] == "True"


def test_a_drift_check_interval_below_30s_is_refused_by_the_api_server(
    setup: Workbench, offchain_cvm: SimTarget
) -> None:
    with pytest.raises(KubectlError) as refused:
        setup.create(offchain_cvm, driftCheckInterval="10ms")
    assert "spec.driftCheckInterval must be 0s (disabled) or at least 30s" in refused.value.stderr


def test_a_failed_drift_check_keeps_ready_true(
    setup: Workbench, offchain_cvm: SimTarget, sim: SimulatorServer, operator_factory: OperatorFactory
) -> None:
    operator_factory()
    setup.create(offchain_cvm, driftCheckInterval="10m")
    setup.synced()
    sim.admin.inject(cvm=offchain_cvm.id, method="GET", path="pre-launch-script", status=500, count=None)
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"driftCheckInterval": "30s"})  # checks at once
    body = setup.wait(
        "app", lambda b: bool((b.get("status") or {}).get("lastDriftCheckError")), "a failed check"
    )
    assert scenario.condition(body)["status"] == "True"
    assert scenario.condition(body)["reason"] == "Synced"
    assert "500" in body["status"]["lastDriftCheckError"]
