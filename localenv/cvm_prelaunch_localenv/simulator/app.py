"""The simulated Phala Cloud API as an aiohttp application, plus its admin API under ``/_simulator``.

The public part follows ``/work/shared/docs/phala-cloud-flow.md`` (the brief) and Phala's OpenAPI
document; where they differ it follows what the official clients send and accept.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import email.policy
import itertools
import json
import re
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import Any

from aiohttp import web

from cvm_prelaunch_localenv.simulator import responses as R
from cvm_prelaunch_localenv.simulator.chain import (
    ChainRpcError,
    JsonRpcClient,
    Verdict,
    verify_registration,
)
from cvm_prelaunch_localenv.simulator.compose import compose_hash_of_text, serialise_app_compose
from cvm_prelaunch_localenv.simulator.faults import FaultBook, FaultError, Settings
from cvm_prelaunch_localenv.simulator.state import (
    Cvm,
    CvmSpec,
    Operation,
    PendingPhase1,
    SpecError,
    Workspace,
    build_cvm,
    hashid_for,
    new_api_key,
    utc_now_iso,
)

API_PREFIX = "/api/v1"
ADMIN_PREFIX = "/_simulator"
MAX_COMPOSE_BYTES = 200 * 1024  # docker compose file + pre-launch script (js/src/types/app_compose.ts)
MAX_REQUEST_BYTES = 8 * 1024 * 1024
REDACTED = "***"
REQUEST_LOG_LIMIT = 100_000
_SECRET_HEADERS = frozenset({"x-api-key", "authorization", "cookie", "proxy-authorization"})
_TX_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_COMPOSE_HASH = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")
# Fields of the unified PATCH that live in the app-compose (and so change the compose hash).
_COMPOSE_FIELDS = ("docker_compose_file", "pre_launch_script", "allowed_envs")
_COMPOSE_BOOL_FIELDS = ("public_logs", "public_sysinfo", "public_tcbinfo")
_RESOURCE_FIELDS = ("vcpu", "memory", "disk_size")
_STRING_FIELDS = ("encrypted_env", "user_config", "image")
_UPDATE_FIELDS = frozenset(
    (
        *_COMPOSE_FIELDS,
        *_COMPOSE_BOOL_FIELDS,
        *_RESOURCE_FIELDS,
        *_STRING_FIELDS,
        "gpus",
        "shutdown_timeout",
        "allow_force_stop",
    )
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
DEFAULT_WORKSPACE = "default"


class _Dropped(Exception):
    """A fault closed the connection; nothing is sent."""


class Simulator:
    """State and behaviour of the simulated API. Everything runs on one event loop."""

    def __init__(
        self,
        *,
        seed: dict[str, Any] | None = None,
        rpc_urls: dict[int, str] | None = None,
        api_key: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> None:
        self._seed = json.loads(json.dumps(seed or {}))  # a private copy: pinned ids go in
        self._rpc_urls = dict(rpc_urls or {})
        self._default_api_key = api_key or new_api_key()
        self._settings_overrides = dict(settings or {})
        self.workspaces: dict[str, Workspace] = {}
        self.cvms: list[Cvm] = []
        self.faults = FaultBook()
        self.settings = Settings()
        # Bounded so a long shell session cannot grow without limit; tests clear it per test.
        self.request_log: collections.deque[dict[str, Any]] = collections.deque(maxlen=REQUEST_LOG_LIMIT)
        self.inflight = 0
        self.peak_inflight = 0
        self._request_seq = itertools.count(1)
        self._numeric_ids = itertools.count(1000)
        self._tasks: set[asyncio.Task[None]] = set()
        self._rpc_clients: dict[str, JsonRpcClient] = {}
        self._load_initial_state()

    # -- state ------------------------------------------------------------------------------------

    @property
    def default_api_key(self) -> str:
        return self._default_api_key

    def _load_initial_state(self) -> None:
        self.workspaces.clear()
        self.cvms.clear()
        self.faults.clear()
        self.request_log.clear()
        self.peak_inflight = self.inflight
        self._numeric_ids = itertools.count(1000)
        self.settings = Settings()
        self.settings.rpc_urls.update(self._rpc_urls)
        self.settings.update(self._seed.get("settings") or {})
        self.settings.update(self._settings_overrides)
        self.add_workspace(DEFAULT_WORKSPACE, self._default_api_key)
        for workspace in self._seed.get("workspaces") or []:
            self.add_workspace(str(workspace["name"]), workspace.get("api_key"))
        for spec in self._seed.get("cvms") or []:
            cvm = self.add_cvm(dict(spec))
            # Pin the generated identities so a reset re-creates the very same CVM.
            spec.setdefault("vm_uuid", cvm.vm_uuid)
            spec.setdefault("app_id", cvm.app_id)
            spec.setdefault("device_id", cvm.device_id)
            spec.setdefault("name", cvm.name)

    async def reset(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._load_initial_state()

    async def close(self) -> None:
        await self.reset()
        for client in self._rpc_clients.values():
            await client.close()
        self._rpc_clients.clear()

    def add_workspace(self, name: str | None = None, api_key: str | None = None) -> Workspace:
        name = name or f"workspace-{secrets.token_hex(3)}"
        for existing in self.workspaces.values():
            if existing.name == name:
                raise SpecError(f"workspace {name!r} exists")
            if api_key is not None and existing.api_key == api_key:
                raise SpecError("that API key belongs to another workspace")
        workspace = Workspace(
            id=hashid_for("wks_", name),
            name=name,
            slug=re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "workspace",
            api_key=api_key or new_api_key(),
        )
        self.workspaces[workspace.id] = workspace
        return workspace

    def _workspace_for(self, spec: dict[str, Any]) -> Workspace:
        key = spec.pop("api_key", None)
        ident = spec.pop("workspace", None) or spec.pop("workspace_id", None)
        for workspace in self.workspaces.values():
            if (key is not None and workspace.api_key == key) or (
                ident is not None and ident in (workspace.id, workspace.name)
            ):
                return workspace
        if key is not None or ident is not None:
            if key is not None and ident is None:
                # A new key names a new workspace: handy for "another workspace" tests.
                return self.add_workspace(None, key)
            raise SpecError("no such workspace")
        return self._by_name(DEFAULT_WORKSPACE)

    def _by_name(self, name: str) -> Workspace:
        return next(w for w in self.workspaces.values() if w.name == name)

    def add_cvm(self, spec: dict[str, Any]) -> Cvm:
        spec = dict(spec)
        workspace = self._workspace_for(spec)
        known = set(CvmSpec.__dataclass_fields__) - {"workspace_id"}
        unknown = set(spec) - known
        if unknown:
            raise SpecError(f"unknown CVM fields: {', '.join(sorted(unknown))}")
        cvm = build_cvm(CvmSpec(workspace_id=workspace.id, **spec), next(self._numeric_ids))
        for other in self.cvms:
            if other.vm_uuid == cvm.vm_uuid or other.name == cvm.name:
                raise SpecError("a CVM with that vm_uuid or name exists")
        self.cvms.append(cvm)
        return cvm

    def find_cvm(self, identifier: str, workspace: Workspace | None = None) -> Cvm | None:
        """Resolve a path identifier; names resolve in the caller's workspace first."""
        matches = [c for c in self.cvms if c.matches(identifier)]
        if workspace is not None:
            own = [c for c in matches if c.workspace_id == workspace.id]
            if own:
                return own[0]
        return matches[0] if matches else None

    def cvm_state(self, cvm: Cvm) -> dict[str, Any]:
        workspace = self.workspaces[cvm.workspace_id]
        pending = cvm.pending
        return {
            "id": cvm.hashid,
            "numeric_id": cvm.numeric_id,
            "vm_uuid": cvm.vm_uuid,
            "name": cvm.name,
            "app_id": cvm.app_id,
            "instance_id": cvm.instance_id,
            "device_id": cvm.device_id,
            "workspace_id": workspace.id,
            "workspace_name": workspace.name,
            "api_key": workspace.api_key,
            "kms_type": cvm.kms_type,
            "chain_id": cvm.chain_id,
            "app_contract_address": cvm.app_contract_address if cvm.onchain else None,
            "status": cvm.status,
            "in_progress": cvm.in_progress,
            "pre_launch_script": cvm.pre_launch_script,
            "compose_hash": cvm.compose_hash,
            "app_compose": cvm.app_compose_text,
            "pending_phase1": None
            if pending is None
            else {
                "compose_hash": pending.compose_hash,
                "age_seconds": time.monotonic() - pending.created_monotonic,
                "new_app_compose": pending.new_app_compose_text,
            },
            "superseded": sorted(cvm.superseded),
            "operations": [R.operation_json(cvm, op) for op in cvm.operations],
        }

    def _rpc(self, chain_id: int) -> JsonRpcClient | None:
        url = self.settings.rpc_urls.get(chain_id)
        if url is None:
            return None
        client = self._rpc_clients.get(url)
        if client is None:
            client = self._rpc_clients[url] = JsonRpcClient(url)
        return client

    # -- operations -------------------------------------------------------------------------------

    def _start_operation(
        self, cvm: Cvm, request: web.Request, new_text: str, resources: dict[str, int]
    ) -> Operation:
        fault = self.faults.take("fail_operation", request.method, _api_path(request), cvm.matches)
        op = Operation(
            correlation_id=str(uuid.uuid4()),
            operation_type="compose_update",
            started_at=utc_now_iso(),
            started_monotonic=time.monotonic(),
            new_app_compose_text=new_text,
            new_resources=dict(resources),
        )
        op.events.append({"event_type": "compose_update", "timestamp": op.started_at, "state": "started"})
        cvm.operations.append(op)
        cvm.current_operation = op
        cvm.status = "restarting"
        failure = fault.fail_operation if fault is not None else None
        task = asyncio.get_running_loop().create_task(self._run_operation(cvm, op, failure))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    async def _run_operation(self, cvm: Cvm, op: Operation, failure: str | None) -> None:
        await asyncio.sleep(self.settings.operation_seconds)
        op.completed_at = utc_now_iso()
        op.duration_ms = round((time.monotonic() - op.started_monotonic) * 1000)
        if failure is not None:
            # A failed update leaves the CVM on its previous app-compose.
            op.status = "failed"
            op.error_message = failure
        else:
            cvm.app_compose_text = op.new_app_compose_text
            for key, value in op.new_resources.items():
                setattr(cvm, key, value)
            op.status = "completed"
        op.events.append({"event_type": "compose_update", "timestamp": op.completed_at, "state": op.status})
        cvm.status = "running"
        cvm.current_operation = None

    # -- aiohttp wiring ---------------------------------------------------------------------------

    def build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST_BYTES)
        api: list[tuple[str, str, Handler]] = [
            ("GET", "/cvms/{cvm_id}", self.get_cvm),
            ("PATCH", "/cvms/{cvm_id}", self.patch_cvm),
            ("GET", "/cvms/{cvm_id}/pre-launch-script", self.get_pre_launch_script),
            ("PATCH", "/cvms/{cvm_id}/pre-launch-script", self.patch_pre_launch_script),
            ("GET", "/cvms/{cvm_id}/attestation", self.get_attestation),
            ("GET", "/cvms/{cvm_id}/compose_file", self.get_compose_file),
            ("GET", "/cvms/{cvm_id}/operations", self.get_operations),
            ("GET", "/cvms/{cvm_id}/operation-status", self.get_operation_status),
        ]
        for method, path, handler in api:
            app.router.add_route(method, API_PREFIX + path, handler)
        admin: list[tuple[str, str, Handler]] = [
            ("GET", "/health", self.admin_health),
            ("POST", "/reset", self.admin_reset),
            ("GET", "/workspaces", self.admin_list_workspaces),
            ("POST", "/workspaces", self.admin_add_workspace),
            ("GET", "/cvms", self.admin_list_cvms),
            ("POST", "/cvms", self.admin_add_cvm),
            ("GET", "/cvms/{cvm_id}", self.admin_get_cvm),
            ("PATCH", "/cvms/{cvm_id}", self.admin_patch_cvm),
            ("GET", "/faults", self.admin_list_faults),
            ("POST", "/faults", self.admin_add_fault),
            ("DELETE", "/faults", self.admin_clear_faults),
            ("GET", "/settings", self.admin_get_settings),
            ("PATCH", "/settings", self.admin_patch_settings),
            ("GET", "/requests", self.admin_list_requests),
            ("DELETE", "/requests", self.admin_clear_requests),
            ("GET", "/concurrency", self.admin_concurrency),
        ]
        for method, path, handler in admin:
            app.router.add_route(method, ADMIN_PREFIX + path, handler)
        app.on_cleanup.append(self._on_cleanup)
        return app

    async def _on_cleanup(self, _app: web.Application) -> None:
        await self.close()

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith(API_PREFIX + "/") and request.path != API_PREFIX:
            if request.path.startswith(ADMIN_PREFIX + "/"):
                return await _admin_errors(request, handler)
            return R.detail_error(404, "Not Found")
        entry = await self._log_entry(request)
        self.inflight += 1
        self.peak_inflight = max(self.peak_inflight, self.inflight)
        response: web.StreamResponse | None = None
        try:
            response = await self._apply_http_faults(request, entry)
            if response is None:
                response = await _api_errors(request, handler)
            return response
        except _Dropped:
            entry["dropped"] = True
            transport = request.transport
            if transport is not None:
                transport.abort()
            # Nothing reaches the client: its connection is gone.
            return web.Response(status=499)
        finally:
            self.inflight -= 1
            entry["ended"] = time.monotonic()
            entry["status"] = None if entry["dropped"] or response is None else response.status

    async def _log_entry(self, request: web.Request) -> dict[str, Any]:
        started = time.monotonic()
        body = await request.read()
        headers = [
            [name, REDACTED if name.lower() in _SECRET_HEADERS else value]
            for name, value in (
                (raw_name.decode("latin-1"), raw_value.decode("latin-1"))
                for raw_name, raw_value in request.raw_headers
            )
        ]
        match = re.match(re.escape(API_PREFIX) + r"/cvms/([^/]+)", request.path)
        entry: dict[str, Any] = {
            "seq": next(self._request_seq),
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "headers": headers,
            "body_b64": base64.b64encode(body).decode(),
            "status": None,
            "started": started,
            "ended": None,
            "cvm": match.group(1) if match else None,
            "dropped": False,
        }
        self.request_log.append(entry)
        return entry

    async def _apply_http_faults(self, request: web.Request, entry: dict[str, Any]) -> web.Response | None:
        ident = entry["cvm"]
        target = self.find_cvm(ident) if ident else None

        def same_cvm(rule_cvm: str) -> bool:
            return target is not None and target.matches(rule_cvm)

        rule = self.faults.take("http", request.method, _api_path(request), same_cvm)
        if rule is None:
            return None
        if rule.latency_ms:
            await asyncio.sleep(rule.latency_ms / 1000)
        if rule.drop:
            raise _Dropped
        if rule.status is None:
            return None
        headers = {"Retry-After": rule.retry_after} if rule.retry_after is not None else None
        if rule.status == 429 and headers is None:
            headers = {"Retry-After": "1"}
        if rule.error_code is not None:
            message = rule.message or "Injected error"
            return R.structured_error(rule.status, rule.error_code, message, headers=headers)
        return R.detail_error(rule.status, rule.message or _default_fault_message(rule.status), headers)

    # -- the public API ---------------------------------------------------------------------------

    def _authorise(self, request: web.Request) -> Workspace | web.Response:
        key = request.headers.get("X-API-Key")
        if key:
            for workspace in self.workspaces.values():
                if secrets.compare_digest(workspace.api_key.encode(), key.encode()):
                    return workspace
        return R.structured_error(
            401,
            "ERR-03-001",
            "Authentication required",
            suggestions=["Send a valid API key in the X-API-Key header."],
        )

    def _resolve(self, request: web.Request) -> tuple[Workspace, Cvm] | web.Response:
        auth = self._authorise(request)
        if isinstance(auth, web.Response):
            return auth
        ident = request.match_info["cvm_id"]
        cvm = self.find_cvm(ident, auth)
        if cvm is None:
            return R.structured_error(
                404,
                "ERR-03-005",
                f"CVM {ident} not found",
                details=[{"field": "cvm_id", "value": ident, "message": "No CVM with this identifier"}],
            )
        if cvm.workspace_id != auth.id:
            return R.structured_error(
                403,
                "ERR-03-003",
                "CVM not in workspace",
                details=[
                    {"field": "cvm_id", "value": ident, "message": "The CVM belongs to another workspace"}
                ],
            )
        return auth, cvm

    async def get_cvm(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        workspace, cvm = resolved
        version = R.select_version(request.headers.get("X-Phala-Version"))
        return R.json_response(R.cvm_detail(cvm, workspace, version))

    async def get_pre_launch_script(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        _workspace, cvm = resolved
        if self.settings.prelaunch_get == "text":
            return web.Response(text=cvm.pre_launch_script, content_type="text/plain")
        return R.json_response(cvm.pre_launch_script)

    async def get_attestation(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        return R.json_response(R.attestation(resolved[1]))

    async def get_compose_file(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        cvm = resolved[1]
        if request.query.get("raw", "").lower() in ("1", "true", "yes"):
            return web.Response(text=cvm.app_compose_text, content_type="text/plain")
        return R.json_response(cvm.app_compose)

    async def get_operation_status(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        return R.json_response(R.operation_status(resolved[1]))

    async def get_operations(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        cvm = resolved[1]
        query = request.query
        try:
            limit = int(query.get("limit", "50"))
        except ValueError:
            return R.validation_error(["query", "limit"], "Input should be a valid integer", "int_parsing")
        if not 1 <= limit <= 500:
            return R.validation_error(
                ["query", "limit"], "Input should be between 1 and 500", "less_than_equal"
            )
        offset = 0
        if "cursor" in query:
            try:
                offset = int(base64.urlsafe_b64decode(query["cursor"].encode()).decode())
            except (ValueError, binascii.Error):
                return R.validation_error(["query", "cursor"], "Invalid cursor", "value_error")
        bounds: dict[str, datetime] = {}
        for name in ("start_time", "end_time"):
            if name in query:
                try:
                    bounds[name] = _parse_time(query[name])
                except ValueError:
                    return R.validation_error(
                        ["query", name], "Input should be a valid datetime", "datetime_from_date_parsing"
                    )
        types = set(query.getall("operation_types", []))
        items = [op for op in reversed(cvm.operations) if not types or op.operation_type in types]
        if "start_time" in bounds:
            items = [op for op in items if _parse_time(op.started_at) >= bounds["start_time"]]
        if "end_time" in bounds:
            items = [op for op in items if _parse_time(op.started_at) <= bounds["end_time"]]
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        next_cursor = base64.urlsafe_b64encode(str(offset + limit).encode()).decode() if more else None
        body = {
            "items": [R.operation_json(cvm, op) for op in page],
            "next_cursor": next_cursor,
            "total": len(items),
        }
        return R.json_response(body)

    async def patch_pre_launch_script(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        _workspace, cvm = resolved
        script = await _read_script(request)
        if isinstance(script, web.Response):
            return script
        return await self._update(request, cvm, {"pre_launch_script": script})

    async def patch_cvm(self, request: web.Request) -> web.Response:
        resolved = self._resolve(request)
        if isinstance(resolved, web.Response):
            return resolved
        _workspace, cvm = resolved
        changes = await _read_update_request(request)
        if isinstance(changes, web.Response):
            return changes
        has_phase2_headers = "X-Compose-Hash" in request.headers or "X-Transaction-Hash" in request.headers
        if not changes and not has_phase2_headers:
            return R.structured_error(400, "ERR-01-001", "The update request changes nothing")
        return await self._update(request, cvm, changes)

    async def _update(self, request: web.Request, cvm: Cvm, changes: dict[str, Any]) -> web.Response:
        """Both PATCH endpoints: the off-chain update, and Phase 1 / Phase 2 of the on-chain flow."""
        if cvm.in_progress:
            # Bare (no error_code): clients treat it as transient and retry.
            return R.detail_error(409, "Another operation is in progress for this CVM")
        new_compose = _apply_changes(cvm.app_compose, changes)
        too_big = _size_error(new_compose)
        if too_big is not None:
            return too_big
        new_text = serialise_app_compose(new_compose)
        resources = {k: int(changes[k]) for k in _RESOURCE_FIELDS if k in changes}
        hash_header = request.headers.get("X-Compose-Hash")
        tx_header = request.headers.get("X-Transaction-Hash")
        if cvm.onchain and (hash_header is not None or tx_header is not None):
            return await self._phase2(request, cvm, changes, new_text, hash_header, tx_header)
        new_hash = compose_hash_of_text(new_text)
        if cvm.onchain and new_hash != cvm.compose_hash:
            return self._phase1(request, cvm, new_text, resources)
        op = self._start_operation(cvm, request, new_text, resources)
        return R.accepted(op.correlation_id)

    def _phase1(
        self, request: web.Request, cvm: Cvm, new_text: str, resources: dict[str, int]
    ) -> web.Response:
        new_hash = compose_hash_of_text(new_text)
        previous = cvm.pending
        if previous is not None and previous.compose_hash != new_hash:
            cvm.superseded.add(previous.compose_hash)
        cvm.superseded.discard(new_hash)
        cvm.pending = PendingPhase1(
            compose_hash=new_hash,
            base_compose_hash=cvm.compose_hash,
            new_app_compose_text=new_text,
            new_resources=dict(resources),
            created_monotonic=time.monotonic(),
        )
        reported = new_hash
        wrong = self.faults.take("wrong_compose_hash", request.method, _api_path(request), cvm.matches)
        if wrong is not None:
            # A hash that is not what the new app-compose hashes to: clients must catch it.
            reported = compose_hash_of_text(new_text + "\n")
        if self.settings.hash_0x:
            reported = "0x" + reported
        return R.registration_required(cvm, reported, self.settings.form_465)

    async def _phase2(
        self,
        request: web.Request,
        cvm: Cvm,
        changes: dict[str, Any],
        new_text: str,
        hash_header: str | None,
        tx_header: str | None,
    ) -> web.Response:
        if hash_header is None or tx_header is None:
            return R.structured_error(
                400, "ERR-01-002", "X-Compose-Hash and X-Transaction-Hash must be sent together"
            )
        if not _COMPOSE_HASH.match(hash_header.strip()):
            return R.structured_error(400, "ERR-01-002", "X-Compose-Hash is not a 32-byte hex hash")
        if not _TX_HASH.match(tx_header.strip()):
            return R.structured_error(
                400, "ERR-01-002", "X-Transaction-Hash is not a 0x-prefixed 32-byte hash"
            )
        wanted = hash_header.strip().lower().removeprefix("0x")
        tx_hash = tx_header.strip().lower()
        pending = cvm.pending
        if pending is None or pending.compose_hash != wanted:
            reason = (
                "it was superseded by a newer Phase 1 for this CVM"
                if wanted in cvm.superseded
                else "no Phase 1 for this CVM announced it"
            )
            return _hash_invalid(wanted, f"Compose hash is unknown: {reason}")
        if time.monotonic() - pending.created_monotonic > self.settings.phase1_ttl_seconds:
            cvm.pending = None
            return _hash_invalid(wanted, "Compose hash expired: start again from Phase 1")
        if cvm.compose_hash != pending.base_compose_hash:
            cvm.pending = None
            return _hash_invalid(wanted, "The CVM's compose changed since Phase 1: start again")
        # The CLI sends {} in Phase 2 and relies on the cached Phase-1 body; anything else sent must
        # produce the same app-compose, or the registered hash would not match what boots.
        if changes and compose_hash_of_text(new_text) != pending.compose_hash:
            return _hash_invalid(wanted, "The request body differs from Phase 1")
        assert cvm.chain_id is not None
        rpc = self._rpc(cvm.chain_id)
        if rpc is None:
            return R.detail_error(500, f"KMS configuration error: no RPC for chain {cvm.chain_id}")
        try:
            result = await verify_registration(
                rpc,
                app_contract=cvm.app_contract_address,
                compose_hash=wanted,
                tx_hash=tx_hash,
                receipt_retry_seconds=self.settings.receipt_retry_seconds,
            )
        except ChainRpcError as exc:
            return R.detail_error(500, f"RPC error while verifying the transaction: {exc}")
        # While we waited on the chain another request may have won: an update started, or a
        # newer Phase 1 replaced this one.
        if cvm.in_progress:
            return R.detail_error(409, "Another operation is in progress for this CVM")
        if cvm.pending is not pending:
            return _hash_invalid(wanted, "Compose hash is unknown: it was superseded by a newer Phase 1")
        if result.verdict is Verdict.NOT_ALLOWED:
            return R.structured_error(
                468,
                "ERR-01-008",
                "Compose hash not allowed on-chain",
                details=[
                    {"field": "compose_hash", "value": "0x" + wanted, "message": result.detail},
                    {"field": "app_id", "value": cvm.app_id, "message": None},
                ],
                suggestions=["Check that the hash was added to the app contract on the CVM's chain."],
            )
        if result.verdict is not Verdict.OK:
            return R.structured_error(
                467,
                "ERR-01-007",
                "Transaction verification failed",
                details=[
                    {"field": "transaction_hash", "value": tx_hash, "message": result.detail},
                    {"field": "reason", "value": result.verdict.value, "message": None},
                ],
                suggestions=["Wait for the transaction to be mined, then retry Phase 2."],
            )
        cvm.pending = None
        op = self._start_operation(cvm, request, pending.new_app_compose_text, pending.new_resources)
        return R.accepted(op.correlation_id)

    # -- the admin API ----------------------------------------------------------------------------

    async def admin_health(self, _request: web.Request) -> web.Response:
        return R.json_response({"ok": True})

    async def admin_reset(self, _request: web.Request) -> web.Response:
        await self.reset()
        return R.json_response({"ok": True})

    async def admin_list_workspaces(self, _request: web.Request) -> web.Response:
        return R.json_response([_workspace_json(w) for w in self.workspaces.values()])

    async def admin_add_workspace(self, request: web.Request) -> web.Response:
        body = await _admin_body(request)
        workspace = self.add_workspace(body.get("name"), body.get("api_key"))
        return R.json_response(_workspace_json(workspace), 201)

    async def admin_list_cvms(self, _request: web.Request) -> web.Response:
        return R.json_response([self.cvm_state(c) for c in self.cvms])

    async def admin_add_cvm(self, request: web.Request) -> web.Response:
        cvm = self.add_cvm(await _admin_body(request))
        return R.json_response(self.cvm_state(cvm), 201)

    async def admin_get_cvm(self, request: web.Request) -> web.Response:
        cvm = self.find_cvm(request.match_info["cvm_id"])
        if cvm is None:
            return R.detail_error(404, "no such CVM")
        return R.json_response(self.cvm_state(cvm))

    async def admin_patch_cvm(self, request: web.Request) -> web.Response:
        """An out-of-band change (the dashboard, another tool): applied at once, no operation."""
        cvm = self.find_cvm(request.match_info["cvm_id"])
        if cvm is None:
            return R.detail_error(404, "no such CVM")
        body = await _admin_body(request)
        unknown = set(body) - {"pre_launch_script", "docker_compose_file", "app_compose", "status"}
        if unknown:
            raise _AdminError(f"unknown fields: {', '.join(sorted(unknown))}")
        app_compose = body.get("app_compose")
        if app_compose is None:
            app_compose = cvm.app_compose
        if not isinstance(app_compose, dict):
            raise _AdminError("app_compose must be an object")
        for key in ("pre_launch_script", "docker_compose_file"):
            if key in body:
                app_compose[key] = body[key]
        cvm.app_compose_text = serialise_app_compose(app_compose)
        if "status" in body:
            cvm.status = str(body["status"])
        return R.json_response(self.cvm_state(cvm))

    async def admin_list_faults(self, _request: web.Request) -> web.Response:
        return R.json_response([rule.to_json() for rule in self.faults.rules()])

    async def admin_add_fault(self, request: web.Request) -> web.Response:
        rule = self.faults.add(await _admin_body(request))
        return R.json_response(rule.to_json(), 201)

    async def admin_clear_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return R.json_response({"ok": True})

    async def admin_get_settings(self, _request: web.Request) -> web.Response:
        return R.json_response(self.settings.to_json())

    async def admin_patch_settings(self, request: web.Request) -> web.Response:
        self.settings.update(await _admin_body(request))
        return R.json_response(self.settings.to_json())

    async def admin_list_requests(self, _request: web.Request) -> web.Response:
        return R.json_response(list(self.request_log))

    async def admin_clear_requests(self, _request: web.Request) -> web.Response:
        self.request_log.clear()
        self.peak_inflight = self.inflight
        return R.json_response({"ok": True})

    async def admin_concurrency(self, _request: web.Request) -> web.Response:
        return R.json_response({"peak": self.peak_inflight, "current": self.inflight})


# -- helpers ----------------------------------------------------------------------------------------


def _api_path(request: web.Request) -> str:
    return request.path[len(API_PREFIX) :] if request.path.startswith(API_PREFIX) else request.path


def _default_fault_message(status: int) -> str:
    return {
        409: "Another operation is in progress for this CVM",
        429: "Too many requests",
        500: "Internal server error",
        502: "Bad gateway",
        503: "Service temporarily unavailable",
    }.get(status, "Injected error")


def _workspace_json(workspace: Workspace) -> dict[str, Any]:
    # The admin API is local and test-only; it returns the key so tests can call the API.
    return {"id": workspace.id, "name": workspace.name, "slug": workspace.slug, "api_key": workspace.api_key}


def _hash_invalid(compose_hash: str, message: str) -> web.Response:
    return R.structured_error(
        466,
        "ERR-01-006",
        message,
        details=[{"field": "compose_hash", "value": "0x" + compose_hash, "message": message}],
        suggestions=["Start again from Phase 1 (send the update without the hash headers)."],
    )


def _parse_time(text: str) -> datetime:
    parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def _apply_changes(app_compose: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    result = dict(app_compose)
    for key in (*_COMPOSE_FIELDS, *_COMPOSE_BOOL_FIELDS):
        if key in changes:
            result[key] = changes[key]
    return result


def _size_error(app_compose: dict[str, Any]) -> web.Response | None:
    size = sum(
        len(str(app_compose.get(key) or "").encode("utf-8", "surrogatepass"))
        for key in ("docker_compose_file", "pre_launch_script")
    )
    if size <= MAX_COMPOSE_BYTES:
        return None
    return R.structured_error(
        400,
        "ERR-01-004",
        f"Combined size of docker_compose_file and pre_launch_script must not exceed "
        f"{MAX_COMPOSE_BYTES // 1024}KB (current: {-(-size // 1024)}KB)",
        details=[{"field": "pre_launch_script", "value": size, "message": "too large"}],
    )


async def _read_script(request: web.Request) -> str | web.Response:
    """The new script from ``text/plain`` (what every official client sends) or multipart ``file``
    (what the spec declares)."""
    content_type = request.content_type
    if content_type == "multipart/form-data":
        file_part = _multipart_field(request.headers.get("Content-Type", ""), await request.read(), "file")
        if isinstance(file_part, web.Response):
            return file_part
        raw = file_part
    elif content_type == "text/plain":
        raw = await request.read()
    else:
        return R.detail_error(400, f"Unsupported content type {content_type!r}: send text/plain")
    if not raw:
        return R.detail_error(400, "Empty body: the pre-launch script is required")
    try:
        return raw.decode(request.charset or "utf-8")
    except (UnicodeDecodeError, LookupError):
        return R.detail_error(400, "The pre-launch script is not valid text")


def _multipart_field(content_type: str, body: bytes, name: str) -> bytes | web.Response:
    """One field of a multipart/form-data body (parsed from the bytes the log already read)."""
    message = BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body
    )
    if not message.is_multipart():
        return R.detail_error(400, "Malformed multipart body")
    for part in message.iter_parts():
        if part.get_param("name", header="content-disposition") == name:
            payload = part.get_payload(decode=True)
            return payload if isinstance(payload, bytes) else b""
    return b""


async def _read_update_request(request: web.Request) -> dict[str, Any] | web.Response:
    """``UpdateCvmRequest`` with FastAPI-style validation; ``None`` values mean "not sent"."""
    raw = await request.read()
    if request.content_type != "application/json":
        return R.detail_error(400, f"Unsupported content type {request.content_type!r}: send JSON")
    if not raw:
        return R.validation_error(["body"], "Field required", "missing")
    try:
        body = json.loads(raw)
    except ValueError:
        return R.validation_error(["body", 0], "JSON decode error", "json_invalid")
    if not isinstance(body, dict):
        return R.validation_error(["body"], "Input should be a valid dictionary", "dict_type")
    changes: dict[str, Any] = {}
    for key, value in body.items():
        if key not in _UPDATE_FIELDS or value is None:
            continue  # pydantic ignores extra fields; None means "leave as is"
        if key in (*_COMPOSE_FIELDS[:2], *_STRING_FIELDS) and not isinstance(value, str):
            return R.validation_error(["body", key], "Input should be a valid string", "string_type")
        if key in (*_COMPOSE_BOOL_FIELDS, "allow_force_stop") and not isinstance(value, bool):
            return R.validation_error(["body", key], "Input should be a valid boolean", "bool_type")
        if key in (*_RESOURCE_FIELDS, "shutdown_timeout") and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            return R.validation_error(["body", key], "Input should be a positive integer", "int_type")
        if key == "allowed_envs" and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            return R.validation_error(["body", key], "Input should be a list of strings", "list_type")
        changes[key] = value
    return changes


async def _api_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        # FastAPI's bodies for routing errors.
        if exc.status == 404:
            return R.detail_error(404, "Not Found")
        if exc.status == 405:
            return R.detail_error(405, "Method Not Allowed")
        if exc.status == 413:
            return R.detail_error(413, "Request body too large")
        raise


class _AdminError(Exception):
    pass


async def _admin_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise _AdminError("the admin API takes a JSON object") from None
    if not isinstance(body, dict):
        raise _AdminError("the admin API takes a JSON object")
    return body


async def _admin_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except (_AdminError, SpecError, FaultError, TypeError, ValueError) as exc:
        return R.detail_error(400, str(exc))
    except web.HTTPException as exc:
        return R.detail_error(exc.status, exc.reason)
