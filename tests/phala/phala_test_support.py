"""Shared pieces of the Phala Cloud client tests (a uniquely named module: tests dirs are not packages).

:class:`MockCloud` is a small HTTP/1.1 server on 127.0.0.1, written on asyncio streams rather than a
web framework so that a test controls every byte: answers without a ``Content-Type``, bodies cut off
mid-way, dropped connections, answers that are not HTTP, slow or trickled answers. The real client
talks to it over real sockets; per test, ``handler`` answers and ``requests`` records what was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import json
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any

from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSession, PhalaCloudSettings
from cvm_prelaunch_operator.phala.client import Observer

API_KEY = "phak_unit_test_key_9f8e7d6c5b4a39281706"

Observed = list[tuple[str, int | None, float]]
"""What an observer saw: (endpoint template, status or None, seconds) per request."""

SendTx = Callable[..., str]
"""``send_tx(contract, function, *args, sender=None, gas=None) -> tx hash`` (the ``send_tx`` fixture)."""

_NO_JSON: Any = object()
_HEAD_LIMIT = 64 * 1024


@dataclass(frozen=True)
class Request:
    """One request as the server read it off the wire."""

    method: str
    url: URL  # absolute: the Host header's origin plus the target (a proxy receives it absolute)
    target: str  # the request line's target, as sent
    headers: CIMultiDictProxy[str]
    content: bytes
    connection: int  # which TCP connection (1, 2, ...) carried it


@dataclass(frozen=True)
class Reply:
    """An answer: ``json`` (serialised, ``application/json`` unless ``headers`` say otherwise) or
    ``content``; exactly the ``headers`` given plus ``Content-Length``. For what is not a proper
    answer: ``content_length`` declares another length than the body's (then the connection closes,
    a body cut off), ``trickle`` sends the body a byte at a time with that many seconds between,
    ``raw`` replaces the whole answer with these bytes and closes, ``close`` closes after answering."""

    status: int = 200
    json: Any = _NO_JSON
    content: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    content_length: int | None = None
    trickle: float | None = None
    raw: bytes | None = None
    close: bool = False


DROP = Reply(raw=b"")
"""Close the connection without answering."""

Handler = Callable[[Request], Reply | Awaitable[Reply]]


class MockServer:
    """The server; ``start()`` it, then point a client at ``base_url`` (or ``root``)."""

    def __init__(
        self, *, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1", tunnel: bool = False
    ) -> None:
        """``tunnel``: a ``CONNECT`` (recorded like any request) opens a tunnel to its target, as a
        forward proxy does for an https URL."""
        self.handler: Handler = lambda request: Reply(500)
        self.tunnel = tunnel
        self.requests: list[Request] = []
        self.connections = 0
        self.errors: list[BaseException] = []  # handlers that raised: a test mistake, failed at teardown
        self._tls = tls
        self._host = host
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ids = itertools.count(1)

    async def start(self) -> MockServer:
        self._server = await asyncio.start_server(self._serve, self._host, 0, ssl=self._tls)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def root(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.root}/api/v1"

    def answer(self, status: int = 200, **kwargs: Any) -> None:
        """Answer every request with one reply (``json=``, ``content=``, ``headers=``...)."""
        reply = Reply(status, **kwargs)
        self.handler = lambda request: reply

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        connection = self.connections
        try:
            while True:
                request = await _read_request(reader, connection)
                if request is None:
                    return
                self.requests.append(request)
                if request.method == "CONNECT" and self.tunnel:
                    await _tunnel(request.target, reader, writer)
                    return
                try:
                    outcome = self.handler(request)
                    reply = await outcome if inspect.isawaitable(outcome) else outcome
                except Exception as exc:
                    self.errors.append(exc)
                    reply = Reply(500, content=repr(exc).encode(), close=True)
                if not await _write_reply(writer, reply):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            return
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


async def _read_request(reader: asyncio.StreamReader, connection: int) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
        return None
    if len(head) > _HEAD_LIMIT:
        return None
    line, *header_lines = head.decode("latin-1").split("\r\n")[:-2]
    method, target, _version = line.split(" ", 2)
    headers: CIMultiDict[str] = CIMultiDict()
    for header in header_lines:
        name, _, value = header.partition(":")
        headers.add(name.strip(), value.strip())
    assert "chunked" not in headers.get("transfer-encoding", ""), "the client sends bodies with a length"
    content = await reader.readexactly(int(headers.get("content-length", "0")))
    if "://" in target:
        url = URL(target)  # the absolute form: a request to a proxy
    elif method == "CONNECT":
        url = URL(f"http://{target}")  # the authority form
    else:
        url = URL(f"http://{headers.get('host', '')}{target}")
    return Request(method, url, target, CIMultiDictProxy(headers), content, connection)


async def _tunnel(target: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    host, _, port = target.rpartition(":")
    upstream_reader, upstream_writer = await asyncio.open_connection(host, int(port))
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await writer.drain()

    async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await source.read(65536):
                sink.write(chunk)
                await sink.drain()
        with contextlib.suppress(Exception):
            sink.close()

    try:
        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
    finally:
        upstream_writer.close()


async def _write_reply(writer: asyncio.StreamWriter, reply: Reply) -> bool:
    """Send the reply; False when the connection must close after it."""
    if reply.raw is not None:
        writer.write(reply.raw)
        await writer.drain()
        return False
    body = reply.content
    headers = dict(reply.headers)
    if reply.json is not _NO_JSON:
        body = json.dumps(reply.json).encode()
        if not any(name.lower() == "content-type" for name in headers):
            headers["Content-Type"] = "application/json"
    length = len(body) if reply.content_length is None else reply.content_length
    try:
        reason = HTTPStatus(reply.status).phrase
    except ValueError:
        reason = "Whatever"
    head = [f"HTTP/1.1 {reply.status} {reason}", f"Content-Length: {length}"]
    head += [f"{name}: {value}" for name, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
    if reply.trickle is None:
        writer.write(body)
    else:
        for byte in body:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(reply.trickle)
    await writer.drain()
    return not (reply.close or length != len(body))


class MockCloud(MockServer):
    """A :class:`MockServer` plus a real client on it: ``client``, ``session`` (``API_KEY``) and what
    the client's observer saw in ``observed``. ``new_client`` makes more (closed with the cloud)."""

    observed: Observed
    client: PhalaCloudClient
    session: PhalaCloudSession

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.observed = []
        self._clients: list[PhalaCloudClient] = []

    async def start(self) -> MockCloud:
        await super().start()
        self.client = self.new_client(
            observer=lambda endpoint, status, seconds: self.observed.append((endpoint, status, seconds))
        )
        self.session = self.client.for_api_key(Secret(API_KEY))
        return self

    def new_client(self, *, observer: Observer | None = None, **settings: Any) -> PhalaCloudClient:
        options: dict[str, Any] = {"connect_timeout": 1.0, "read_timeout": 1.0, "max_concurrency": 4}
        options.update(settings)
        client = PhalaCloudClient(PhalaCloudSettings(base_url=self.base_url, **options), observer=observer)
        self._clients.append(client)
        return client

    async def close(self) -> None:
        for client in self._clients:
            await client.aclose()
        await super().close()


async def wait_until_idle(sim: SimulatorServer, timeout: float = 5.0) -> None:
    """Wait until the simulator finished every request, including ones a client gave up on, so
    no later test sees them in flight."""
    deadline = time.monotonic() + timeout
    while any(request.ended is None for request in sim.admin.requests()):
        assert time.monotonic() < deadline, "the simulator did not finish an abandoned request"
        await asyncio.sleep(0.05)
