"""The status of a CvmPreLaunchScript as typed values: read once per pass, written as typed patches.

``StatusView`` is what the engine and the steps read (parsed leniently: a status written by an older
operator, or missing fields, never raise). ``StatusPatch`` is what they write: every field a step may
change is a typed attribute that is either ``KEEP`` (left as it is), ``None`` (removed) or a value.
Only ``StatusPatch.to_patch()`` knows the JSON field names of the status.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from typing import Any, Final

from cvm_prelaunch_operator.domain.chain import hex32
from cvm_prelaunch_operator.domain.states import (
    State,
    TxVersion,
    to_status,
    version_from_status,
    version_to_status,
)
from cvm_prelaunch_operator.domain.text import format_time, parse_time

MAX_REGISTRATIONS: Final = 10
MAX_UNSETTLED: Final = 8


class _Keep:
    """Leave the field as it is."""

    _instance: _Keep | None = None

    def __new__(cls) -> _Keep:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "KEEP"


KEEP: Final = _Keep()


@dataclass(frozen=True)
class KnownRegistration:
    """A confirmed registration of a compose hash, remembered so that returning to a script reuses it."""

    compose_hash: str
    transaction_hash: str
    block_number: int
    chain_id: int
    app_contract: str | None = None

    def to_status(self) -> dict[str, Any]:
        return {
            "composeHash": self.compose_hash,
            "transactionHash": self.transaction_hash,
            "blockNumber": self.block_number,
            "chainId": self.chain_id,
            "appContract": self.app_contract,
        }


@dataclass(frozen=True)
class UnsettledTransaction:
    """Broadcast versions of a registration whose sync was given up before they settled."""

    chain_id: int
    app_contract: str
    compose_hash: str
    versions: tuple[TxVersion, ...]

    @property
    def sender(self) -> str:
        return self.versions[-1].sender

    @property
    def nonce(self) -> int:
        return self.versions[-1].nonce

    def to_status(self) -> dict[str, Any]:
        return {
            "chainId": self.chain_id,
            "appContract": self.app_contract,
            "composeHash": self.compose_hash,
            "transactions": [version_to_status(v) for v in self.versions],
        }


@dataclass(frozen=True)
class PendingApproval:
    compose_hash: str
    script_sha256: str
    cvm_id: str
    app_contract: str
    chain_id: int
    since: float

    def to_status(self) -> dict[str, Any]:
        return {
            "composeHash": self.compose_hash,
            "scriptSha256": self.script_sha256,
            "cvmId": self.cvm_id,
            "appContract": self.app_contract,
            "chainId": self.chain_id,
            "since": format_time(self.since),
        }


@dataclass(frozen=True)
class SourceRef:
    """The ConfigMap an applied script came from."""

    config_map_name: str
    uid: str
    resource_version: str


@dataclass(frozen=True)
class StatusView:
    """The fields of the status the core reads."""

    phase: str | None = None
    observed_generation: int | None = None
    ready_reason: str | None = None
    conditions: tuple[Mapping[str, Any], ...] = ()
    script_sha256: str | None = None  # applied
    cvm_id: str | None = None  # the CVM the applied script went to
    compose_hash: str | None = None
    transaction_hash: str | None = None
    correlation_id: str | None = None
    chain_id: int | None = None
    app_contract: str | None = None
    failures: int = 0
    next_retry_at: float | None = None
    last_drift_check_at: float | None = None
    last_drift_check_error: str | None = None
    stalled_inputs: str | None = None
    last_handled_requested_at: str | None = None
    registrations: tuple[KnownRegistration, ...] = ()
    unsettled: tuple[UnsettledTransaction, ...] = ()
    ignored_transaction_hash: str | None = None
    in_flight: Mapping[str, Any] | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> StatusView:
        raw = raw or {}
        conditions = tuple(c for c in raw.get("conditions") or () if isinstance(c, Mapping))
        ready = next((c for c in conditions if c.get("type") == "Ready"), None)
        return cls(
            phase=_text(raw.get("phase")),
            observed_generation=_int(raw.get("observedGeneration")),
            ready_reason=_text(ready.get("reason")) if ready else None,
            conditions=conditions,
            script_sha256=_text(raw.get("scriptSha256")),
            cvm_id=_text(raw.get("cvmId")),
            compose_hash=_text(raw.get("composeHash")),
            transaction_hash=_text(raw.get("transactionHash")),
            correlation_id=_text(raw.get("correlationId")),
            chain_id=_int(raw.get("chainId")),
            app_contract=_text(raw.get("appContract")),
            failures=_int(raw.get("failures")) or 0,
            next_retry_at=parse_time(raw.get("nextRetryTime")),
            last_drift_check_at=parse_time(raw.get("lastDriftCheckTime")),
            last_drift_check_error=_text(raw.get("lastDriftCheckError")),
            stalled_inputs=_text(raw.get("stalledInputs")),
            last_handled_requested_at=_text(raw.get("lastHandledRequestedAt")),
            registrations=tuple(_registrations(raw.get("registrations"))),
            unsettled=tuple(_unsettled(raw.get("unsettledTransactions"))),
            ignored_transaction_hash=_text(raw.get("ignoredTransactionHash")),
            in_flight=raw.get("inFlight") if isinstance(raw.get("inFlight"), Mapping) else None,
        )

    def known_registration(self, compose_hash: str, chain_id: int) -> KnownRegistration | None:
        wanted = hex32(compose_hash)
        for registration in self.registrations:
            if registration.chain_id == chain_id and _same_hash(registration.compose_hash, wanted):
                return registration
        return None


@dataclass(frozen=True)
class Applied:
    """A sync that ended with the CVM running the script."""

    script_sha256: str
    cvm_id: str
    source: SourceRef
    compose_hash: str | None
    transaction_hash: str | None
    correlation_id: str | None
    chain_id: int | None
    app_contract: str | None
    at: float


@dataclass(frozen=True)
class StatusPatch:
    """Changes to the status: every field ``KEEP`` (left as it is), ``None`` (removed) or a value. Steps
    set what their step changes; the engine adds the verdict, the in-flight state and the failure
    bookkeeping. Only ``to_patch`` knows the status' field names."""

    observed_generation: int | _Keep = KEEP
    phase: str | _Keep = KEEP
    message: str | _Keep = KEEP
    conditions: tuple[Mapping[str, Any], ...] | _Keep = KEEP
    in_flight: State | _Keep | None = KEEP
    pending_approval: PendingApproval | _Keep | None = KEEP
    stalled_inputs: str | _Keep | None = KEEP
    failures: int | _Keep = KEEP
    last_failure_at: float | _Keep | None = KEEP
    next_retry_at: float | _Keep | None = KEEP  # written rounded up to the millisecond: it gates work
    last_handled_requested_at: str | _Keep | None = KEEP
    applied: Applied | _Keep | None = KEEP
    compose_hash: str | _Keep | None = KEEP
    transaction_hash: str | _Keep | None = KEEP
    correlation_id: str | _Keep | None = KEEP
    chain_id: int | _Keep | None = KEEP
    app_contract: str | _Keep | None = KEEP
    registrations: tuple[KnownRegistration, ...] | _Keep = KEEP
    unsettled: tuple[UnsettledTransaction, ...] | _Keep = KEEP
    last_drift_check_at: float | _Keep | None = KEEP
    last_drift_check_error: str | _Keep | None = KEEP
    ignored_transaction_hash: str | _Keep | None = KEEP

    def merged(self, later: StatusPatch) -> StatusPatch:
        """This patch with the fields ``later`` sets."""
        changes = {
            f.name: getattr(later, f.name) for f in fields(later) if getattr(later, f.name) is not KEEP
        }
        return replace(self, **changes)

    def to_patch(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        plain = {
            "observedGeneration": self.observed_generation,
            "phase": self.phase,
            "message": self.message,
            "stalledInputs": self.stalled_inputs,
            "failures": self.failures,
            "lastHandledRequestedAt": self.last_handled_requested_at,
        }
        for key, value in plain.items():
            if not isinstance(value, _Keep):
                out[key] = value
        if not isinstance(self.conditions, _Keep):
            out["conditions"] = [dict(c) for c in self.conditions]
        if not isinstance(self.in_flight, _Keep):
            out["inFlight"] = None if self.in_flight is None else to_status(self.in_flight)
        if not isinstance(self.pending_approval, _Keep):
            approval = self.pending_approval
            out["pendingApproval"] = None if approval is None else approval.to_status()
        if not isinstance(self.last_failure_at, _Keep):
            at = self.last_failure_at
            out["lastFailureTime"] = None if at is None else format_time(at)
        if not isinstance(self.next_retry_at, _Keep):
            at = self.next_retry_at
            out["nextRetryTime"] = None if at is None else format_time(at, round_up=True)
        if not isinstance(self.applied, _Keep):
            applied = self.applied
            if applied is None:
                out.update(scriptSha256=None, cvmId=None, source=None, lastSyncTime=None)
            else:
                out.update(
                    scriptSha256=applied.script_sha256,
                    cvmId=applied.cvm_id,
                    source={
                        "configMapName": applied.source.config_map_name,
                        "uid": applied.source.uid,
                        "resourceVersion": applied.source.resource_version,
                    },
                    composeHash=applied.compose_hash,
                    transactionHash=applied.transaction_hash,
                    correlationId=applied.correlation_id,
                    chainId=applied.chain_id,
                    appContract=applied.app_contract,
                    lastSyncTime=format_time(applied.at),
                )
        simple = {
            "composeHash": self.compose_hash,
            "transactionHash": self.transaction_hash,
            "correlationId": self.correlation_id,
            "chainId": self.chain_id,
            "appContract": self.app_contract,
            "lastDriftCheckError": self.last_drift_check_error,
            "ignoredTransactionHash": self.ignored_transaction_hash,
        }
        for key, value in simple.items():
            if not isinstance(value, _Keep):
                out[key] = value
        if not isinstance(self.last_drift_check_at, _Keep):
            at = self.last_drift_check_at
            out["lastDriftCheckTime"] = None if at is None else format_time(at)
        if not isinstance(self.registrations, _Keep):
            out["registrations"] = [r.to_status() for r in self.registrations[:MAX_REGISTRATIONS]] or None
        if not isinstance(self.unsettled, _Keep):
            out["unsettledTransactions"] = [u.to_status() for u in self.unsettled[-MAX_UNSETTLED:]] or None
        return out


def remember(
    registrations: Sequence[KnownRegistration], new: KnownRegistration
) -> tuple[KnownRegistration, ...]:
    """Newest first, one entry per (chain, hash), bounded."""
    kept = [
        r
        for r in registrations
        if not (r.chain_id == new.chain_id and _same_hash(r.compose_hash, new.compose_hash))
    ]
    return (new, *kept)[:MAX_REGISTRATIONS]


def _same_hash(a: str, b: str) -> bool:
    try:
        return hex32(a) == hex32(b)
    except ValueError:
        return False


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _int(value: object) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            return None
    return None


def _registrations(raw: object) -> list[KnownRegistration]:
    found: list[KnownRegistration] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        chain_id, block = _int(item.get("chainId")), _int(item.get("blockNumber"))
        compose_hash, tx_hash = _text(item.get("composeHash")), _text(item.get("transactionHash"))
        if chain_id is None or compose_hash is None or tx_hash is None:
            continue
        found.append(
            KnownRegistration(
                compose_hash=compose_hash,
                transaction_hash=tx_hash,
                block_number=block or 0,
                chain_id=chain_id,
                app_contract=_text(item.get("appContract")),
            )
        )
    return found


def _unsettled(raw: object) -> list[UnsettledTransaction]:
    found: list[UnsettledTransaction] = []
    for item in raw if isinstance(raw, list) else []:
        if not isinstance(item, Mapping):
            continue
        try:
            versions = tuple(version_from_status(v) for v in item.get("transactions") or ())
            if not versions:
                continue
            found.append(
                UnsettledTransaction(
                    chain_id=int(item["chainId"]),
                    app_contract=str(item["appContract"]),
                    compose_hash=str(item["composeHash"]),
                    versions=versions,
                )
            )
        except (KeyError, TypeError, ValueError):
            continue
    return found
