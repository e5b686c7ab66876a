"""What a step sees (``StepContext``) and what it returns (``Transition``).

A step is a function ``async def step(ctx, state) -> Transition`` in ``reconcile/steps/``. It performs
the one remote side effect its state stands for (the state was persisted before the step runs), and
returns the next state with the status to show. It never writes status itself, never sleeps and never
waits for a block or an operation: waiting is a ``Transition`` with ``then="wait"`` and a time to look
again. Failures are raised as ``RetryLater`` (the engine backs off, the state stays) or ``Permanent``
(the engine stalls, the state stays); a step that must change the state while failing returns a
transition whose verdict is stalled instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from cvm_prelaunch_operator.domain.blocks import BlockClock, BlockClocks
from cvm_prelaunch_operator.domain.chain import Tracking
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import Permanent
from cvm_prelaunch_operator.domain.fees import ChainPolicy
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import Annotations, ResourceSnapshot, Spec
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.domain.rpc_url import rpc_url_problem
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.domain.states import State
from cvm_prelaunch_operator.domain.status import StatusPatch, StatusView
from cvm_prelaunch_operator.reconcile.ports import (
    ChainClient,
    ChainConnector,
    Fence,
    Observer,
    PhalaCloud,
    PhalaCloudFactory,
    ResourceIO,
    ScriptChecker,
    ScriptSource,
    Signer,
)

EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class Transition:
    """The outcome of one step: the next in-flight state (None: idle), what status says, what happens next.

    ``then="continue"``: the engine writes the transition and runs the next state's step in the same
    pass. ``then="wait"``: the pass ends; ``requeue_after`` seconds later the resource is looked at again
    (None: only when something changes). ``lazy``: the state is safe to lose (a restart finds the same
    situation by looking), so the engine may fold the write into the next transition of the pass.
    """

    state: State | None
    verdict: Verdict
    status: StatusPatch = field(default_factory=StatusPatch)
    events: tuple[Event, ...] = ()
    then: Literal["continue", "wait"] = "wait"
    requeue_after: float | None = None
    lazy: bool = False


class SignerLocks:
    """One lock per (chain id, signer address) per event loop: nonces are taken one at a time, from the
    survey that reads the nonce through the broadcast of the transaction signed with it."""

    def __init__(self) -> None:
        self._locks: dict[tuple[int, int, str], asyncio.Lock] = {}

    def for_signer(self, chain_id: int, address: str) -> asyncio.Lock:
        key = (id(asyncio.get_running_loop()), chain_id, address.lower())
        lock = self._locks.get(key)
        if lock is None:
            lock = self._locks[key] = asyncio.Lock()
        return lock


@dataclass
class Ports:
    """The adapters a pass drives, shared by every pass of the process."""

    clouds: PhalaCloudFactory
    chains: ChainConnector
    signer: Signer
    checker: ScriptChecker
    fence: Fence
    observer: Observer
    policy: RetryPolicy
    chain_policy: ChainPolicy
    clocks: BlockClocks
    locks: SignerLocks


class StepContext:
    """One pass over one resource, as the steps see it. Secrets are read at most once per pass."""

    def __init__(
        self,
        *,
        res: ResourceSnapshot,
        spec: Spec,
        notes: Annotations,
        source: ScriptSource,
        desired_sha256: str,
        io: ResourceIO,
        ports: Ports,
        clock: Callable[[], float],
        status: StatusView,
        on_rpc_secret: Callable[[str, Secret], None] | None = None,
    ) -> None:
        self.res = res
        self.spec = spec
        self.notes = notes
        self.source = source
        self.desired_sha256 = desired_sha256
        self.io = io
        self.ports = ports
        self.policy = ports.policy
        self.chain_policy = ports.chain_policy
        self.status = status
        self._clock = clock
        self._on_rpc_secret = on_rpc_secret
        self._cloud: PhalaCloud | None = None
        self._chain: ChainClient | None = None
        self._signer_key: Secret | None = None
        self._signer_address: str | None = None
        self._held: list[asyncio.Lock] = []
        self._tracked: dict[tuple[frozenset[str], str | None], Tracking] = {}
        # Set by the engine before each step.
        self.fresh = False  # the state was written by this pass: none of its side effects happened yet
        self.settling = False  # the state is stale: finish what was broadcast, start nothing new
        # (chain id, head seen) when the step waits for the chain's next block: the pass ends with it.
        self.awaited_block: tuple[int, int] | None = None
        self.seen_heads: dict[int, int] = {}  # chain id -> the head this pass's own round saw

    @property
    def now(self) -> float:
        return self._clock()

    # -- remote sides, resolved once per pass ------------------------------------------------------

    async def cloud(self) -> PhalaCloud:
        if self._cloud is None:
            ref = self.spec.api_key_secret
            self._cloud = self.ports.clouds.for_api_key(await self.io.read_secret(ref.name, ref.key))
        return self._cloud

    async def rpc_url(self) -> Secret:
        on_chain = self.spec.on_chain
        if on_chain is None:
            raise Permanent("spec.onChain is not set: no chain RPC to use", reason=Reason.INVALID_SPEC)
        if on_chain.rpc_url_secret is not None:
            ref = on_chain.rpc_url_secret
            url = await self.io.read_secret(ref.name, ref.key)
            if self._on_rpc_secret is not None:
                self._on_rpc_secret(ref.name, url)
            return url
        return Secret(on_chain.rpc_url or "")

    async def chain(self) -> ChainClient:
        """The spec's RPC, checked before any connection is made."""
        if self._chain is None:
            url = await self.rpc_url()
            problem = rpc_url_problem(url.reveal(), allow_insecure=self.chain_policy.allow_insecure_rpc)
            if problem is not None:
                raise Permanent(problem, reason=Reason.INSECURE_RPC_URL)
            self._chain = self.ports.chains.connect(url)
        return self._chain

    async def signer_key(self) -> Secret:
        on_chain = self.spec.on_chain
        if on_chain is None or on_chain.signer_key_secret is None:
            raise Permanent(
                "no signer key is configured (spec.onChain.signerKeySecretRef)", reason=Reason.INVALID_SPEC
            )
        if self._signer_key is None:
            ref = on_chain.signer_key_secret
            self._signer_key = await self.io.read_secret(ref.name, ref.key)
        return self._signer_key

    async def signer_address(self) -> str | None:
        """The configured signer's address, or None when the operator never signs for this resource."""
        on_chain = self.spec.on_chain
        if on_chain is None or on_chain.signer_key_secret is None:
            return None
        if self._signer_address is None:
            self._signer_address = self.ports.signer.address(await self.signer_key())
        return self._signer_address

    async def track(self, client: ChainClient, tx_hashes: Sequence[str], *, sender: str | None) -> Tracking:
        """``client.track``, answered once per pass for the same transactions: a step that follows
        another in the pass (mined, then confirmations) reads the same round, not a second one."""
        key = (frozenset(tx_hashes), sender)
        cached = self._tracked.get(key)
        if cached is None:
            asked_at = self.now
            tracked = await client.track(tx_hashes, sender=sender)
            cached = self._tracked[key] = replace(tracked, asked_at=asked_at)
        return cached

    def block_clock(self, chain_id: int) -> BlockClock:
        return self.ports.clocks.for_chain(chain_id)

    async def hold_signer_lock(self, chain_id: int, address: str) -> None:
        """Take the signer's nonce lock until the end of the pass (released by the engine)."""
        lock = self.ports.locks.for_signer(chain_id, address)
        if lock in self._held:
            return
        await lock.acquire()
        self._held.append(lock)

    def release_locks(self) -> None:
        while self._held:
            self._held.pop().release()

    def may_act(self) -> None:
        """Called right before every remote side effect: raises ``NotLeader`` when this process may not."""
        self.ports.fence.check()


__all__ = ["Event", "Ports", "SignerLocks", "StepContext", "Transition"]
