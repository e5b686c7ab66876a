"""The small interfaces the reconciler drives. Adapters implement them; unit tests fake them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from cvm_prelaunch_operator.domain.models import (
    CvmInfo,
    Operation,
    PendingTransaction,
    Registration,
    UpdateAccepted,
)
from cvm_prelaunch_operator.domain.secrets import Secret


class PhalaCloud(Protocol):
    """Phala Cloud as seen with one API key. Every method raises only ``domain.errors.SyncError``."""

    async def get_cvm(self, cvm_id: str) -> CvmInfo: ...

    async def get_pre_launch_script(self, cvm_id: str) -> str: ...

    async def patch_pre_launch_script(
        self,
        cvm_id: str,
        script: bytes,
        *,
        compose_hash: str | None = None,
        transaction_hash: str | None = None,
    ) -> UpdateAccepted:
        """Phase 1 without the hash headers (raises ``RegistrationRequired`` on 465), Phase 2 with."""
        ...

    async def get_app_compose(self, cvm_id: str) -> str:
        """The exact app-compose text the CVM runs (attestation ``tcb_info.app_compose``)."""
        ...

    async def find_operation(self, cvm_id: str, correlation_id: str) -> Operation | None: ...


class PhalaCloudFactory(Protocol):
    def for_api_key(self, api_key: Secret) -> PhalaCloud: ...


@dataclass(frozen=True)
class ChainTarget:
    """Where a registration lives: the RPC (whose URL may carry a key), the chain and the contract."""

    rpc_url: Secret
    chain_id: int
    app_contract: str


@dataclass(frozen=True)
class RegistrationRequest:
    target: ChainTarget
    signer_key: Secret
    compose_hash: str  # 0x + 64 hex
    device_id: str | None
    confirmations: int
    known_tx_hash: str | None = None  # an earlier registration of the same hash, reusable if verified


PersistPending = Callable[[PendingTransaction], Awaitable[None]]


class Registrar(Protocol):
    """Registers compose hashes on a DstackApp contract. Raises only ``domain.errors.SyncError``."""

    async def register(
        self,
        request: RegistrationRequest,
        *,
        persist: PersistPending,
        resume_from: PendingTransaction | None = None,
    ) -> Registration:
        """Send ``addComposeHash`` exactly once: ``persist`` is awaited with the signed transaction
        before it is broadcast (if it raises, nothing is sent); ``resume_from`` is such a record from
        an interrupted run, which is finished instead of signing anew."""
        ...

    async def verify_registration(
        self, target: ChainTarget, compose_hash: str, tx_hash: str, confirmations: int
    ) -> Registration:
        """Check a transaction made elsewhere: succeeded, to the contract, logs the hash, hash allowed."""
        ...


@dataclass(frozen=True)
class ScriptSource:
    """The desired script, read from the ConfigMap key the resource names."""

    data: bytes
    config_map_name: str
    uid: str
    resource_version: str


class StatusConflict(Exception):
    """The resource changed since it was read; the write was refused and must be re-planned."""


class ResourceIO(Protocol):
    """The cluster as one reconcile of one resource sees it (implemented over the Kubernetes API)."""

    async def read_script(self, config_map: str, key: str) -> ScriptSource:
        """Raises ``Permanent`` with CONFIGMAP_NOT_FOUND or KEY_NOT_FOUND."""
        ...

    async def read_secret(self, name: str, key: str) -> Secret:
        """Raises ``Permanent`` with SECRET_NOT_FOUND."""
        ...

    async def secret_version(self, name: str) -> str | None:
        """The Secret's resourceVersion (None if absent): part of what a stalled resource waits on."""
        ...

    async def patch_status(self, patch: dict[str, object]) -> None:
        """Merge-patch the status, guarded by the resourceVersion last read or written; raises
        ``StatusConflict`` when someone else changed the resource in between."""
        ...

    async def record_event(self, type_: str, reason: str, message: str) -> None: ...
