"""Plain typed values exchanged between the reconciler and the adapters."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

OperationStatus = Literal["completed", "in_progress", "failed"]

ON_CHAIN_KMS_TYPES = frozenset({"ethereum", "base"})


@dataclass(frozen=True)
class CvmInfo:
    """What ``GET /cvms/{id}`` says about a CVM, reduced to what the operator uses."""

    id: str
    name: str | None
    app_id: str  # 40 hex, no 0x
    vm_uuid: str | None
    status: str | None
    in_progress: bool
    compose_hash: str | None
    pre_launch_script_hash: str | None
    kms_type: str | None
    chain_id: int | None
    app_contract: str | None  # kms_info.dstack_app_address, else 0x + app_id for on-chain KMS
    progress_correlation_id: str | None = None

    @property
    def on_chain(self) -> bool:
        return (self.kms_type or "").lower() in ON_CHAIN_KMS_TYPES


@dataclass(frozen=True)
class ComposeHashChallenge:
    """The body of a 465: the compose hash the new app-compose will have, to register on chain."""

    compose_hash: str  # exactly as received (with or without 0x): echoed unchanged in Phase 2
    app_id: str | None
    device_id: str | None
    chain_id: int | None
    kms_info: Mapping[str, object] = field(default_factory=dict)

    @property
    def compose_hash_hex(self) -> str:
        """Normalised form (0x + 64 lower-case hex) for the chain and for comparisons."""
        return "0x" + self.compose_hash.lower().removeprefix("0x")


@dataclass(frozen=True)
class UpdateAccepted:
    """A 202 to a pre-launch script PATCH: the update now runs as an operation."""

    correlation_id: str
    status: str
    message: str


@dataclass(frozen=True)
class Operation:
    correlation_id: str
    operation_type: str | None
    status: OperationStatus  # what it means to the operator
    error_message: str | None = None
    started_at: str | None = None
    completed_at: str | None = None
    reported_status: str | None = (
        None  # the server's word, verbatim (it may be one the operator does not know)
    )

    @property
    def status_is_known(self) -> bool:
        return self.status != "in_progress" or (self.reported_status or "").strip().lower() in KNOWN_RUNNING


KNOWN_RUNNING = frozenset({"in_progress", "pending", "running", "queued", "started", "processing"})
