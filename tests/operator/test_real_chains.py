"""Issue 11 on real parts: the operator on anvil playing a real network - blocks that take time,
confirmations, a node that drops a transaction, a base-fee spike, a fee ceiling, a reorg, and an RPC
that lies about gas or is not https."""

from __future__ import annotations

import time
from typing import Any

from chain_kit import broadcast_on, events_of, flight, mining, registrations_of, step_is

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

GWEI = 10**9
SCRIPT_V0 = "#!/bin/sh\necho v0\n"


def onchain_target(sim_cvm_factory: SimCvmFactory, anvil: Anvil, account: int, **extra: Any) -> SimTarget:
    return sim_cvm_factory(
        onchain=True,
        allow_any_device=True,
        owner=anvil.accounts[account],
        pre_launch_script=SCRIPT_V0,
        **extra,
    )


def phase2_accepted(sim: SimulatorServer, cvm_id: str) -> list[Any]:
    return [
        r
        for r in sim.admin.requests()
        if r.method == "PATCH" and r.header("x-compose-hash") and r.status == 202 and r.cvm == cvm_id
    ]


def reasons_seen(setup: Workbench, name: str) -> list[str]:
    return [e["reason"] for e in events_of(setup.cp, setup.namespace, name)]


def test_confirmations_on_2s_blocks_without_holding_a_worker(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    offchain_cvm: SimTarget,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 5)
    operator_factory(extra_env={"MAX_CONCURRENT_RECONCILES": "1"})  # one worker: waiting must not hold it
    setup.create(offchain_cvm, name="other")
    setup.synced("other")
    with mining(anvil, block_time=2):
        setup.create(target, signer=5, on_chain={"confirmations": 3})
        body = setup.wait("app", step_is("AwaitingConfirmations"), "AwaitingConfirmations")
        ready = scenario.condition(body)
        assert ready["status"] == "False" and ready["reason"] == "AwaitingConfirmations"
        reconciling = scenario.condition(body, "Reconciling")
        assert reconciling["status"] == "True" and reconciling["reason"] == "AwaitingConfirmations"
        assert "of 3 confirmations (mined in block" in ready["message"]
        # Meanwhile another resource's edit goes out at once, on the only worker.
        sim.admin.clear_requests()
        edited = time.monotonic()
        scenario.patch_configmap(
            setup.cp, setup.namespace, "other-script", {"pre-launch.sh": SCRIPT_V0 + "# v2\n"}
        )
        phase1 = setup_wait_request(
            sim, lambda r: r.method == "PATCH" and r.cvm == offchain_cvm.id and not r.header("x-compose-hash")
        )
        assert phase1.started - edited < 1.0, (
            f"Phase 1 of the other resource took {phase1.started - edited:.2f}s"
        )
        body = setup.synced(timeout=60)
    receipt = anvil.web3().eth.get_transaction_receipt(body["status"]["transactionHash"])
    phase2 = phase2_accepted(sim, target.id)
    assert len(phase2) == 1
    assert len(registrations_of(anvil, target.contract.address, body["status"]["composeHash"])) == 1  # type: ignore[union-attr]
    assert receipt["blockNumber"] >= 1
    assert not [e for e in events_of(setup.cp, setup.namespace, "app") if e["type"] == "Warning"]
    assert body["status"].get("failures", 0) == 0


def setup_wait_request(sim: SimulatorServer, predicate: Any, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in sim.admin.requests() if predicate(r)]
        if found:
            return found[0]
        time.sleep(0.02)
    raise TimeoutError("the simulator never saw the request")


def test_a_dropped_transaction_is_broadcast_again(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 6)
    operator_factory()
    with mining(anvil):
        setup.create(target, signer=6)
        body = setup.wait("app", broadcast_on(anvil), "a pending registration")
        tx = flight(body)["transactions"][0]["txHash"]
        assert anvil.drop_transaction(tx)
        setup.wait(
            "app",
            lambda b: "TransactionRebroadcast" in reasons_seen(setup, "app"),
            "a re-broadcast",
            timeout=60,
        )
        anvil.set_interval_mining(1)
        body = setup.synced(timeout=60)
    assert body["status"]["transactionHash"] == tx
    assert len(registrations_of(anvil, target.contract.address, body["status"]["composeHash"])) == 1  # type: ignore[union-attr]
    assert len(phase2_accepted(sim, target.id)) == 1


def test_a_base_fee_spike_replaces_the_transaction_with_higher_fees(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 7)
    operator_factory()
    w3 = anvil.web3()
    with mining(anvil):
        setup.create(target, signer=7)
        body = setup.wait("app", broadcast_on(anvil), "a pending registration")
        first = flight(body)["transactions"][0]
        anvil.set_next_base_fee(int(first["maxFeePerGas"]) * 3)
        anvil.mine(1)  # the transaction is priced out (anvil evicts it)
        body = setup.wait(
            "app", lambda b: len(flight(b).get("transactions") or []) > 1, "a replacement", timeout=60
        )
        second = flight(body)["transactions"][-1]
        anvil.set_interval_mining(1)
        body = setup.synced(timeout=60)
    mined = w3.eth.get_transaction(body["status"]["transactionHash"])
    assert mined["nonce"] == first["nonce"] == second["nonce"]
    assert mined["hash"].hex().removeprefix("0x") == second["txHash"].removeprefix("0x")
    assert mined["maxFeePerGas"] * 8 >= int(first["maxFeePerGas"]) * 9
    assert mined["maxPriorityFeePerGas"] * 8 >= int(first["maxPriorityFeePerGas"]) * 9
    assert "TransactionReplaced" in reasons_seen(setup, "app")
    assert len(registrations_of(anvil, target.contract.address, body["status"]["composeHash"])) == 1  # type: ignore[union-attr]
    assert len(phase2_accepted(sim, target.id)) == 1


def test_a_fee_ceiling_below_the_need_waits_and_raising_it_resumes(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    anvil: Anvil,
    anvil_proxy: JsonRpcProxy,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 8)
    operator_factory()
    anvil.set_next_base_fee(50 * GWEI)
    anvil.mine(1)
    setup.create(target, signer=8, on_chain={"rpcUrl": anvil_proxy.url, "maxFeePerGas": "1"})
    body = setup.reason("app", "FeeCeilingReached", timeout=60)
    message = scenario.condition(body)["message"]
    assert "1 gwei" in message and scenario.condition(body, "Stalled")["status"] == "False"
    assert anvil_proxy.count("eth_sendRawTransaction") == 0
    scenario.patch_spec(setup.cp, setup.namespace, "app", {"onChain": {"maxFeePerGas": "500"}})
    body = setup.synced(timeout=60)
    assert len(registrations_of(anvil, target.contract.address, body["status"]["composeHash"])) == 1  # type: ignore[union-attr]


def test_a_reorg_before_the_confirmations_delays_phase_2(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    anvil: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 4)
    operator_factory()
    with mining(anvil):
        anvil.mine(3)  # the app contract's deployment lies deeper than the reorg
        setup.create(target, signer=4, on_chain={"confirmations": 3})
        body = setup.wait("app", broadcast_on(anvil), "a pending registration")
        tx = flight(body)["transactions"][0]["txHash"]
        anvil.mine(1)
        body = setup.wait("app", step_is("AwaitingConfirmations"), "mined, waiting for confirmations")
        mined_in = flight(body)["blockNumber"]
        anvil.reorg(2)  # the block with the registration leaves the canonical chain (and anvil's pool)
        assert _receipt_gone(anvil, tx)
        body = setup.wait(
            "app", step_is("Registering", with_transactions=True), "back to registering", timeout=60
        )
        assert phase2_accepted(sim, target.id) == []
        back = _wait_receipt(anvil, tx, mine=True)
        anvil.mine(1)
        assert phase2_accepted(sim, target.id) == []  # 2 of 3 confirmations at most
        anvil.mine(1)
        confirmed_at = time.monotonic()
        body = setup.synced(timeout=60)
    accepted = phase2_accepted(sim, target.id)
    assert len(accepted) == 1 and accepted[0].started >= confirmed_at - 0.5
    assert back["blockNumber"] >= mined_in
    assert len(registrations_of(anvil, target.contract.address, body["status"]["composeHash"])) == 1  # type: ignore[union-attr]


def _receipt_gone(anvil: Anvil, tx: str) -> bool:
    try:
        return anvil.web3().eth.get_transaction_receipt(tx) is None
    except Exception:  # web3 raises TransactionNotFound
        return True


def _wait_receipt(anvil: Anvil, tx: str, *, mine: bool, timeout: float = 30.0) -> Any:
    """The receipt once the operator's re-broadcast transaction is in a block (mining one a second)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _receipt_gone(anvil, tx):
            return anvil.web3().eth.get_transaction_receipt(tx)
        if mine and anvil.txpool_status()[0] > 0:
            anvil.mine(1)
            continue
        time.sleep(0.1)
    raise TimeoutError(f"transaction {tx} never came back")


def test_an_rpc_that_reports_huge_gas_is_refused(
    setup: Workbench,
    sim_cvm_factory: SimCvmFactory,
    anvil: Anvil,
    anvil_proxy: JsonRpcProxy,
    operator_factory: OperatorFactory,
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 3)
    operator_factory()
    anvil_proxy.estimate_gas(10_000_000)
    setup.create(target, signer=3, on_chain={"rpcUrl": anvil_proxy.url})
    body = setup.reason("app", "FeeCeilingReached", timeout=60)
    assert "10000000 gas" in scenario.condition(body)["message"]
    assert anvil_proxy.count("eth_sendRawTransaction") == 0
    assert not flight(body).get("transactions")


def test_plain_http_to_a_remote_host_is_refused_before_any_connection(
    setup: Workbench, sim_cvm_factory: SimCvmFactory, anvil: Anvil, operator_factory: OperatorFactory
) -> None:
    target = onchain_target(sim_cvm_factory, anvil, 3)
    operator_factory()
    setup.create(target, signer=3, on_chain={"rpcUrl": "http://rpc.example.com/v2/secret-key-123"})
    body = setup.reason("app", "InsecureRpcUrl", timeout=60)
    assert scenario.condition(body, "Stalled")["status"] == "True"
    message = scenario.condition(body)["message"]
    assert "ALLOW_INSECURE_RPC" in message and "secret-key-123" not in message
