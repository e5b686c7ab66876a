"""A JSON-RPC proxy in front of anvil that counts what passes and misbehaves on demand.

``with JsonRpcProxy(anvil.rpc_url) as proxy: ... proxy.url ...`` listens on 127.0.0.1 on a port the
system picks, serves from its own threads (so sync and asyncio tests use it alike) and stops with
the ``with`` block. With ``key="..."`` it plays a hosted RPC whose URL carries a key
(``http://127.0.0.1:<port>/v2/<key>``) and answers 401 to any other path.

What it counts: HTTP requests (``http_requests``), JSON-RPC calls per method (``calls``; each item
of a batch counts) and the methods of each HTTP request in order (``requests``).

What it can be told (each until :meth:`reset_faults`, or for the next ``times`` requests):

- :meth:`estimate_gas`: answer ``eth_estimateGas`` itself with a given value;
- :meth:`hold_sends`: answer ``eth_sendRawTransaction`` with the transaction's hash without
  forwarding it, as a node that accepted a transaction it will never mine; :meth:`release` forwards
  what it holds, :meth:`drop_held` forgets it;
- :meth:`rate_limit`: answer HTTP 429 with ``Retry-After`` to the next requests;
- :meth:`fail`: answer another HTTP status (a 502 of a load balancer, a 401);
- :meth:`rewrite_receipt_hash`: answer the receipt of one transaction as if it were another's;
- :meth:`override`: answer a method itself (a result, or a JSON-RPC error);
- :meth:`transform`: rewrite what upstream answered for a method;
- :meth:`pad_answers`: make every answer huge (white space after the JSON);
- :meth:`cut`: close the connection without an answer (a reset keep-alive connection);
- :meth:`delay`: answer late.

Every wait is bounded: upstream calls time out after 10 s, delays are at most 30 s, idle
connections close after 30 s.
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from eth_utils.crypto import keccak

UPSTREAM_TIMEOUT_S = 10.0
MAX_DELAY_S = 30.0
IDLE_CONNECTION_S = 30.0
MAX_BODY_BYTES = 16 * 1024 * 1024

Transform = Callable[[list[Any], dict[str, Any]], dict[str, Any]]
"""``(params, answer) -> answer``: rewrites one JSON-RPC answer object (``result`` or ``error``)."""

Body = bytes | Callable[[Any], bytes]
"""A body, or ``(request) -> body`` given the parsed JSON-RPC request (an object or a batch list)."""


@dataclass
class _Fault:
    """A fault for the next ``times`` requests (None: until reset)."""

    times: int | None

    def take(self) -> bool:
        if self.times is None:
            return True
        if self.times <= 0:
            return False
        self.times -= 1
        return True


@dataclass
class _Faults:
    estimate_gas: int | None = None
    hold_sends: bool = False
    rate_limit: tuple[_Fault, str | None] | None = None
    fail: tuple[_Fault, int, Body] | None = None
    cut: _Fault | None = None
    delay: tuple[_Fault, float] | None = None
    pad: int = 0
    receipt_hashes: dict[str, str] = field(default_factory=dict)
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    transforms: dict[str, Transform] = field(default_factory=dict)


class JsonRpcProxy:
    """See the module documentation."""

    def __init__(self, upstream: str, *, key: str | None = None) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError("the upstream must be an http:// URL")
        self.upstream = upstream
        self.key = key
        self._upstream_host = parts.hostname
        self._upstream_port = parts.port or 80
        self._upstream_path = parts.path or "/"
        self._lock = threading.Lock()
        self._faults = _Faults()
        self._held: list[str] = []
        self.http_requests = 0
        self.calls: Counter[str] = Counter()
        self.requests: list[tuple[str, ...]] = []
        # (request target, Proxy-Authorization) of each request: an operator may use it as its proxy.
        self.targets: list[tuple[str, str | None]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> JsonRpcProxy:
        if self._server is not None:
            raise RuntimeError("the proxy is already started")
        proxy = self

        class Handler(_Handler):
            owner = proxy

        server = _Server(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, name="rpc-proxy", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> JsonRpcProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the proxy is not running")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return self.url_with_key(self.key) if self.key is not None else f"http://127.0.0.1:{self.port}/"

    def url_with_key(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/v2/{key}"

    def __repr__(self) -> str:
        state = f"port={self._server.server_address[1]}" if self._server is not None else "stopped"
        return f"JsonRpcProxy({state})"  # never the key

    # -- counting -----------------------------------------------------------------------------------

    def count(self, method: str) -> int:
        with self._lock:
            return self.calls[method]

    def reset_counts(self) -> None:
        with self._lock:
            self.http_requests = 0
            self.calls.clear()
            self.requests.clear()
            self.targets.clear()

    # -- faults -------------------------------------------------------------------------------------

    def reset_faults(self) -> None:
        """Forget every fault; held transactions stay held."""
        with self._lock:
            self._faults = _Faults()

    def estimate_gas(self, value: int | None) -> None:
        """Answer ``eth_estimateGas`` with ``value`` (None: forward it again)."""
        with self._lock:
            self._faults.estimate_gas = value

    def hold_sends(self, enabled: bool = True) -> None:
        with self._lock:
            self._faults.hold_sends = enabled

    @property
    def held(self) -> list[str]:
        """The signed transactions held back (``0x`` hex), oldest first."""
        with self._lock:
            return list(self._held)

    def release(self) -> list[dict[str, Any]]:
        """Forward every held transaction to upstream; its answers (``result`` or ``error``) in order."""
        with self._lock:
            held, self._held = self._held, []
        payload = [
            {"jsonrpc": "2.0", "id": index, "method": "eth_sendRawTransaction", "params": [raw]}
            for index, raw in enumerate(held)
        ]
        if not payload:
            return []
        answers = self._upstream_batch(payload)
        return [answers[index] for index in range(len(held))]

    def drop_held(self) -> int:
        """Forget the held transactions, as a node that dropped them; how many there were."""
        with self._lock:
            count, self._held = len(self._held), []
        return count

    def rate_limit(self, times: int, retry_after: str | None = "1") -> None:
        """Answer the next ``times`` requests with 429 and this ``Retry-After`` (None: no header)."""
        with self._lock:
            self._faults.rate_limit = (_Fault(times), retry_after)

    def fail(self, status: int, times: int | None = 1, body: Body = b"upstream trouble") -> None:
        """Answer the next ``times`` requests (None: all) with this HTTP status and body (or the body
        made from the request: a gateway that answers JSON-RPC errors with an error status)."""
        with self._lock:
            self._faults.fail = (_Fault(times), status, body)

    def cut(self, times: int | None = 1) -> None:
        """Close the connection of the next ``times`` requests without answering."""
        with self._lock:
            self._faults.cut = _Fault(times)

    def delay(self, seconds: float, times: int | None = 1) -> None:
        if not 0 <= seconds <= MAX_DELAY_S:
            raise ValueError(f"a delay is between 0 and {MAX_DELAY_S:g} seconds")
        with self._lock:
            self._faults.delay = (_Fault(times), seconds)

    def pad_answers(self, size: int) -> None:
        """Append ``size`` bytes of white space to every answer (0: stop)."""
        with self._lock:
            self._faults.pad = size

    def rewrite_receipt_hash(self, tx_hash: str, answered: str) -> None:
        """Answer the receipt of ``tx_hash`` with ``transactionHash`` set to ``answered``."""
        with self._lock:
            self._faults.receipt_hashes[tx_hash.lower()] = answered

    def override(self, method: str, *, result: Any = None, error: dict[str, Any] | None = None) -> None:
        """Answer ``method`` itself: with ``error`` (a JSON-RPC error object) if given, else ``result``."""
        with self._lock:
            self._faults.overrides[method] = {"error": error} if error is not None else {"result": result}

    def transform(self, method: str, fn: Transform | None) -> None:
        with self._lock:
            if fn is None:
                self._faults.transforms.pop(method, None)
            else:
                self._faults.transforms[method] = fn

    # -- serving ------------------------------------------------------------------------------------

    def _handle(self, path: str, body: bytes) -> tuple[int, dict[str, str], bytes] | None:
        """The answer to one HTTP request: (status, headers, body), or None to cut the connection."""
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        items = payload if isinstance(payload, list) else [payload]
        methods = tuple(str(item.get("method")) if isinstance(item, dict) else "?" for item in items)
        with self._lock:
            self.http_requests += 1
            self.calls.update(methods)
            self.requests.append(methods)
            faults = self._faults
            delay = faults.delay[1] if faults.delay is not None and faults.delay[0].take() else 0.0
            cut = faults.cut is not None and faults.cut.take()
            limited = faults.rate_limit if faults.rate_limit and faults.rate_limit[0].take() else None
            failing = faults.fail if faults.fail and faults.fail[0].take() else None
            pad = faults.pad
        if delay:
            time.sleep(delay)
        if self.key is not None and path != f"/v2/{self.key}":
            return 401, {}, b'{"error":"invalid api key"}'
        if cut:
            return None
        if limited is not None:
            headers = {"Retry-After": limited[1]} if limited[1] is not None else {}
            return 429, headers, b'{"error":"too many requests"}'
        if failing is not None:
            body_of = failing[2]
            return failing[1], {}, body_of if isinstance(body_of, bytes) else body_of(payload)
        if payload is None or not all(isinstance(item, dict) for item in items):
            return 400, {}, b'{"error":"not JSON-RPC"}'
        answers = self._answer(items)
        document = answers if isinstance(payload, list) else answers[0]
        return 200, {}, json.dumps(document).encode() + b" " * pad

    def _answer(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        answers: dict[int, dict[str, Any]] = {}
        forward: list[tuple[int, dict[str, Any]]] = []
        with self._lock:
            faults = self._faults
            for index, item in enumerate(items):
                method = item.get("method")
                local: dict[str, Any] | None = None
                if method in faults.overrides:
                    local = dict(faults.overrides[str(method)])
                elif method == "eth_estimateGas" and faults.estimate_gas is not None:
                    local = {"result": hex(faults.estimate_gas)}
                elif method == "eth_sendRawTransaction" and faults.hold_sends:
                    raw = str(item["params"][0])
                    self._held.append(raw)
                    local = {"result": "0x" + keccak(hexstr=raw).hex()}
                if local is not None:
                    answers[index] = {"jsonrpc": "2.0", "id": item.get("id"), **local}
                else:
                    forward.append((index, item))
        if forward:
            # Upstream sees ids of our own, so two items of a client with one id stay apart.
            upstream = self._upstream_batch([{**item, "id": index} for index, item in forward])
            for index, item in forward:
                answer = upstream.get(index) or {"error": {"code": -32603, "message": "no upstream answer"}}
                answers[index] = {**answer, "jsonrpc": "2.0", "id": item.get("id")}
        with self._lock:
            faults = self._faults
            for index, item in enumerate(items):
                answer = answers[index]
                method = str(item.get("method"))
                params = item.get("params") or []
                if method == "eth_getTransactionReceipt" and isinstance(answer.get("result"), dict):
                    rewritten = faults.receipt_hashes.get(str(params[0]).lower())
                    if rewritten is not None:
                        answer["result"] = {**answer["result"], "transactionHash": rewritten}
                transform = faults.transforms.get(method)
                if transform is not None:
                    answers[index] = {**transform(list(params), dict(answer)), "id": item.get("id")}
        return [answers[index] for index in range(len(items))]

    def _upstream_batch(self, payload: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
        """Upstream's answers by id (anvil answers batches in order, but ids are what counts)."""
        connection = http.client.HTTPConnection(
            self._upstream_host, self._upstream_port, timeout=UPSTREAM_TIMEOUT_S
        )
        try:
            headers = {"Content-Type": "application/json"}
            connection.request("POST", self._upstream_path, body=json.dumps(payload), headers=headers)
            answered = json.loads(connection.getresponse().read())
        finally:
            connection.close()
        if isinstance(answered, dict):  # the whole batch refused
            return {int(item["id"]): {"error": answered.get("error")} for item in payload}
        return {int(answer["id"]): answer for answer in answered if isinstance(answer.get("id"), int)}


class _Server(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        return  # a client that went away (a timeout, a cut): nothing to report, and no path to print


class _Handler(BaseHTTPRequestHandler):
    owner: JsonRpcProxy
    protocol_version = "HTTP/1.1"  # keep-alive, as a real node's server
    timeout = IDLE_CONNECTION_S
    # Headers and body in one segment: written apart, Nagle's algorithm and the client's delayed ACK
    # add 40 ms to every answer.
    wbufsize = 64 * 1024
    disable_nagle_algorithm = True

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if not 0 < length <= MAX_BODY_BYTES:
            self._reply(400, {}, b'{"error":"no body"}')
            return
        body = self.rfile.read(length)
        with self.owner._lock:
            self.owner.targets.append((self.path, self.headers.get("Proxy-Authorization")))
        try:
            answer = self.owner._handle(self.path, body)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # upstream down or not JSON
            answer = 502, {}, json.dumps({"error": type(exc).__name__}).encode()
        if answer is None:
            self.close_connection = True  # no answer at all: the client sees a reset connection
            return
        self._reply(*answer)

    def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        return  # the path may carry a key; nothing is logged


__all__ = ["Body", "JsonRpcProxy", "Transform"]
