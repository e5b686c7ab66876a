"""Running the simulator: in-process on a background thread with its own event loop (for sync
tests and the operator's tests), and a small synchronous client for its admin API."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx
from aiohttp import web

from cvm_prelaunch_localenv.simulator.app import ADMIN_PREFIX, API_PREFIX, Simulator

_START_TIMEOUT_S = 10.0
_ADMIN_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class SimCvm:
    """A CVM the simulator holds, as the admin API created it."""

    id: str  # the cvm_... hashid
    vm_uuid: str
    app_id: str
    name: str
    numeric_id: int
    instance_id: str
    device_id: str
    workspace_id: str
    kms_type: str
    chain_id: int | None
    compose_hash: str
    api_key: str = field(repr=False)  # the owning workspace's key

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> SimCvm:
        return cls(
            id=state["id"],
            vm_uuid=state["vm_uuid"],
            app_id=state["app_id"],
            name=state["name"],
            numeric_id=state["numeric_id"],
            instance_id=state["instance_id"],
            device_id=state["device_id"],
            workspace_id=state["workspace_id"],
            kms_type=state["kms_type"],
            chain_id=state["chain_id"],
            compose_hash=state["compose_hash"],
            api_key=state["api_key"],
        )


@dataclass(frozen=True)
class LoggedRequest:
    """One API request as the simulator received it (API keys already replaced by ``***``)."""

    seq: int
    method: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes
    status: int | None  # None: the connection was dropped
    started: float  # time.monotonic() in the server process
    ended: float | None
    cvm: str | None
    dropped: bool

    def header(self, name: str) -> str | None:
        """A header by name, case-insensitively (the first one if repeated)."""
        lowered = name.lower()
        return next((v for k, v in self.headers if k.lower() == lowered), None)

    def json(self) -> Any:
        return json.loads(self.body)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> LoggedRequest:
        return cls(
            seq=data["seq"],
            method=data["method"],
            path=data["path"],
            query=data["query"],
            headers=tuple((k, v) for k, v in data["headers"]),
            body=base64.b64decode(data["body_b64"]),
            status=data["status"],
            started=data["started"],
            ended=data["ended"],
            cvm=data["cvm"],
            dropped=data["dropped"],
        )


def peak_concurrency_of(requests: list[LoggedRequest]) -> int:
    """The most requests in flight at once, from the logged start and end times."""
    events: list[tuple[float, int]] = []
    for req in requests:
        events.append((req.started, 1))
        events.append((req.ended if req.ended is not None else float("inf"), -1))
    # Ends sort before starts at the same instant: touching intervals do not overlap.
    events.sort(key=lambda e: (e[0], e[1]))
    current = peak = 0
    for _time, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


class AdminError(RuntimeError):
    """The admin API refused a request."""


class AdminClient:
    """Synchronous client of the simulator's admin API (``/_simulator``)."""

    def __init__(self, admin_url: str) -> None:
        self._http = httpx.Client(base_url=admin_url, timeout=_ADMIN_TIMEOUT_S)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise AdminError(f"{method} {ADMIN_PREFIX}{path}: {response.status_code} {response.text}")
        return response.json()

    def health(self) -> bool:
        return bool(self._call("GET", "/health").get("ok"))

    def reset(self) -> None:
        """Back to the initial state: seed CVMs only, no faults, empty log, default settings."""
        self._call("POST", "/reset")

    def add_workspace(self, name: str | None = None, api_key: str | None = None) -> dict[str, str]:
        """A new workspace; returns ``id``, ``name``, ``slug`` and its ``api_key``."""
        body = {k: v for k, v in (("name", name), ("api_key", api_key)) if v is not None}
        result: dict[str, str] = self._call("POST", "/workspaces", body)
        return result

    def workspaces(self) -> list[dict[str, str]]:
        result: list[dict[str, str]] = self._call("GET", "/workspaces")
        return result

    def add_cvm(self, **spec: Any) -> SimCvm:
        """A new CVM. Keys: ``workspace`` (id or name) or ``api_key`` (a new key makes a new
        workspace), ``name``, ``kms_type`` (``phala``, ``ethereum``, ``base``), ``chain_id``,
        ``app_id`` (the app contract address on chain), ``vm_uuid``, ``device_id``,
        ``docker_compose_file``, ``pre_launch_script``, ``app_compose`` (a full object), ``status``,
        ``vcpu``, ``memory``, ``disk_size``."""
        return SimCvm.from_state(self._call("POST", "/cvms", spec))

    def cvm_state(self, cvm_id: str) -> dict[str, Any]:
        """Everything the simulator knows of a CVM: script, compose hash, app-compose text,
        pending Phase 1, operations."""
        result: dict[str, Any] = self._call("GET", f"/cvms/{cvm_id}")
        return result

    def update_cvm(self, cvm_id: str, **changes: Any) -> dict[str, Any]:
        """Change a CVM out of band, at once and without an operation (as the dashboard or another
        tool would): ``pre_launch_script``, ``docker_compose_file``, ``app_compose``, ``status``."""
        result: dict[str, Any] = self._call("PATCH", f"/cvms/{cvm_id}", changes)
        return result

    def inject(self, **rule: Any) -> dict[str, Any]:
        """Add a fault rule. Matching: ``method``, ``path`` (regex on the path below /api/v1),
        ``cvm``, ``count`` (default 1, ``None`` unlimited). Effects: ``latency_ms``, ``status``
        (with ``retry_after``, ``error_code``, ``message``), ``drop``, ``fail_operation``
        (message), ``wrong_compose_hash``."""
        result: dict[str, Any] = self._call("POST", "/faults", rule)
        return result

    def faults(self) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self._call("GET", "/faults")
        return result

    def clear_faults(self) -> None:
        self._call("DELETE", "/faults")

    def settings(self, **changes: Any) -> dict[str, Any]:
        """Read or change tunables: ``operation_seconds``, ``phase1_ttl_seconds``,
        ``receipt_retry_seconds``, ``form_465`` (structured/flat/nested), ``hash_0x``,
        ``prelaunch_get`` (json/text), ``rpc_urls`` ({chain_id: url})."""
        if changes:
            if "rpc_urls" in changes:
                changes["rpc_urls"] = {str(k): v for k, v in changes["rpc_urls"].items()}
            result: dict[str, Any] = self._call("PATCH", "/settings", changes)
        else:
            result = self._call("GET", "/settings")
        return result

    def requests(self) -> list[LoggedRequest]:
        return [LoggedRequest.from_json(item) for item in self._call("GET", "/requests")]

    def clear_requests(self) -> None:
        """Empty the request log and restart the peak-concurrency count."""
        self._call("DELETE", "/requests")

    def peak_concurrency(self) -> int:
        return int(self._call("GET", "/concurrency")["peak"])


class SimulatorServer:
    """The simulator on 127.0.0.1, served by a background thread with its own event loop.

    ``with SimulatorServer(rpc_urls={31337: anvil.rpc_url}) as sim: sim.base_url``
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: dict[str, Any] | None = None,
        rpc_urls: dict[int, str] | None = None,
        api_key: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self.simulator = Simulator(seed=seed, rpc_urls=rpc_urls, api_key=api_key, settings=settings)
        self._host = host
        self._requested_port = port
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner: web.AppRunner | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._admin: AdminClient | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> SimulatorServer:
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._thread = threading.Thread(target=self._serve, name="phala-simulator", daemon=True)
        self._thread.start()
        if not self._ready.wait(_START_TIMEOUT_S):
            raise TimeoutError("the simulator did not start")
        if self._startup_error is not None:
            self._thread.join(timeout=5)
            self._thread = None
            raise RuntimeError("the simulator failed to start") from self._startup_error
        return self

    def _serve(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._start_site())
        except BaseException as exc:  # reported to start() in the caller's thread
            self._startup_error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._cleanup())
            loop.close()

    async def _start_site(self) -> None:
        runner = web.AppRunner(
            self.simulator.build_app(), access_log=None, handle_signals=False, shutdown_timeout=1.0
        )
        await runner.setup()
        site = web.TCPSite(runner, self._host, self._requested_port)
        await site.start()
        self._runner = runner
        self._port = _bound_port(runner)

    async def _cleanup(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    def stop(self) -> None:
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None and thread.is_alive():
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=15)
        self._thread = None
        self._loop = None

    def __enter__(self) -> SimulatorServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what callers use -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the simulator is not running")
        return self._port

    @property
    def root_url(self) -> str:
        return f"http://{self._host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The API base URL, like ``https://cloud-api.phala.com/api/v1``."""
        return self.root_url + API_PREFIX

    @property
    def admin_url(self) -> str:
        return self.root_url + ADMIN_PREFIX

    @property
    def api_key(self) -> str:
        """The key of the default workspace."""
        return self.simulator.default_api_key

    @property
    def admin(self) -> AdminClient:
        if self._admin is None:
            self._admin = AdminClient(self.admin_url)
        return self._admin

    def __repr__(self) -> str:
        state = f"port={self._port}" if self._port is not None else "stopped"
        return f"SimulatorServer({state})"


def _bound_port(runner: web.AppRunner) -> int:
    for address in runner.addresses:
        if isinstance(address, tuple) and len(address) >= 2:
            return int(address[1])
    raise RuntimeError("the simulator is not bound to a TCP port")
