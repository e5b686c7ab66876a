"""Reading Phala Cloud's successful answers into ``domain.models`` values.

Parsers are strict about what the operator relies on and lenient about everything else: a missing
optional field reads as None, an unknown field is ignored, older response shapes (numeric ids, no
``in_progress``) still read. Whatever cannot be read raises :class:`MalformedResponse` naming the
endpoint and the field, never a ``KeyError`` or a ``TypeError``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from cvm_prelaunch_operator.domain.compose_hash import load_json_bounded
from cvm_prelaunch_operator.domain.errors import RetryLater
from cvm_prelaunch_operator.domain.models import (
    ON_CHAIN_KMS_TYPES,
    CvmInfo,
    Operation,
    OperationStatus,
    UpdateAccepted,
)
from cvm_prelaunch_operator.phala.errors import MalformedResponse, normalize_app_id

_COMPLETED = frozenset({"completed", "succeeded", "success", "done"})
_FAILED = frozenset({"failed", "failure", "error", "cancelled", "canceled", "timeout", "timed_out"})


@dataclass(frozen=True)
class OperationsPage:
    """One page of ``GET /cvms/{id}/operations`` (newest first)."""

    items: tuple[Operation, ...]
    next_cursor: str | None
    total: int | None


@dataclass(frozen=True)
class CurrentOperation:
    """``GET /cvms/{id}/operation-status``: the operation running now, or idle.

    The endpoint's schema is not published; known fields are read and the rest kept in ``raw``.
    """

    idle: bool
    correlation_id: str | None = None
    operation_type: str | None = None
    status: str | None = None
    raw: Mapping[str, object] = field(default_factory=dict)


def decode_json(content: bytes, endpoint: str) -> object:
    try:
        return load_json_bounded(content.decode("utf-8"))
    except UnicodeDecodeError:
        raise MalformedResponse(f"{endpoint}: the answer is not UTF-8 text") from None
    except (ValueError, RecursionError):
        raise MalformedResponse(f"{endpoint}: the answer is not valid JSON ({_describe(content)})") from None


def parse_cvm(document: object, endpoint: str) -> CvmInfo:
    body = _object(document, endpoint, "the CVM")
    cvm_id = body.get("id")
    if isinstance(cvm_id, bool) or not isinstance(cvm_id, str | int) or cvm_id == "":
        raise MalformedResponse(f"{endpoint}: the CVM has no id")
    app_id = _text(body, "app_id", endpoint)
    if not app_id:
        raise MalformedResponse(f"{endpoint}: the CVM has no app_id")
    app_id = normalize_app_id(app_id)
    progress = _optional_object(body, "progress", endpoint)
    correlation_id = _text(progress, "correlation_id", endpoint) if progress is not None else None
    in_progress_value = body.get("in_progress")
    if in_progress_value is None:
        # Older shapes lack the flag: an operation with a correlation id is one in progress.
        in_progress = correlation_id is not None
    elif isinstance(in_progress_value, bool):
        in_progress = in_progress_value
    else:
        raise MalformedResponse(
            f"{endpoint}: in_progress is a {type(in_progress_value).__name__}, not a boolean"
        )
    kms_type = _text(body, "kms_type", endpoint)
    kms_type = kms_type.lower() if kms_type else None
    kms_info = _optional_object(body, "kms_info", endpoint) or {}
    chain_id = _integer(kms_info, "chain_id", endpoint)
    app_contract = _text(kms_info, "dstack_app_address", endpoint)
    if not app_contract and kms_type in ON_CHAIN_KMS_TYPES:
        # The app id is the address of the app's contract.
        app_contract = "0x" + app_id
    return CvmInfo(
        id=str(cvm_id),
        name=_text(body, "name", endpoint),
        app_id=app_id,
        vm_uuid=_text(body, "vm_uuid", endpoint),
        status=_text(body, "status", endpoint),
        in_progress=in_progress,
        compose_hash=_text(body, "compose_hash", endpoint),
        pre_launch_script_hash=_text(body, "pre_launch_script_hash", endpoint),
        kms_type=kms_type,
        chain_id=chain_id,
        app_contract=app_contract or None,
        progress_correlation_id=correlation_id,
    )


def parse_script(content: bytes, content_type: str | None, endpoint: str) -> str:
    """The script from ``GET .../pre-launch-script``: a JSON string per the spec, raw text on some
    servers. The content type decides; without one, a body that parses as a JSON string is one."""
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    is_json = media_type == "application/json" or media_type.endswith("+json")
    if is_json or (not media_type and content.lstrip()[:1] in (b'"', b"n")):
        try:
            document = load_json_bounded(content.decode("utf-8"))
        except (UnicodeDecodeError, ValueError, RecursionError):
            if is_json:
                raise MalformedResponse(
                    f"{endpoint}: the answer claims JSON but is not ({_describe(content)})"
                ) from None
        else:
            if document is None:
                return ""  # no script set
            if isinstance(document, str):
                return document
            if is_json:
                raise MalformedResponse(
                    f"{endpoint}: the script is a JSON {type(document).__name__}, not a string"
                )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        raise MalformedResponse(f"{endpoint}: the script is not UTF-8 text") from None


def parse_app_compose(document: object, endpoint: str) -> str:
    """``tcb_info.app_compose`` of an attestation: the exact app-compose text the CVM runs."""
    body = _object(document, endpoint, "the attestation")
    tcb_info: object = body.get("tcb_info")
    if isinstance(tcb_info, str):
        # Some servers send tcb_info as a JSON document in a string.
        try:
            tcb_info = load_json_bounded(tcb_info)
        except (ValueError, RecursionError):
            raise MalformedResponse(f"{endpoint}: tcb_info is a string but not JSON") from None
    if tcb_info is None:
        error = body.get("error")
        why = f" ({error})" if isinstance(error, str) and error else ""
        online = body.get("is_online")
        state = " (the CVM is offline)" if online is False else ""
        # Not malformed: the CVM has no attestation right now (stopped, booting). Transient.
        raise RetryLater(f"{endpoint}: the attestation has no tcb_info{state}{why}")
    if not isinstance(tcb_info, dict):
        raise MalformedResponse(f"{endpoint}: tcb_info is a {type(tcb_info).__name__}, not an object")
    app_compose = tcb_info.get("app_compose")
    if not isinstance(app_compose, str) or not app_compose:
        raise MalformedResponse(f"{endpoint}: tcb_info carries no app_compose text")
    return app_compose


def parse_update_accepted(document: object, endpoint: str) -> UpdateAccepted:
    body = _object(document, endpoint, "the answer")
    correlation_id = _text(body, "correlation_id", endpoint)
    if not correlation_id:
        raise MalformedResponse(f"{endpoint}: the update was accepted without a correlation_id")
    return UpdateAccepted(
        correlation_id=correlation_id,
        status=_text(body, "status", endpoint) or "in_progress",
        message=_text(body, "message", endpoint) or "",
    )


def parse_operations_page(document: object, endpoint: str) -> OperationsPage:
    body = _object(document, endpoint, "the operations page")
    items = body.get("items")
    if not isinstance(items, list):
        raise MalformedResponse(f"{endpoint}: items is missing or not a list")
    next_cursor = body.get("next_cursor")
    return OperationsPage(
        items=tuple(parse_operation(item, endpoint) for item in items),
        next_cursor=next_cursor if isinstance(next_cursor, str) and next_cursor else None,
        total=_integer(body, "total", endpoint),
    )


def parse_operation(document: object, endpoint: str) -> Operation:
    body = _object(document, endpoint, "an operation")
    correlation_id = _text(body, "correlation_id", endpoint)
    if not correlation_id:
        raise MalformedResponse(f"{endpoint}: an operation has no correlation_id")
    return Operation(
        correlation_id=correlation_id,
        operation_type=_text(body, "operation_type", endpoint),
        status=operation_status(_text(body, "status", endpoint)),
        error_message=_text(body, "error_message", endpoint),
        started_at=_text(body, "started_at", endpoint),
        completed_at=_text(body, "completed_at", endpoint),
        reported_status=_text(body, "status", endpoint),
    )


def operation_status(status: str | None) -> OperationStatus:
    """Map the server's word to the three the operator knows; anything unknown is still running
    (the reconciler keeps watching it, bounded by its own timeout)."""
    word = (status or "").strip().lower()
    if word in _COMPLETED:
        return "completed"
    if word in _FAILED:
        return "failed"
    return "in_progress"


def parse_current_operation(document: object, endpoint: str) -> CurrentOperation:
    body = _object(document, endpoint, "the operation status")
    nested = body.get("operation")
    source: Mapping[str, object] = nested if isinstance(nested, dict) else body
    correlation_id = _text(source, "correlation_id", endpoint)
    status = _text(source, "status", endpoint) or _text(body, "status", endpoint)
    in_progress = body.get("in_progress")
    if isinstance(in_progress, bool):
        idle = not in_progress
    else:
        idle = correlation_id is None or (status or "").lower() in ("idle", *_COMPLETED, *_FAILED)
    return CurrentOperation(
        idle=idle,
        correlation_id=correlation_id,
        operation_type=_text(source, "operation_type", endpoint) or _text(source, "type", endpoint),
        status=status,
        raw=dict(body),
    )


def _object(document: object, endpoint: str, what: str) -> Mapping[str, object]:
    if not isinstance(document, dict):
        raise MalformedResponse(f"{endpoint}: {what} is a JSON {type(document).__name__}, not an object")
    return document


def _optional_object(body: Mapping[str, object], name: str, endpoint: str) -> Mapping[str, object] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise MalformedResponse(f"{endpoint}: {name} is a {type(value).__name__}, not an object")
    return value


def _text(body: Mapping[str, object], name: str, endpoint: str) -> str | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)  # older shapes use numbers for ids
    raise MalformedResponse(f"{endpoint}: {name} is a {type(value).__name__}, not a string")


def _integer(body: Mapping[str, object], name: str, endpoint: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    raise MalformedResponse(f"{endpoint}: {name} is a {type(value).__name__}, not an integer")


def _describe(content: bytes) -> str:
    """What a body looks like, without quoting it (a snippet could cut a secret in half)."""
    stripped = content.strip()
    if not stripped:
        return "empty body"
    if stripped[:1] == b"<":
        kind = "markup, an HTML error page?"
    elif stripped[:1] in (b"{", b"["):
        kind = "truncated or broken JSON?"
    else:
        kind = "text"
    return f"{len(content)} bytes of {kind}"
