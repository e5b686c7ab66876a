"""One small hierarchy of failures that says what the caller must do next.

    SyncError
    ├── RetryLater            transient: try the same step again after ``retry_after`` or a backoff
    ├── Permanent             nothing changes until the user changes an input (spec, ConfigMap, Secret)
    ├── RegistrationRequired  Phase 1 of an on-chain CVM (465): register ``challenge.compose_hash``
    ├── StartOver             the server forgot or superseded the Phase-1 body (466): Phase 1 again
    └── RecheckChain          the server cannot see the transaction (467): check the receipt, retry

The Phala Cloud client and the chain registrar both raise these; the reconciler never sees an
HTTP status or a web3 exception. Messages are safe to show: adapters redact secrets before raising.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.models import ComposeHashChallenge
from cvm_prelaunch_operator.domain.reasons import Reason


class SyncError(Exception):
    """Base of every failure the adapters raise on purpose."""

    default_reason: Reason = Reason.REMOTE_REJECTED

    def __init__(
        self,
        message: str,
        *,
        reason: Reason | None = None,
        status_code: int | None = None,
        error_code: str | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.status_code = status_code
        self.error_code = error_code
        self.request_id = request_id

    def __str__(self) -> str:
        extras = [
            f"{label} {value}"
            for label, value in (
                ("HTTP", self.status_code),
                ("error_code", self.error_code),
                ("request_id", self.request_id),
            )
            if value is not None
        ]
        return f"{self.message} ({', '.join(extras)})" if extras else self.message


class RetryLater(SyncError):
    default_reason = Reason.REMOTE_UNAVAILABLE

    def __init__(self, message: str, *, retry_after: float | None = None, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.retry_after = retry_after


class Permanent(SyncError):
    pass


class RegistrationRequired(SyncError):
    default_reason = Reason.REGISTERING_ON_CHAIN

    def __init__(self, message: str, *, challenge: ComposeHashChallenge, **kwargs: object) -> None:
        super().__init__(message, **kwargs)  # type: ignore[arg-type]
        self.challenge = challenge


class StartOver(SyncError):
    default_reason = Reason.REGISTRATION_REJECTED


class RecheckChain(SyncError):
    default_reason = Reason.REGISTRATION_REJECTED


class NotLeader(Exception):
    """This process no longer holds the Lease (or cannot be sure it does): no side effect may follow.

    Deliberately not a ``SyncError``: nothing in a reconcile pass catches it; the pass ends where it is,
    which is no worse than a crash (status records where each sync stands)."""
