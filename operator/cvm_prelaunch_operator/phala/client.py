"""The Phala Cloud HTTP client (aiohttp, async).

One :class:`PhalaCloudClient` per operator process holds one ``aiohttp.ClientSession`` (one pool of
kept-alive connections, at most ``max_concurrency``, made on first use inside the event loop that
uses it) and one semaphore bounding concurrent requests across all API keys. ``for_api_key``
returns a light :class:`PhalaCloudSession` bound to one key; the key is attached per request, only
to URLs under the configured base URL, and appears in no log line, exception text or repr.

The client does not back off: it raises ``RetryLater`` (with the server's ``Retry-After`` when
given) and the reconciler decides when to come back. The one exception is a single immediate
retry of a GET whose connection broke (a stale keep-alive connection is the usual cause). aiohttp's
own silent retry of idempotent requests is switched off, so that retry is the only one.

Transport
    Timeouts come from :class:`PhalaCloudSettings`: ``connect_timeout`` to get a connection (a
    wait for the pool included), ``read_timeout`` for each wait on the server's bytes, and their
    sum for a request as a whole, so that a server trickling its answer cannot hold a worker
    either. TLS is verified against ``SSL_CERT_FILE`` (else ``SSL_CERT_DIR``) when set, else
    certifi's bundle, as httpx did. The proxy comes from the environment, read once when the client
    is made: the one of the base URL's scheme (``HTTPS_PROXY``; ``HTTP_PROXY`` for a plain-http
    loopback base), else ``ALL_PROXY``, unless ``NO_PROXY`` names the host; its credentials travel
    in ``Proxy-Authorization`` and appear in no message. Redirects are followed by hand, at most 3,
    and only to locations under the base URL. Answers are read up to ``MAX_RESPONSE_BYTES``
    (decompressed) and refused beyond. No cookie is kept: the sessions of all keys share the
    connections, and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import ssl
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Self, TypeVar
from urllib.parse import quote, unquote, urljoin, urlsplit

import aiohttp
import certifi
from aiohttp.http_exceptions import ContentEncodingError

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.models import CvmInfo, Operation, UpdateAccepted
from cvm_prelaunch_operator.domain.proxy import proxy_from_environment
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Redactor, Secret, redact_url
from cvm_prelaunch_operator.phala.errors import (
    MalformedResponse,
    error_for_status,
    parse_error_body,
    parse_retry_after,
)
from cvm_prelaunch_operator.phala.responses import (
    CurrentOperation,
    OperationsPage,
    decode_json,
    parse_app_compose,
    parse_current_operation,
    parse_cvm,
    parse_operations_page,
    parse_script,
    parse_update_accepted,
)
from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings

log = logging.getLogger(__name__)

_Parsed = TypeVar("_Parsed")

Observer = Callable[[str, int | None, float], None]
"""Called after every HTTP request: endpoint template, status code (None if no answer), seconds."""

USER_AGENT: Final = f"cvm-prelaunch-operator/{__version__} aiohttp/{aiohttp.__version__}"

MAX_SCRIPT_BYTES: Final = 200 * 1024
"""Phala caps the docker compose file plus the script at 200 KiB; a larger script can never fit."""

MAX_RESPONSE_BYTES: Final = 16 * 1024 * 1024
"""No answer the operator reads comes near this; a larger one is refused rather than buffered."""

MAX_OPERATION_PAGES: Final = 10
OPERATIONS_PAGE_SIZE: Final = 100
MAX_REDIRECTS: Final = 3
KEEPALIVE_SECONDS: Final = 30.0
MAX_LIBRARY_TEXT: Final = 300
"""A transport failure quotes the library's text, redacted first, then cut to this many characters."""

EP_CVM: Final = "GET /cvms/{id}"
EP_GET_SCRIPT: Final = "GET /cvms/{id}/pre-launch-script"
EP_PATCH_SCRIPT: Final = "PATCH /cvms/{id}/pre-launch-script"
EP_ATTESTATION: Final = "GET /cvms/{id}/attestation"
EP_OPERATIONS: Final = "GET /cvms/{id}/operations"
EP_OPERATION_STATUS: Final = "GET /cvms/{id}/operation-status"

_CVM_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HEADER_TOKEN = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what a header value can carry safely
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_COMPOSE_HASH = re.compile(r"^(?:0x)?[0-9a-fA-F]{64}$")
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}


class _ResponseTooLarge(Exception):
    pass


@dataclass(frozen=True)
class _Answer:
    status: int
    headers: Mapping[str, str]  # aiohttp's CIMultiDictProxy: names are case-insensitive
    content: bytes


@dataclass(frozen=True)
class _Origin:
    """Scheme, host and port (the default one when the URL names none), and the path."""

    scheme: str
    host: str
    port: int | None
    path: str


def _origin(url: str) -> _Origin | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    return _Origin(scheme, (parts.hostname or "").lower(), port or _DEFAULT_PORTS.get(scheme), parts.path)


def tls_context(environ: Mapping[str, str] | None = None) -> ssl.SSLContext:
    """The CA bundle httpx verified Phala Cloud with: ``SSL_CERT_FILE``, else ``SSL_CERT_DIR``, else
    certifi's. Hostnames are checked."""
    env = os.environ if environ is None else environ
    if env.get("SSL_CERT_FILE"):
        return ssl.create_default_context(cafile=env["SSL_CERT_FILE"])
    if env.get("SSL_CERT_DIR"):
        return ssl.create_default_context(capath=env["SSL_CERT_DIR"])
    return ssl.create_default_context(cafile=certifi.where())


class _ClientClosed(Exception):
    pass


class PhalaCloudClient:
    """Implements ``reconcile.ports.PhalaCloudFactory``; use as an async context manager or call
    :meth:`aclose`. Requests after :meth:`aclose` raise ``RetryLater``."""

    def __init__(self, settings: PhalaCloudSettings, *, observer: Observer | None = None) -> None:
        self.settings = settings
        base = _origin(settings.base_url)
        assert base is not None  # the settings checked the URL
        self._base = base
        self._base_path = base.path.rstrip("/")
        self._observer = observer
        self._semaphore = asyncio.Semaphore(settings.max_concurrency)
        self._in_flight = 0
        self._peak_in_flight = 0
        self._proxy = proxy_from_environment(settings.base_url, purpose="Phala Cloud")
        self._proxy_request_headers: Mapping[str, str] = {}
        if self._proxy is not None and self._proxy.headers and base.scheme == "http":
            self._proxy_request_headers = self._proxy.headers
        # Plain http is for a loopback simulator only; whatever it is, redirects stay on its scheme.
        self._tls: ssl.SSLContext | bool = tls_context() if base.scheme == "https" else True
        self._timeout = aiohttp.ClientTimeout(
            total=settings.connect_timeout + settings.read_timeout,
            connect=settings.connect_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        self._http: aiohttp.ClientSession | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def __repr__(self) -> str:
        settings = self.settings
        return f"PhalaCloudClient(base_url={settings.base_url!r}, api_version={settings.api_version!r})"

    @property
    def in_flight(self) -> int:
        """Requests under way now (all keys)."""
        return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """The most requests ever under way at once; never above ``settings.max_concurrency``."""
        return self._peak_in_flight

    def for_api_key(self, api_key: Secret) -> PhalaCloudSession:
        return PhalaCloudSession(self, api_key)

    async def aclose(self) -> None:
        self._closed = True
        session, self._http = self._http, None
        if session is not None and not session.closed:
            await session.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # --- transport ---------------------------------------------------------------------------

    def _session(self) -> aiohttp.ClientSession:
        """The pooled session of the running event loop (a session belongs to one loop)."""
        if self._closed:
            raise _ClientClosed
        loop = asyncio.get_running_loop()
        if self._http is None or self._http.closed or self._http_loop is not loop:
            settings = self.settings
            session = aiohttp.ClientSession(
                # The semaphore already bounds requests; the pool holds as many connections for reuse.
                connector=aiohttp.TCPConnector(
                    limit=settings.max_concurrency,
                    keepalive_timeout=KEEPALIVE_SECONDS,
                    ssl=self._tls,
                ),
                timeout=self._timeout,
                headers={
                    "User-Agent": USER_AGENT,
                    "X-Phala-Version": settings.api_version,
                    "Accept": "application/json",
                },
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,  # the proxy was read once; per request it costs two thread hops
                raise_for_status=False,
                auto_decompress=True,
            )
            # aiohttp repeats an idempotent request once, silently, when its connection breaks; the
            # client's own retry is the one it documents and observes.
            session._retry_connection = False
            self._http, self._http_loop = session, loop
        return self._http

    def url_for(self, cvm_id: str, suffix: str = "") -> str:
        """The URL of a CVM endpoint; the id is one escaped path segment."""
        return f"{self.settings.base_url}/cvms/{quote(cvm_id, safe='')}{suffix}"

    def is_under_base(self, url: str) -> bool:
        """True for URLs the API key may be sent to: same scheme, host and port, path under the base
        and free of dot segments (escaped ones included: a server would resolve them)."""
        target = _origin(url)
        if target is None:
            return False
        base = self._base
        path = target.path
        return (
            (target.scheme, target.host, target.port) == (base.scheme, base.host, base.port)
            and (path == self._base_path or path.startswith(self._base_path + "/"))
            and not any(segment in (".", "..") for segment in unquote(path).split("/"))
        )

    async def send(
        self,
        api_key: Secret,
        redact: Callable[[str], str],
        method: str,
        endpoint: str,
        url: str,
        *,
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        """One logical request: a GET is retried once at once if its connection broke; redirects
        under the base URL are followed. Any status comes back; transport failures raise."""
        if self._closed:
            raise RetryLater(f"{endpoint}: the Phala Cloud client is closed (the operator is shutting down)")
        target = url
        idempotent = method == "GET"
        attempt = 0
        redirects = 0
        while True:
            if not self.is_under_base(target):
                # Defence in depth: nothing above builds such a URL, and the key must not leave.
                raise Permanent(
                    f"{endpoint}: refusing to send the API key to {redact_url(target)}",
                    reason=Reason.REMOTE_REJECTED,
                )
            attempt += 1
            answer, failure, retry = await self._attempt(
                api_key,
                redact,
                method,
                endpoint,
                target,
                params,
                content,
                headers,
                can_retry=idempotent and attempt == 1,
            )
            if retry:
                log.debug("%s: connection broke, retrying once", endpoint)
                continue
            if failure is not None:
                raise failure
            assert answer is not None
            if answer.status not in _REDIRECTS:
                return answer
            location = answer.headers.get("location")
            next_target = _join(target, location) if location else None
            follow = method == "GET" or answer.status in (307, 308)
            if (
                next_target is None
                or not self.is_under_base(next_target)
                or not follow
                or redirects >= MAX_REDIRECTS
            ):
                where = redact_url(next_target) if next_target is not None else "nowhere"
                raise Permanent(
                    f"{endpoint}: Phala Cloud redirected (HTTP {answer.status}) to {where}; not followed: "
                    "only locations under the configured PHALA_CLOUD_API_URL are",
                    reason=Reason.REMOTE_REJECTED,
                    status_code=answer.status,
                )
            redirects += 1
            target = next_target
            params = None  # the location carries its own query
            attempt = 0

    async def _attempt(
        self,
        api_key: Secret,
        redact: Callable[[str], str],
        method: str,
        endpoint: str,
        target: str,
        params: Mapping[str, str | int] | None,
        content: bytes | None,
        headers: Mapping[str, str] | None,
        *,
        can_retry: bool,
    ) -> tuple[_Answer | None, SyncError | None, bool]:
        """Send once. Returns (answer, None, False), (None, failure, False) or (None, None, True) to
        retry. Failures are built outside the ``except`` blocks: aiohttp's exceptions carry the
        request's headers, the API key among them, and must not be chained to anything raised."""
        request_headers = {**self._proxy_request_headers, **(headers or {}), "X-API-Key": api_key.reveal()}
        status: int | None = None
        failure_text: str | None = None
        failure_kind: type[SyncError] = RetryLater
        retry = False
        answer: _Answer | None = None
        proxy = self._proxy
        async with self._semaphore:
            started = time.monotonic()  # the observer measures the request, not the wait for a slot
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
            try:
                async with self._session().request(
                    method,
                    target,
                    params=params,
                    data=content,
                    headers=request_headers,
                    allow_redirects=False,  # followed by hand, and only under the base URL
                    proxy=proxy.url if proxy is not None else None,
                    proxy_headers=proxy.headers if proxy is not None else None,
                ) as response:
                    body = await _read_capped(response)
                    answer = _Answer(response.status, response.headers, body)
                    status = response.status
            except _ClientClosed:  # closed while this request waited for a slot
                failure_text = "the Phala Cloud client is closed (the operator is shutting down)"
            except TimeoutError as exc:  # aiohttp's own timeouts (connect, socket read) included
                failure_text = f"Phala Cloud did not answer in time ({type(exc).__name__})"
            except _ResponseTooLarge:
                failure_kind = MalformedResponse
                failure_text = f"the answer is larger than {MAX_RESPONSE_BYTES} bytes"
            except aiohttp.ClientPayloadError as exc:
                if isinstance(exc.__cause__, ContentEncodingError):
                    failure_kind = MalformedResponse
                    failure_text = f"the answer cannot be decoded ({_library_text(exc, redact)})"
                elif can_retry:
                    retry = True
                else:
                    failure_text = f"cannot reach Phala Cloud ({_library_text(exc, redact)})"
            except aiohttp.ClientHttpProxyError as exc:
                failure_text = f"request failed ({_library_text(exc, redact)})"
            except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
                # Refused, reset or closed connections, TLS failures, answers that are not HTTP.
                if can_retry:
                    retry = True
                else:
                    failure_text = f"cannot reach Phala Cloud ({_library_text(exc, redact)})"
            except (aiohttp.ClientError, OSError) as exc:
                failure_text = f"request failed ({_library_text(exc, redact)})"
            finally:
                self._in_flight -= 1
                elapsed = time.monotonic() - started
                log.debug(
                    "%s -> %s in %.3fs", endpoint, status if status is not None else "no answer", elapsed
                )
                self._observe(endpoint, status, elapsed)
        if failure_text is not None:
            return None, failure_kind(redact(f"{endpoint}: {failure_text}")), False
        return answer, None, retry

    def _observe(self, endpoint: str, status: int | None, seconds: float) -> None:
        if self._observer is None:
            return
        try:
            self._observer(endpoint, status, seconds)
        except Exception:  # a metrics hook must not break a request
            log.warning("the request observer failed for %s", endpoint, exc_info=True)


class PhalaCloudSession:
    """Phala Cloud seen with one API key (``reconcile.ports.PhalaCloud``). Cheap: create one per
    reconcile; all sessions share the client's connections and concurrency bound.

    Every method raises only ``domain.errors.SyncError`` subclasses, bar ``ValueError`` for a
    programming mistake: Phase 2 arguments given one without the other.
    """

    __slots__ = ("_api_key", "_client", "_redact")

    def __init__(self, client: PhalaCloudClient, api_key: Secret) -> None:
        self._client = client
        self._api_key = api_key
        proxy = client._proxy
        self._redact = Redactor([api_key, *(proxy.secrets if proxy is not None else ())])

    def __repr__(self) -> str:
        return f"PhalaCloudSession(base_url={self._client.settings.base_url!r}, api_key={self._api_key!r})"

    async def get_cvm(self, cvm_id: str) -> CvmInfo:
        answer = await self._call("GET", EP_CVM, cvm_id)
        return self._parsed(lambda: parse_cvm(decode_json(answer.content, EP_CVM), EP_CVM), answer)

    async def get_pre_launch_script(self, cvm_id: str) -> str:
        answer = await self._call("GET", EP_GET_SCRIPT, cvm_id, suffix="/pre-launch-script")
        content_type = answer.headers.get("content-type")
        return self._parsed(lambda: parse_script(answer.content, content_type, EP_GET_SCRIPT), answer)

    async def patch_pre_launch_script(
        self,
        cvm_id: str,
        script: bytes,
        *,
        compose_hash: str | None = None,
        transaction_hash: str | None = None,
    ) -> UpdateAccepted:
        """Phase 1 without the hash headers (raises ``RegistrationRequired`` on 465), Phase 2 with.

        ``script`` is sent byte for byte as ``text/plain``; Phase 2 must send the very bytes of
        Phase 1. ``compose_hash`` is echoed exactly as the 465 gave it.
        """
        if (compose_hash is None) != (transaction_hash is None):
            raise ValueError("Phase 2 needs both compose_hash and transaction_hash; Phase 1 neither")
        if not script:
            raise Permanent(
                f"{EP_PATCH_SCRIPT}: Phala Cloud does not accept an empty pre-launch script",
                reason=Reason.INVALID_SCRIPT,
            )
        if len(script) > MAX_SCRIPT_BYTES:
            raise Permanent(
                f"{EP_PATCH_SCRIPT}: the script is {len(script)} bytes; Phala Cloud allows at most "
                f"{MAX_SCRIPT_BYTES} bytes for the compose file and the script together",
                reason=Reason.INVALID_SCRIPT,
            )
        headers = {"Content-Type": "text/plain"}
        if compose_hash is not None and transaction_hash is not None:
            # Both end up in headers: refuse anything a header could be abused with (CR, LF).
            if not _COMPOSE_HASH.fullmatch(compose_hash):
                raise Permanent(
                    f"{EP_PATCH_SCRIPT}: the compose hash to echo is not a 32-byte hex value",
                    reason=Reason.REMOTE_REJECTED,
                )
            if not _TX_HASH.fullmatch(transaction_hash):
                raise Permanent(
                    f"{EP_PATCH_SCRIPT}: the transaction hash is not 0x followed by 64 hex digits",
                    reason=Reason.INVALID_SPEC,
                )
            headers["X-Compose-Hash"] = compose_hash
            headers["X-Transaction-Hash"] = transaction_hash
        answer = await self._call(
            "PATCH", EP_PATCH_SCRIPT, cvm_id, suffix="/pre-launch-script", content=script, headers=headers
        )
        return self._parsed(
            lambda: parse_update_accepted(decode_json(answer.content, EP_PATCH_SCRIPT), EP_PATCH_SCRIPT),
            answer,
        )

    async def get_app_compose(self, cvm_id: str) -> str:
        """The exact app-compose text the CVM runs (attestation ``tcb_info.app_compose``)."""
        answer = await self._call("GET", EP_ATTESTATION, cvm_id, suffix="/attestation")
        return self._parsed(
            lambda: parse_app_compose(decode_json(answer.content, EP_ATTESTATION), EP_ATTESTATION), answer
        )

    async def list_operations(
        self, cvm_id: str, *, cursor: str | None = None, limit: int = 50
    ) -> OperationsPage:
        """One page of the CVM's operations, newest first."""
        params: dict[str, str | int] = {"limit": max(1, min(limit, 500))}
        if cursor:
            params["cursor"] = cursor
        answer = await self._call("GET", EP_OPERATIONS, cvm_id, suffix="/operations", params=params)
        return self._parsed(
            lambda: parse_operations_page(decode_json(answer.content, EP_OPERATIONS), EP_OPERATIONS), answer
        )

    async def find_operation(self, cvm_id: str, correlation_id: str) -> Operation | None:
        """The operation with this correlation id, or None if the newest
        ``MAX_OPERATION_PAGES * OPERATIONS_PAGE_SIZE`` operations do not include it."""
        cursor: str | None = None
        for _ in range(MAX_OPERATION_PAGES):
            page = await self.list_operations(cvm_id, cursor=cursor, limit=OPERATIONS_PAGE_SIZE)
            for operation in page.items:
                if operation.correlation_id == correlation_id:
                    return operation
            if page.next_cursor is None or page.next_cursor == cursor:
                return None
            cursor = page.next_cursor
        return None

    async def get_operation_status(self, cvm_id: str) -> CurrentOperation:
        """The operation in progress on the CVM now, or idle."""
        answer = await self._call("GET", EP_OPERATION_STATUS, cvm_id, suffix="/operation-status")
        return self._parsed(
            lambda: parse_current_operation(
                decode_json(answer.content, EP_OPERATION_STATUS), EP_OPERATION_STATUS
            ),
            answer,
        )

    # --- plumbing ------------------------------------------------------------------------------

    async def _call(
        self,
        method: str,
        endpoint: str,
        cvm_id: str,
        *,
        suffix: str = "",
        params: Mapping[str, str | int] | None = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> _Answer:
        self._check_inputs(endpoint, cvm_id)
        answer = await self._client.send(
            self._api_key,
            self._redact,
            method,
            endpoint,
            self._client.url_for(cvm_id, suffix),
            params=params,
            content=content,
            headers=headers,
        )
        if 200 <= answer.status < 300:
            return answer
        raise error_for_status(
            answer.status,
            parse_error_body(answer.content, self._redact),
            endpoint=endpoint,
            script_upload=endpoint == EP_PATCH_SCRIPT,
            retry_after=parse_retry_after(answer.headers.get("retry-after")),
            header_request_id=answer.headers.get("x-request-id"),
            redact=self._redact,
        )

    def _check_inputs(self, endpoint: str, cvm_id: str) -> None:
        if not self._api_key:
            raise Permanent(f"{endpoint}: no API key", reason=Reason.UNAUTHORIZED)
        if not _HEADER_TOKEN.fullmatch(self._api_key.reveal()):
            raise Permanent(
                f"{endpoint}: the API key holds characters an HTTP header cannot carry (spaces, newlines, "
                "non-ASCII); check the Secret",
                reason=Reason.UNAUTHORIZED,
            )
        if not _CVM_ID.fullmatch(cvm_id):
            shown = self._redact(cvm_id)[:64]  # redacted before the cut, so no part of a key remains
            raise Permanent(
                f"{endpoint}: {shown!r} is not a CVM id (a UUID, app id, instance id, hashid or name)",
                reason=Reason.INVALID_SPEC,
            )

    def _parsed(self, parse: Callable[[], _Parsed], answer: _Answer) -> _Parsed:
        try:
            return parse()
        except SyncError as exc:
            # Parsers know the endpoint, not the key or the request id: add both here. The parse
            # error behind it (a JSONDecodeError holds the whole body) goes: the body is not ours.
            exc.__cause__ = None
            exc.__context__ = None
            exc.message = self._redact(exc.message)
            exc.args = (exc.message,)
            exc.status_code = exc.status_code or answer.status
            exc.request_id = exc.request_id or answer.headers.get("x-request-id")
            raise


def _join(base: str, location: str) -> str | None:
    """A Location resolved against the URL that answered it; None when it is no URL."""
    try:
        joined = urljoin(base, location.strip())
        urlsplit(joined).port  # noqa: B018 - raises ValueError for a malformed port
    except ValueError:
        return None
    return joined


def _library_text(exc: BaseException, redact: Callable[[str], str]) -> str:
    """``Type: text`` of a library exception on one line: redacted whole, then cut (no prefix of a key
    is left). aiohttp quotes the offending bytes of a malformed answer, which may echo anything."""
    text = " ".join(redact(f"{type(exc).__name__}: {exc}").split())
    return text if len(text) <= MAX_LIBRARY_TEXT else text[: MAX_LIBRARY_TEXT - 3] + "..."


async def _read_capped(response: aiohttp.ClientResponse) -> bytes:
    if "Content-Encoding" not in response.headers:
        length = response.content_length
        if length is not None and length > MAX_RESPONSE_BYTES:
            raise _ResponseTooLarge  # refused unread
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        size += len(chunk)
        if size > MAX_RESPONSE_BYTES:
            raise _ResponseTooLarge
        chunks.append(chunk)
    return b"".join(chunks)
