"""The Phala Cloud client over real sockets on a mock server whose every byte a test controls
(``phala_test_support.MockCloud``): the wire format, failures of the transport, malformed answers,
TLS and proxies. Status codes and the two-phase flow run against the simulator in
``test_client_simulator.py``."""

from __future__ import annotations

import asyncio
import base64
import gzip
import ipaddress
import json
import shutil
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import certifi
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from phala_test_support import API_KEY, DROP, MockCloud, MockServer, Reply, Request

from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.proxy import proxy_from_environment
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import MalformedResponse, PhalaCloudClient, PhalaCloudSettings
from cvm_prelaunch_operator.phala.client import (
    MAX_RESPONSE_BYTES,
    MAX_SCRIPT_BYTES,
    tls_context,
)

PROXY_PASSWORD = "pr0xy-pa55word@of-the-proxy"
PROXY_PASSWORD_ESCAPED = "pr0xy-pa55word%40of-the-proxy"

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
    assert str(request.url) == f"{cloud.base_url}/cvms/cvm_ykL5lbAn"
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
async def test_keys_a_header_cannot_carry_are_refused_without_echoing_them(
    cloud: MockCloud, key: str
) -> None:
    async with PhalaCloudClient(PhalaCloudSettings(base_url=cloud.base_url)) as client:
        with pytest.raises(Permanent) as refused:
            await client.for_api_key(Secret(key)).get_cvm("c")
    assert refused.value.reason == Reason.UNAUTHORIZED
    if key:
        assert key not in str(refused.value)
        assert key not in repr(refused.value)
    assert cloud.requests == []


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
    cloud.handler = lambda request: Reply(200, json=pages[request.url.query.get("cursor")])
    found = await cloud.session.find_operation("c", "c")
    assert found is not None
    assert (found.status, found.error_message, found.operation_type) == ("failed", "boom", "x")
    assert cloud.requests[0].url.query["limit"] == "100"
    assert cloud.requests[1].url.query["cursor"] == "p2"
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


async def test_an_oversized_answer_without_a_length_is_cut_off_while_read(cloud: MockCloud) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
    cloud.handler = lambda request: Reply(raw=head + b" " * (MAX_RESPONSE_BYTES + 1))
    with pytest.raises(MalformedResponse, match="larger than"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 1


async def test_the_size_limit_counts_decompressed_bytes(cloud: MockCloud) -> None:
    bomb = gzip.compress(b" " * (MAX_RESPONSE_BYTES + 1))
    assert len(bomb) < 100_000
    cloud.answer(content=bomb, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})
    with pytest.raises(MalformedResponse, match="larger than"):
        await cloud.session.get_cvm("c")


async def test_compressed_answers_are_read(cloud: MockCloud) -> None:
    cloud.answer(
        content=gzip.compress(json.dumps(CVM).encode()),
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (await cloud.session.get_cvm("c")).app_id == APP_ID
    assert "gzip" in cloud.requests[0].headers["accept-encoding"]


async def test_an_answer_that_cannot_be_decompressed_is_malformed_and_not_retried(cloud: MockCloud) -> None:
    cloud.answer(content=b"this is not gzip", headers={"Content-Encoding": "gzip", "x-request-id": "rid-8"})
    with pytest.raises(MalformedResponse, match="cannot be decoded") as failure:
        await cloud.session.get_cvm("c")
    assert failure.value.__context__ is None
    assert failure.value.__cause__ is None
    assert len(cloud.requests) == 1


# --- transport failures ------------------------------------------------------------------------------


async def test_timeouts_are_retried_later_and_observed(cloud: MockCloud) -> None:
    async def slow(request: Request) -> Reply:
        await asyncio.sleep(5)
        return Reply(json=CVM)

    cloud.handler = slow
    observed: list[tuple[str, int | None, float]] = []
    client = cloud.new_client(read_timeout=0.2, observer=lambda *event: observed.append(event))
    started = time.monotonic()
    with pytest.raises(RetryLater, match="did not answer in time") as failure:
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert time.monotonic() - started < 1.0
    assert failure.value.reason == Reason.REMOTE_UNAVAILABLE
    assert failure.value.__context__ is None  # aiohttp's error, whose request holds the key, is dropped
    assert failure.value.__cause__ is None
    assert len(cloud.requests) == 1  # timeouts are not retried
    assert [(endpoint, status) for endpoint, status, _ in observed] == [("GET /cvms/{id}", None)]


async def test_an_answer_trickling_in_is_bounded_as_a_whole(cloud: MockCloud) -> None:
    cloud.answer(json=CVM, trickle=0.05)  # every byte within the read timeout, the whole far beyond
    client = cloud.new_client(connect_timeout=0.2, read_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(RetryLater, match="did not answer in time"):
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert 0.4 < time.monotonic() - started < 1.5  # connect + read timeouts: 0.5 s
    assert len(cloud.requests) == 1


async def test_a_get_whose_connection_broke_is_retried_once(cloud: MockCloud) -> None:
    answers = [DROP, Reply(200, json=CVM)]
    cloud.handler = lambda request: answers.pop(0)
    assert (await cloud.session.get_cvm("c")).app_id == APP_ID
    assert [status for _, status, _ in cloud.observed] == [None, 200]
    assert [request.connection for request in cloud.requests] == [1, 2]


async def test_a_stale_kept_alive_connection_is_retried_on_a_new_one(cloud: MockCloud) -> None:
    # The server closes a kept-alive connection (its idle timeout) as the client reuses it.
    answers = [Reply(200, json=CVM), DROP, Reply(200, json=CVM)]
    cloud.handler = lambda request: answers.pop(0)
    await cloud.session.get_cvm("c")
    assert (await cloud.session.get_cvm("c")).app_id == APP_ID
    assert [request.connection for request in cloud.requests] == [1, 1, 2]
    assert [status for _, status, _ in cloud.observed] == [200, None, 200]


async def test_a_get_is_retried_only_once(cloud: MockCloud) -> None:
    cloud.handler = lambda request: DROP
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 2


async def test_nothing_listening_is_tried_twice(cloud: MockCloud) -> None:
    observed: list[tuple[str, int | None, float]] = []
    settings = PhalaCloudSettings(base_url=f"http://127.0.0.1:{free_port()}/api/v1", connect_timeout=1.0)
    async with PhalaCloudClient(settings, observer=lambda *event: observed.append(event)) as client:
        with pytest.raises(RetryLater, match="cannot reach Phala Cloud") as failure:
            await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert "ClientConnectorError" in str(failure.value)
    assert [status for _, status, _ in observed] == [None, None]


@pytest.mark.parametrize(
    "reply",
    [DROP, Reply(202, content=b'{"correlation_id": "c', content_length=100)],
    ids=["dropped", "cut off"],
)
async def test_a_patch_is_never_retried(cloud: MockCloud, reply: Reply) -> None:
    cloud.handler = lambda request: reply
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
        await cloud.session.patch_pre_launch_script("c", b"x")
    assert len(cloud.requests) == 1


async def test_a_body_cut_off_mid_stream_is_retried_then_reported(cloud: MockCloud) -> None:
    cloud.answer(content=b'{"id": "cvm_1", "app_', content_length=4096)
    with pytest.raises(RetryLater, match=r"cannot reach Phala Cloud \(ClientPayloadError") as failure:
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 2
    assert failure.value.__context__ is None
    assert "\n" not in str(failure.value)


async def test_an_answer_that_is_not_http_is_retried_then_reported(cloud: MockCloud) -> None:
    cloud.handler = lambda request: Reply(raw=b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud") as failure:
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 2
    assert failure.value.__context__ is None
    assert len(str(failure.value)) < 400  # the library's text is cut


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
    assert [r.url.host for r in cloud.requests] == ["127.0.0.1"]
    outside = [
        f"{cloud.root}/other/c",  # same origin, outside the base path
        f"{cloud.root}/api/v10/cvms/c",  # a path that merely starts like the base
        f"{cloud.base_url}/cvms/%2e%2e/%2e%2e/admin",  # escaped dot segments a server would resolve
        f"https://127.0.0.1:{cloud.port}/api/v1/cvms/c",  # another scheme
        f"http://127.0.0.1:{free_port()}/api/v1/cvms/c",  # another port
        f"http://localhost:{cloud.port}/api/v1/cvms/c",  # another host name
        "http://[::1/api/v1/cvms/c",  # not a URL
    ]
    for location in outside:
        cloud.requests.clear()
        cloud.answer(307, headers={"location": location})
        with pytest.raises(Permanent, match="not followed"):
            await cloud.session.get_cvm("c")
        assert len(cloud.requests) == 1, location


async def test_redirects_under_the_base_url_are_followed_with_the_key(cloud: MockCloud) -> None:
    def route(request: Request) -> Reply:
        if request.url.path == "/api/v1/cvms/old":
            return Reply(308, headers={"location": "/api/v1/cvms/new"})
        if request.url.path == "/api/v1/cvms/new":
            return Reply(302, headers={"location": f"{cloud.base_url}/cvms/newest?x=1"})
        return Reply(200, json=CVM)

    cloud.handler = route
    await cloud.session.get_cvm("old")
    assert [r.target for r in cloud.requests] == [
        "/api/v1/cvms/old",
        "/api/v1/cvms/new",
        "/api/v1/cvms/newest?x=1",
    ]
    assert all(r.headers["x-api-key"] == API_KEY for r in cloud.requests)
    cloud.requests.clear()
    # A PATCH follows only a 307/308 (a 302 would turn it into a GET).
    cloud.answer(302, headers={"location": "/api/v1/cvms/new/pre-launch-script"})
    with pytest.raises(Permanent, match="not followed"):
        await cloud.session.patch_pre_launch_script("old", b"x")
    cloud.requests.clear()
    answers = [
        Reply(307, headers={"location": "/api/v1/cvms/new/pre-launch-script"}),
        Reply(202, json={"status": "in_progress", "message": "", "correlation_id": "corr-3"}),
    ]
    cloud.handler = lambda request: answers.pop(0)
    assert (await cloud.session.patch_pre_launch_script("old", b"script")).correlation_id == "corr-3"
    assert [(r.method, r.content) for r in cloud.requests] == [("PATCH", b"script"), ("PATCH", b"script")]


async def test_a_redirect_loop_ends(cloud: MockCloud) -> None:
    cloud.answer(307, headers={"location": "/api/v1/cvms/c"})
    with pytest.raises(Permanent, match="not followed"):
        await cloud.session.get_cvm("c")
    assert len(cloud.requests) == 4


async def test_a_failing_observer_does_not_break_requests(
    cloud: MockCloud, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(endpoint: str, status: int | None, seconds: float) -> None:
        raise RuntimeError("metrics backend down")

    cloud.answer(json=CVM)
    client = cloud.new_client(observer=observer)
    assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID
    assert "observer failed" in caplog.text


async def test_concurrency_is_bounded_across_keys(cloud: MockCloud) -> None:
    running = 0
    peak = 0

    async def slow(request: Request) -> Reply:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        return Reply(200, json=CVM)

    cloud.handler = slow
    client = cloud.new_client(max_concurrency=3)
    sessions = [client.for_api_key(Secret(f"phak_key_{n}")) for n in range(5)]
    await asyncio.gather(*(sessions[n % 5].get_cvm(f"cvm_{n}") for n in range(40)))
    assert client.peak_in_flight == 3
    assert client.in_flight == 0
    assert peak == 3
    assert cloud.connections == 3  # one pool, as large as the bound, kept alive
    assert len(cloud.requests) == 40


async def test_connections_are_kept_alive_and_shared_by_all_keys(cloud: MockCloud) -> None:
    cloud.answer(json=CVM)
    other = cloud.client.for_api_key(Secret("phak_another_key_0123456789"))
    for _ in range(5):
        await cloud.session.get_cvm("c")
        await other.get_cvm("c")
    assert cloud.connections == 1
    assert [r.headers["x-api-key"] for r in cloud.requests[:2]] == [API_KEY, "phak_another_key_0123456789"]


async def test_no_cookie_is_kept(cloud: MockCloud) -> None:
    cloud.answer(json=CVM, headers={"Set-Cookie": "session=of-the-first-key; Path=/"})
    # A host name: a cookie jar would keep nothing for an IP address anyway.
    settings = PhalaCloudSettings(base_url=f"http://localhost:{cloud.port}/api/v1")
    async with PhalaCloudClient(settings) as client:
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
        await client.for_api_key(Secret("phak_another_key_0123456789")).get_cvm("c")
    assert [r.headers.get("cookie") for r in cloud.requests] == [None, None]


async def test_a_closed_client_sends_nothing(cloud: MockCloud) -> None:
    cloud.answer(json=CVM)
    client = cloud.new_client()
    await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    await client.aclose()
    await client.aclose()  # idempotent
    with pytest.raises(RetryLater, match="closed"):
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert len(cloud.requests) == 1
    assert client.peak_in_flight == 1


async def test_closing_fails_the_requests_waiting_for_a_slot(cloud: MockCloud) -> None:
    released = asyncio.Event()

    async def held(request: Request) -> Reply:
        await released.wait()
        return Reply(json=CVM)

    cloud.handler = held
    client = cloud.new_client(max_concurrency=1)
    session = client.for_api_key(Secret(API_KEY))
    first = asyncio.create_task(session.get_cvm("c"))
    waiting = asyncio.create_task(session.get_cvm("c"))
    while not cloud.requests:
        await asyncio.sleep(0.01)
    closing = asyncio.create_task(client.aclose())
    released.set()
    results = await asyncio.gather(first, waiting, return_exceptions=True)
    await closing
    assert isinstance(results[1], RetryLater)
    assert "closed" in str(results[1])
    assert len(cloud.requests) == 1


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


# --- TLS ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (an IP address only) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "phala-cloud-test")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@pytest.fixture
async def tls_cloud(certificate: tuple[Path, Path]) -> AsyncIterator[MockCloud]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    mock = await MockCloud(tls=context).start()
    mock.answer(json=CVM)
    yield mock
    await mock.close()


def _no_ca_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SSL_CERT_FILE", "SSL_CERT_DIR"):
        monkeypatch.delenv(name, raising=False)


async def test_tls_is_verified_against_ssl_cert_file(
    tls_cloud: MockCloud, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ca_environment(monkeypatch)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    client = tls_cloud.new_client()
    assert tls_cloud.base_url.startswith("https://")
    assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID
    assert tls_cloud.requests[0].headers["x-api-key"] == API_KEY


async def test_tls_without_a_bundle_set_trusts_certifi_only(
    tls_cloud: MockCloud, monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ca_environment(monkeypatch)
    client = tls_cloud.new_client()
    with pytest.raises(RetryLater, match=r"cannot reach Phala Cloud.*CERTIFICATE_VERIFY_FAILED"):
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert tls_cloud.requests == []  # the key never went out
    certifi_count = len(ssl.create_default_context(cafile=certifi.where()).get_ca_certs())
    assert certifi_count > 50
    assert len(tls_context({}).get_ca_certs()) == certifi_count


async def test_tls_checks_the_host_name(
    tls_cloud: MockCloud, certificate: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_ca_environment(monkeypatch)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    settings = PhalaCloudSettings(base_url=f"https://localhost:{tls_cloud.port}/api/v1", connect_timeout=1.0)
    async with PhalaCloudClient(settings) as client:
        with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
            await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    assert tls_cloud.requests == []


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl to hash a CA directory")
async def test_tls_is_verified_against_ssl_cert_dir(
    tls_cloud: MockCloud, certificate: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    subject_hash = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(certificate[0])],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout.strip()
    (tmp_path / f"{subject_hash}.0").write_bytes(certificate[0].read_bytes())
    _no_ca_environment(monkeypatch)
    monkeypatch.setenv("SSL_CERT_DIR", str(tmp_path))
    client = tls_cloud.new_client()
    assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID


def test_the_tls_bundle_file_wins_over_the_directory(certificate: tuple[Path, Path], tmp_path: Path) -> None:
    context = tls_context({"SSL_CERT_FILE": str(certificate[0]), "SSL_CERT_DIR": str(tmp_path)})
    assert [dict(item[0] for item in cert["subject"]) for cert in context.get_ca_certs()] == [
        {"commonName": "phala-cloud-test"}
    ]
    assert context.check_hostname
    assert context.verify_mode == ssl.CERT_REQUIRED


# --- proxies ----------------------------------------------------------------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def no_proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


@pytest.fixture
async def proxy() -> AsyncIterator[MockServer]:
    """A server that answers proxied requests itself (a plain-http target needs no CONNECT)."""
    server = await MockServer().start()
    server.answer(json=CVM)
    yield server
    await server.close()


async def test_requests_go_through_the_proxy_of_the_environment(
    cloud: MockCloud, proxy: MockServer, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    no_proxy_environment.setenv(
        "HTTP_PROXY", f"http://proxy-user:{PROXY_PASSWORD_ESCAPED}@127.0.0.1:{proxy.port}"
    )
    client = cloud.new_client()
    assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID
    (request,) = proxy.requests
    assert request.target == f"{cloud.base_url}/cvms/c"  # the absolute form: a request to a proxy
    assert request.headers["x-api-key"] == API_KEY
    credentials = base64.b64encode(f"proxy-user:{PROXY_PASSWORD}".encode()).decode()
    assert request.headers["proxy-authorization"] == f"Basic {credentials}"
    assert cloud.requests == []
    # NO_PROXY names the host: straight to it.
    no_proxy_environment.setenv("NO_PROXY", "example.com,127.0.0.1")
    cloud.answer(json=CVM)
    await cloud.new_client().for_api_key(Secret(API_KEY)).get_cvm("c")
    assert [r.target for r in cloud.requests] == ["/api/v1/cvms/c"]
    assert len(proxy.requests) == 1


async def test_an_https_request_tunnels_through_the_proxy_with_its_credentials(
    tls_cloud: MockCloud,
    certificate: tuple[Path, Path],
    no_proxy_environment: pytest.MonkeyPatch,
) -> None:
    _no_ca_environment(no_proxy_environment)
    no_proxy_environment.setenv("SSL_CERT_FILE", str(certificate[0]))
    forward = await MockServer(tunnel=True).start()
    try:
        no_proxy_environment.setenv(
            "HTTPS_PROXY", f"http://proxy-user:{PROXY_PASSWORD_ESCAPED}@127.0.0.1:{forward.port}"
        )
        client = tls_cloud.new_client()
        assert (await client.for_api_key(Secret(API_KEY)).get_cvm("c")).app_id == APP_ID
    finally:
        await forward.close()
    (connect,) = forward.requests
    assert (connect.method, connect.target) == ("CONNECT", f"127.0.0.1:{tls_cloud.port}")
    credentials = base64.b64encode(f"proxy-user:{PROXY_PASSWORD}".encode()).decode()
    assert connect.headers["proxy-authorization"] == f"Basic {credentials}"
    assert "x-api-key" not in connect.headers  # the key travels inside the tunnel only
    (request,) = tls_cloud.requests
    assert request.headers["x-api-key"] == API_KEY
    assert "proxy-authorization" not in request.headers  # the proxy's credentials stay with the proxy


async def test_all_proxy_is_the_fallback(
    cloud: MockCloud, proxy: MockServer, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    no_proxy_environment.setenv("ALL_PROXY", f"127.0.0.1:{proxy.port}")  # no scheme: an http proxy
    await cloud.new_client().for_api_key(Secret(API_KEY)).get_cvm("c")
    assert [r.target for r in proxy.requests] == [f"{cloud.base_url}/cvms/c"]
    assert cloud.requests == []


async def test_an_unreachable_proxy_is_retried_later_without_its_credentials(
    cloud: MockCloud, no_proxy_environment: pytest.MonkeyPatch
) -> None:
    no_proxy_environment.setenv("HTTP_PROXY", f"http://user:{PROXY_PASSWORD_ESCAPED}@127.0.0.1:{free_port()}")
    client = cloud.new_client()
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud") as failure:
        await client.for_api_key(Secret(API_KEY)).get_cvm("c")
    for text in (
        str(failure.value),
        repr(failure.value),
        repr(client),
        repr(proxy_from_environment(cloud.base_url, purpose="Phala Cloud")),
    ):
        assert PROXY_PASSWORD not in text
        assert PROXY_PASSWORD_ESCAPED not in text
    assert cloud.requests == []


@pytest.mark.parametrize(
    ("environment", "base_url", "expected"),
    [
        ({}, "https://cloud-api.phala.com/api/v1", None),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128"},
            "https://cloud-api.phala.com/api/v1",
            "http://proxy.internal:3128",
        ),
        (
            {"https_proxy": "proxy.internal:3128"},
            "https://cloud-api.phala.com/api/v1",
            "http://proxy.internal:3128",
        ),
        (
            {"HTTPS_PROXY": "https://proxy.internal"},
            "https://cloud-api.phala.com/api/v1",
            "https://proxy.internal",
        ),
        ({"HTTP_PROXY": "http://proxy.internal:3128"}, "https://cloud-api.phala.com/api/v1", None),
        (
            {"ALL_PROXY": "http://all.internal:8080"},
            "https://cloud-api.phala.com/api/v1",
            "http://all.internal:8080",
        ),
        (
            {"HTTPS_PROXY": "http://proxy.internal:3128", "ALL_PROXY": "http://all.internal:8080"},
            "https://cloud-api.phala.com/api/v1",
            "http://proxy.internal:3128",
        ),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "phala.com"}, "https://cloud-api.phala.com/api/v1", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": ".phala.com"}, "https://cloud-api.phala.com/api/v1", None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, "https://cloud-api.phala.com/api/v1", None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.com"},
            "https://cloud-api.phala.com/api/v1",
            "http://p:1",
        ),
    ],
)
def test_proxy_from_the_environment(
    no_proxy_environment: pytest.MonkeyPatch, environment: dict[str, str], base_url: str, expected: str | None
) -> None:
    for name, value in environment.items():
        no_proxy_environment.setenv(name, value)
    found = proxy_from_environment(base_url, purpose="Phala Cloud")
    assert (found.url if found is not None else None) == expected


@pytest.mark.parametrize(
    "value", ["socks5://user:hunter2hunter2@proxy:1080", "http://user:hunter2hunter2@proxy:99999"]
)
def test_a_proxy_the_client_cannot_use_fails_at_start(
    no_proxy_environment: pytest.MonkeyPatch, value: str
) -> None:
    no_proxy_environment.setenv("HTTPS_PROXY", value)
    with pytest.raises(ValueError, match="proxy") as refused:
        PhalaCloudClient(PhalaCloudSettings())
    assert "hunter2" not in str(refused.value)
