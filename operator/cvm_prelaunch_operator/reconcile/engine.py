"""The engine: one reconcile pass of one resource, over typed states.

A pass reads the resource (given), its ConfigMap and the existence of its Secrets, and then:

1. suspend, backoff and stall gates (no remote call while suspended, before ``status.nextRetryTime``,
   or while a permanent failure waits for its inputs to change);
2. the in-flight state is compared with the spec: a state made for another CVM, script, signer or
   without ``spec.onChain`` is settled first (a broadcast transaction is finished, or set aside in
   ``status.unsettledTransactions`` when no configured RPC can reach it; nothing else is sent for it)
   and the sync starts over for the new inputs;
3. steps run one after another (``reconcile/steps/``), each state written to status before the step
   that acts on it (write-ahead), until one waits: for a block, an operation, a person.

What every step shares lives here: conditions and events from one place, messages cut to 1,024
characters, the backoff (``RetryPolicy``; nothing is sent before ``nextRetryTime``), stall fingerprints,
``requested-at``, the leader fence before every write, the log context.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from cvm_prelaunch_operator.domain import logcontext
from cvm_prelaunch_operator.domain.blocks import BlockClocks, NewBlockListener
from cvm_prelaunch_operator.domain.conditions import WORKING_PHASES, Phase, Verdict, build_conditions
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.fees import ChainPolicy
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import (
    Annotations,
    InvalidSpec,
    ResourceSnapshot,
    Spec,
    script_sha256,
)
from cvm_prelaunch_operator.domain.retry import RetryPolicy, round_up_millis
from cvm_prelaunch_operator.domain.rpc_url import rpc_url_problem
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.domain.states import (
    Applying,
    AwaitingApproval,
    AwaitingConfirmations,
    CorruptState,
    Following,
    Registering,
    State,
    Uploading,
    broadcast_versions,
    chain_of,
    from_status,
    step_name,
)
from cvm_prelaunch_operator.domain.status import (
    KnownRegistration,
    PendingApproval,
    StatusPatch,
    StatusView,
    UnsettledTransaction,
    remember,
)
from cvm_prelaunch_operator.domain.text import cut, format_time
from cvm_prelaunch_operator.reconcile.context import Event, Ports, SignerLocks, StepContext, Transition
from cvm_prelaunch_operator.reconcile.ports import (
    AcceptAllScripts,
    AlwaysLeader,
    ChainConnector,
    Fence,
    NoObserver,
    Observer,
    PhalaCloudFactory,
    ResourceIO,
    ScriptChecker,
    ScriptSource,
    Signer,
)
from cvm_prelaunch_operator.reconcile.steps import (
    applying,
    approval,
    confirming,
    following,
    idle,
    registering,
    unsettled,
    uploading,
)

logger = logging.getLogger(__name__)

MAX_STEPS_PER_PASS = 8  # a pass chains at most this many steps, then yields to the queue
# Nor does it chain steps for longer than this: each step is one round of remote calls (every request has
# a timeout of at most 15 s), and a worker held by one resource is a worker other resources wait for.
PASS_SECONDS = 15.0


@dataclass(frozen=True)
class Outcome:
    """When to look at the resource again without an event (None: only on the next event)."""

    requeue_after: float | None = None
    # (chain id, head seen): the requeue is a look for the chain's next block, which another pass may
    # see first (see ``domain.blocks.BlockWaiters``).
    awaits_block: tuple[int, int] | None = None


StepFunction = Callable[[StepContext, Any], Awaitable[Transition]]

STEPS: dict[type[Any], StepFunction] = {
    Uploading: uploading.step,
    AwaitingApproval: approval.step,
    Registering: registering.step,
    AwaitingConfirmations: confirming.step,
    Applying: applying.step,
    Following: following.step,
}


class Reconciler:
    """Drives one resource towards its desired script. Stateless between passes: status is the state
    (the only memory it keeps is a cache of block timings and RPC-URL Secret names)."""

    def __init__(
        self,
        clouds: PhalaCloudFactory,
        chains: ChainConnector,
        signer: Signer,
        *,
        checker: ScriptChecker | None = None,
        fence: Fence | None = None,
        observer: Observer | None = None,
        policy: RetryPolicy | None = None,
        chain_policy: ChainPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._ports = Ports(
            clouds=clouds,
            chains=chains,
            signer=signer,
            checker=checker or AcceptAllScripts(),
            fence=fence or AlwaysLeader(),
            observer=observer or NoObserver(),
            policy=policy or RetryPolicy(),
            chain_policy=chain_policy or ChainPolicy(),
            clocks=BlockClocks(),
            locks=SignerLocks(),
        )
        self._clock = clock
        self._rpc_secrets: dict[tuple[str, str], Secret] = {}
        self._closing: set[asyncio.Future[object]] = set()

    @property
    def policy(self) -> RetryPolicy:
        return self._ports.policy

    def on_new_block(self, listener: NewBlockListener) -> None:
        """``listener(chain_id, number)`` when a pass sees a chain's new head first."""
        self._ports.clocks.listen(listener)

    def secret_changed(self, namespace: str, name: str) -> None:
        """A Secret changed: a cached RPC client for the URL it held is dropped (and closed)."""
        url = self._rpc_secrets.pop((namespace, name), None)
        forget = getattr(self._ports.chains, "forget", None)
        if url is None or not callable(forget):
            return
        closing = forget(url)
        if inspect.isawaitable(closing):
            task = asyncio.ensure_future(closing)
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def reconcile(self, res: ResourceSnapshot, io: ResourceIO) -> Outcome:
        with logcontext.bound(res.namespace, res.name):
            run = _Pass(res, io, self._ports, self._clock, self._remember_rpc_secret(res.namespace))
            try:
                return await run.run()
            finally:
                run.release()

    def _remember_rpc_secret(self, namespace: str) -> Callable[[str, Secret], None]:
        def remember_secret(name: str, url: Secret) -> None:
            self._rpc_secrets[(namespace, name)] = url
            while len(self._rpc_secrets) > 1024:  # bounded like the client cache behind it
                self._rpc_secrets.pop(next(iter(self._rpc_secrets)))

        return remember_secret


class _Pass:
    """One pass: the snapshot, the status as written so far, the writes and events."""

    def __init__(
        self,
        res: ResourceSnapshot,
        io: ResourceIO,
        ports: Ports,
        clock: Callable[[], float],
        on_rpc_secret: Callable[[str, Secret], None],
    ) -> None:
        self.res = res
        self.io = io
        self.ports = ports
        self.clock = clock
        self.on_rpc_secret = on_rpc_secret
        self.raw_status: dict[str, Any] = dict(res.status or {})
        self.status = StatusView.parse(self.raw_status)
        self.notes = Annotations.parse(res.annotations)
        self.new_request = bool(self.notes.requested_at) and (
            self.notes.requested_at != self.status.last_handled_requested_at
        )
        self.ctx: StepContext | None = None
        self.spec: Spec | None = None
        self.source: ScriptSource | None = None
        self.pending: Transition | None = None  # a lazy transition not written yet
        self.writes = 0

    def release(self) -> None:
        if self.ctx is not None:
            self.ctx.release_locks()

    # -- the pass ----------------------------------------------------------------------------------

    async def run(self) -> Outcome:
        now = self.clock()
        try:
            self.spec = Spec.parse(self.res.spec)
        except InvalidSpec as exc:
            return await self.stall(Permanent(str(exc), reason=Reason.INVALID_SPEC), self._loaded_state(None))
        spec = self.spec
        try:
            state = from_status(self.status.in_flight, now=now, default_cvm_id=spec.cvm_id)
            corrupt: CorruptState | None = None
        except CorruptState as exc:
            state, corrupt = None, exc
        if spec.suspend:
            await self.write(
                Transition(
                    state=state,
                    verdict=Verdict(
                        "Suspended", Reason.SUSPENDED, "spec.suspend is true: no remote calls are made"
                    ),
                ),
                events=(Event("Normal", "Suspended", "Sync suspended"),)
                if self.status.phase != "Suspended"
                else (),
            )
            return Outcome()
        if self.status.next_retry_at is not None and self.status.next_retry_at > now:
            # Backing off (or told to wait by the server): nothing is read or sent before the time.
            return Outcome(requeue_after=self.status.next_retry_at - now)
        try:
            self.source = await self.io.read_script(spec.script_ref.name, spec.script_ref.key)
            for ref in spec.secret_refs():
                if await self.io.secret_version(ref.name) is None:
                    raise Permanent(
                        f"Secret {self.res.namespace}/{ref.name} not found", reason=Reason.SECRET_NOT_FOUND
                    )
        except Permanent as exc:
            return await self.stall(exc, state)
        except RetryLater as exc:
            return await self.backoff(exc, state)
        if (
            self.status.stalled_inputs
            and not self.new_request
            and self.status.stalled_inputs == await self.fingerprint()
        ):
            return Outcome()  # a permanent failure waits for a change of its inputs
        self.ctx = StepContext(
            res=self.res,
            spec=spec,
            notes=self.notes,
            source=self.source,
            desired_sha256=script_sha256(self.source.data),
            io=self.io,
            ports=self.ports,
            clock=self.clock,
            status=self.status,
            on_rpc_secret=self.on_rpc_secret,
        )
        if corrupt is not None:
            logger.warning("%s/%s: %s; starting over", self.res.namespace, self.res.name, corrupt)
            await self.write(
                Transition(
                    state=None,
                    verdict=Verdict(
                        "Pending", Reason.PROGRESSING, "The in-flight record could not be read; starting over"
                    ),
                    status=_set_aside_corrupt(self.status, corrupt),
                )
            )
        try:
            return await self.steps(state)
        except Permanent as exc:
            return await self.stall(exc, self.current_state(state))
        except RetryLater as exc:
            return await self.backoff(exc, self.current_state(state))
        except SyncError as exc:
            # StartOver/RecheckChain/RegistrationRequired are handled by the steps that expect them;
            # one escaping elsewhere is transient: the next pass re-plans from status.
            return await self.backoff(RetryLater(str(exc), reason=exc.reason), self.current_state(state))

    def current_state(self, loaded: State | None) -> State | None:
        """The state as last written (or pending) in this pass."""
        if self.pending is not None:
            return self.pending.state
        return self._loaded_state(loaded)

    def _loaded_state(self, fallback: State | None) -> State | None:
        """The in-flight state as status holds it: kept through a stall, even of a spec that cannot be
        read (a broadcast transaction must never be forgotten)."""
        try:
            return from_status(
                self.raw_status.get("inFlight"),
                now=self.clock(),
                default_cvm_id=self.spec.cvm_id if self.spec is not None else "",
            )
        except CorruptState:
            return fallback

    async def steps(self, state: State | None) -> Outcome:
        ctx = self.ctx
        assert ctx is not None and self.spec is not None
        if state is not None:
            stale = await self.stale(state)
            if stale is not None:
                state = await self.settle_or_drop(state, stale)
        handled_request = False
        writes_at_start = self.writes
        began = time.monotonic()
        for _ in range(MAX_STEPS_PER_PASS):
            if time.monotonic() - began > PASS_SECONDS:
                await self.flush()
                return Outcome(requeue_after=0.0)  # the rest in a pass of its own, behind the queue
            ctx.awaited_block = None
            if state is None:
                ctx.settling = False
                applied = (
                    self.status.script_sha256 == ctx.desired_sha256 and self.status.cvm_id == self.spec.cvm_id
                )
                if applied and not (self.new_request and not handled_request):
                    transition = await idle.step(ctx)
                else:
                    handled_request = True
                    # A requested full sync of what status says is applied looks at the CVM first.
                    transition = idle.new_sync(ctx, look_first=applied)
            else:
                logcontext.set_step(step_name(state), getattr(state, "correlation_id", None))
                transition = await STEPS[type(state)](ctx, state)
            await self.write(transition)
            state = transition.state
            ctx.fresh = True
            if transition.then == "wait":
                await self.flush()
                awaits = ctx.awaited_block if transition.requeue_after is not None else None
                return Outcome(requeue_after=transition.requeue_after, awaits_block=awaits)
        await self.flush()
        # A pass that ran out of steps: more work right away when it made progress, otherwise a pause,
        # so that no loop of passes without progress ever spins.
        progressed = self.writes > writes_at_start
        if not progressed:
            logger.warning(
                "%s/%s: %d steps without progress; looking again in %.0fs",
                self.res.namespace,
                self.res.name,
                MAX_STEPS_PER_PASS,
                self.ports.policy.block_poll_min,
            )
        return Outcome(requeue_after=0.0 if progressed else self.ports.policy.block_poll_min)

    # -- inputs changed under a state ----------------------------------------------------------------

    async def stale(self, state: State) -> str | None:
        """Why ``state`` is no longer for the spec's inputs (None: it still is)."""
        ctx, spec = self.ctx, self.spec
        assert ctx is not None and spec is not None
        target = state.target
        if target.cvm_id != spec.cvm_id:
            return f"spec.cvmId changed from {target.cvm_id} to {spec.cvm_id}"
        if isinstance(state, Following):
            return None  # the update is accepted: follow it to its end, then sync the new script
        if target.script_sha256 != ctx.desired_sha256:
            return "the script changed"
        chain = chain_of(state)
        if chain is None:
            return None
        if spec.on_chain is None:
            return "spec.onChain was removed"
        if isinstance(state, Applying):
            return None  # registered already: the signer no longer matters
        signer = await ctx.signer_address()
        if (signer or "").lower() != (chain.signer or "").lower():
            return "the signer changed" if signer and chain.signer else "the signer key was added or removed"
        return None

    async def settle_or_drop(self, state: State, why: str) -> State | None:
        """A stale state: finish what it broadcast (settle mode), set it aside, or drop it."""
        ctx, spec = self.ctx, self.spec
        assert ctx is not None and spec is not None
        versions = broadcast_versions(state)
        external = isinstance(state, AwaitingConfirmations) and (state.external or state.reused)
        if versions and not external:
            reachable = spec.on_chain is not None and (
                rpc_url_problem(
                    (await ctx.rpc_url()).reveal(), allow_insecure=ctx.chain_policy.allow_insecure_rpc
                )
                is None
            )
            if reachable:
                ctx.settling = True
                logger.info(
                    "%s/%s: %s; finishing the transaction already broadcast first",
                    self.res.namespace,
                    self.res.name,
                    why,
                )
                return state
            await self.write(
                Transition(
                    state=None,
                    verdict=Verdict(
                        "Pending",
                        Reason.PROGRESSING,
                        f"{cut(why, 200)}; the transaction already broadcast is set aside and looked at "
                        "before the signer signs again",
                    ),
                    status=unsettled.set_aside(self.status, state, versions),
                )
            )
            return None
        status = StatusPatch()
        chain = chain_of(state)
        if isinstance(state, Applying) and chain is not None:
            # Registered: remembered, so that returning to this script reuses it.
            status = StatusPatch(
                registrations=remember(
                    self.status.registrations,
                    KnownRegistration(
                        chain.compose_hash_hex,
                        state.transaction_hash,
                        state.block_number or 0,
                        chain.chain_id,
                        chain.app_contract,
                    ),
                )
            )
        await self.write(
            Transition(
                state=None,
                verdict=Verdict("Pending", Reason.PROGRESSING, f"{cut(why, 200)}; starting a new sync"),
                status=status,
            )
        )
        return None

    # -- writing --------------------------------------------------------------------------------------

    async def write(self, transition: Transition, *, events: tuple[Event, ...] = ()) -> None:
        """Persist a transition (status patch, conditions, events) unless it is lazy."""
        if transition.lazy:
            if self.pending is not None:
                await self.flush()
            self.pending = transition
            return
        carried: tuple[Event, ...] = ()
        if self.pending is not None:
            carried = self.pending.events
            merged_status = self.pending.status.merged(transition.status)
            transition = Transition(
                state=transition.state,
                verdict=transition.verdict,
                status=merged_status,
                events=transition.events,
                then=transition.then,
                requeue_after=transition.requeue_after,
            )
            self.pending = None
        await self._persist(transition, events=(*carried, *transition.events, *events))

    async def flush(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            await self._persist(pending, events=pending.events)

    async def _persist(
        self, transition: Transition, *, events: tuple[Event, ...], failure: StatusPatch | None = None
    ) -> None:
        now = self.clock()
        verdict = transition.verdict
        written = StatusPatch(
            observed_generation=self.res.generation,
            phase=verdict.phase,
            message=cut(verdict.message),
            conditions=tuple(
                build_conditions(
                    verdict,
                    generation=self.res.generation,
                    previous=self.raw_status.get("conditions"),
                    now=format_time(now),
                )
            ),
            in_flight=transition.state,
            pending_approval=_pending_approval(transition.state),
            # A transition is progress: no failure is counted, nothing waits for a retry time.
            stalled_inputs=None,
            failures=0,
            next_retry_at=None,
        ).merged(transition.status)
        if verdict.stalled:
            written = written.merged(
                StatusPatch(stalled_inputs=await self.fingerprint(), last_failure_at=now)
            )
        if self.new_request:
            written = written.merged(StatusPatch(last_handled_requested_at=self.notes.requested_at))
        if failure is not None:
            written = written.merged(failure)
        patch = written.to_patch()
        previous_phase, previous_reason = self.status.phase, self.status.ready_reason
        if not self._unchanged(patch):
            self.ports.fence.check()
            await self.io.patch_status(patch)
            self.writes += 1
            for key, value in patch.items():
                if value is None:
                    self.raw_status.pop(key, None)
                else:
                    self.raw_status[key] = value
            self.status = StatusView.parse(self.raw_status)
            if self.ctx is not None:
                self.ctx.status = self.status
        changed = previous_phase != verdict.phase or previous_reason != str(verdict.reason)
        if changed:
            level = logging.WARNING if verdict.stalled or verdict.retrying else logging.INFO
            logger.log(
                level,
                "%s/%s: %s/%s: %s",
                self.res.namespace,
                self.res.name,
                verdict.phase,
                verdict.reason,
                cut(verdict.message),
            )
        for event in events:
            await self.io.record_event(event.type, event.reason, cut(event.message))

    def _unchanged(self, patch: Mapping[str, Any]) -> bool:
        for key, value in patch.items():
            if key == "conditions":
                old = {
                    c.get("type"): c
                    for c in self.raw_status.get("conditions") or []
                    if isinstance(c, Mapping)
                }
                for cond in value:
                    prev = old.get(cond["type"])
                    if prev is None or any(
                        prev.get(f) != cond[f] for f in ("status", "reason", "message", "observedGeneration")
                    ):
                        return False
            elif self.raw_status.get(key) != value:
                return False
        return True

    # -- failures -------------------------------------------------------------------------------------

    async def stall(self, exc: Permanent, state: State | None) -> Outcome:
        await self.flush()
        verdict = Verdict("Failed", exc.reason, str(exc), stalled=True)
        events: tuple[Event, ...] = ()
        if self.status.phase != "Failed" or self.status.ready_reason != str(exc.reason):
            events = (Event("Warning", str(exc.reason), str(exc)),)
        await self._persist(Transition(state=state, verdict=verdict), events=events)
        return Outcome()

    async def backoff(self, exc: RetryLater, state: State | None) -> Outcome:
        await self.flush()
        now = self.clock()
        failures = self.status.failures + 1
        delay = self.ports.policy.backoff(failures, retry_after=exc.retry_after)
        next_at = round_up_millis(now + delay)
        current = self.status.phase
        phase: Phase = cast(Phase, current) if current in WORKING_PHASES | {"AwaitingApproval"} else "Pending"
        verdict = Verdict(phase, exc.reason, f"{exc} (retry {failures} in {delay:.1f}s)", retrying=True)
        events: tuple[Event, ...] = ()
        if self.status.ready_reason != str(exc.reason):
            events = (Event("Warning", str(exc.reason), str(exc)),)
        await self._persist(
            Transition(state=state, verdict=verdict),
            events=events,
            failure=StatusPatch(failures=failures, last_failure_at=now, next_retry_at=next_at),
        )
        return Outcome(requeue_after=max(0.0, next_at - now))

    async def fingerprint(self) -> str:
        """What a permanent failure waits on: the spec, the ConfigMap, the Secrets, the annotations."""
        secrets: list[str | None] = []
        if self.spec is not None:
            secrets = [await self.io.secret_version(ref.name) for ref in self.spec.secret_refs()]
        source = self.source
        material = [
            self.res.generation,
            source.uid if source else None,
            source.resource_version if source else None,
            secrets,
            self.notes.requested_at,
            self.notes.approved_compose_hash,
            self.notes.transaction_hash,
        ]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]


def _pending_approval(state: State | None) -> PendingApproval | None:
    if not isinstance(state, AwaitingApproval) or state.waiting_for != "Approval":
        return None
    return PendingApproval(
        compose_hash=state.chain.compose_hash_hex,
        script_sha256=state.target.script_sha256,
        cvm_id=state.target.cvm_id,
        app_contract=state.chain.app_contract,
        chain_id=state.chain.chain_id,
        since=state.since,
    )


def _set_aside_corrupt(status: StatusView, corrupt: CorruptState) -> StatusPatch:
    """Transactions of an unreadable record are kept, never lost, when it says where they went."""
    if (
        not corrupt.versions
        or corrupt.chain_id is None
        or not corrupt.app_contract
        or not corrupt.compose_hash
    ):
        return StatusPatch()
    entry = UnsettledTransaction(
        chain_id=corrupt.chain_id,
        app_contract=corrupt.app_contract,
        compose_hash=corrupt.compose_hash,
        versions=corrupt.versions,
    )
    return StatusPatch(unsettled=(*status.unsettled, entry))


__all__ = ["MAX_STEPS_PER_PASS", "Outcome", "Reconciler"]
