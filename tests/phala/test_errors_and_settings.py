"""Error-body parsing, status mapping, Retry-After and settings: pure parts of the Phala client."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
)
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.phala.errors import (
    MAX_MESSAGE_CHARS,
    ErrorBody,
    MalformedResponse,
    error_for_status,
    parse_challenge,
    parse_error_body,
    parse_retry_after,
)
from cvm_prelaunch_operator.phala.settings import DEFAULT_API_VERSION, DEFAULT_BASE_URL, PhalaCloudSettings

HASH = "ab" * 32
APP_ID = "1234567890abcdef1234567890abcdef12345678"
DEVICE = "cd" * 32
KMS_INFO = {"id": "kms_1", "slug": "kms-base-prod9", "url": "https://kms.example", "chain_id": 8453}

STRUCTURED_465 = {
    "error_code": "ERR-01-005",
    "message": "Compose hash registration required on-chain",
    "request_id": "rid-1",
    "details": [
        {"field": "compose_hash", "value": "0x" + HASH, "message": None},
        {"field": "app_id", "value": APP_ID, "message": None},
        {"field": "device_id", "value": DEVICE, "message": None},
        {"field": "kms_info", "value": KMS_INFO, "message": None},
    ],
    "suggestions": ["register it"],
    "links": [{"url": "https://docs", "label": "Docs"}],
}
NESTED_465 = {"detail": STRUCTURED_465}
FLAT_465 = {
    "detail": "Compose hash registration required",
    "compose_hash": HASH,
    "app_id": APP_ID,
    "device_id": DEVICE,
    "kms_info": KMS_INFO,
}


def _body(document: object) -> ErrorBody:
    return parse_error_body(json.dumps(document).encode())


@pytest.mark.parametrize(
    ("document", "message", "code", "request_id"),
    [
        (STRUCTURED_465, "Compose hash registration required on-chain", "ERR-01-005", "rid-1"),
        (NESTED_465, "Compose hash registration required on-chain", "ERR-01-005", "rid-1"),
        ({"detail": "CVM not found"}, "CVM not found", None, None),
        ({"message": "Unauthorized"}, "Unauthorized", None, None),
        (
            {"detail": [{"loc": ["body", "file"], "msg": "Field required", "type": "missing"}]},
            "body.file: Field required",
            None,
            None,
        ),
        ("just a JSON string", "just a JSON string", None, None),
        ([1, 2, 3], None, None, None),
        ({"error_code": 7, "message": ["not", "text"]}, None, "7", None),
    ],
)
def test_error_body_shapes(
    document: object, message: str | None, code: str | None, request_id: str | None
) -> None:
    body = _body(document)
    assert (body.message, body.error_code, body.request_id) == (message, code, request_id)


def test_error_body_that_is_not_json_is_summarised() -> None:
    html = b"<html>\n<body>502   Bad Gateway</body>\n</html>" + b"x" * 1000
    body = parse_error_body(html)
    assert body.message is not None
    assert body.message.startswith("<html> <body>502 Bad Gateway")
    assert len(body.message) == MAX_MESSAGE_CHARS
    assert parse_error_body(b"").message is None
    assert parse_error_body(b"\xff\xfe\x00garbage").message is not None
    assert parse_error_body(b'{"detail": "trunc').message == '{"detail": "trunc'


@pytest.mark.parametrize(
    "document", [STRUCTURED_465, NESTED_465, FLAT_465], ids=["structured", "nested", "flat"]
)
def test_challenge_from_all_three_465_forms(document: object) -> None:
    challenge = parse_challenge(_body(document))
    assert challenge is not None
    assert challenge.compose_hash.removeprefix("0x") == HASH
    assert challenge.compose_hash_hex == "0x" + HASH
    assert challenge.app_id == APP_ID
    assert challenge.device_id == DEVICE
    assert challenge.chain_id == 8453
    assert challenge.kms_info["slug"] == "kms-base-prod9"


def test_challenge_keeps_the_hash_exactly_as_received() -> None:
    upper = {**FLAT_465, "compose_hash": "0x" + HASH.upper()}
    challenge = parse_challenge(_body(upper))
    assert challenge is not None
    assert challenge.compose_hash == "0x" + HASH.upper()


@pytest.mark.parametrize(
    "fields",
    [
        {"compose_hash": None},
        {"compose_hash": 12},
        {"compose_hash": "0x1234"},
        {"app_id": APP_ID},
        {"compose_hash": HASH, "kms_info": "not an object", "app_id": ["x"]},
    ],
)
def test_challenge_tolerates_wrong_types(fields: dict[str, object]) -> None:
    challenge = parse_challenge(_body(fields))
    if isinstance(fields.get("compose_hash"), str) and len(str(fields["compose_hash"])) == 64:
        assert challenge is not None
        assert challenge.kms_info == {}
        assert challenge.app_id is None
        assert challenge.chain_id is None
    else:
        assert challenge is None


def test_chain_id_may_be_text_or_top_level() -> None:
    challenge = parse_challenge(_body({"compose_hash": HASH, "kms_info": {"chain_id": "0x2105"}}))
    assert challenge is not None
    assert challenge.chain_id == 8453
    challenge = parse_challenge(_body({"compose_hash": HASH, "chain_id": "1"}))
    assert challenge is not None
    assert challenge.chain_id == 1


@pytest.mark.parametrize(
    ("status", "document", "kind", "reason"),
    [
        (400, {"detail": "empty body"}, Permanent, Reason.INVALID_SCRIPT),
        (401, {"error_code": "ERR-03-001", "message": "no auth"}, Permanent, Reason.UNAUTHORIZED),
        (403, {"error_code": "ERR-03-003", "message": "workspace"}, Permanent, Reason.FORBIDDEN),
        (404, {"error_code": "ERR-03-005", "message": "not found"}, Permanent, Reason.CVM_NOT_FOUND),
        (409, {"detail": "another operation in progress"}, RetryLater, Reason.REMOTE_UNAVAILABLE),
        (409, {"error_code": "ERR-02-001", "message": "business"}, Permanent, Reason.REMOTE_REJECTED),
        (413, {}, Permanent, Reason.INVALID_SCRIPT),
        (422, {"detail": [{"loc": ["body"], "msg": "bad", "type": "x"}]}, Permanent, Reason.INVALID_SCRIPT),
        (429, {}, RetryLater, Reason.REMOTE_UNAVAILABLE),
        (465, STRUCTURED_465, RegistrationRequired, Reason.REGISTERING_ON_CHAIN),
        (465, {"message": "no hash"}, MalformedResponse, Reason.REMOTE_UNAVAILABLE),
        (466, {"error_code": "ERR-01-006", "message": "expired"}, StartOver, Reason.REGISTRATION_REJECTED),
        (
            467,
            {"error_code": "ERR-01-007", "message": "no receipt"},
            RecheckChain,
            Reason.REGISTRATION_REJECTED,
        ),
        (
            468,
            {"error_code": "ERR-01-008", "message": "not allowed"},
            Permanent,
            Reason.COMPOSE_HASH_NOT_ALLOWED,
        ),
        (500, {"detail": "KMS error"}, RetryLater, Reason.REMOTE_UNAVAILABLE),
        (503, {}, RetryLater, Reason.REMOTE_UNAVAILABLE),
        (418, {}, Permanent, Reason.REMOTE_REJECTED),
    ],
)
def test_status_mapping(status: int, document: object, kind: type[Exception], reason: Reason) -> None:
    error = error_for_status(
        status,
        _body(document),
        endpoint="PATCH /cvms/{id}/pre-launch-script",
        script_upload=True,
        retry_after=3.0,
        header_request_id="hdr-rid",
    )
    assert type(error) is kind
    assert error.reason == reason
    assert error.status_code == status
    assert str(error).startswith("PATCH /cvms/{id}/pre-launch-script: ")
    assert f"HTTP {status}" in str(error)
    body = _body(document)
    if body.message:
        assert body.message in str(error)
    assert error.error_code == body.error_code
    assert error.request_id == (body.request_id or "hdr-rid")
    if isinstance(error, RetryLater):
        assert error.retry_after == 3.0


def test_invalid_request_outside_the_upload_is_not_an_invalid_script() -> None:
    error = error_for_status(
        422, ErrorBody(), endpoint="GET /cvms/{id}/operations", script_upload=False, retry_after=None
    )
    assert error.reason == Reason.REMOTE_REJECTED


def test_messages_pass_through_the_redactor() -> None:
    error = error_for_status(
        401,
        ErrorBody(message="bad key phak_secret"),
        endpoint="GET /cvms/{id}",
        script_upload=False,
        retry_after=None,
        redact=lambda text: text.replace("phak_secret", "***"),
    )
    assert "phak_secret" not in str(error)
    assert "***" in str(error)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("", None),
        ("5", 5.0),
        ("0.5", 0.5),
        ("-3", 0.0),
        ("1e12", 86_400.0),
        ("nan", None),
        ("soon", None),
        ("Fri, 27 Nov 2026 08:00:30 GMT", 30.0),
        ("Fri, 27 Nov 2026 07:59:00 GMT", 0.0),
    ],
)
def test_retry_after(header: str | None, expected: float | None) -> None:
    now = datetime(2026, 11, 27, 8, 0, 0, tzinfo=UTC)
    assert parse_retry_after(header, now=now) == expected


# --- settings ------------------------------------------------------------------------------------


def test_settings_defaults_and_environment() -> None:
    defaults = PhalaCloudSettings.from_env({})
    assert defaults.base_url == DEFAULT_BASE_URL == "https://cloud-api.phala.com/api/v1"
    assert defaults.api_version == DEFAULT_API_VERSION == "2026-06-23"
    configured = PhalaCloudSettings.from_env(
        {
            "PHALA_CLOUD_API_URL": "http://127.0.0.1:8080/api/v1/",
            "PHALA_CLOUD_API_VERSION": "2026-01-21",
            "PHALA_CLOUD_MAX_CONCURRENCY": "3",
            "PHALA_CLOUD_CONNECT_TIMEOUT": "1.5",
            "PHALA_CLOUD_READ_TIMEOUT": "",
        }
    )
    assert configured.base_url == "http://127.0.0.1:8080/api/v1"
    assert configured.api_version == "2026-01-21"
    assert configured.max_concurrency == 3
    assert configured.connect_timeout == 1.5
    assert configured.read_timeout == defaults.read_timeout


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PHALA_CLOUD_API_URL": "http://cloud-api.phala.com/api/v1"}, "plain http"),
        ({"PHALA_CLOUD_API_URL": "cloud-api.phala.com"}, "absolute https"),
        ({"PHALA_CLOUD_API_URL": "https://user:pw@cloud-api.phala.com"}, "credentials"),
        ({"PHALA_CLOUD_API_URL": "https://h:99999"}, "not a valid URL"),
        ({"PHALA_CLOUD_MAX_CONCURRENCY": "many"}, "must be an integer"),
        ({"PHALA_CLOUD_MAX_CONCURRENCY": "0"}, "at least 1"),
        ({"PHALA_CLOUD_READ_TIMEOUT": "-1"}, "positive"),
        ({"PHALA_CLOUD_API_VERSION": " "}, "must not be empty"),
    ],
)
def test_settings_refuse_bad_values(env: dict[str, str], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        PhalaCloudSettings.from_env(env)


def test_loopback_may_use_plain_http() -> None:
    for url in ("http://localhost:1/api/v1", "http://[::1]:1/api/v1", "http://127.0.0.2/api/v1"):
        assert PhalaCloudSettings(base_url=url).base_url == url
