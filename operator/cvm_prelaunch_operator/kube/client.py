"""An asyncio Kubernetes client over raw JSON, for the operator's hot path and its own watches.

The official client is synchronous (a thread hop per call) and builds model objects for every answer;
per reconcile pass that cost about a millisecond of CPU per call. This one sends and returns plain
dicts through one pooled ``httpx.AsyncClient``.

Credentials are the official loader's, so whatever ``kubectl`` accepts works here too: in a pod the
ServiceAccount token (re-read from its file once a minute, as kubelet rotates it) and the cluster CA;
outside, the kubeconfig (``KUBECONFIG``) with its token, client certificate, exec plugin or auth
provider. A 401 reloads the credentials once and repeats the request.

Nothing here logs a request or response body: Secret values pass through this client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from cvm_prelaunch_operator import __version__

logger = logging.getLogger(__name__)

JSON: Final = "application/json"
MERGE_PATCH: Final = "application/merge-patch+json"
# The API server answers lists and watches of any resource with metadata only when asked this way
# (what client-go's metadata informers send); plain JSON is the fallback for servers that cannot.
METADATA_LIST: Final = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1, application/json"
METADATA_WATCH: Final = "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1, application/json"

CONNECT_TIMEOUT: Final = 5.0
REQUEST_TIMEOUT: Final = 15.0
MAX_CONNECTIONS: Final = 64
STATUS_MESSAGE_CHARS: Final = 300
# No object stored in etcd comes near this (its request limit is 3 MiB); a longer line is not an event.
MAX_EVENT_BYTES: Final = 16 * 1024 * 1024

# (method, resource, HTTP status or None when no answer came, seconds)
RequestObserver = Callable[[str, str, int | None, float], None]


class KubeApiError(Exception):
    """The API server refused a request (``status``) or could not be reached (``status`` None).

    ``reason`` is the HTTP reason phrase or the transport failure's class name; ``message`` the
    server's own explanation (a ``Status`` object's message), cut short. Neither carries a body of a
    Secret: the server never echoes one in an error."""

    def __init__(self, status: int | None, reason: str, message: str = "") -> None:
        self.status = status
        self.reason = reason
        self.message = message[:STATUS_MESSAGE_CHARS]
        head = f"HTTP {status} {reason}" if status is not None else reason
        super().__init__(f"{head}: {self.message}" if self.message else head)

    @property
    def gone(self) -> bool:
        return self.status == 410


class Credentials:
    """Where the API server is and how to prove who we are, from the official loader."""

    def __init__(self, configuration: k8s.Configuration, source: str) -> None:
        self._configuration = configuration
        self.source = source  # "in-cluster" or "kubeconfig", for the start-up log line
        self.server = str(configuration.host).rstrip("/")
        self.proxy: str | None = configuration.proxy or None
        self.tls_server_name: str | None = getattr(configuration, "tls_server_name", None) or None
        self.verify: ssl.SSLContext | bool = self._ssl_context()

    def _ssl_context(self) -> ssl.SSLContext | bool:
        cfg = self._configuration
        if not cfg.verify_ssl:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        else:
            context = ssl.create_default_context(cafile=cfg.ssl_ca_cert or None)
        if cfg.cert_file:
            context.load_cert_chain(cfg.cert_file, cfg.key_file or None)
        return context

    def authorization(self) -> str | None:
        """The Authorization header; the loader's hook re-reads a rotated token file or re-runs an
        expired exec plugin here (a time comparison otherwise)."""
        value = self._configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        return value.strip() if value else None


def load_credentials(kubeconfig: str | None = None) -> Credentials:
    """In-cluster credentials when running in a pod, else the kubeconfig (``KUBECONFIG``); a given
    ``kubeconfig`` file is used as is."""
    configuration = k8s.Configuration()
    if kubeconfig is None:
        try:
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
            return Credentials(configuration, "in-cluster")
        except k8s_config.ConfigException:
            pass
    k8s_config.load_kube_config(config_file=kubeconfig, client_configuration=configuration)  # type: ignore[no-untyped-call]
    return Credentials(configuration, "kubeconfig")


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any  # parsed JSON, or None for an empty body


def _status_message(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return ""
    return str(body.get("message") or "") if isinstance(body, dict) else ""


class KubeClient:
    """One pooled connection set to the API server. Use one for requests and another for watches, so
    long-lived streams never take the connections the hot path needs."""

    def __init__(
        self,
        credentials_loader: Callable[[], Credentials] = load_credentials,
        *,
        identity: str = "",
        observer: RequestObserver | None = None,
        max_connections: int = MAX_CONNECTIONS,
        timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._load = credentials_loader
        self._credentials = credentials_loader()
        self._observer = observer
        self._timeout = timeout
        self._max_connections = max_connections
        agent = f"cvm-prelaunch-operator/{__version__}"
        self._user_agent = f"{agent} ({identity})" if identity else agent
        self._http = self._build()
        self._reloading: asyncio.Lock | None = None

    def _build(self) -> httpx.AsyncClient:
        creds = self._credentials
        return httpx.AsyncClient(
            base_url=creds.server,
            verify=creds.verify,
            proxy=creds.proxy,
            trust_env=False,  # the kubeconfig says whether a proxy is used, not the environment
            timeout=httpx.Timeout(self._timeout, connect=CONNECT_TIMEOUT),
            limits=httpx.Limits(
                max_connections=self._max_connections,
                max_keepalive_connections=self._max_connections,
                keepalive_expiry=60.0,
            ),
            headers={"User-Agent": self._user_agent, "Accept": JSON},
            follow_redirects=False,
        )

    @property
    def server(self) -> str:
        return self._credentials.server

    @property
    def credentials_source(self) -> str:
        return self._credentials.source

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- one request --------------------------------------------------------------------------------

    def _headers(self, extra: Mapping[str, str] | None) -> dict[str, str]:
        headers = dict(extra or {})
        auth = self._credentials.authorization()
        if auth:
            headers["Authorization"] = auth
        return headers

    def _extensions(self) -> dict[str, Any]:
        name = self._credentials.tls_server_name
        return {"sni_hostname": name} if name else {}

    async def _reload_credentials(self, stale: Credentials) -> None:
        """After a 401: load the credentials again (a rotated token, an expired certificate)."""
        if self._reloading is None:
            self._reloading = asyncio.Lock()
        async with self._reloading:
            if self._credentials is not stale:
                return  # another request reloaded them meanwhile
            fresh = await asyncio.to_thread(self._load)
            self._credentials = fresh
            old, self._http = self._http, self._build()
            await old.aclose()
            logger.info("Kubernetes credentials reloaded after a 401 (%s)", fresh.source)

    async def request(
        self,
        method: str,
        path: str,
        *,
        resource: str,
        params: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = JSON,
        accept: str | None = None,
        request_timeout: float | None = None,
    ) -> Answer:
        """One request; JSON in, JSON out. Raises ``KubeApiError`` for a transport failure or any
        answer outside 2xx; the caller decides what 404 or 409 mean."""
        content = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        extra = {"Content-Type": content_type} if content is not None else {}
        if accept:
            extra["Accept"] = accept
        for attempt in (1, 2):
            credentials = self._credentials
            started = time.monotonic()
            try:
                response = await self._http.request(
                    method,
                    path,
                    params=params,
                    content=content,
                    headers=self._headers(extra),
                    timeout=request_timeout if request_timeout is not None else httpx.USE_CLIENT_DEFAULT,
                    extensions=self._extensions(),
                )
            except httpx.HTTPError as exc:
                self._observe(method, resource, None, started)
                raise KubeApiError(None, type(exc).__name__) from None
            self._observe(method, resource, response.status_code, started)
            if response.status_code == 401 and attempt == 1:
                await self._reload_credentials(credentials)
                continue
            if response.is_success:
                return Answer(response.status_code, response.json() if response.content else None)
            raise KubeApiError(response.status_code, response.reason_phrase, _status_message(response))
        raise AssertionError("unreachable")  # pragma: no cover

    def _observe(self, method: str, resource: str, status: int | None, started: float) -> None:
        if self._observer is not None:
            self._observer(method, resource, status, time.monotonic() - started)

    # -- shorthands ---------------------------------------------------------------------------------

    async def get(self, path: str, *, resource: str, request_timeout: float | None = None) -> Any | None:
        """The object at ``path``, or None when it does not exist."""
        try:
            return (await self.request("GET", path, resource=resource, request_timeout=request_timeout)).body
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    # -- streams (watches) --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def stream_lines(
        self,
        path: str,
        *,
        resource: str,
        params: Mapping[str, str],
        accept: str | None = None,
        read_timeout: float,
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        """A watch: yields an iterator over the answer's lines (one JSON event each). A read that
        waits longer than ``read_timeout`` for the next byte fails the stream."""
        started = time.monotonic()
        extra = {"Accept": accept} if accept else {}
        timeout = httpx.Timeout(read_timeout, connect=CONNECT_TIMEOUT)
        try:
            async with self._http.stream(
                "GET",
                path,
                params=params,
                headers=self._headers(extra),
                timeout=timeout,
                extensions=self._extensions(),
            ) as response:
                self._observe("WATCH", resource, response.status_code, started)
                if response.status_code == 401:
                    await self._reload_credentials(self._credentials)
                if not response.is_success:
                    await response.aread()
                    raise KubeApiError(
                        response.status_code, response.reason_phrase, _status_message(response)
                    )
                yield _lines(response)
        except httpx.HTTPError as exc:
            raise KubeApiError(None, type(exc).__name__) from None


async def _lines(response: httpx.Response) -> AsyncIterator[bytes]:
    """Non-empty lines of a streamed answer, as bytes (``json.loads`` takes them as they are)."""
    pending = bytearray()
    async for chunk in response.aiter_bytes():
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:end]
            if pending.strip():
                yield bytes(pending)
            pending.clear()
            start = end + 1
        pending += chunk[start:]
        if len(pending) > MAX_EVENT_BYTES:
            raise KubeApiError(None, f"watch event larger than {MAX_EVENT_BYTES} bytes")
    if pending.strip():
        yield bytes(pending)


__all__ = [
    "JSON",
    "MERGE_PATCH",
    "METADATA_LIST",
    "METADATA_WATCH",
    "Answer",
    "Credentials",
    "KubeApiError",
    "KubeClient",
    "RequestObserver",
    "load_credentials",
]
