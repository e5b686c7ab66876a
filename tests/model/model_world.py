"""A world for the reconcile core: the fakes wired to a real ``Reconciler``, a clock, a crash switch,
and a work-queue-like driver that runs passes when they are due."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from model_fakes import (
    API_KEY,
    Clock,
    Contract,
    Crash,
    CrashSwitch,
    FakeChain,
    FakeChains,
    FakeCloud,
    FakeCvm,
    FakeSigner,
    Store,
    address_of,
)

from cvm_prelaunch_operator.domain.fees import ChainPolicy
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.reconcile.engine import Outcome, Reconciler
from cvm_prelaunch_operator.reconcile.ports import StatusConflict

SIGNER_KEY = "key-owner"
OTHER_KEY = "key-other"
OWNER = address_of(SIGNER_KEY)
OTHER = address_of(OTHER_KEY)
CHAIN_A, CHAIN_B = 8453, 1


def spec(cvm_id: str, *, on_chain: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cvmId": cvm_id,
        "scriptRef": {"name": "scripts", "key": "run.sh"},
        "apiKeySecretRef": {"name": "api", "key": "key"},
        "driftCheckInterval": "0s",
    }
    if on_chain is not None:
        body["onChain"] = on_chain
    body.update(extra)
    return body


def on_chain(chain_id: int = CHAIN_A, *, signer: bool = True, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"rpcUrl": f"http://127.0.0.1/rpc-{chain_id}", "confirmations": 1}
    if signer:
        body["signerKeySecretRef"] = {"name": "signer", "key": "key"}
    body.update(extra)
    return body


@dataclass
class World:
    block_time: float = 0.0
    clock: Clock = field(default_factory=Clock)
    crash: CrashSwitch = field(default_factory=CrashSwitch)
    # Seeded jitter: an example replays with the same backoff delays (a failure found by a long run
    # reproduces from its printed steps).
    policy: RetryPolicy = field(default_factory=lambda: RetryPolicy(jitter=random.Random(0)))
    chain_policy: ChainPolicy = field(default_factory=ChainPolicy)

    def __post_init__(self) -> None:
        self.chains = FakeChains()
        self.chain: dict[int, FakeChain] = {}
        for chain_id in (CHAIN_A, CHAIN_B):
            chain = FakeChain(chain_id, self.clock, self.crash, block_time=self.block_time)
            self.chain[chain_id] = chain
            self.chains.by_url[f"http://127.0.0.1/rpc-{chain_id}"] = chain
        self.cloud = FakeCloud(self.clock, self.crash)
        # CVMs: two on chain A (different contracts), one on chain B, two off-chain.
        self.contracts = {"app-a1": "0x" + "a1" * 20, "app-a2": "0x" + "a2" * 20, "app-b": "0x" + "b0" * 20}
        for cvm_id, chain_id in (("app-a1", CHAIN_A), ("app-a2", CHAIN_A), ("app-b", CHAIN_B)):
            contract = self.contracts[cvm_id]
            self.chain[chain_id].contracts[contract.lower()] = Contract(owner=OWNER)
            self.cloud.cvms[cvm_id] = FakeCvm(
                cvm_id, "echo v0", chain=self.chain[chain_id], contract=contract
            )
        for cvm_id in ("off-1", "off-2"):
            self.cloud.cvms[cvm_id] = FakeCvm(cvm_id, "echo v0")
        self.store = Store(crash=self.crash, spec=spec("off-1"))
        self.store.set_secret("api", "key", API_KEY)
        self.store.set_secret("signer", "key", SIGNER_KEY)
        self.reconciler = self.new_reconciler()
        self.due: float | None = self.clock.now  # when the queue would run the next pass
        self.passes = 0
        self.crashes = 0

    def new_reconciler(self) -> Reconciler:
        return Reconciler(
            self.cloud,
            self.chains,
            FakeSigner(),
            policy=self.policy,
            chain_policy=self.chain_policy,
            clock=self.clock,
        )

    # -- driving --------------------------------------------------------------------------------

    def poke(self) -> None:
        """Something the operator watches changed: a pass runs now."""
        self.due = self.clock.now

    async def run_pass(self) -> Outcome | None:
        """One pass as the worker would run it; a crash restarts the operator from the store alone."""
        self.passes += 1
        try:
            outcome = await self.reconciler.reconcile(self.store.snapshot(), self.store.io())
        except StatusConflict:
            self.due = self.clock.now
            return None
        except Crash:
            self.crashes += 1
            self.reconciler = self.new_reconciler()
            self.due = self.clock.now
            return None
        self.due = None if outcome.requeue_after is None else self.clock.now + outcome.requeue_after
        return outcome

    def advance(self, seconds: float) -> None:
        self.clock.now += seconds
        for chain in self.chain.values():
            chain.advance()

    async def step(self, *, max_wait: float = 3600.0) -> bool:
        """Run the next due pass, advancing the clock to it (at most ``max_wait``); False when none is due."""
        if self.due is None:
            return False
        wait = self.due - self.clock.now
        if wait > max_wait:
            return False
        if wait > 0:
            self.advance(wait)
        await self.run_pass()
        return True

    async def settle(self, max_passes: int = 60, *, until: Callable[[], bool] | None = None) -> int:
        """Run passes until nothing is due (or ``until`` holds); the number of passes run."""
        for count in range(max_passes):
            if until is not None and until():
                return count
            if not await self.step():
                return count
        return max_passes

    # -- reading ----------------------------------------------------------------------------------

    @property
    def status(self) -> dict[str, Any]:
        return self.store.status

    def reason(self) -> str | None:
        for cond in self.status.get("conditions") or []:
            if cond.get("type") == "Ready":
                return str(cond.get("reason"))
        return None

    def condition(self, kind: str) -> dict[str, Any]:
        return next((c for c in self.status.get("conditions") or [] if c.get("type") == kind), {})
