"""The chain client's transport: HTTP statuses, Retry-After, timeouts, resets, size caps, the cache."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
import pytest_asyncio

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_operator.chain.rpc import (
    ChainRpcSettings,
    JsonRpcChainClient,
    Web3ChainConnector,
    retry_after_seconds,
)
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret

FAST = ChainRpcSettings(request_timeout=1.0)


@pytest_asyncio.fixture
async def connector() -> AsyncIterator[Web3ChainConnector]:
    chain = Web3ChainConnector(FAST)
    yield chain
    await chain.aclose()


@pytest.fixture
def client(connector: Web3ChainConnector, anvil_proxy: JsonRpcProxy) -> JsonRpcChainClient:
    return connector.connect(Secret(anvil_proxy.url))


# -- HTTP statuses --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("0.5", 0.5), (None, None), ("soon", None), ("99999", 3600.0), ("-3", 0.0)],
)
async def test_429_is_later_with_the_servers_retry_after(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, header: str | None, expected: float | None
) -> None:
    anvil_proxy.rate_limit(1, header)

    with pytest.raises(RetryLater) as raised:
        await client.block_timestamp(0)

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert raised.value.retry_after == expected
    assert "rate limiting (HTTP 429)" in raised.value.message
    assert await client.block_timestamp(0) >= 0  # the next request goes through


def test_retry_after_as_an_http_date() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    assert retry_after_seconds(format_datetime(now + timedelta(seconds=42), usegmt=True), now=now) == 42.0
    assert retry_after_seconds(format_datetime(now - timedelta(seconds=42), usegmt=True), now=now) == 0.0
    assert retry_after_seconds("nan") is None
    assert retry_after_seconds("  ") is None


@pytest.mark.parametrize("status", [408, 425, 500, 502, 503, 504])
async def test_transient_statuses_are_later(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, status: int
) -> None:
    anvil_proxy.fail(status, body=b"<html>gateway trouble</html>")

    with pytest.raises(RetryLater) as raised:
        await client.track([], sender=None)

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert raised.value.retry_after is None
    assert f"answered HTTP {status} during track" in raised.value.message


@pytest.mark.parametrize("status", [401, 403, 404, 301])
async def test_refusals_are_permanent(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, status: int
) -> None:
    anvil_proxy.fail(status)

    with pytest.raises(Permanent) as raised:
        await client.track([], sender=None)

    assert f"refused track with HTTP {status}: check the RPC URL" in raised.value.message


async def test_a_5xx_carrying_a_json_rpc_answer_is_read_as_that_answer(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.fail(
        503,
        body=lambda request: json.dumps(
            {"jsonrpc": "2.0", "id": request["id"], "error": {"code": -32000, "message": "header not found"}}
        ).encode(),
    )

    with pytest.raises(
        RetryLater, match="could not answer eth_getBlockByNumber during block_timestamp: header"
    ):
        await client.block_timestamp(0)


# -- malformed answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"<html>not json</html>", "the body is not JSON"),
        (b"[" * 100_000 + b"]" * 100_000, "the body nests too deep"),  # would overflow the C stack
        ('["\u00e9"]'.encode("utf-16"), "the body is not UTF-8"),
        (b'{"jsonrpc":"2.0","id":1,"result":"0x1"}', "a batch was not answered with a list"),
        (b'[{"jsonrpc":"2.0","id":1,"result":"0x1"}]', "1 of 2 calls were not answered"),
        (b'[{"jsonrpc":"2.0","id":1,"result":"0x1"},{"id":1,"result":"0x2"}]', "call 1 was answered twice"),
        (
            b'[{"jsonrpc":"2.0","id":1},{"id":2,"result":"0x2"}]',
            "an answer has neither a result nor an error",
        ),
        (b"[]", "2 of 2 calls were not answered"),
        (b"[1, 2]", "an answer is not an object"),
    ],
)
async def test_malformed_batch_answers_are_later(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, body: bytes, says: str
) -> None:
    anvil_proxy.fail(200, body=body)

    with pytest.raises(RetryLater) as raised:
        await client.track([], sender=None)

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert f"malformed answer to track: {says}" in raised.value.message
    assert raised.value.__cause__ is None and raised.value.__context__ is None


async def test_a_batch_refused_as_a_whole_quotes_the_node(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "batch limit 3 exceeded"}}
    anvil_proxy.fail(200, body=json.dumps(refusal).encode())
    with pytest.raises(RetryLater, match="refused a batch of 2 calls during track: batch limit 3 exceeded"):
        await client.track([], sender=None)

    anvil_proxy.fail(200, body=json.dumps([refusal]).encode())
    with pytest.raises(
        RetryLater, match=r"refused track \(2 of 2 calls unanswered\): batch limit 3 exceeded"
    ):
        await client.track([], sender=None)


async def test_answers_are_matched_by_id_not_by_position(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, anvil: Anvil
) -> None:
    def reversed_batch(request: object) -> bytes:
        assert isinstance(request, list)
        answers = [
            {
                "jsonrpc": "2.0",
                "id": call["id"],
                "result": "0x7a69" if call["method"] == "eth_chainId" else None,
            }
            for call in request
        ]
        return json.dumps(answers[::-1]).encode()

    anvil_proxy.fail(200, body=reversed_batch)

    with pytest.raises(RetryLater, match="the latest block is not an object"):
        await client.track([], sender=None)  # the block (null) was not taken for the chain id


async def test_a_huge_answer_is_refused_unread(anvil_proxy: JsonRpcProxy, anvil: Anvil) -> None:
    connector = Web3ChainConnector(ChainRpcSettings(max_response_bytes=64 * 1024))
    client = connector.connect(Secret(anvil_proxy.url))
    try:
        anvil_proxy.pad_answers(65 * 1024)
        with pytest.raises(RetryLater, match="answered block_timestamp with more than 65536 bytes"):
            await client.block_timestamp(0)
        anvil_proxy.pad_answers(60 * 1024)  # under the cap: white space after JSON is fine
        assert await client.block_timestamp(0) >= 0
        anvil_proxy.fail(200, body=b"[" + b" " * 200_000)  # no Content-Length help: counted while read
        with pytest.raises(RetryLater, match="more than 65536 bytes"):
            await client.block_timestamp(0)
    finally:
        await connector.aclose()


# -- transport ------------------------------------------------------------------------------------


async def test_a_slow_node_is_cut_off_at_the_timeout(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.delay(3.0)
    started = time.monotonic()

    with pytest.raises(RetryLater) as raised:
        await client.block_timestamp(0)

    assert time.monotonic() - started < 1.5
    assert "did not answer block_timestamp within 1s" in raised.value.message


async def test_one_reset_connection_is_retried_once_at_once(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.cut(1)
    assert await client.block_timestamp(0) >= 0
    assert anvil_proxy.http_requests == 2

    anvil_proxy.reset_counts()
    anvil_proxy.cut(2)
    with pytest.raises(RetryLater) as raised:
        await client.block_timestamp(0)
    assert anvil_proxy.http_requests == 2  # never a third time
    assert "unreachable during block_timestamp (ServerDisconnectedError)" in raised.value.message


async def test_nothing_listening_is_later_without_retry(connector: Web3ChainConnector) -> None:
    client = connector.connect(Secret(f"http://127.0.0.1:{free_port()}/v3/some-key-0123456789"))

    with pytest.raises(RetryLater) as raised:
        await client.block_timestamp(0)

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert "unreachable during block_timestamp (ClientConnectorError)" in raised.value.message
    assert "http://127.0.0.1:" in raised.value.message and "/***" in raised.value.message
    assert raised.value.__context__ is None and raised.value.__cause__ is None


async def test_keep_alive_connections_are_reused(
    anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    for _ in range(5):
        await client.block_timestamp(0)
    session = client._session
    assert session is not None
    connector = session.connector
    assert connector is not None
    # One connection served all five calls and is idle in the pool.
    assert sum(len(conns) for conns in connector._conns.values()) == 1


# -- the cache of clients -------------------------------------------------------------------------


async def test_clients_are_cached_per_url_least_recently_used_evicted(anvil_proxy: JsonRpcProxy) -> None:
    connector = Web3ChainConnector(ChainRpcSettings(cache_size=2))
    base = anvil_proxy.url.rstrip("/")
    urls = [Secret(f"{base}/?a"), Secret(f"{base}/?b"), Secret(f"{base}/?c")]
    try:
        a = connector.connect(urls[0])
        b = connector.connect(urls[1])
        assert connector.connect(Secret(f" {base}/?a ")) is a  # the same URL, and a is now recent
        await a.block_timestamp(0)
        await b.block_timestamp(0)
        b_session = b._session
        assert b_session is not None

        c = connector.connect(urls[2])  # evicts b, the least recently used

        assert len(connector) == 2
        await asyncio.sleep(0)  # the eviction closes b's idle session in a task
        await asyncio.sleep(0.01)
        assert b_session.closed
        assert connector.connect(urls[0]) is a
        assert connector.connect(urls[1]) is not b
        # An evicted client still answers; it just keeps no connection afterwards.
        assert await b.block_timestamp(0) >= 0
        assert b._session is None
        await c.block_timestamp(0)
    finally:
        await connector.aclose()
    assert len(connector) == 0
    assert a._session is None and c._session is None


async def test_forget_closes_one_client_and_a_call_in_flight_finishes(anvil_proxy: JsonRpcProxy) -> None:
    connector = Web3ChainConnector(FAST)
    url = Secret(anvil_proxy.url)
    try:
        client = connector.connect(url)
        anvil_proxy.delay(0.3)
        in_flight = asyncio.create_task(client.block_timestamp(0))
        await asyncio.sleep(0.1)

        await connector.forget(url)

        assert len(connector) == 0
        assert client._session is not None  # still in use
        assert await in_flight >= 0
        assert client._session is None  # closed after its last call
        assert connector.connect(url) is not client
        await connector.forget(Secret("http://127.0.0.1:1/unknown"))  # nothing to forget
    finally:
        await connector.aclose()


@pytest.mark.parametrize("url", ["ftp://host/path-key-123", "not a url", "http:///path-only", "wss://host/x"])
def test_connect_refuses_what_is_not_an_http_url(url: str) -> None:
    with pytest.raises(Permanent) as raised:
        Web3ChainConnector().connect(Secret(url))
    assert raised.value.reason is Reason.INVALID_SPEC
    assert "path-key-123" not in raised.value.message


def test_settings_from_the_environment() -> None:
    assert ChainRpcSettings.from_env({}).request_timeout == 10.0
    assert ChainRpcSettings.from_env({"CHAIN_RPC_TIMEOUT_SECONDS": "2.5"}).request_timeout == 2.5
    for bad in ("0", "16", "x", "-1"):
        with pytest.raises(ValueError, match="CHAIN_RPC_TIMEOUT_SECONDS"):
            ChainRpcSettings.from_env({"CHAIN_RPC_TIMEOUT_SECONDS": bad})
    with pytest.raises(ValueError, match="request_timeout"):
        ChainRpcSettings(request_timeout=20)


# -- the proxy of the environment ------------------------------------------------------------------

_PROXY_VARIABLES = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


@pytest.fixture
def proxy_environment(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in _PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.upper(), raising=False)
    return monkeypatch


async def test_calls_go_through_the_proxy_of_the_environment_read_once(
    anvil_proxy: JsonRpcProxy, proxy_environment: pytest.MonkeyPatch
) -> None:
    # The RPC host does not resolve: only the proxy (the JSON-RPC proxy, which serves any target)
    # can answer. Its credentials ride on each plain-http request and appear in no message.
    password = "pr0xy-secret-pa55"
    proxy_environment.setenv("HTTP_PROXY", f"http://user:{password}@127.0.0.1:{anvil_proxy.port}")
    connector = Web3ChainConnector(FAST)
    try:
        client = connector.connect(Secret("http://rpc.chain.invalid:8545/v2/rpc-key-77"))
        proxy_environment.delenv("HTTP_PROXY")  # read once, when the client was made
        assert await client.block_timestamp(0) >= 0
        ((target, authorization),) = anvil_proxy.targets
        assert target == "http://rpc.chain.invalid:8545/v2/rpc-key-77"  # the absolute form
        assert authorization == "Basic " + base64.b64encode(f"user:{password}".encode()).decode()
        assert password not in repr(client) and "rpc-key-77" not in repr(client)
        # NO_PROXY naming the host sends a new client's calls straight to it (which fails here).
        proxy_environment.setenv("HTTP_PROXY", f"http://user:{password}@127.0.0.1:{anvil_proxy.port}")
        proxy_environment.setenv("NO_PROXY", "chain.invalid")
        await connector.forget(Secret("http://rpc.chain.invalid:8545/v2/rpc-key-77"))
        direct = connector.connect(Secret("http://rpc.chain.invalid:8545/v2/rpc-key-77"))
        with pytest.raises(RetryLater) as raised:
            await direct.block_timestamp(0)
        assert len(anvil_proxy.targets) == 1
        assert password not in str(raised.value) and "rpc-key-77" not in str(raised.value)
    finally:
        await connector.aclose()


def test_a_proxy_the_client_cannot_use_is_later_without_its_credentials(
    proxy_environment: pytest.MonkeyPatch,
) -> None:
    proxy_environment.setenv("HTTPS_PROXY", "socks5://user:hunter2hunter2@proxy:1080")
    with pytest.raises(RetryLater) as raised:
        Web3ChainConnector().connect(Secret("https://rpc.example/v2/k"))
    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert "not an http or https proxy URL" in raised.value.message
    assert "hunter2hunter2" not in raised.value.message
