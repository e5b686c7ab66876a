"""The reconcile core against the model's fakes, one situation at a time. The property test
(``test_model.py``) explores their interleavings with crashes and faults; these pin down the expected
outcome of each situation of issues 10 and 11."""

from __future__ import annotations

import pytest
from model_fakes import Crash
from model_world import CHAIN_A, OTHER, OTHER_KEY, OWNER, World, on_chain, spec

from cvm_prelaunch_operator.domain.errors import RecheckChain, RetryLater, StartOver

pytestmark = pytest.mark.asyncio

APPROVED = "cloud.phala.com/approved-compose-hash"
TX_ANNOTATION = "cloud.phala.com/transaction-hash"
REQUESTED_AT = "cloud.phala.com/requested-at"


def registrations(world: World, cvm_id: str) -> int:
    cvm = world.cloud.cvms[cvm_id]
    chain = cvm.chain
    assert chain is not None and cvm.contract is not None
    return len(chain.logs_of(cvm.contract, "0x" + cvm.hash_for(world.store.script.encode())))


def events(world: World, reason: str) -> list[str]:
    return [message for _, r, message in world.store.events if r == reason]


async def test_offchain_sync_takes_two_status_writes() -> None:
    world = World()
    await world.settle()
    assert world.reason() == "Synced", world.status
    assert world.cloud.cvms["off-1"].script == world.store.script
    assert world.store.writes == 2
    assert [p.status for p in world.cloud.patches] == [202]
    # Nothing to do afterwards: no remote call, no write.
    calls, writes = world.crash.calls, world.store.writes
    world.poke()
    await world.settle()
    assert (world.crash.calls, world.store.writes) == (calls, writes)


async def test_onchain_sync_registers_once_and_applies() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain())
    await world.settle()
    assert world.reason() == "Synced", world.status
    cvm = world.cloud.cvms["app-a1"]
    assert cvm.script == world.store.script
    assert registrations(world, "app-a1") == 1
    assert [p.status for p in world.cloud.patches] == [465, 202]
    assert world.status["transactionHash"] in world.chain[CHAIN_A].receipts
    assert "inFlight" not in world.status


async def test_confirmations_are_waited_for_as_progress_not_failures() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain(confirmations=3))
    seen: list[str] = []
    world.store.on_write = lambda patch: seen.append(
        next((c["reason"] for c in patch.get("conditions") or [] if c["type"] == "Ready"), "")
    )
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert "AwaitingConfirmations" in seen
    assert not [e for e in world.store.events if e[0] == "Warning"]
    phase2 = [p for p in world.cloud.patches if p.phase2]
    assert len(phase2) == 1
    receipt = world.chain[CHAIN_A].receipts[world.status["transactionHash"]]
    assert world.chain[CHAIN_A].head.number - receipt.block_number + 1 >= 3
    assert registrations(world, "app-a1") == 1


async def test_a_receipt_counts_its_own_block_when_the_head_read_before_it_is_older() -> None:
    """A node that mines on demand may answer the head before the block the receipt is in (both read
    in one round): the receipt proves its block, so one confirmation is there and Phase 2 follows in
    the same pass instead of after the wait for a block that, on such a chain, may never come."""
    world = World()  # automine
    world.store.spec = spec("app-a1", on_chain=on_chain())
    world.chain[CHAIN_A].head_behind_receipts = 1_000
    await world.settle()
    assert world.reason() == "Synced", world.status
    assert world.passes == 1
    assert registrations(world, "app-a1") == 1


async def test_the_first_look_after_a_broadcast_is_at_the_next_block_not_the_poll_floor() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    await world.settle(max_passes=100)  # a first sync teaches the block clock the chain's pace
    assert world.reason() == "Synced", world.status
    world.advance(chain.last_mined_at + 1.5 - world.clock.now)  # the next block is 0.5 s away
    world.store.edit_script("#!/bin/sh\necho v2\n")
    world.poke()
    sends = len(chain.sends)
    await world.settle(until=lambda: len(chain.sends) > sends)
    assert world.due is not None
    wait = world.due - world.clock.now
    assert 0.5 <= wait < 1.0, f"first look {wait:.2f} s after the broadcast"
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status


async def test_a_pass_waiting_for_a_block_says_so_and_a_pass_that_sees_it_announces_it() -> None:
    """What lets the runtime wake every resource waiting for a chain's block when one of them sees it
    first: the wait names the chain and the head it saw, and a new head is announced once."""
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain(confirmations=2))
    heard: list[tuple[int, int]] = []
    world.reconciler.on_new_block(lambda chain_id, number: heard.append((chain_id, number)))
    chain = world.chain[CHAIN_A]
    outcome = None
    while not (world.status.get("inFlight") or {}).get("transactions"):
        assert await world.step()
    while world.reason() != "AwaitingConfirmations":
        wait = world.due - world.clock.now if world.due is not None else 0.0
        world.advance(max(0.0, wait))
        outcome = await world.run_pass()
    assert outcome is not None and outcome.requeue_after is not None
    assert outcome.awaits_block == (CHAIN_A, chain.head.number)
    assert heard and heard[-1] == (CHAIN_A, chain.head.number)
    announced = len(heard)
    outcome = await world.run_pass()  # the same head again: no news
    assert outcome is not None and outcome.awaits_block == (CHAIN_A, chain.head.number)
    assert len(heard) == announced
    world.store.spec = spec("off-1")  # an off-chain resource never waits for a block
    world.poke()
    await world.settle()
    outcome = await world.run_pass()
    assert outcome is not None and outcome.awaits_block is None


async def test_a_dropped_transaction_is_broadcast_again_with_the_same_bytes() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    tx = world.status["inFlight"]["transactions"][0]
    chain.drop(tx["txHash"])
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert events(world, "TransactionRebroadcast")
    assert world.status["transactionHash"] == tx["txHash"]
    assert registrations(world, "app-a1") == 1


async def test_a_base_fee_spike_replaces_the_transaction_with_higher_fees() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    first = world.status["inFlight"]["transactions"][0]
    chain.next_base_fee = int(first["maxFeePerGas"]) * 2  # priced out
    await world.settle(until=lambda: len((world.status.get("inFlight") or {}).get("transactions") or []) > 1)
    second = world.status["inFlight"]["transactions"][1]
    assert second["nonce"] == first["nonce"]
    assert int(second["maxFeePerGas"]) * 8 >= int(first["maxFeePerGas"]) * 9
    assert int(second["maxPriorityFeePerGas"]) * 8 >= int(first["maxPriorityFeePerGas"]) * 9
    assert events(world, "TransactionReplaced")
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1


async def test_a_ceiling_below_the_fee_needed_waits_and_resumes_when_raised() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain(maxFeePerGas="0.5"))  # base fee is 1 gwei
    chain = world.chain[CHAIN_A]
    await world.settle(until=lambda: world.reason() == "FeeCeilingReached")
    assert world.reason() == "FeeCeilingReached"
    assert world.condition("Stalled")["status"] == "False"
    assert "0.5 gwei" in world.condition("Ready")["message"]
    assert chain.sends == []
    world.store.edit_spec(lambda s: s["onChain"].update(maxFeePerGas="50"))
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1


async def test_a_gas_estimate_above_the_ceiling_is_refused() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain())
    world.chain[CHAIN_A].gas_estimate = 10_000_000
    await world.settle(until=lambda: world.reason() == "FeeCeilingReached")
    assert world.reason() == "FeeCeilingReached"
    assert "10000000 gas" in world.condition("Ready")["message"]
    assert world.chain[CHAIN_A].sends == []


async def test_a_reorg_before_the_confirmations_delays_phase_2() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain(confirmations=3))
    chain = world.chain[CHAIN_A]
    await world.settle(
        until=lambda: (world.status.get("inFlight") or {}).get("step") == "AwaitingConfirmations"
    )
    mined_in = world.status["inFlight"]["blockNumber"]
    chain.reorg(chain.head.number - mined_in + 1)  # the registration leaves the canonical chain
    assert not chain.logs_of(world.contracts["app-a1"], world.status["composeHash"])
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    phase2 = [p for p in world.cloud.patches if p.phase2]
    assert len(phase2) == 1
    receipt = chain.receipts[world.status["transactionHash"]]
    assert registrations(world, "app-a1") == 1
    assert receipt.block_number >= mined_in


async def test_an_insecure_rpc_url_stalls_before_any_connection() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain={**on_chain(), "rpcUrl": "http://rpc.example.com/key123"})
    await world.settle()
    assert world.reason() == "InsecureRpcUrl"
    assert world.condition("Stalled")["status"] == "True"
    assert "ALLOW_INSECURE_RPC" in world.condition("Ready")["message"]
    assert "key123" not in str(world.status)
    assert world.chains.connected == []


async def test_cvm_changed_while_awaiting_approval_sends_nothing_to_the_old_contract() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain(approval="Manual"))
    await world.settle()
    assert world.reason() == "AwaitingApproval"
    assert world.status["pendingApproval"]["cvmId"] == "app-a1"
    world.store.edit_spec(lambda s: s.update(cvmId="app-a2"))
    world.poke()
    await world.settle()
    pending = world.status["pendingApproval"]
    assert pending["cvmId"] == "app-a2"
    world.store.annotate(APPROVED, pending["composeHash"])
    world.poke()
    await world.settle()
    assert world.reason() == "Synced", world.status
    chain = world.chain[CHAIN_A]
    assert all(send.to == world.contracts["app-a2"] for send in chain.sends)
    assert all(p.cvm_id == "app-a2" for p in world.cloud.patches if p.phase2)
    assert world.cloud.cvms["app-a2"].script == world.store.script


async def test_a_dropped_transaction_for_a_cvm_the_spec_left_is_set_aside_not_sent_again() -> None:
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    tx = world.status["inFlight"]["transactions"][0]
    chain.drop(tx["txHash"])
    sends = len(chain.sends)
    # The spec moves to an off-chain CVM but keeps spec.onChain: the chain is still reachable.
    world.store.edit_spec(lambda s: s.update(cvmId="off-1"))
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert len(chain.sends) == sends, "a transaction for app-a1 left while the spec names off-1"
    assert not events(world, "TransactionRebroadcast")
    assert world.status["unsettledTransactions"][0]["transactions"][0]["txHash"] == tx["txHash"]
    # Back on app-a1: the set-aside nonce is reused by the new registration, which is mined once.
    world.store.edit_spec(lambda s: s.update(cvmId="app-a1"))
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1
    assert "unsettledTransactions" not in world.status


async def test_onchain_removed_mid_flight_is_settled_and_stalls_with_invalid_spec() -> None:
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    world.store.edit_spec(lambda s: s.pop("onChain"))
    world.poke()
    await world.settle()
    assert world.reason() == "InvalidSpec", world.status
    assert world.status["unsettledTransactions"][0]["composeHash"]
    # Moving to an off-chain CVM syncs off-chain.
    world.store.edit_spec(lambda s: s.update(cvmId="off-2"))
    world.poke()
    await world.settle()
    assert world.reason() == "Synced", world.status
    assert world.cloud.cvms["off-2"].script == world.store.script


async def test_onchain_restored_adopts_the_set_aside_transaction() -> None:
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    world.store.edit_spec(lambda s: s.pop("onChain"))
    world.poke()
    await world.settle()
    world.store.edit_spec(lambda s: s.update(onChain=on_chain()))
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1
    assert "unsettledTransactions" not in world.status


async def test_a_nonce_taken_by_another_wallet_reuses_its_registration() -> None:
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    ours = world.status["inFlight"]["transactions"][0]
    chain.drop(ours["txHash"])  # held back from the pool...
    # ...while the same key, used elsewhere, registers the same hash with the same nonce.
    chain.foreign_send(
        OWNER,
        ours["nonce"],
        to=world.contracts["app-a1"],
        data="0xdfc77223" + world.status["composeHash"][2:],
    )
    world.advance(12)
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert events(world, "TransactionReplaced")
    assert registrations(world, "app-a1") == 1
    assert world.status["transactionHash"] != ours["txHash"]


async def test_a_revert_after_ownership_moved_stalls_and_keeps_no_record() -> None:
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    contract = chain.contracts[world.contracts["app-a1"].lower()]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    contract.owner = OTHER  # ownership moves between signing and mining
    world.advance(12)
    await world.settle()
    assert world.reason() == "NotContractOwner", world.status
    assert "inFlight" not in world.status
    assert world.condition("Stalled")["status"] == "True"
    contract.owner = OWNER
    world.store.annotate(REQUESTED_AT, "2026-11-30T00:00:00Z")
    world.poke()
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1


async def test_an_operation_that_never_completes_times_out() -> None:
    world = World()
    world.cloud.operation_outcome = "hang"
    await world.settle(max_passes=200)
    assert world.reason() == "OperationTimedOut", world.status
    assert "corr-1" in world.condition("Ready")["message"]
    assert world.status["inFlight"]["step"] == "Uploading"


async def test_unknown_operation_status_is_reported_verbatim() -> None:
    world = World()
    world.cloud.operation_outcome = "weird"
    await world.settle(max_passes=3)
    assert "reticulating" in world.condition("Ready")["message"]


async def test_polling_backs_off_to_the_cap() -> None:
    world = World()
    world.cloud.operation_outcome = "hang"
    gaps: list[float] = []
    last = None
    for _ in range(12):
        await world.step()
        if last is not None:
            gaps.append(world.clock.now - last)
        last = world.clock.now
    assert max(gaps) <= 30.0 + 1e-6
    assert gaps[-1] == pytest.approx(30.0)


async def test_a_failed_drift_check_keeps_ready_true() -> None:
    world = World()
    world.store.spec["driftCheckInterval"] = "30s"
    await world.settle(max_passes=2)
    assert world.reason() == "Synced"
    world.cloud.faults.append(("get_script", RetryLater("Phala Cloud is unavailable", status_code=500)))
    world.advance(30)
    await world.step()
    assert world.reason() == "Synced"
    assert world.condition("Ready")["status"] == "True"
    assert "unavailable" in world.status["lastDriftCheckError"]
    world.advance(60)
    await world.step()
    assert "lastDriftCheckError" not in world.status


async def test_a_stale_transaction_hash_annotation_is_ignored_once() -> None:
    world = World()
    world.store.annotations[TX_ANNOTATION] = "0x" + "ee" * 32
    world.store.spec = spec("app-a1", on_chain=on_chain())
    await world.settle()
    assert world.reason() == "Synced", world.status
    assert len(events(world, "TransactionHashIgnored")) == 1
    assert registrations(world, "app-a1") == 1


async def test_retry_after_is_honoured() -> None:
    world = World()
    world.cloud.faults.append(("phase1", RetryLater("rate limited", retry_after=4.0, status_code=429)))
    await world.run_pass()
    failed_at = world.clock.now
    await world.settle()
    assert world.reason() == "Synced"
    second = world.cloud.patches[1]
    assert second.status == 202
    assert world.status.get("failures", 0) == 0
    assert world.clock.now - failed_at >= 4.0


async def test_a_pass_inside_the_backoff_waits_out_what_is_left_and_sends_nothing() -> None:
    """A watch event (or requested-at) just before the gate: the pass returns the few milliseconds left,
    however few, not a floor that would make the retry late, and sends nothing before them."""
    world = World()
    world.cloud.faults.append(("phase1", RetryLater("unavailable", status_code=500)))
    await world.run_pass()
    gate = world.due
    assert gate is not None
    tried = len(world.cloud.patches)
    world.advance(gate - world.clock.now - 0.01)
    world.poke()
    outcome = await world.run_pass()
    assert outcome is not None and outcome.requeue_after is not None
    assert outcome.requeue_after == pytest.approx(0.01, abs=0.002)
    assert len(world.cloud.patches) == tried
    await world.settle()
    assert world.reason() == "Synced"


async def test_467_waits_the_recheck_delay_without_counting_failures() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain())
    world.cloud.next_phase2 = [RecheckChain("cannot see it", status_code=467)]
    await world.run_pass()
    assert world.status["inFlight"]["rechecks"] == 1
    assert world.status.get("failures", 0) == 0
    assert world.due is not None and world.due - world.clock.now == pytest.approx(
        world.policy.recheck_delay(1)
    )
    await world.settle()
    assert world.reason() == "Synced"


async def test_466_starts_over_and_reuses_the_registration() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain())
    world.cloud.next_phase2 = [StartOver("superseded", status_code=466)]
    await world.settle()
    assert world.reason() == "Synced", world.status
    assert registrations(world, "app-a1") == 1
    assert [p.status for p in world.cloud.patches] == [465, 466, 465, 202]


async def test_a_crash_after_phase_2_is_not_followed_by_another_update() -> None:
    world = World()
    world.store.spec = spec("app-a1", on_chain=on_chain())
    world.cloud.operation_seconds = 10.0
    # Crash right after the Phase 2 answer, before its outcome is written.
    original = world.cloud.patch_pre_launch_script

    async def crash_after_phase2(*args, **kwargs):  # type: ignore[no-untyped-def]
        result = await original(*args, **kwargs)
        if kwargs.get("compose_hash"):
            raise Crash("after phase 2")
        return result

    world.cloud.patch_pre_launch_script = crash_after_phase2  # type: ignore[method-assign]
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert len([p for p in world.cloud.patches if p.phase2 and p.status == 202]) == 1
    assert world.crashes == 1


async def test_other_signer_is_never_used_for_a_state_of_another() -> None:
    world = World(block_time=12.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    world.store.set_secret("signer", "key", OTHER_KEY)  # the signer changes mid-flight
    world.poke()
    await world.settle(max_passes=100)
    chain = world.chain[CHAIN_A]
    assert all(send.sender == OWNER for send in chain.sends)
    assert world.reason() in ("NotContractOwner", "Synced"), world.status


async def test_a_nonce_gap_behind_the_registration_is_filled() -> None:
    """A reorg drops a transaction of the signer (here a reverted registration the operator had
    discarded): the next registration waits behind the missing nonce until the operator uses it."""
    world = World(block_time=2.0)
    world.store.spec = spec("app-a1", on_chain=on_chain())
    chain = world.chain[CHAIN_A]
    contract = chain.contracts[world.contracts["app-a1"].lower()]
    await world.settle(until=lambda: bool((world.status.get("inFlight") or {}).get("transactions")))
    contract.owner = OTHER
    chain.mine()  # the registration reverts: nonce 0 is used
    contract.owner = OWNER
    world.store.edit_script("#!/bin/sh\necho v2\n")
    world.poke()
    await world.settle(
        until=lambda: (world.status.get("inFlight") or {}).get("transactions", [{}])[0].get("nonce") == 1
    )
    chain.reorg(1, drop=True)  # nonce 0 is free again, and nothing pending uses it
    await world.settle(max_passes=100)
    assert world.reason() == "Synced", world.status
    assert events(world, "NonceGapFilled")
    assert registrations(world, "app-a1") == 1
