"""Response bodies of the simulated Phala Cloud API, in the shapes of the spec and the brief."""

from __future__ import annotations

import hashlib
import json
import secrets
import struct
from typing import Any

from aiohttp import web

from cvm_prelaunch_localenv.simulator.state import Cvm, Operation, Workspace, kms_slug, sha256_hex

KNOWN_VERSIONS = ("2025-10-28", "2026-01-21", "2026-05-22", "2026-06-23")
NEWEST_VERSION = KNOWN_VERSIONS[-1]
LEGACY_VERSION = "2025-10-28"
HASHID_SINCE = "2026-05-22"
DOCS_URL = "https://docs.phala.com/phala-cloud/cvm/onchain-kms"
_OS_VERSION = "0.5.4"


def request_id() -> str:
    return "req_" + secrets.token_hex(8)


def select_version(header: str | None) -> str:
    """The newest known version not after the one asked for (dates compare as text)."""
    if not header:
        return NEWEST_VERSION
    candidates = [v for v in KNOWN_VERSIONS if v <= header.strip()]
    return candidates[-1] if candidates else KNOWN_VERSIONS[0]


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=json.dumps(body).encode(), status=status, content_type="application/json", headers=headers
    )


def structured_error(
    status: int,
    error_code: str,
    message: str,
    *,
    details: list[dict[str, Any]] | None = None,
    suggestions: list[str] | None = None,
    links: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The current structured error body of Phala Cloud."""
    body = {
        "error_code": error_code,
        "message": message,
        "request_id": request_id(),
        "details": details or [],
        "suggestions": suggestions or [],
        "links": links or [],
    }
    return json_response(body, status, headers)


def detail_error(status: int, detail: str, headers: dict[str, str] | None = None) -> web.Response:
    """The older ``{"detail": "..."}`` body (no ``error_code``: a bare error)."""
    return json_response({"detail": detail}, status, headers)


def validation_error(loc: list[str | int], msg: str, error_type: str) -> web.Response:
    """FastAPI's 422 body."""
    return json_response({"detail": [{"loc": loc, "msg": msg, "type": error_type}]}, 422)


def legacy_kms_info(cvm: Cvm) -> dict[str, Any]:
    """The ``KMSInfo`` object (legacy CVM shape and the 465 ``kms_info`` detail)."""
    onchain = cvm.onchain
    return {
        "id": "kms_" + hashlib.sha256(cvm.kms_type.encode()).hexdigest()[:8],
        "slug": kms_slug(cvm),
        "url": f"https://kms.{cvm.kms_type}.sim.phala.local",
        "version": "v" + _OS_VERSION,
        "chain_id": cvm.chain_id if onchain else None,
        "kms_contract_address": cvm.kms_contract_address if onchain else None,
        "gateway_app_id": cvm.gateway_app_id if onchain else None,
    }


def detail_kms_info(cvm: Cvm) -> dict[str, Any]:
    """The ``CVMKmsInfo`` object of the current CVM detail."""
    onchain = cvm.onchain
    return {
        "chain_id": cvm.chain_id if onchain else None,
        "dstack_kms_address": cvm.kms_contract_address if onchain else None,
        "dstack_app_address": cvm.app_contract_address if onchain else None,
        "deployer_address": None,
        # Phala supplies no chain RPC to its users: the client brings its own.
        "rpc_endpoint": None,
        "encrypted_env_pubkey": cvm.encrypted_env_pubkey,
    }


def _progress(cvm: Cvm) -> dict[str, Any] | None:
    op = cvm.current_operation
    if op is None:
        return None
    return {"target": "running", "started_at": op.started_at, "correlation_id": op.correlation_id}


def _gateway_urls(cvm: Cvm) -> list[dict[str, str]]:
    return [
        {
            "app": f"https://{cvm.app_id}-80.dstack-sim.phala.local",
            "instance": f"https://{cvm.instance_id}-80.dstack-sim.phala.local",
        }
    ]


def cvm_detail(cvm: Cvm, workspace: Workspace, version: str) -> dict[str, Any]:
    if version == LEGACY_VERSION:
        return _legacy_detail(cvm)
    app_compose = cvm.app_compose
    script = cvm.pre_launch_script
    docker_compose = app_compose.get("docker_compose_file")
    return {
        "id": cvm.hashid if version >= HASHID_SINCE else cvm.vm_uuid,
        "name": cvm.name,
        "app_id": cvm.app_id,
        "vm_uuid": cvm.vm_uuid,
        "instance_id": cvm.instance_id,
        "resource": {
            "instance_type": "tdx.medium",
            "vcpu": cvm.vcpu,
            "memory_in_gb": cvm.memory / 1024,
            "disk_in_gb": cvm.disk_size,
            "gpus": 0,
            "compute_billing_price": "0.0580",
            "billing_period": "hourly",
        },
        "node_info": {
            "object_type": "node",
            "id": 1,
            "node_id": 1,
            "name": "sim-node-1",
            "region": "local",
            "device_id": cvm.device_id,
            "ppid": hashlib.sha256(cvm.device_id.encode()).hexdigest()[:32],
            "status": "ONLINE",
            "version": _OS_VERSION,
        },
        "os": {
            "name": f"dstack-{_OS_VERSION}",
            "version": _OS_VERSION,
            "is_dev": False,
            "os_image_hash": hashlib.sha256(b"dstack-" + _OS_VERSION.encode()).hexdigest(),
        },
        "kms_type": cvm.kms_type,
        "kms_info": detail_kms_info(cvm),
        "status": cvm.status,
        "in_progress": cvm.in_progress,
        "progress": _progress(cvm),
        "compose_hash": cvm.compose_hash,
        "docker_compose_hash": sha256_hex(docker_compose) if isinstance(docker_compose, str) else None,
        "pre_launch_script_hash": sha256_hex(script) if script else None,
        "gateway": {"base_domain": "dstack-sim.phala.local", "cname": None},
        "logs": {
            "serial": None,
            "stdout": None,
            "stderr": None,
            "container_log_base": None,
        },
        "services": [],
        "endpoints": _gateway_urls(cvm),
        "public_logs": bool(app_compose.get("public_logs", False)),
        "public_sysinfo": bool(app_compose.get("public_sysinfo", False)),
        "public_tcbinfo": bool(app_compose.get("public_tcbinfo", False)),
        "gateway_enabled": bool(app_compose.get("gateway_enabled", True)),
        "secure_time": bool(app_compose.get("secure_time", False)),
        "storage_fs": str(app_compose.get("storage_fs", "zfs")),
        "workspace": {
            "object_type": "workspace",
            "id": workspace.id,
            "name": workspace.name,
            "slug": workspace.slug,
            "avatar_url": None,
        },
        "creator": {
            "object_type": "user",
            "id": "usr_simulator",
            "username": "simulator",
            "avatar_url": None,
        },
        "created_at": cvm.created_at,
        "deleted_at": None,
        "listed": False,
        "project_type": None,
        "compose_file": app_compose,
    }


def _legacy_detail(cvm: Cvm) -> dict[str, Any]:
    """``CvmBasicInfo``: the shape of ``X-Phala-Version: 2025-10-28`` (the official CLI reads it)."""
    app_compose = cvm.app_compose
    return {
        "id": cvm.numeric_id,
        "teepod_id": 1,
        "teepod": {"id": 1, "name": "sim-node-1", "region_identifier": "local"},
        "name": cvm.name,
        "status": cvm.status,
        "in_progress": cvm.in_progress,
        "app_id": cvm.app_id,
        "vm_uuid": cvm.vm_uuid,
        "instance_id": cvm.instance_id,
        "vcpu": cvm.vcpu,
        "memory": cvm.memory,
        "disk_size": cvm.disk_size,
        "base_image": f"dstack-{_OS_VERSION}",
        "encrypted_env_pubkey": cvm.encrypted_env_pubkey,
        "listed": False,
        "project_id": None,
        "project_type": None,
        "instance_type": "tdx.medium",
        "public_sysinfo": bool(app_compose.get("public_sysinfo", False)),
        "public_logs": bool(app_compose.get("public_logs", False)),
        "dapp_dashboard_url": None,
        "syslog_endpoint": None,
        "kms_info": legacy_kms_info(cvm),
        "contract_address": cvm.app_contract_address if cvm.onchain else None,
        "deployer_address": None,
        "scheduled_delete_at": None,
        "public_urls": _gateway_urls(cvm),
        "gateway_domain": "dstack-sim.phala.local",
    }


def accepted(correlation_id: str) -> web.Response:
    """The 202 body; the JS SDK requires exactly these three fields."""
    body = {
        "status": "in_progress",
        "message": "Update initiated; track it with the correlation id",
        "correlation_id": correlation_id,
    }
    return json_response(body, 202)


def registration_required(cvm: Cvm, reported_hash: str, form: str) -> web.Response:
    """The 465 of Phase 1 in one of its three forms (structured, legacy flat, ``detail``-nested)."""
    fields: dict[str, Any] = {
        "compose_hash": reported_hash,
        "app_id": cvm.app_id,
        "device_id": cvm.device_id,
        "kms_info": legacy_kms_info(cvm),
    }
    message = "Compose hash registration required on-chain"
    if form == "flat":
        return json_response({"message": message, **fields}, 465)
    structured = {
        "error_code": "ERR-01-005",
        "message": message,
        "request_id": request_id(),
        "details": [{"field": k, "value": v, "message": None} for k, v in fields.items()],
        "suggestions": [
            f"Call addComposeHash({reported_hash}) on the app contract 0x{cvm.app_id}, then repeat "
            "the request with the X-Compose-Hash and X-Transaction-Hash headers."
        ],
        "links": [{"url": DOCS_URL, "label": "Docs"}],
    }
    if form == "nested":
        return json_response({"detail": structured}, 465)
    return json_response(structured, 465)


def operation_json(cvm: Cvm, op: Operation) -> dict[str, Any]:
    return {
        "correlation_id": op.correlation_id,
        "operation_type": op.operation_type,
        "target_state": "running",
        "triggered_by": 1,
        "triggered_by_username": "simulator",
        "triggered_by_email": None,
        "started_at": op.started_at,
        "completed_at": op.completed_at,
        "duration_ms": op.duration_ms,
        "status": op.status,
        "error_message": op.error_message,
        "sub_operations": [],
        "events": list(op.events),
        "instance_name": cvm.name,
        "compose_hash": op.compose_hash,
    }


def operation_status(cvm: Cvm) -> dict[str, Any]:
    op = cvm.current_operation
    if op is None:
        return {"status": "idle", "in_progress": False, "correlation_id": None, "operation_type": None}
    return {
        "status": "in_progress",
        "in_progress": True,
        "correlation_id": op.correlation_id,
        "operation_type": op.operation_type,
        "target_state": "running",
        "started_at": op.started_at,
        "celery_task_status": "STARTED",
    }


# dstack's RTMR3 events: type 0x08000001, digest sha384(type_le32 ":" name ":" payload).
_DSTACK_EVENT_TYPE = 0x08000001


def _event(name: str, payload: bytes) -> tuple[dict[str, Any], bytes]:
    digest = hashlib.sha384(struct.pack("<I", _DSTACK_EVENT_TYPE) + b":" + name.encode() + b":" + payload)
    entry = {
        "imr": 3,
        "event_type": _DSTACK_EVENT_TYPE,
        "digest": digest.hexdigest(),
        "event": name,
        "event_payload": payload.hex(),
    }
    return entry, digest.digest()


def attestation(cvm: Cvm) -> dict[str, Any]:
    """``CvmAttestation``; ``tcb_info.app_compose`` is the exact text whose sha256 is the hash."""
    events = [
        _event("app-id", bytes.fromhex(cvm.app_id)),
        _event("compose-hash", bytes.fromhex(cvm.compose_hash)),
        _event("instance-id", bytes.fromhex(cvm.instance_id)),
        _event("boot-mr-done", b""),
    ]
    rtmr3 = bytes(48)
    for _entry, digest in events:
        rtmr3 = hashlib.sha384(rtmr3 + digest).digest()

    def measurement(label: str) -> str:
        return hashlib.sha384(f"{label}:{_OS_VERSION}".encode()).hexdigest()

    return {
        "is_online": cvm.status == "running",
        "is_public": True,
        "error": None,
        "name": cvm.name,
        "app_certificates": [],
        "tcb_info": {
            "mrtd": measurement("mrtd"),
            "rootfs_hash": measurement("rootfs")[:64],
            "rtmr0": measurement("rtmr0"),
            "rtmr1": measurement("rtmr1"),
            "rtmr2": measurement("rtmr2"),
            "rtmr3": rtmr3.hex(),
            "event_log": [entry for entry, _digest in events],
            "app_compose": cvm.app_compose_text,
        },
        "compose_file": cvm.app_compose_text,
    }
