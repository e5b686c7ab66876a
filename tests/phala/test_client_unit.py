"""The Phala Cloud client on httpx's MockTransport: the wire format, failures of the transport and
malformed answers. Status codes and the two-phase flow run against the simulator in
``test_client_simulator.py``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from phala_test_support import API_KEY, BASE_URL, MockCloud

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import MalformedResponse, PhalaCloudClient, PhalaCloudSettings
from cvm_prelaunch_operator.phala.client import MAX_RESPONSE_BYTES, MAX_SCRIPT_BYTES

APP_ID = "1234567890abcdef1234567890abcdef12345678"
CVM = {
    "id": "cvm_ykL5lbAn",
    "name": "my-app",
    "app_id": APP_ID,
    "vm_uuid": "0b3e0a6e-8f4c-4b5a-9d7e-2f1c3b4a5d6e",
    "status": "running",
    "in_progress": False,
    "progress": None,
    "compose_hash": "ef" * 32,
    "pre_launch_script_hash": "12" * 32,
    "kms_type": "base",
    "kms_info": {"chain_id": 8453, "dstack_app_address": None, "dstack_kms_address": "0xkms"},
    "resource": {},
    "gateway": {},
}


# --- the wire --------------------------------------------------------------------------------------


async def test_every_request_carries_key_version_and_user_agent(cloud: MockCloud) -> None:
    cloud.answer(json=CVM)
    await cloud.session.get_cvm("cvm_ykL5lbAn")
    (request,) = cloud.requests
    assert str(request.url) == f"{BASE_URL}/cvms/cvm_ykL5lbAn"
    assert request.headers["x-api-key"] == API_KEY
    assert request.headers["x-phala-version"] == "2026-06-23"
    assert request.headers["user-agent"].startswith(f"cvm-prelaunch-operator/{__version__} ")
    assert cloud.observed[0][:2] == ("GET /cvms/{id}", 200)


async def test_phase_one_sends_the_raw_script_and_no_hash_headers(cloud: MockCloud) -> None:
    cloud.answer(202, json={"status": "in_progress", "message": "queued", "correlation_id": "corr-1"})
    script = "#!/bin/sh\necho 'grüße'\r\n\x00end".encode()
    accepted = await cloud.session.patch_pre_launch_script("cvm_ykL5lbAn", script)
    assert (accepted.correlation_id, accepted.status, accepted.message) == ("corr-1", "in_progress", "queued")
    (request,) = cloud.requests
    assert request.method == "PATCH"
    assert request.url.path == "/api/v1/cvms/cvm_ykL5lbAn/pre-launch-script"
    assert request.headers["content-type"] == "text/plain"
    assert request.content == script  # byte for byte
    assert "x-compose-hash" not in request.headers
    assert "x-transaction-hash" not in request.headers
    assert cloud.observed[0][:2] == ("PATCH /cvms/{id}/pre-launch-script", 202)


async def test_phase_two_echoes_the_hash_unchanged(cloud: MockCloud) -> None:
    cloud.answer(202, json={"status": "in_progress", "message": "", "correlation_id": "corr-2"})
    compose_hash = "AB" * 32  # as the 465 gave it: no 0x, upper case
    tx_hash = "0x" + "cd" * 32
    await cloud.session.patch_pre_launch_script(
        "c", b"x", compose_hash=compose_hash, transaction_hash=tx_hash
    )
    assert cloud.requests[0].headers["x-compose-hash"] == compose_hash
    assert cloud.requests[0].headers["x-transaction-hash"] == tx_hash


async def test_patch_refuses_caller_mistakes_without_a_request(cloud: MockCloud) -> None:
    with pytest.raises(ValueError, match="both"):
        await cloud.session.patch_pre_launch_script("c", b"x", compose_hash="ab" * 32)
    with pytest.raises(Permanent, match="transaction hash"):
        await cloud.session.patch_pre_launch_script(
            "c", b"x", compose_hash="ab" * 32, transaction_hash="0x12"
        )
    with pytest.raises(Permanent, match="compose hash"):
        await cloud.session.patch_pre_launch_script(
            "c", b"x", compose_hash="a\r\nb", transaction_hash="0x" + "1" * 64
        )
    with pytest.raises(Permanent, match="compose hash"):
        await cloud.session.patch_pre_launch_script(
            "c", b"x", compose_hash="ab" * 32 + "\n", transaction_hash="0x" + "1" * 64
        )
    with pytest.raises(Permanent) as empty:
        await cloud.session.patch_pre_launch_script("c", b"")
    assert empty.value.reason == Reason.INVALID_SCRIPT
    with pytest.raises(Permanent) as large:
        await cloud.session.patch_pre_launch_script("c", b"x" * (MAX_SCRIPT_BYTES + 1))
    assert large.value.reason == Reason.INVALID_SCRIPT
    assert cloud.requests == []


@pytest.mark.parametrize(
    "cvm_id", ["", "../admin", "a/b", "a?b=c", "x" * 200, "..", "名前", "a b", "cvm_1\n"]
)
async def test_cvm_ids_that_are_not_ids_are_refused(cloud: MockCloud, cvm_id: str) -> None:
    with pytest.raises(Permanent) as refused:
        await cloud.session.get_cvm(cvm_id)
    assert refused.value.reason == Reason.INVALID_SPEC
    assert cloud.requests == []


@pytest.mark.parametrize(
    "key", ["", "phak_with space", "phak_new\nline", "phak_ünïcode", "phak_trailing_newline\n"]
)
async def test_keys_a_header_cannot_carry_are_refused_without_echoing_them(key: str) -> None:
    async with PhalaCloudClient(
        PhalaCloudSettings(base_url=BASE_URL), transport=httpx.MockTransport(_never)
    ) as client:
        with pytest.raises(Permanent) as refused:
            await client.for_api_key(Secret(key)).get_cvm("c")
    assert refused.value.reason == Reason.UNAUTHORIZED
    if key:
        assert key not in str(refused.value)
        assert key not in repr(refused.value)


def _never(request: httpx.Request) -> httpx.Response:
    raise AssertionError("no request expected")


# --- answers ---------------------------------------------------------------------------------------


async def test_cvm_info(cloud: MockCloud) -> None:
    cloud.answer(
        json={**CVM, "in_progress": True, "progress": {"correlation_id": "corr-9", "target": "running"}}
    )
    info = await cloud.session.get_cvm("cvm_ykL5lbAn")
    assert info.id == "cvm_ykL5lbAn"
    assert info.app_id == APP_ID
    assert info.on_chain
    assert info.chain_id == 8453
    assert info.app_contract == "0x" + APP_ID  # no dstack_app_address: the app id is the contract
    assert info.in_progress
    assert info.progress_correlation_id == "corr-9"
    assert info.compose_hash == "ef" * 32
    assert info.pre_launch_script_hash == "12" * 32


async def test_cvm_info_prefers_the_app_address_and_reads_old_shapes(cloud: MockCloud) -> None:
    cloud.answer(json={**CVM, "kms_info": {"chain_id": 1, "dstack_app_address": "0xAbC"}})
    assert (await cloud.session.get_cvm("c")).app_contract == "0xAbC"
    old = {
        "id": 4242,
        "name": "old",
        "app_id": "app_" + APP_ID.upper(),
        "status": "running",
        "kms_type": "phala",
    }
    cloud.answer(json=old)
    info = await cloud.session.get_cvm("c")
    assert (info.id, info.app_id, info.in_progress, info.app_contract, info.on_chain) == (
        "4242",
        APP_ID,
        False,
        None,
        False,
    )


@pytest.mark.parametrize(
    ("content_type", "body", "script"),
    [
        ("application/json", json.dumps("#!/bin/sh\necho 'hi'\n"), "#!/bin/sh\necho 'hi'\n"),
        ("application/json; charset=utf-8", "null", ""),
        ("text/plain; charset=utf-8", '#!/bin/sh\necho "raw"\n', '#!/bin/sh\necho "raw"\n'),
        ("text/plain", '"quoted raw"', '"quoted raw"'),
        (None, json.dumps("echo é"), "echo é"),
        (None, "echo raw", "echo raw"),
    ],
)
async def test_script_as_json_string_or_raw_text(
    cloud: MockCloud, content_type: str | None, body: str, script: str
) -> None:
    headers = {"content-type": content_type} if content_type else {}
    cloud.answer(content=body.encode(), headers=headers)
    assert await cloud.session.get_pre_launch_script("c") == script


@pytest.mark.parametrize(
    "tcb_info",
    [
        {"mrtd": "x", "app_compose": '{"runner": "docker-compose"}'},
        json.dumps({"mrtd": "x", "app_compose": '{"runner": "docker-compose"}'}),  # tcb_info as a JSON string
    ],
)
async def test_app_compose_is_the_exact_attestation_text(cloud: MockCloud, tcb_info: object) -> None:
    cloud.answer(json={"is_online": True, "tcb_info": tcb_info})
    assert await cloud.session.get_app_compose("c") == '{"runner": "docker-compose"}'
    assert cloud.requests[0].url.path == "/api/v1/cvms/c/attestation"


async def test_app_compose_of_an_offline_cvm_is_retried_later(cloud: MockCloud) -> None:
    cloud.answer(json={"is_online": False, "error": "CVM is stopped", "tcb_info": None})
    with pytest.raises(RetryLater, match=r"offline.*CVM is stopped"):
        await cloud.session.get_app_compose("c")


async def test_find_operation_pages_through_the_history(cloud: MockCloud) -> None:
    pages = {
        None: {"items": [{"correlation_id": "a", "status": "completed"}], "next_cursor": "p2", "total": 3},
        "p2": {
            "items": [
                {"correlation_id": "b", "status": "in_progress"},
                {"correlation_id": "c", "status": "failed", "error_message": "boom", "operation_type": "x"},
            ],
            "next_cursor": None,
            "total": 3,
        },
    }
    cloud.handler = lambda request: httpx.Response(200, json=pages[request.url.params.get("cursor")])
    found = await cloud.session.find_operation("c", "c")
    assert found is not None
    assert (found.status, found.error_message, found.operation_type) == ("failed", "boom", "x")
    assert cloud.requests[0].url.params["limit"] == "100"
    assert await cloud.session.find_operation("c", "missing") is None
    assert len(cloud.requests) == 4


async def test_operation_status(cloud: MockCloud) -> None:
    cloud.answer(json={"status": "idle"})
    assert (await cloud.session.get_operation_status("c")).idle
    cloud.answer(json={"in_progress": True, "correlation_id": "k", "operation_type": "compose_update"})
    current = await cloud.session.get_operation_status("c")
    assert (current.idle, current.correlation_id, current.operation_type) == (False, "k", "compose_update")


# --- malformed answers: a clear error, never a crash ---------------------------------------------------

MALFORMED_CVMS: list[tuple[str, bytes]] = [
    ("not JSON", b"<html>502 Bad Gateway</html>"),
    ("truncated", json.dumps(CVM).encode()[:-20]),
    ("empty", b""),
    ("not UTF-8", b"\xff\xfe{}"),
    ("a list", b"[]"),
    ("no id", json.dumps({**CVM, "id": None}).encode()),
    ("id is a list", json.dumps({**CVM, "id": ["x"]}).encode()),
    ("no app_id", json.dumps({**CVM, "app_id": None}).encode()),
    ("in_progress is text", json.dumps({**CVM, "in_progress": "yes"}).encode()),
    ("kms_info is text", json.dumps({**CVM, "kms_info": "base"}).encode()),
    ("chain_id is a float", json.dumps({**CVM, "kms_info": {"chain_id": 1.5}}).encode()),
    ("progress is a list", json.dumps({**CVM, "progress": []}).encode()),
    ("status is an object", json.dumps({**CVM, "status": {}}).encode()),
    ("deeply nested", b"[" * 100_000),
]


@pytest.mark.parametrize(("label", "body"), MALFORMED_CVMS, ids=[m[0] for m in MALFORMED_CVMS])
async def test_malformed_cvm_answers(cloud: MockCloud, label: str, body: bytes) -> None:
    cloud.answer(content=body, headers={"content-type": "application/json", "x-request-id": "rid-7"})
    with pytest.raises(MalformedResponse) as failure:
        await cloud.session.get_cvm("c")
    assert str(failure.value).startswith("GET /cvms/{id}: ")
    assert failure.value.status_code == 200
    assert failure.value.request_id == "rid-7"
    assert failure.value.reason == Reason.REMOTE_UNAVAILABLE


MALFORMED_OTHERS: list[tuple[str, str, bytes]] = [
    ("script claims JSON", "script", b"{not json"),
    ("script is a number", "script", b"42"),
    ("accepted without correlation id", "patch", b'{"status": "in_progress"}'),
    ("accepted as a list", "patch", b"[]"),
    (
        "attestation without tcb_info app_compose",
        "compose",
        b'{"is_online": true, "tcb_info": {"mrtd": "x"}}',
    ),
    ("tcb_info string not JSON", "compose", b'{"is_online": true, "tcb_info": "{oops"}'),
    ("tcb_info a number", "compose", b'{"is_online": true, "tcb_info": 5}'),
    ("operations without items", "operations", b'{"total": 1}'),
    ("operation without correlation id", "operations", b'{"items": [{"status": "completed"}]}'),
    ("operation not an object", "operations", b'{"items": ["x"]}'),
    ("total is text", "operations", b'{"items": [], "total": "many"}'),
    ("operation status a list", "status", b"[]"),
]


@pytest.mark.parametrize(("label", "call", "body"), MALFORMED_OTHERS, ids=[m[0] for m in MALFORMED_OTHERS])
async def test_malformed_other_answers(cloud: MockCloud, label: str, call: str, body: bytes) -> None:
    status = 202 if call == "patch" else 200
    cloud.answer(status, content=body, headers={"content-type": "application/json"})
    session = cloud.session
    calls: dict[str, Callable[[], Awaitable[object]]] = {
        "script": lambda: session.get_pre_launch_script("c"),
        "patch": lambda: session.patch_pre_launch_script("c", b"x"),
        "compose": lambda: session.get_app_compose("c"),
        "operations": lambda: session.find_operation("c", "x"),
        "status": lambda: session.get_operation_status("c"),
    }
    with pytest.raises(MalformedResponse):
        await calls[call]()


async def test_an_oversized_answer_is_refused(cloud: MockCloud) -> None:
    cloud.answer(content=b"x" * (MAX_RESPONSE_BYTES + 1))
    with pytest.raises(MalformedResponse, match="larger than"):
        await cloud.session.get_cvm("c")


# --- transport failures ------------------------------------------------------------------------------


async def test_timeouts_are_retried_later_and_observed(cloud: MockCloud) -> None:
    def slow(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    cloud.handler = slow
    with pytest.raises(RetryLater, match="did not answer in time") as failure:
        await cloud.session.get_cvm("c")
    assert failure.value.reason == Reason.REMOTE_UNAVAILABLE
    assert failure.value.__context__ is None  # the httpx error, whose request holds the key, is dropped
    assert failure.value.__cause__ is None
    assert len(cloud.requests) == 1  # timeouts are not retried
    assert [(endpoint, status) for endpoint, status, _ in cloud.observed] == [("GET /cvms/{id}", None)]


async def test_a_get_whose_connection_broke_is_retried_once(cloud: MockCloud) -> None:
    answers: list[httpx.Response | Exception] = [httpx.ConnectError("refused"), httpx.Response(200, json=CVM)]

    def flaky(request: httpx.Request) -> httpx.Response:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    cloud.handler = flaky
    assert (await cloud.session.get_cvm("c")).app_id == APP_ID
    assert [status for _, status, _ in cloud.observed] == [None, 200]


async def test_a_get_is_retried_only_once(cloud: MockCloud) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    cloud.handler = down
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 2


async def test_a_patch_is_never_retried(cloud: MockCloud) -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")

    cloud.handler = broken
    with pytest.raises(RetryLater):
        await cloud.session.patch_pre_launch_script("c", b"x")
    assert len(cloud.requests) == 1


class _TruncatedStream(httpx.AsyncByteStream):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        yield b'{"id": "cvm_1", "app_'
        raise httpx.RemoteProtocolError("peer closed connection without sending complete message body")


async def test_a_body_cut_off_mid_stream_is_retried_then_reported(cloud: MockCloud) -> None:
    cloud.handler = lambda request: httpx.Response(200, stream=_TruncatedStream())
    with pytest.raises(RetryLater, match="RemoteProtocolError"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 2


async def test_retry_after_from_the_server(cloud: MockCloud) -> None:
    cloud.answer(429, json={"detail": "slow down"}, headers={"retry-after": "7"})
    with pytest.raises(RetryLater) as limited:
        await cloud.session.get_cvm("c")
    assert limited.value.retry_after == 7.0
    assert "slow down" in str(limited.value)
    cloud.answer(409, json={"detail": "Another operation in progress"}, headers={"Retry-After": "2"})
    with pytest.raises(RetryLater) as busy:
        await cloud.session.patch_pre_launch_script("c", b"x")
    assert busy.value.retry_after == 2.0


async def test_redirects_elsewhere_are_not_followed(cloud: MockCloud) -> None:
    cloud.answer(302, headers={"location": "https://evil.example/api/v1/cvms/c"})
    with pytest.raises(Permanent, match="not followed") as failure:
        await cloud.session.get_cvm("c")
    assert "evil.example" in str(failure.value)
    assert [str(r.url.host) for r in cloud.requests] == ["cloud-api.example.test"]
    cloud.requests.clear()
    cloud.answer(307, headers={"location": "https://cloud-api.example.test/other/c"})
    with pytest.raises(Permanent, match="not followed"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 1


async def test_redirects_under_the_base_url_are_followed_with_the_key(cloud: MockCloud) -> None:
    def route(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/cvms/old":
            return httpx.Response(308, headers={"location": "/api/v1/cvms/new"})
        return httpx.Response(200, json=CVM)

    cloud.handler = route
    await cloud.session.get_cvm("old")
    assert [r.url.path for r in cloud.requests] == ["/api/v1/cvms/old", "/api/v1/cvms/new"]
    assert all(r.headers["x-api-key"] == API_KEY for r in cloud.requests)
    cloud.requests.clear()
    # A PATCH follows only a 307/308 (a 302 would turn it into a GET).
    cloud.answer(302, headers={"location": "/api/v1/cvms/new/pre-launch-script"})
    with pytest.raises(Permanent, match="not followed"):
        await cloud.session.patch_pre_launch_script("old", b"x")


async def test_a_redirect_loop_ends(cloud: MockCloud) -> None:
    cloud.answer(307, headers={"location": "/api/v1/cvms/c"})
    with pytest.raises(Permanent, match="not followed"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 4


async def test_a_failing_observer_does_not_break_requests(caplog: pytest.LogCaptureFixture) -> None:
    def observer(endpoint: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    transport = httpx.MockTransport(lambda request: httpx.Response(200, json=CVM))
    async with PhalaCloudClient(
        PhalaCloudSettings(base_url=BASE_URL), transport=transport, observer=observer
    ) as client:
        assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID
    assert "observer failed" in caplog.text


async def test_concurrency_is_bounded_across_keys() -> None:
    running = 0
    peak = 0

    async def slow(request: httpx.Request) -> httpx.Response:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return httpx.Response(200, json=CVM)

    settings = PhalaCloudSettings(base_url=BASE_URL, max_concurrency=3)
    async with PhalaCloudClient(settings, transport=httpx.MockTransport(slow)) as client:
        sessions = [client.for_api_key(Secret(f"phak_key_{n}")) for n in range(5)]
        await asyncio.gather(*(sessions[n % 5].get_cvm(f"cvm_{n}") for n in range(40)))
        assert client.peak_in_flight == 3
        assert client.in_flight == 0
    assert peak == 3


async def test_reprs_hide_the_key(cloud: MockCloud) -> None:
    assert API_KEY not in repr(cloud.session)
    assert API_KEY not in repr(cloud.client)
    assert "***" in repr(cloud.session)


async def test_every_method_raises_only_sync_errors_on_garbage(cloud: MockCloud) -> None:
    cloud.answer(200, content=b"\x00\x01garbage", headers={"content-type": "application/json"})
    calls = [
        cloud.session.get_cvm("c"),
        cloud.session.get_pre_launch_script("c"),
        cloud.session.get_app_compose("c"),
        cloud.session.find_operation("c", "x"),
        cloud.session.get_operation_status("c"),
        cloud.session.list_operations("c"),
    ]
    for call in calls:
        with pytest.raises(SyncError):
            await call
