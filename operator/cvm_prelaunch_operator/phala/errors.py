"""Reading Phala Cloud's error answers and turning them into ``domain.errors``.

Error bodies come in several shapes, all handled here:

* structured: ``{"error_code", "message", "request_id", "details": [{"field", "value", "message"}], ...}``
* the structured object nested under ``detail``: ``{"detail": {...structured...}}``
* FastAPI validation (422): ``{"detail": [{"loc": [...], "msg": "...", "type": "..."}]}``
* older: ``{"detail": "..."}`` or ``{"message": "..."}``; and anything else (HTML from a proxy, empty)

A 465 carries the compose-hash challenge in ``details[]`` (structured, maybe nested) or, in the
legacy flat form, as top-level ``compose_hash``/``app_id``/``device_id``/``kms_info``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from cvm_prelaunch_operator.domain.compose_hash import load_json_bounded
from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
    SyncError,
)
from cvm_prelaunch_operator.domain.models import ComposeHashChallenge
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.retry import retry_after_seconds

MAX_MESSAGE_CHARS = 300
MAX_RETRY_AFTER_SECONDS = 86_400.0  # a larger (or absurd) Retry-After is read as one day

_HASH = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")
_APP_ID = re.compile(r"^(?:0x|app_)?([0-9a-fA-F]{40})$")
_WHITESPACE = re.compile(r"\s+")
_INTEGER = re.compile(r"^(?:[1-9][0-9]*|0|0x[0-9a-fA-F]+)$")
_CHALLENGE_FIELDS = ("compose_hash", "app_id", "device_id", "kms_info", "chain_id")


class MalformedResponse(RetryLater):
    """Phala Cloud answered something the client cannot read (not JSON, truncated, wrong types).

    Transient as far as the caller is concerned: a proxy error page or a half-deployed server
    usually goes away; the reconciler backs off.
    """


@dataclass(frozen=True)
class ErrorBody:
    """What an error answer says, whatever its shape."""

    message: str | None = None
    error_code: str | None = None
    request_id: str | None = None
    fields: Mapping[str, object] = field(default_factory=dict)


def parse_error_body(content: bytes, redact: Callable[[str], str] = lambda text: text) -> ErrorBody:
    """Read an error body of any shape; never raises. ``redact`` runs over the whole text first, so
    no later cut can leave part of a secret behind."""
    text = redact(content.decode("utf-8", errors="replace"))
    try:
        document: object = load_json_bounded(text)
    except (ValueError, RecursionError):
        return ErrorBody(message=_clean(text))
    if isinstance(document, str):
        return ErrorBody(message=_clean(document))
    if not isinstance(document, dict):
        return ErrorBody()
    detail = document.get("detail")
    structured: Mapping[str, object] = detail if isinstance(detail, dict) else document
    message = _first_text(structured.get("message"), document.get("message"))
    if message is None and isinstance(detail, str):
        message = _clean(detail)
    if message is None and isinstance(detail, list):
        message = _validation_message(detail)
    fields: dict[str, object] = {}
    details = structured.get("details")
    if isinstance(details, list):
        for item in details:
            if isinstance(item, dict) and isinstance(item.get("field"), str) and "value" in item:
                fields.setdefault(item["field"], item["value"])
    # The legacy flat form, at the top or under ``detail``.
    for source in (structured, document):
        for name in _CHALLENGE_FIELDS:
            if name in source:
                fields.setdefault(name, source[name])
    return ErrorBody(
        message=message,
        error_code=_first_text(structured.get("error_code"), document.get("error_code")),
        request_id=_first_text(structured.get("request_id"), document.get("request_id")),
        fields=fields,
    )


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header: None if absent or unreadable; never negative;
    at most :data:`MAX_RETRY_AFTER_SECONDS`."""
    return retry_after_seconds(value, cap=MAX_RETRY_AFTER_SECONDS, now=now)


def parse_challenge(body: ErrorBody) -> ComposeHashChallenge | None:
    """The compose-hash challenge of a 465, or None when the body carries no usable hash."""
    compose_hash = body.fields.get("compose_hash")
    if not isinstance(compose_hash, str) or not _HASH.fullmatch(compose_hash.strip()):
        return None
    kms_info_value = body.fields.get("kms_info")
    kms_info: dict[str, object] = dict(kms_info_value) if isinstance(kms_info_value, dict) else {}
    chain_id = _as_int(kms_info.get("chain_id"))
    if chain_id is None:
        chain_id = _as_int(body.fields.get("chain_id"))
    app_id = body.fields.get("app_id")
    device_id = body.fields.get("device_id")
    return ComposeHashChallenge(
        # Kept exactly as received (bar surrounding blanks): Phase 2 echoes it unchanged.
        compose_hash=compose_hash.strip(),
        app_id=normalize_app_id(app_id) if isinstance(app_id, str) and app_id else None,
        device_id=device_id.strip() if isinstance(device_id, str) and device_id.strip() else None,
        chain_id=chain_id,
        kms_info=kms_info,
    )


def normalize_app_id(app_id: str) -> str:
    """40 lower-case hex without ``0x``/``app_`` when it is one; otherwise the value unchanged."""
    found = _APP_ID.fullmatch(app_id.strip())
    return found.group(1).lower() if found else app_id.strip()


def error_for_status(
    status: int,
    body: ErrorBody,
    *,
    endpoint: str,
    script_upload: bool,
    retry_after: float | None,
    header_request_id: str | None = None,
    redact: Callable[[str], str] = lambda text: text,
) -> SyncError:
    """The exception that tells the caller what to do about an error status."""
    request_id = body.request_id or header_request_id

    def text(summary: str) -> str:
        said = f": {body.message}" if body.message else ""
        return redact(f"{endpoint}: {summary}{said}")

    def permanent(summary: str, reason: Reason) -> Permanent:
        return Permanent(
            text(summary),
            reason=reason,
            status_code=status,
            error_code=body.error_code,
            request_id=request_id,
        )

    def retry_later(summary: str, kind: type[RetryLater] = RetryLater) -> RetryLater:
        return kind(
            text(summary),
            retry_after=retry_after,
            status_code=status,
            error_code=body.error_code,
            request_id=request_id,
        )

    if status == 465:
        challenge = parse_challenge(body)
        if challenge is None:
            return retry_later("a 465 without a usable compose hash", MalformedResponse)
        return RegistrationRequired(
            text("compose hash registration required on chain"),
            challenge=challenge,
            status_code=status,
            error_code=body.error_code,
            request_id=request_id,
        )
    if status == 466:
        return StartOver(
            text(
                "the compose hash is unknown, expired, superseded or the compose changed: start from Phase 1"
            ),
            status_code=status,
            error_code=body.error_code,
            request_id=request_id,
        )
    if status == 467:
        return RecheckChain(
            text("Phala Cloud could not verify the registration transaction"),
            status_code=status,
            error_code=body.error_code,
            request_id=request_id,
        )
    if status == 468:
        return permanent(
            "the compose hash is not allowed on chain (wrong app contract or chain?)",
            Reason.COMPOSE_HASH_NOT_ALLOWED,
        )
    if status == 409 and body.error_code:
        return permanent("Phala Cloud refused the request", Reason.REMOTE_REJECTED)
    if status == 409:
        return retry_later("another operation is in progress on the CVM")
    if status == 429:
        return retry_later("rate limited by Phala Cloud")
    if status in (408, 425) or status >= 500:
        return retry_later("Phala Cloud is unavailable")
    if status == 401:
        return permanent("the API key was refused", Reason.UNAUTHORIZED)
    if status == 403:
        return permanent("the API key has no access to this CVM", Reason.FORBIDDEN)
    if status == 404:
        return permanent("CVM not found", Reason.CVM_NOT_FOUND)
    if status == 413:
        return permanent("the script is too large", Reason.INVALID_SCRIPT)
    if status in (400, 422):
        reason = Reason.INVALID_SCRIPT if script_upload else Reason.REMOTE_REJECTED
        return permanent("Phala Cloud rejected the request as invalid", reason)
    return permanent(f"unexpected HTTP status {status}", Reason.REMOTE_REJECTED)


def _validation_message(errors: list[object]) -> str | None:
    parts: list[str] = []
    for error in errors[:5]:
        if not isinstance(error, dict):
            continue
        location = error.get("loc")
        where = ".".join(str(p) for p in location) if isinstance(location, list) else None
        message = error.get("msg") if isinstance(error.get("msg"), str) else None
        if message:
            parts.append(f"{where}: {message}" if where else str(message))
    return _clean("; ".join(parts)) if parts else None


def _first_text(*values: object) -> str | None:
    for value in values:
        if isinstance(value, str) and value.strip():
            return _clean(value)
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value)
    return None


def _clean(text: str) -> str | None:
    """One line, bounded: server text ends up in conditions and events."""
    flat = _WHITESPACE.sub(" ", text).strip()
    if not flat:
        return None
    return flat if len(flat) <= MAX_MESSAGE_CHARS else flat[: MAX_MESSAGE_CHARS - 1] + "…"


def _as_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value.strip(), 0)
    return None
