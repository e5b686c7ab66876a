"""The simulator's world: workspaces (API keys) owning CVMs, their app-compose, operations and the
Phase-1 cache of the on-chain flow. Plain data; the HTTP layer in ``app.py`` drives it."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from cvm_prelaunch_localenv.simulator.compose import compose_hash_of_text, serialise_app_compose

OFFCHAIN_KMS = "phala"
ONCHAIN_KMS_TYPES = ("ethereum", "base")
KMS_TYPES = (OFFCHAIN_KMS, *ONCHAIN_KMS_TYPES, "legacy")
BASE_CHAIN_ID = 8453

_HEX40 = re.compile(r"^[0-9a-fA-F]{40}$")
_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_UUID_NODASH = re.compile(r"^[0-9a-fA-F]{32}$")
_HASHID_ALPHABET = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

DEFAULT_DOCKER_COMPOSE = """services:
  app:
    image: nginx:1.27-alpine
    ports:
      - "80:80"
"""


def utc_now_iso() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def hashid_for(prefix: str, stable_key: str) -> str:
    """A hashid like ``cvm_ykL5lbAn``, derived from a stable key so a reset re-creates the same id."""
    number = int.from_bytes(hashlib.sha256(stable_key.encode()).digest()[:8], "big")
    chars = []
    for _ in range(8):
        number, digit = divmod(number, len(_HASHID_ALPHABET))
        chars.append(_HASHID_ALPHABET[digit])
    return prefix + "".join(chars)


def new_api_key() -> str:
    return "phak_" + secrets.token_urlsafe(24)


def sha256_hex(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def default_app_compose(
    name: str, docker_compose_file: str, pre_launch_script: str | None, kms_enabled: bool = True
) -> dict[str, Any]:
    """An app-compose.json as dstack 0.5 writes it for a docker-compose app."""
    app_compose: dict[str, Any] = {
        "manifest_version": 2,
        "name": name,
        "runner": "docker-compose",
        "docker_compose_file": docker_compose_file,
        "kms_enabled": kms_enabled,
        "gateway_enabled": True,
        "public_logs": True,
        "public_sysinfo": True,
        "public_tcbinfo": True,
        "local_key_provider_enabled": False,
        "key_provider_id": "",
        "allowed_envs": [],
        "no_instance_id": False,
        "secure_time": False,
        "storage_fs": "zfs",
        "features": ["kms", "tproxy-net"],
    }
    if pre_launch_script:
        app_compose["pre_launch_script"] = pre_launch_script
    return app_compose


@dataclass
class Workspace:
    id: str
    name: str
    slug: str
    api_key: str = field(repr=False)


@dataclass
class Operation:
    """One update, as ``GET /cvms/{id}/operations`` reports it (grouped by correlation id)."""

    correlation_id: str
    operation_type: str
    started_at: str
    started_monotonic: float
    new_app_compose_text: str
    new_resources: dict[str, int]
    status: str = "in_progress"  # in_progress | completed | failed
    completed_at: str | None = None
    duration_ms: int | None = None
    error_message: str | None = None
    events: list[dict[str, str]] = field(default_factory=list)

    @property
    def compose_hash(self) -> str:
        return compose_hash_of_text(self.new_app_compose_text)


@dataclass
class PendingPhase1:
    """The body a Phase 1 answered 465 for, cached until Phase 2, expiry or a newer Phase 1."""

    compose_hash: str
    base_compose_hash: str  # the CVM's compose hash when Phase 1 ran; a change voids the entry
    new_app_compose_text: str
    new_resources: dict[str, int]
    created_monotonic: float


@dataclass
class Cvm:
    numeric_id: int
    hashid: str
    vm_uuid: str
    name: str
    app_id: str  # 40 lowercase hex, no 0x; on chain it is the app contract address
    instance_id: str
    workspace_id: str
    kms_type: str
    chain_id: int | None
    device_id: str
    app_compose_text: str
    vcpu: int = 2
    memory: int = 4096
    disk_size: int = 40
    status: str = "running"
    created_at: str = field(default_factory=utc_now_iso)
    kms_contract_address: str = "0x" + "0" * 40
    gateway_app_id: str = "0x" + "0" * 40
    encrypted_env_pubkey: str = field(default_factory=lambda: secrets.token_hex(32))
    operations: list[Operation] = field(default_factory=list)
    current_operation: Operation | None = None
    pending: PendingPhase1 | None = None
    # Hashes of Phase-1 entries a newer Phase 1 replaced, so Phase 2 can say "superseded".
    superseded: set[str] = field(default_factory=set)

    @property
    def onchain(self) -> bool:
        return self.kms_type in ONCHAIN_KMS_TYPES

    @property
    def app_compose(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.app_compose_text)
        return parsed

    @property
    def compose_hash(self) -> str:
        return compose_hash_of_text(self.app_compose_text)

    @property
    def pre_launch_script(self) -> str:
        script = self.app_compose.get("pre_launch_script")
        return script if isinstance(script, str) else ""

    @property
    def app_contract_address(self) -> str:
        return "0x" + self.app_id

    @property
    def in_progress(self) -> bool:
        return self.current_operation is not None

    def matches(self, identifier: str) -> bool:
        """Every form a path may name a CVM by (see the brief, section 2)."""
        ident = identifier.strip()
        lowered = ident.lower()
        if ident in (self.hashid, self.name):
            return True
        if lowered.replace("-", "") == self.vm_uuid.replace("-", "") and (
            _UUID_NODASH.match(lowered.replace("-", ""))
        ):
            return True
        if lowered.startswith("app_") and lowered[4:] == self.app_id:
            return True
        if _HEX40.match(ident) and lowered in (self.app_id, self.instance_id):
            return True
        if lowered.startswith("instance_") and lowered[9:] == self.instance_id:
            return True
        return ident.isdigit() and int(ident) == self.numeric_id


@dataclass
class CvmSpec:
    """What the admin API or a seed file gives to create a CVM; unset fields get defaults."""

    workspace_id: str
    name: str | None = None
    kms_type: str | None = None
    chain_id: int | None = None
    app_id: str | None = None
    vm_uuid: str | None = None
    device_id: str | None = None
    docker_compose_file: str = DEFAULT_DOCKER_COMPOSE
    pre_launch_script: str | None = None
    app_compose: dict[str, Any] | None = None  # a full app-compose object overrides the two above
    status: str = "running"
    vcpu: int = 2
    memory: int = 4096
    disk_size: int = 40


class SpecError(ValueError):
    """A CVM spec the simulator cannot create (the admin API answers 400 with the text)."""


def build_cvm(spec: CvmSpec, numeric_id: int) -> Cvm:
    chain_id = spec.chain_id
    kms_type = spec.kms_type or (OFFCHAIN_KMS if chain_id is None else _kms_type_for_chain(chain_id))
    if kms_type not in KMS_TYPES:
        raise SpecError(f"kms_type must be one of {', '.join(KMS_TYPES)}")
    if kms_type in ONCHAIN_KMS_TYPES and chain_id is None:
        chain_id = BASE_CHAIN_ID if kms_type == "base" else 1
    if kms_type not in ONCHAIN_KMS_TYPES:
        chain_id = None
    app_id = (spec.app_id or secrets.token_hex(20)).lower().removeprefix("0x")
    if not _HEX40.match(app_id):
        raise SpecError("app_id must be 40 hex digits (the app contract address on chain)")
    device_id = (spec.device_id or secrets.token_hex(32)).lower().removeprefix("0x")
    if not _HEX64.match(device_id):
        raise SpecError("device_id must be 64 hex digits")
    vm_uuid = str(uuid.UUID(spec.vm_uuid)) if spec.vm_uuid else str(uuid.uuid4())
    name = spec.name or f"sim-app-{secrets.token_hex(3)}"
    if spec.app_compose is not None:
        app_compose = dict(spec.app_compose)
    else:
        app_compose = default_app_compose(name, spec.docker_compose_file, spec.pre_launch_script)
    return Cvm(
        numeric_id=numeric_id,
        hashid=hashid_for("cvm_", vm_uuid),
        vm_uuid=vm_uuid,
        name=name,
        app_id=app_id,
        instance_id=secrets.token_hex(20),
        workspace_id=spec.workspace_id,
        kms_type=kms_type,
        chain_id=chain_id,
        device_id=device_id,
        app_compose_text=serialise_app_compose(app_compose),
        vcpu=spec.vcpu,
        memory=spec.memory,
        disk_size=spec.disk_size,
        status=spec.status,
        kms_contract_address="0x" + secrets.token_hex(20),
        gateway_app_id="0x" + secrets.token_hex(20),
    )


def _kms_type_for_chain(chain_id: int) -> str:
    return "base" if chain_id == BASE_CHAIN_ID else "ethereum"


def kms_slug(cvm: Cvm) -> str:
    return f"kms-{cvm.kms_type}-sim"
