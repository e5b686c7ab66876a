"""A model test of the reconcile core: hypothesis drives the real engine against fakes of Phala Cloud,
the chain and the resource store, with crashes, faults and edits, and checks the invariants of issue
10 after every step:

- at most one ``ComposeHashAdded`` per compose hash on the canonical chain from the operator's
  transactions;
- no transaction with a new nonce to a contract, and no PATCH to a CVM, other than the current spec's
  at send time (finishing a broadcast transaction, i.e. the same nonce again, aside; a nonce filler,
  a transfer to the signer itself, only on the spec's chain);
- every Phase 2 carries the script of the ConfigMap at that time (the script its state was made for);
- nothing is sent while ``status.nextRetryTime`` lies ahead, and no pass without progress comes back
  at once (no busy loop);
- status stays readable and bounded (messages within 1,024 characters);
- once faults and edits stop, the resource reaches Synced, AwaitingApproval, AwaitingTransaction,
  Suspended, FeeCeilingReached (a ceiling below the base fee) or a Stalled reason of the README's table
  within a bounded number of passes, and then makes no remote write.

``MODEL_EXAMPLES`` and ``MODEL_STEPS`` set the size (CI: 500 examples; ``python -m benchmarks --model``
runs the long mode).
"""

from __future__ import annotations

import asyncio
import os
import random
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from model_fakes import GWEI, PatchRecord, SendRecord
from model_world import CHAIN_A, CHAIN_B, OTHER, OWNER, World, on_chain, spec

from cvm_prelaunch_operator.domain.errors import RecheckChain, RetryLater, StartOver
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.domain.states import from_status
from cvm_prelaunch_operator.domain.text import MESSAGE_LIMIT, parse_time

EXAMPLES = int(os.environ.get("MODEL_EXAMPLES", "500"))
# The whole run's bound: 30 minutes for CI's examples; the long mode passes its own.
TIMEOUT = float(os.environ.get("MODEL_TIMEOUT", "1800"))
STEPS = int(os.environ.get("MODEL_STEPS", "40"))
README = Path(__file__).resolve().parents[2] / "README.md"

SCRIPTS = ["#!/bin/sh\necho v1\n", "#!/bin/sh\necho v2\n", "#!/bin/sh\necho v3\n"]
CVMS = ["off-1", "off-2", "app-a1", "app-a2", "app-b"]
CHAIN_OF = {"app-a1": CHAIN_A, "app-a2": CHAIN_A, "app-b": CHAIN_B}
APPROVED = "cloud.phala.com/approved-compose-hash"
TX_ANNOTATION = "cloud.phala.com/transaction-hash"
REQUESTED_AT = "cloud.phala.com/requested-at"


# Where the operator rests once nothing changes: waiting for a person, or a failure a person must fix.
def stalled_reasons() -> set[str]:
    table = README.read_text().split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([A-Za-z]+)`", table, flags=re.MULTILINE))


STALLED_REASONS = stalled_reasons()
# MODEL_STATS=1: each example's final reason, crashes, broadcasts, PATCHes and passes, printed at the end.
STATS: list[tuple[str, int, int, int, int]] | None = [] if os.environ.get("MODEL_STATS") == "1" else None


class OperatorModel(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.world = World()
        self.checked_sends = 0
        self.checked_patches = 0
        self.spec_at_pass: dict[str, Any] = {}
        self.script_at_pass = ""

    # -- set-up ------------------------------------------------------------------------------------

    @initialize(
        block_time=st.sampled_from([0.0, 2.0, 12.0]),
        cvm=st.sampled_from(["off-1", "app-a1", "app-a1", "app-a2", "app-b"]),
        confirmations=st.integers(1, 3),
        manual=st.sampled_from([False, False, False, True]),
        signer=st.sampled_from([True, True, True, False]),
        drift=st.sampled_from(["0s", "30s"]),
        evicts=st.booleans(),
        jitter=st.integers(0, 2**16),
    )
    def setup(
        self,
        block_time: float,
        cvm: str,
        confirmations: int,
        manual: bool,
        signer: bool,
        drift: str,
        evicts: bool,
        jitter: int = 0,
    ) -> None:
        # The backoff jitter is drawn like every other choice, so a printed example replays exactly.
        self.world = World(block_time=block_time, policy=RetryPolicy(jitter=random.Random(jitter)))
        for chain in self.world.chain.values():
            chain.evicts_underpriced = evicts
        chain = on_chain(CHAIN_OF.get(cvm, CHAIN_A), signer=signer, confirmations=confirmations)
        if manual:
            chain["approval"] = "Manual"
        self.world.store.spec = spec(
            cvm, on_chain=chain if cvm in CHAIN_OF else None, driftCheckInterval=drift
        )
        self.world.store.script = SCRIPTS[0]

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def teardown(self) -> None:
        try:
            self.quiesce_and_check()
        finally:
            self.loop.close()

    # -- the operator ------------------------------------------------------------------------------

    def one_pass(self, *, max_wait: float = 3600.0) -> None:
        world = self.world
        if world.due is None:
            return
        if world.due - world.clock.now > max_wait:
            return
        if world.due > world.clock.now:
            world.advance(world.due - world.clock.now)
        self.spec_at_pass = dict(world.store.spec)
        self.script_at_pass = world.store.script
        gated = world.store.status.get("nextRetryTime")
        gate = parse_time(gated)
        started = world.clock.now
        remote_before = self.remote_calls()
        writes_before = world.store.writes
        outcome = self.run(world.run_pass())
        if gate is not None and gate > world.clock.now and not world.crashes:
            assert self.remote_calls() == remote_before, "a request left before status.nextRetryTime"
        if outcome is not None and world.store.writes == writes_before and outcome.requeue_after is not None:
            if gate is not None and gate > started:
                # Backing off: the pass waits out the gate, however little of it is left, and no longer.
                assert abs(started + outcome.requeue_after - gate) < 0.002, (
                    f"a pass inside the backoff came back at +{outcome.requeue_after:.3f}s, "
                    f"the gate is at +{gate - started:.3f}s"
                )
            else:
                assert outcome.requeue_after >= 0.05 or world.due is None, (
                    "a pass without progress came back at once"
                )
        self.check_sends()

    def remote_calls(self) -> int:
        world = self.world
        return len(world.cloud.patches) + sum(len(c.sends) for c in world.chain.values())

    @rule()
    def run_pass(self) -> None:
        self.one_pass()

    @rule(n=st.integers(1, 6))
    def run_passes(self, n: int) -> None:
        for _ in range(n):
            self.one_pass()

    @rule(seconds=st.sampled_from([0.5, 2.0, 13.0, 60.0, 700.0]))
    def advance_time(self, seconds: float) -> None:
        self.world.advance(seconds)

    @rule(chain_id=st.sampled_from([CHAIN_A, CHAIN_B]))
    def mine(self, chain_id: int) -> None:
        self.world.chain[chain_id].mine()

    @rule(k=st.integers(1, 8))
    def crash_soon(self, k: int) -> None:
        self.world.crash.at = self.world.crash.calls + k

    # -- user edits ----------------------------------------------------------------------------------

    @rule(index=st.integers(0, len(SCRIPTS) - 1))
    def edit_script(self, index: int) -> None:
        self.world.store.edit_script(SCRIPTS[index])
        self.world.poke()

    @rule(cvm=st.sampled_from(CVMS), keep_chain=st.booleans())
    def move_cvm(self, cvm: str, keep_chain: bool) -> None:
        def change(s: dict[str, Any]) -> None:
            s["cvmId"] = cvm
            if cvm in CHAIN_OF and not keep_chain:
                s["onChain"] = {
                    **(s.get("onChain") or on_chain()),
                    "rpcUrl": f"http://127.0.0.1/rpc-{CHAIN_OF[cvm]}",
                }
            elif not keep_chain:
                s.pop("onChain", None)

        self.world.store.edit_spec(change)
        self.world.poke()

    @rule(
        present=st.sampled_from([True, True, False]),
        chain_id=st.sampled_from([CHAIN_A, CHAIN_B]),
        signer=st.sampled_from([True, True, False]),
        manual=st.sampled_from([False, False, True]),
        confirmations=st.integers(1, 3),
        max_fee=st.sampled_from([None, "0.5", "50"]),
    )
    def edit_on_chain(
        self,
        present: bool,
        chain_id: int,
        signer: bool,
        manual: bool,
        confirmations: int,
        max_fee: str | None,
    ) -> None:
        def change(s: dict[str, Any]) -> None:
            if not present:
                s.pop("onChain", None)
                return
            body = on_chain(chain_id, signer=signer, confirmations=confirmations)
            if manual:
                body["approval"] = "Manual"
            if max_fee is not None:
                body["maxFeePerGas"] = max_fee
            s["onChain"] = body

        self.world.store.edit_spec(change)
        self.world.poke()

    @rule()
    def approve(self) -> None:
        pending = self.world.store.status.get("pendingApproval")
        if pending:
            self.world.store.annotate(APPROVED, pending["composeHash"])
            self.world.poke()

    @rule()
    def approve_something_else(self) -> None:
        self.world.store.annotate(APPROVED, "0x" + "ab" * 32)
        self.world.poke()

    @rule(valid=st.booleans())
    def annotate_transaction(self, valid: bool) -> None:
        """The owner registers the hash elsewhere (valid) or a stale hash is left in the annotation."""
        world = self.world
        status = world.store.status
        flight = status.get("inFlight") or {}
        if valid and flight.get("composeHash") and flight.get("chainId") in world.chain:
            chain = world.chain[flight["chainId"]]
            tx = chain.foreign_send(
                OWNER,
                chain.nonce_of(OWNER, pending=True),
                to=flight["appContract"],
                data="0xdfc77223" + flight["composeHash"].lower().removeprefix("0x"),
            )
            world.store.annotate(TX_ANNOTATION, tx.tx_hash)
        else:
            world.store.annotate(TX_ANNOTATION, "0x" + "ee" * 32)
        world.poke()

    @rule(suspend=st.sampled_from([False, False, True]))
    def suspend(self, suspend: bool) -> None:
        self.world.store.edit_spec(lambda s: s.update(suspend=suspend))
        self.world.poke()

    @rule()
    def request_sync(self) -> None:
        self.world.store.annotate(REQUESTED_AT, f"t{self.world.passes}-{self.world.clock.now}")
        self.world.poke()

    @rule(owner=st.sampled_from([OWNER, OTHER]), chain_id=st.sampled_from([CHAIN_A, CHAIN_B]))
    def move_ownership(self, owner: str, chain_id: int) -> None:
        for contract in self.world.chain[chain_id].contracts.values():
            contract.owner = owner

    @precondition(lambda self: bool((self.world.store.status.get("inFlight") or {}).get("transactions")))
    @rule()
    def ownership_moves_under_a_pending_registration(self) -> None:
        """Between signing and mining the owner changes: the registration reverts when mined."""
        flight = self.world.store.status["inFlight"]
        chain = self.world.chain.get(flight.get("chainId"))
        if chain is not None:
            for contract in chain.contracts.values():
                contract.owner = OTHER
            chain.mine()

    # -- faults -------------------------------------------------------------------------------------

    @rule(
        endpoint=st.sampled_from(
            ["phase1", "phase2", "get_cvm", "operations", "get_script", "app_compose", "*"]
        ),
        kind=st.sampled_from(["409", "429", "500", "466", "467"]),
    )
    def cloud_fault(self, endpoint: str, kind: str) -> None:
        errors: dict[str, Exception] = {
            "409": RetryLater("another operation is in progress", status_code=409),
            "429": RetryLater("rate limited", retry_after=4.0, status_code=429),
            "500": RetryLater("Phala Cloud is unavailable", status_code=500),
            "466": StartOver("superseded", status_code=466),
            "467": RecheckChain("cannot see the transaction", status_code=467),
        }
        if kind in ("466", "467"):
            self.world.cloud.next_phase2.append(errors[kind])
        else:
            self.world.cloud.faults.append((endpoint, errors[kind]))

    @rule(
        outcome=st.sampled_from(["completed", "failed", "hang", "weird"]),
        seconds=st.sampled_from([0.0, 5.0, 90.0]),
    )
    def operations_behave(self, outcome: str, seconds: float) -> None:
        self.world.cloud.operation_outcome = outcome
        self.world.cloud.operation_seconds = seconds

    @rule(
        chain_id=st.sampled_from([CHAIN_A, CHAIN_B]),
        kind=st.sampled_from(
            ["down", "429", "drop", "reorg1", "reorg2", "reorg-drop", "spike", "calm", "foreign"]
        ),
    )
    def chain_fault(self, chain_id: int, kind: str) -> None:
        chain = self.world.chain[chain_id]
        if kind == "down":
            chain.down = 2
        elif kind == "429":
            chain.rate_limited = 1
        elif kind == "drop":
            chain.drop()
        elif kind == "reorg1":
            chain.reorg(1)
        elif kind == "reorg2":
            chain.reorg(2)
        elif kind == "reorg-drop":
            chain.reorg(1, drop=True)
        elif kind == "spike":
            chain.next_base_fee = chain.base_fee * 4
        elif kind == "calm":
            chain.next_base_fee = GWEI
        elif kind == "foreign":
            # Another program with the same key takes the next nonce.
            chain.foreign_send(
                OWNER, chain.nonce_of(OWNER, pending=True) if chain.mempool else chain.nonce_of(OWNER)
            )

    @rule(n=st.integers(1, 2))
    def conflicting_writes(self, n: int) -> None:
        self.world.store.conflict_next = n

    @rule()
    def clear_faults(self) -> None:
        self.clear()

    def clear(self) -> None:
        world = self.world
        world.cloud.faults.clear()
        world.cloud.next_phase2.clear()
        world.cloud.operation_outcome = "completed"
        world.cloud.operation_seconds = 0.0
        for chain in world.chain.values():
            chain.down = chain.rate_limited = 0
            chain.next_base_fee = GWEI
            for contract in chain.contracts.values():
                contract.owner = OWNER
        world.store.conflict_next = 0
        world.crash.at = None
        # Hung operations end (Phala Cloud's side recovers too).
        for cvm in world.cloud.cvms.values():
            for op in cvm.operations:
                if not op.done:
                    op.outcome = "completed"
                    op.duration = 0.0

    # -- invariants ---------------------------------------------------------------------------------

    def check_sends(self) -> None:
        world = self.world
        current_cvm = self.spec_at_pass.get("cvmId")
        chain_spec = self.spec_at_pass.get("onChain") or {}
        for chain in world.chain.values():
            for record in chain.sends[self._sent_seen(chain) :]:
                self._check_send(record, current_cvm, chain_spec, chain.chain_id)
            self._seen_sends[chain.chain_id] = len(chain.sends)
        for patch in world.cloud.patches[self.checked_patches :]:
            self._check_patch(patch, current_cvm)
        self.checked_patches = len(world.cloud.patches)

    _seen_sends: dict[int, int]

    def _sent_seen(self, chain: Any) -> int:
        if not hasattr(self, "_seen_sends"):
            self._seen_sends = {}
        return self._seen_sends.get(chain.chain_id, 0)

    def _check_send(
        self, record: SendRecord, cvm: str | None, chain_spec: dict[str, Any], chain_id: int
    ) -> None:
        if not record.first_of_nonce:
            return  # finishing a transaction already broadcast (same nonce)
        assert cvm in CHAIN_OF, f"a new transaction was sent while the spec names {cvm}"
        if record.to.lower() == record.sender.lower():
            # A nonce filler: a transfer to itself that fills a gap below the pending registration (the
            # transaction that held that nonce was dropped). It goes to no contract, but only for a
            # registration of the spec's chain.
            assert chain_spec.get("rpcUrl", "").endswith(f"rpc-{chain_id}"), (
                "nonce filler sent on a chain the spec does not name"
            )
            return
        assert record.to.lower() == self.world.contracts[cvm].lower(), (
            f"new transaction to {record.to}, but the spec names CVM {cvm}"
        )
        assert chain_spec.get("rpcUrl", "").endswith(f"rpc-{chain_id}"), (
            "sent on a chain the spec does not name"
        )

    def _check_patch(self, patch: PatchRecord, cvm: str | None) -> None:
        assert patch.cvm_id == cvm, f"PATCH to {patch.cvm_id} while the spec names {cvm}"
        if patch.phase2:
            assert patch.script == self.script_at_pass.encode(), (
                "Phase 2 carried another script than the ConfigMap's"
            )

    @invariant()
    def one_registration_per_hash(self) -> None:
        for chain in self.world.chain.values():
            ours = {record.tx_hash for record in chain.sends}
            counted: dict[tuple[str, str], int] = {}
            for block in chain.blocks:
                for tx_hash in block.txs:
                    receipt = chain.receipts.get(tx_hash)
                    if tx_hash not in ours or receipt is None or not receipt.succeeded:
                        continue
                    for log in receipt.logs:
                        key = (log.address.lower(), log.data)
                        counted[key] = counted.get(key, 0) + 1
            doubled = {k: v for k, v in counted.items() if v > 1}
            assert not doubled, f"compose hash registered more than once by the operator: {doubled}"

    @invariant()
    def status_is_readable_and_bounded(self) -> None:
        status = self.world.store.status
        if status.get("inFlight"):
            from_status(status["inFlight"], now=self.world.clock.now, default_cvm_id="x")
        for cond in status.get("conditions") or []:
            assert len(cond["message"]) <= MESSAGE_LIMIT
        for _, _, message in self.world.store.events:
            assert len(message) <= MESSAGE_LIMIT

    # -- liveness -----------------------------------------------------------------------------------

    def settle(self, max_passes: int) -> int:
        for count in range(max_passes):
            if self.world.due is None:
                return count
            self.one_pass(max_wait=10**9)
            for chain in self.world.chain.values():
                if chain.block_time <= 0:
                    chain.mine()  # blocks keep coming on a live chain, transactions or not
        return max_passes

    def resting(self) -> bool:
        world = self.world
        reason = world.reason()
        if world.condition("Stalled").get("status") == "True":
            return reason in STALLED_REASONS
        if reason in ("AwaitingApproval", "AwaitingTransaction", "Suspended"):
            return True
        if reason == Reason.FEE_CEILING_REACHED:  # the user's ceiling is below the base fee: their call
            return "0.5 gwei" in world.condition("Ready").get("message", "")
        return reason in ("Synced", "Drifted") and "inFlight" not in world.store.status

    def quiesce_and_check(self) -> None:
        world = self.world
        try:
            self._quiesce_and_check()
        finally:
            if STATS is not None:
                STATS.append(
                    (
                        world.reason() or "None",
                        world.crashes,
                        sum(len(c.sends) for c in world.chain.values()),
                        len(world.cloud.patches),
                        world.passes,
                    )
                )

    def _quiesce_and_check(self) -> None:
        world = self.world
        self.clear()
        world.poke()
        passes = self.settle(200)
        if world.condition("Stalled").get("status") == "True" and world.reason() in (
            "NotContractOwner",
            "TransactionReverted",
            "TransactionFailed",
            "RemoteUnavailable",
            "ApplyFailed",
            "OperationTimedOut",
            "ChainUnavailable",
            "RegistrationRejected",
        ):
            # The owner is back and the faults are gone: a person retries once.
            world.store.annotate(REQUESTED_AT, "retry-after-quiesce")
            world.poke()
            passes += self.settle(200)
        assert self.resting(), (
            f"not at rest after {passes} passes: reason {world.reason()}, "
            f"stalled {world.condition('Stalled').get('status')}, inFlight "
            f"{world.store.status.get('inFlight')}"
        )
        if world.reason() in ("NotContractOwner", "TransactionReverted", "TransactionFailed") and not (
            world.store.annotations.get(TX_ANNOTATION)
        ):
            raise AssertionError(f"stalled on {world.reason()} although the owner signs and nothing failed")
        # At rest, nothing more is sent, however long we wait.
        sent = self.remote_calls()
        for _ in range(5):
            world.advance(3600)
            world.poke()
            self.settle(20)
        assert self.remote_calls() == sent, "a resource at rest kept writing to the remote side"


OperatorModel.TestCase.settings = settings(
    max_examples=EXAMPLES,
    stateful_step_count=STEPS,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    # CI explores the same examples every run (a failure is reproducible); the long mode explores anew.
    derandomize=os.environ.get("MODEL_RANDOM") != "1",
    report_multiple_bugs=os.environ.get("MODEL_ONE_BUG") != "1",
)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
class TestOperatorModel(OperatorModel.TestCase):  # type: ignore[name-defined, misc]
    pass


def test_the_long_runs_nonce_filler_example_replays_and_passes() -> None:
    """Found by a 20,000-example run: a transaction of the signer's from elsewhere ('foreign') holds a
    nonce below the registration and is dropped; the operator fills the gap with a transfer to itself,
    which goes to no contract and is allowed (the check used to take it for a transaction to another
    contract). Kept as it was printed, so that it replays exactly."""
    state = OperatorModel()
    state.setup(
        block_time=2.0,
        confirmations=3,
        signer=True,
        evicts=True,
        drift="0s",
        manual=False,
        cvm="app-a1",
        jitter=0,
    )
    state.run_pass()
    state.request_sync()
    state.chain_fault(chain_id=8453, kind="down")
    state.chain_fault(chain_id=8453, kind="down")
    state.chain_fault(chain_id=8453, kind="drop")
    state.move_ownership(chain_id=8453, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.chain_fault(chain_id=8453, kind="down")
    state.move_ownership(chain_id=8453, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.run_pass()
    state.move_ownership(chain_id=8453, owner="0x7258e8c7934c9e26a7f1aac598f91bc541b964af")
    state.chain_fault(chain_id=8453, kind="drop")
    state.run_pass()
    state.chain_fault(chain_id=8453, kind="drop")
    state.request_sync()
    state.run_pass()
    state.request_sync()
    state.request_sync()
    state.run_pass()
    state.run_pass()
    state.run_pass()
    state.move_ownership(chain_id=8453, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.chain_fault(chain_id=1, kind="down")
    state.request_sync()
    state.chain_fault(chain_id=8453, kind="foreign")
    state.request_sync()
    state.request_sync()
    state.move_ownership(chain_id=8453, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.run_pass()
    state.move_ownership(chain_id=1, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.request_sync()
    state.chain_fault(chain_id=8453, kind="foreign")
    state.move_ownership(chain_id=1, owner="0xbed5092198db4f4f84929785037a8b102fe1f39f")
    state.chain_fault(chain_id=1, kind="reorg2")
    state.chain_fault(chain_id=8453, kind="down")
    state.run_pass()
    state.move_ownership(chain_id=1, owner="0x7258e8c7934c9e26a7f1aac598f91bc541b964af")
    state.chain_fault(chain_id=8453, kind="drop")
    state.request_sync()
    state.run_pass()
    state.teardown()


def teardown_module() -> None:
    if STATS:
        from collections import Counter

        reasons = Counter(r for r, *_ in STATS)
        print(f"\nmodel: {len(STATS)} examples; final reasons {dict(reasons)}")
        print(
            f"model: crashes {sum(c for _, c, *_ in STATS)}, broadcasts {sum(b for *_, b, _, _ in STATS)}, "
            f"PATCHes {sum(p for *_, p, _ in STATS)}, passes {sum(n for *_, n in STATS)}"
        )
