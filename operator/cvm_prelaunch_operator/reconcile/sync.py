"""The level-based reconcile of one CvmPreLaunchScript.

One call compares the desired script (sha256 of the ConfigMap key) with what status says was
applied and drives the remote side one step at a time:

    Uploading ──202──────────────────────────────────────────► Following ──completed──► Synced
        │ 465                                                     ▲           └─failed──► Failed
        ▼                                                         │
    AwaitingApproval / Registering ──confirmed──► Applying ──202──┘
                                                     │ 466: back to Uploading

Crash safety: the in-flight record (step, compose hash, signed transaction, correlation id) is
written to status, guarded by resourceVersion, BEFORE the side effect it enables. A restarted
operator resumes from the record: a signed transaction is finished (never re-signed), a Phase 2
already accepted is followed (never repeated), and a script that changed in between is never
applied (the pending transaction is settled first, then the sync starts over with the new script).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, cast

from cvm_prelaunch_operator.domain.backoff import backoff_delay
from cvm_prelaunch_operator.domain.compose_hash import verify_compose_hash
from cvm_prelaunch_operator.domain.conditions import WORKING_PHASES, Phase, Verdict, build_conditions
from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
    SyncError,
)
from cvm_prelaunch_operator.domain.models import (
    ComposeHashChallenge,
    CvmInfo,
    PendingTransaction,
    Registration,
    UpdateAccepted,
)
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import (
    Annotations,
    InFlight,
    InvalidSpec,
    KnownRegistration,
    ResourceSnapshot,
    Spec,
    known_transaction,
    normalise_hash,
    remember_registration,
    script_sha256,
)
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.reconcile.ports import (
    ChainTarget,
    PhalaCloud,
    PhalaCloudFactory,
    Registrar,
    RegistrationRequest,
    ResourceIO,
    ScriptSource,
)

logger = logging.getLogger(__name__)

_CLEAR_FAILURE: dict[str, Any] = {"stalledInputs": None, "failures": 0, "nextRetryTime": None}

# Phase 2 answered 467 this many times in a row: the server cannot see our transaction; start over.
MAX_PHASE2_RECHECKS = 5
# A pass restarts from Phase 1 at most this often before yielding to the queue.
MAX_START_OVERS_PER_PASS = 2


@dataclass(frozen=True)
class Outcome:
    """When to look at the resource again without an event (None: only on the next event)."""

    requeue_after: float | None = None


@dataclass(frozen=True)
class ReconcileSettings:
    operation_poll_fast: float = 0.25
    operation_poll_slow: float = 2.0
    fast_poll_window: float = 10.0


def utc_now_text(now: float) -> str:
    return datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: object) -> float | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
    except ValueError:
        return None


class _Pass:
    """State of one reconcile pass of one resource: the snapshot, the writes made, the clock."""

    def __init__(self, res: ResourceSnapshot, io: ResourceIO, now: Callable[[], float]) -> None:
        self.res = res
        self.io = io
        self._now = now
        self.status: dict[str, Any] = dict(res.status or {})

    @property
    def now(self) -> float:
        return self._now()

    @property
    def now_text(self) -> str:
        return utc_now_text(self.now)

    async def write(
        self,
        verdict: Verdict,
        extra: Mapping[str, Any] | None = None,
        *,
        event: tuple[str, str, str] | None = None,
        milestone: bool = False,
    ) -> None:
        """Write status for a verdict in one patch. ``event`` is emitted when phase or reason changed,
        or always for a ``milestone`` (a step that completes once per sync), so retries never flood."""
        previous_ready = next(
            (c for c in self.status.get("conditions") or [] if c.get("type") == "Ready"), None
        )
        transition = (
            self.status.get("phase") != verdict.phase
            or (previous_ready or {}).get("reason") != verdict.reason
        )
        patch: dict[str, Any] = {
            "observedGeneration": self.res.generation,
            "phase": verdict.phase,
            "message": verdict.message,
            "conditions": build_conditions(
                verdict,
                generation=self.res.generation,
                previous=self.status.get("conditions"),
                now=self.now_text,
            ),
        }
        patch.update(extra or {})
        if self._unchanged(patch):
            return
        await self.io.patch_status(patch)
        for key, value in patch.items():
            if value is None:
                self.status.pop(key, None)
            else:
                self.status[key] = value
        if event and (transition or milestone):
            level = logging.WARNING if event[0] == "Warning" else logging.INFO
            logger.log(level, "%s/%s: %s: %s", self.res.namespace, self.res.name, event[1], event[2])
            await self.io.record_event(*event)

    def _unchanged(self, patch: Mapping[str, Any]) -> bool:
        for key, value in patch.items():
            if key == "conditions":
                old = {c.get("type"): c for c in self.status.get("conditions") or []}
                for cond in value:
                    prev = old.get(cond["type"])
                    if prev is None or any(
                        prev.get(f) != cond[f] for f in ("status", "reason", "message", "observedGeneration")
                    ):
                        return False
            elif self.status.get(key) != value:
                return False
        return True


class Reconciler:
    """Drives one resource towards its desired script. Stateless between calls: status is the state."""

    def __init__(
        self,
        cloud: PhalaCloudFactory,
        registrar: Registrar,
        *,
        settings: ReconcileSettings | None = None,
        clock: Callable[[], float] = time.time,
        on_drift: Callable[[], None] | None = None,
        on_transaction: Callable[[str], None] | None = None,
    ) -> None:
        self._cloud = cloud
        self._registrar = registrar
        self._settings = settings or ReconcileSettings()
        self._clock = clock
        self._on_drift = on_drift
        self._on_transaction = on_transaction

    async def reconcile(self, res: ResourceSnapshot, io: ResourceIO) -> Outcome:
        p = _Pass(res, io, self._clock)
        try:
            return await self._reconcile(p)
        except Permanent as exc:
            return await self._stall(p, exc)
        except RetryLater as exc:
            return await self._retry(p, exc)
        except SyncError as exc:
            # StartOver/RecheckChain/RegistrationRequired escaping a step are unexpected here: treat
            # them as transient so the next pass re-plans from status.
            return await self._retry(p, RetryLater(str(exc), reason=exc.reason))

    # -- the pass ------------------------------------------------------------------------------

    async def _reconcile(self, p: _Pass) -> Outcome:
        try:
            spec = Spec.parse(p.res.spec)
        except InvalidSpec as exc:
            raise Permanent(str(exc), reason=Reason.INVALID_SPEC) from None
        notes = Annotations.parse(p.res.annotations)
        new_request = bool(notes.requested_at) and notes.requested_at != p.status.get(
            "lastHandledRequestedAt"
        )

        if spec.suspend:
            await p.write(
                Verdict("Suspended", Reason.SUSPENDED, "spec.suspend is true: no remote calls are made"),
                event=("Normal", "Suspended", "Sync suspended"),
            )
            return Outcome()

        # Backing off: nothing is read or written until the retry time, whatever events arrive (our
        # own status write is one of them).
        retry_at = _parse_time(p.status.get("nextRetryTime"))
        if retry_at is not None and retry_at > p.now and not new_request:
            return Outcome(requeue_after=retry_at - p.now)

        source = await p.io.read_script(spec.script_ref.name, spec.script_ref.key)
        desired = script_sha256(source.data)
        for ref in spec.secret_refs():
            # Cheap (the watch keeps versions), and a missing Secret is reported even when idle.
            if await p.io.secret_version(ref.name) is None:
                raise Permanent(
                    f"Secret {p.res.namespace}/{ref.name} not found", reason=Reason.SECRET_NOT_FOUND
                )

        stalled_on = p.status.get("stalledInputs")
        if stalled_on and not new_request and stalled_on == await self._fingerprint(p, spec, source, notes):
            return Outcome()  # permanent failure: wait for a change of inputs

        in_flight = InFlight.from_status(p.status.get("inFlight"))
        if in_flight is not None and in_flight.script_sha256 != desired and in_flight.step != "Following":
            # The script changed under a sync that has not reached Phase 2: never apply the old one.
            await self._settle_pending(p, spec, in_flight)
            in_flight = None

        if in_flight is None:
            applied = p.status.get("scriptSha256") == desired and p.status.get("cvmId") == spec.cvm_id
            if applied and not new_request:
                idle = await self._idle(p, spec, desired, recheck=p.status.get("phase") == "Failed")
                if idle is not None:
                    return idle
            in_flight = InFlight(
                step="Uploading",
                script_sha256=desired,
                started_at=p.now_text,
                config_map_resource_version=source.resource_version,
            )
            await p.write(
                Verdict("Uploading", Reason.UPLOADING, f"Uploading the script to CVM {spec.cvm_id}"),
                {
                    "inFlight": in_flight.to_status(),
                    "stalledInputs": None,
                    "lastHandledRequestedAt": notes.requested_at or p.status.get("lastHandledRequestedAt"),
                },
                event=(
                    "Normal",
                    "UploadStarted",
                    f"Uploading script sha256 {desired[:12]} to CVM {spec.cvm_id}",
                ),
            )
            return await self._drive(p, spec, source, notes, in_flight, resumed=False)
        return await self._drive(p, spec, source, notes, in_flight, resumed=True)

    async def _drive(
        self,
        p: _Pass,
        spec: Spec,
        source: ScriptSource,
        notes: Annotations,
        flight: InFlight,
        *,
        resumed: bool,
    ) -> Outcome:
        cloud = self._cloud.for_api_key(
            await p.io.read_secret(spec.api_key_secret.name, spec.api_key_secret.key)
        )
        if resumed and flight.step in ("Uploading", "Applying"):
            adopted = await self._adopt(p, spec, source, cloud, flight, notes)
            if isinstance(adopted, Outcome):
                return adopted
            flight = adopted
        start_overs = 0
        while True:
            if flight.step == "Uploading":
                flight = await self._phase1(p, spec, source, cloud, flight)
            elif flight.step in ("AwaitingApproval", "Registering"):
                next_flight = await self._register(p, spec, notes, flight)
                if next_flight is None:
                    return Outcome()  # waiting for a person or an outside transaction
                flight = next_flight
            elif flight.step == "Applying":
                fresh = await p.io.read_script(spec.script_ref.name, spec.script_ref.key)
                if script_sha256(fresh.data) != flight.script_sha256:
                    # Changed while we registered: this script is stale now. Next pass starts over.
                    await p.write(
                        Verdict(
                            "Uploading", Reason.UPLOADING, "The script changed during the sync; starting over"
                        ),
                        {"inFlight": None},
                    )
                    return Outcome(requeue_after=0)
                try:
                    flight = await self._phase2(p, spec, fresh, cloud, flight)
                except StartOver as exc:
                    start_overs += 1
                    if start_overs > MAX_START_OVERS_PER_PASS:
                        raise RetryLater(
                            f"Phase 2 was refused again: {exc.message}", reason=exc.reason
                        ) from None
                    flight = flight.advance(
                        step="Uploading", compose_hash=None, transaction_hash=None, phase2_attempts=0
                    )
                    await p.write(
                        Verdict(
                            "Uploading", Reason.UPLOADING, f"Phala Cloud asked to start over: {exc.message}"
                        ),
                        {"inFlight": flight.to_status()},
                    )
            elif flight.step == "Following":
                return await self._follow(p, spec, source, cloud, flight, notes)
            else:  # pragma: no cover - the schema's enum prevents it
                raise Permanent(f"unknown in-flight step {flight.step!r}", reason=Reason.INVALID_SPEC)

    # -- steps ---------------------------------------------------------------------------------

    async def _adopt(
        self,
        p: _Pass,
        spec: Spec,
        source: ScriptSource,
        cloud: PhalaCloud,
        flight: InFlight,
        notes: Annotations,
    ) -> InFlight | Outcome:
        """Resuming a step whose request may have reached Phala Cloud before the operator died:
        look before sending it again, so an accepted update is followed instead of repeated."""
        cvm = await cloud.get_cvm(spec.cvm_id)
        if cvm.in_progress and cvm.progress_correlation_id:
            flight = flight.advance(
                step="Following", correlation_id=cvm.progress_correlation_id, adopted=True
            )
            await p.write(
                Verdict(
                    "Applying",
                    Reason.APPLYING,
                    f"Following update {cvm.progress_correlation_id} found running",
                ),
                {"inFlight": flight.to_status(), "correlationId": cvm.progress_correlation_id},
            )
            return flight
        applied = (
            flight.step == "Applying"
            and flight.compose_hash is not None
            and cvm.compose_hash is not None
            and normalise_hash(cvm.compose_hash) == normalise_hash(flight.compose_hash)
        )
        if applied:
            return await self._synced(p, spec, source, flight, notes, cvm)
        return flight

    async def _phase1(
        self, p: _Pass, spec: Spec, source: ScriptSource, cloud: PhalaCloud, flight: InFlight
    ) -> InFlight:
        try:
            accepted = await cloud.patch_pre_launch_script(spec.cvm_id, source.data)
        except RegistrationRequired as required:
            return await self._challenge(p, spec, source, cloud, flight, required.challenge)
        return await self._accepted(p, flight, accepted)

    @staticmethod
    async def _accepted(p: _Pass, flight: InFlight, accepted: UpdateAccepted) -> InFlight:
        """Record the correlation id of an accepted update (Phase 1 off-chain, Phase 2 on-chain)."""
        flight = flight.advance(step="Following", correlation_id=accepted.correlation_id)
        await p.write(
            Verdict(
                "Applying", Reason.APPLYING, f"Phala Cloud accepted the update ({accepted.correlation_id})"
            ),
            {"inFlight": flight.to_status(), "correlationId": accepted.correlation_id},
            event=("Normal", "UpdateAccepted", f"Update accepted, correlation id {accepted.correlation_id}"),
            milestone=True,
        )
        return flight

    async def _challenge(
        self,
        p: _Pass,
        spec: Spec,
        source: ScriptSource,
        cloud: PhalaCloud,
        flight: InFlight,
        challenge: ComposeHashChallenge,
    ) -> InFlight:
        if spec.on_chain is None:
            raise Permanent(
                "The CVM's KMS is contract-owned: Phala Cloud asks for an on-chain registration of compose "
                f"hash {challenge.compose_hash_hex}; set spec.onChain to let the operator register it",
                reason=Reason.INVALID_SPEC,
            )
        cvm = await cloud.get_cvm(spec.cvm_id)
        if spec.on_chain.verify_compose_hash:
            await self._verify(cloud, spec, cvm, source, challenge)
        chain_id = challenge.chain_id or cvm.chain_id
        app_contract = cvm.app_contract or (
            "0x" + (challenge.app_id or cvm.app_id).lower().removeprefix("0x")
        )
        if chain_id is None:
            raise Permanent("Phala Cloud named no chain id for this CVM's KMS", reason=Reason.WRONG_CHAIN)
        flight = flight.advance(
            step="Registering",
            compose_hash=challenge.compose_hash,
            device_id=challenge.device_id,
            chain_id=chain_id,
            app_contract=app_contract,
        )
        await p.write(
            Verdict(
                "RegisteringOnChain",
                Reason.REGISTERING_ON_CHAIN,
                f"Compose hash {challenge.compose_hash_hex} must be registered on chain {chain_id}",
            ),
            {
                "inFlight": flight.to_status(),
                "composeHash": challenge.compose_hash_hex,
                "chainId": chain_id,
                "appContract": app_contract,
            },
        )
        return flight

    async def _verify(
        self,
        cloud: PhalaCloud,
        spec: Spec,
        cvm: CvmInfo,
        source: ScriptSource,
        challenge: ComposeHashChallenge,
    ) -> None:
        app_compose = await cloud.get_app_compose(spec.cvm_id)
        result = verify_compose_hash(
            app_compose,
            cvm.compose_hash or "",
            source.data,
            challenge.compose_hash,
        )
        if result.outcome != "match":
            raise Permanent(
                f"Refusing to sign compose hash {challenge.compose_hash_hex}: {result.detail}",
                reason=Reason.COMPOSE_HASH_MISMATCH,
            )

    async def _register(self, p: _Pass, spec: Spec, notes: Annotations, flight: InFlight) -> InFlight | None:
        assert spec.on_chain is not None and flight.compose_hash and flight.chain_id and flight.app_contract
        compose_hex = normalise_hash(flight.compose_hash)
        target = ChainTarget(
            rpc_url=await self._rpc_url(p, spec), chain_id=flight.chain_id, app_contract=flight.app_contract
        )
        registration: Registration
        if notes.transaction_hash and flight.pending_transaction is None:
            registration = await self._transaction(
                "verified",
                self._registrar.verify_registration(
                    target, compose_hex, notes.transaction_hash.strip(), spec.on_chain.confirmations
                ),
            )
        elif spec.on_chain.signer_key_secret is None:
            await self._await(
                p,
                flight,
                Reason.AWAITING_TRANSACTION,
                f"Register compose hash {compose_hex} on {flight.app_contract} (chain {flight.chain_id}) and "
                "put the transaction hash in annotation cloud.phala.com/transaction-hash",
            )
            return None
        elif spec.on_chain.approval == "Manual" and not _approved(notes.approved_compose_hash, compose_hex):
            await self._await(
                p,
                flight,
                Reason.AWAITING_APPROVAL,
                f"Approve compose hash {compose_hex} by setting annotation "
                "cloud.phala.com/approved-compose-hash to it",
            )
            return None
        else:
            signer = spec.on_chain.signer_key_secret
            request = RegistrationRequest(
                target=target,
                signer_key=await p.io.read_secret(signer.name, signer.key),
                compose_hash=compose_hex,
                device_id=flight.device_id,
                confirmations=spec.on_chain.confirmations,
                known_tx_hash=known_transaction(p.status.get("registrations"), compose_hex, flight.chain_id),
            )
            if flight.step != "Registering" or p.status.get("phase") != "RegisteringOnChain":
                flight = flight.advance(step="Registering")
                await p.write(
                    Verdict("RegisteringOnChain", Reason.REGISTERING_ON_CHAIN, f"Registering {compose_hex}"),
                    {"inFlight": flight.to_status()},
                )
            current = flight

            async def persist(pending: PendingTransaction) -> None:
                nonlocal current
                current = current.advance(pending_transaction=pending)
                await p.write(
                    Verdict(
                        "RegisteringOnChain",
                        Reason.REGISTERING_ON_CHAIN,
                        f"Transaction {pending.tx_hash} registers {compose_hex}; waiting for confirmation",
                    ),
                    {"inFlight": current.to_status(), "transactionHash": pending.tx_hash},
                    event=(
                        "Normal",
                        "RegistrationSent",
                        f"Sent addComposeHash({compose_hex}) in transaction {pending.tx_hash}",
                    ),
                    milestone=True,
                )

            registration = await self._transaction(
                "registered",
                self._registrar.register(request, persist=persist, resume_from=flight.pending_transaction),
            )
            flight = current
        flight = flight.advance(
            step="Applying", transaction_hash=registration.tx_hash, pending_transaction=None
        )
        await p.write(
            Verdict(
                "Applying",
                Reason.APPLYING,
                f"Compose hash registered in transaction {registration.tx_hash} "
                f"(block {registration.block_number})",
            ),
            {
                "inFlight": flight.to_status(),
                "transactionHash": registration.tx_hash,
                "registrations": remember_registration(
                    p.status.get("registrations"),
                    KnownRegistration(
                        compose_hash=compose_hex,
                        transaction_hash=registration.tx_hash,
                        block_number=registration.block_number,
                        chain_id=registration.chain_id,
                    ),
                ),
            },
            event=(
                "Normal",
                "RegistrationConfirmed",
                f"Compose hash {compose_hex} registered in block {registration.block_number}"
                + (" (existing registration reused)" if registration.reused else ""),
            ),
            milestone=True,
        )
        return flight

    async def _await(self, p: _Pass, flight: InFlight, reason: Reason, message: str) -> None:
        flight = flight.advance(step="AwaitingApproval")
        await p.write(
            Verdict("AwaitingApproval", reason, message),
            {"inFlight": flight.to_status(), "failures": 0, "nextRetryTime": None},
            event=("Normal", str(reason), message),
        )

    async def _phase2(
        self, p: _Pass, spec: Spec, source: ScriptSource, cloud: PhalaCloud, flight: InFlight
    ) -> InFlight:
        assert flight.compose_hash and flight.transaction_hash
        try:
            accepted = await cloud.patch_pre_launch_script(
                spec.cvm_id,
                source.data,
                compose_hash=flight.compose_hash,
                transaction_hash=flight.transaction_hash,
            )
        except RecheckChain as exc:
            attempts = flight.phase2_attempts + 1
            if attempts >= MAX_PHASE2_RECHECKS:
                raise StartOver(f"Phala Cloud still cannot see the transaction: {exc.message}") from None
            await p.write(
                Verdict(
                    "Applying", Reason.APPLYING, f"Phala Cloud cannot see the transaction yet: {exc.message}"
                ),
                {"inFlight": flight.advance(phase2_attempts=attempts).to_status()},
            )
            raise RetryLater(
                exc.message, reason=Reason.REGISTRATION_REJECTED, retry_after=float(attempts)
            ) from None
        return await self._accepted(p, flight, accepted)

    async def _follow(
        self,
        p: _Pass,
        spec: Spec,
        source: ScriptSource,
        cloud: PhalaCloud,
        flight: InFlight,
        notes: Annotations,
    ) -> Outcome:
        assert flight.correlation_id
        operation = await cloud.find_operation(spec.cvm_id, flight.correlation_id)
        if operation is None or operation.status == "in_progress":
            started = _parse_time(flight.started_at) or p.now
            fast = p.now - started < self._settings.fast_poll_window
            return Outcome(
                requeue_after=self._settings.operation_poll_fast
                if fast
                else self._settings.operation_poll_slow
            )
        if operation.status == "failed":
            raise Permanent(
                f"Phala Cloud could not apply the update ({flight.correlation_id}): "
                f"{operation.error_message or 'no reason given'}",
                reason=Reason.APPLY_FAILED,
            )
        cvm = await cloud.get_cvm(spec.cvm_id)
        if flight.adopted:
            # We did not see this operation accepted: make sure it applied our script.
            remote = await cloud.get_pre_launch_script(spec.cvm_id)
            if script_sha256(remote.encode("utf-8")) != flight.script_sha256:
                await p.write(
                    Verdict(
                        "Uploading", Reason.UPLOADING, "The update found running was not ours; uploading"
                    ),
                    {
                        "inFlight": flight.advance(
                            step="Uploading", correlation_id=None, adopted=False
                        ).to_status()
                    },
                )
                return Outcome(requeue_after=0)
        return await self._synced(p, spec, source, flight, notes, cvm)

    async def _synced(
        self, p: _Pass, spec: Spec, source: ScriptSource, flight: InFlight, notes: Annotations, cvm: CvmInfo
    ) -> Outcome:
        compose_hash = cvm.compose_hash or flight.compose_hash
        compose_text = normalise_hash(compose_hash) if compose_hash else None
        await p.write(
            Verdict(
                "Synced",
                Reason.SYNCED,
                f"Script sha256 {flight.script_sha256[:12]} applied to CVM {spec.cvm_id}",
            ),
            {
                "inFlight": None,
                "scriptSha256": flight.script_sha256,
                "cvmId": spec.cvm_id,
                "source": {
                    "configMapName": source.config_map_name,
                    "uid": source.uid,
                    "resourceVersion": flight.config_map_resource_version or source.resource_version,
                },
                "composeHash": compose_text,
                "transactionHash": flight.transaction_hash or p.status.get("transactionHash"),
                "correlationId": flight.correlation_id or p.status.get("correlationId"),
                "chainId": flight.chain_id or p.status.get("chainId") or cvm.chain_id,
                "appContract": flight.app_contract or p.status.get("appContract"),
                "lastSyncTime": p.now_text,
                "lastDriftCheckTime": p.now_text,
                "lastHandledRequestedAt": notes.requested_at or p.status.get("lastHandledRequestedAt"),
                "failures": 0,
                "lastFailureTime": None,
                "nextRetryTime": None,
                "stalledInputs": None,
            },
            event=(
                "Normal",
                "Applied",
                f"CVM {spec.cvm_id} runs the new script (compose hash {compose_text})",
            ),
        )
        if source.data and script_sha256(source.data) != flight.script_sha256:
            return Outcome(requeue_after=0)
        return Outcome(requeue_after=spec.drift_check_interval or None)

    async def _idle(self, p: _Pass, spec: Spec, desired: str, *, recheck: bool) -> Outcome | None:
        """The desired script is applied already. Confirm status, check drift when due.

        Returns None when drift must be corrected by a new sync.
        """
        interval = spec.drift_check_interval
        last_check = _parse_time(p.status.get("lastDriftCheckTime")) or 0.0
        if not recheck and (interval <= 0 or p.now < last_check + interval):
            was_drifted = any(
                c.get("type") == "Ready" and c.get("reason") == Reason.DRIFTED
                for c in p.status.get("conditions") or []
            )
            await p.write(self._idle_verdict(spec, desired, drifted=was_drifted), _CLEAR_FAILURE)
            return Outcome(requeue_after=max(1.0, last_check + interval - p.now) if interval > 0 else None)
        cloud = self._cloud.for_api_key(
            await p.io.read_secret(spec.api_key_secret.name, spec.api_key_secret.key)
        )
        remote = await cloud.get_pre_launch_script(spec.cvm_id)
        drifted = script_sha256(remote.encode("utf-8")) != desired
        if drifted:
            if self._on_drift is not None:
                self._on_drift()
            if spec.drift_policy == "Correct":
                await p.io.record_event(
                    "Warning",
                    str(Reason.DRIFTED),
                    f"CVM {spec.cvm_id} runs another script; re-applying the desired one",
                )
                return None
        await p.write(
            self._idle_verdict(spec, desired, drifted=drifted),
            {"lastDriftCheckTime": p.now_text, **_CLEAR_FAILURE},
            event=(
                "Warning",
                str(Reason.DRIFTED),
                f"CVM {spec.cvm_id} runs a script that differs from the ConfigMap",
            )
            if drifted
            else None,
        )
        return Outcome(requeue_after=interval if interval > 0 else None)

    @staticmethod
    def _idle_verdict(spec: Spec, desired: str, *, drifted: bool) -> Verdict:
        if drifted:
            return Verdict(
                "Synced",
                Reason.DRIFTED,
                f"CVM {spec.cvm_id} runs a script that differs from the ConfigMap (driftPolicy Report)",
            )
        return Verdict("Synced", Reason.SYNCED, f"Script sha256 {desired[:12]} applied to CVM {spec.cvm_id}")

    # -- failures ------------------------------------------------------------------------------

    async def _stall(self, p: _Pass, exc: Permanent) -> Outcome:
        fingerprint = await self._fingerprint_for_failure(p)
        flight = InFlight.from_status(p.status.get("inFlight"))
        keep = flight if flight is not None and flight.pending_transaction is not None else None
        await p.write(
            Verdict("Failed", exc.reason, str(exc), stalled=True),
            {
                "stalledInputs": fingerprint,
                "inFlight": keep.to_status() if keep else None,
                "failures": 0,
                "nextRetryTime": None,
                "lastFailureTime": p.now_text,
                "lastHandledRequestedAt": Annotations.parse(p.res.annotations).requested_at
                or p.status.get("lastHandledRequestedAt"),
            },
            event=("Warning", str(exc.reason), str(exc)),
        )
        return Outcome()

    async def _retry(self, p: _Pass, exc: RetryLater) -> Outcome:
        failures = int(p.status.get("failures") or 0) + 1
        delay = backoff_delay(failures, retry_after=exc.retry_after)
        logger.info("%s/%s: retry %d in %.1fs: %s", p.res.namespace, p.res.name, failures, delay, exc)
        current = p.status.get("phase")
        # A step that fails keeps its phase; from a resting phase the resource goes back to Pending.
        phase: Phase = cast(Phase, current) if current in WORKING_PHASES | {"AwaitingApproval"} else "Pending"
        await p.write(
            Verdict(phase, exc.reason, f"{exc} (retry {failures} in {delay:.0f}s)", retrying=True),
            {
                "failures": failures,
                "lastFailureTime": p.now_text,
                "nextRetryTime": utc_now_text(p.now + delay),
            },
            event=("Warning", str(exc.reason), str(exc)),
        )
        return Outcome(requeue_after=delay)

    # -- helpers -------------------------------------------------------------------------------

    async def _transaction(self, outcome: str, call: Awaitable[Registration]) -> Registration:
        """Await a registrar call and report its outcome: ``outcome`` (``registered`` becomes
        ``reused`` when an existing registration served), or ``failed``."""
        try:
            registration = await call
        except SyncError:
            if self._on_transaction is not None:
                self._on_transaction("failed")
            raise
        if self._on_transaction is not None:
            reused = outcome == "registered" and registration.reused
            self._on_transaction("reused" if reused else outcome)
        return registration

    async def _settle_pending(self, p: _Pass, spec: Spec, flight: InFlight) -> None:
        """Finish a signed registration of a now-stale script before dropping it, so it can never be
        signed a second time (it is remembered in status.registrations)."""
        if (
            flight.pending_transaction is None
            or spec.on_chain is None
            or spec.on_chain.signer_key_secret is None
        ):
            await p.write(
                Verdict("Pending", Reason.PROGRESSING, "The script changed; starting a new sync"),
                {"inFlight": None},
            )
            return
        pending = flight.pending_transaction
        signer = spec.on_chain.signer_key_secret
        request = RegistrationRequest(
            target=ChainTarget(await self._rpc_url(p, spec), pending.chain_id, pending.app_contract),
            signer_key=await p.io.read_secret(signer.name, signer.key),
            compose_hash=pending.compose_hash,
            device_id=flight.device_id,
            confirmations=spec.on_chain.confirmations,
        )

        async def refuse_new(_: PendingTransaction) -> None:
            raise RetryLater("the earlier transaction was replaced; not signing for a stale script")

        registration = await self._transaction(
            "registered", self._registrar.register(request, persist=refuse_new, resume_from=pending)
        )
        await p.write(
            Verdict("Pending", Reason.PROGRESSING, "The script changed; starting a new sync"),
            {
                "inFlight": None,
                "registrations": remember_registration(
                    p.status.get("registrations"),
                    KnownRegistration(
                        pending.compose_hash,
                        registration.tx_hash,
                        registration.block_number,
                        registration.chain_id,
                    ),
                ),
            },
        )

    async def _rpc_url(self, p: _Pass, spec: Spec) -> Secret:
        assert spec.on_chain is not None
        if spec.on_chain.rpc_url_secret is not None:
            ref = spec.on_chain.rpc_url_secret
            return await p.io.read_secret(ref.name, ref.key)
        return Secret(spec.on_chain.rpc_url or "")

    async def _fingerprint(
        self, p: _Pass, spec: Spec, source: ScriptSource | None, notes: Annotations
    ) -> str:
        secrets = [await p.io.secret_version(ref.name) for ref in spec.secret_refs()]
        material = [
            p.res.generation,
            source.uid if source else None,
            source.resource_version if source else None,
            secrets,
            notes.requested_at,
            notes.approved_compose_hash,
            notes.transaction_hash,
        ]
        return hashlib.sha256(json.dumps(material).encode()).hexdigest()[:32]

    async def _fingerprint_for_failure(self, p: _Pass) -> str:
        notes = Annotations.parse(p.res.annotations)
        try:
            spec = Spec.parse(p.res.spec)
        except InvalidSpec:
            return hashlib.sha256(json.dumps([p.res.generation, "invalid"]).encode()).hexdigest()[:32]
        try:
            source: ScriptSource | None = await p.io.read_script(spec.script_ref.name, spec.script_ref.key)
        except SyncError:
            source = None
        return await self._fingerprint(p, spec, source, notes)


def _approved(annotation: str | None, compose_hex: str) -> bool:
    if not annotation:
        return False
    try:
        return normalise_hash(annotation) == compose_hex
    except InvalidSpec:
        return False


__all__ = ["Outcome", "ReconcileSettings", "Reconciler"]
