"""The CvmPreLaunchScript resource as the reconciler reads it: parsed spec, annotations, in-flight state."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal, cast

from cvm_prelaunch_operator.domain import config
from cvm_prelaunch_operator.domain.fees import parse_gwei
from cvm_prelaunch_operator.domain.models import PendingTransaction

GROUP = "cloud.phala.com"
VERSION = "v1alpha1"
PLURAL = "cvmprelaunchscripts"
KIND = "CvmPreLaunchScript"

ANNOTATION_REQUESTED_AT = f"{GROUP}/requested-at"
ANNOTATION_APPROVED_COMPOSE_HASH = f"{GROUP}/approved-compose-hash"
ANNOTATION_TRANSACTION_HASH = f"{GROUP}/transaction-hash"

Approval = Literal["Automatic", "Manual"]
DriftPolicy = Literal["Correct", "Report"]
ShellcheckLevel = Literal["Off", "Error", "Warning"]

MIN_DRIFT_CHECK_INTERVAL = 30.0  # also a CEL rule of the CRD: a shorter interval is refused by the API server

_HASH32 = re.compile(r"^(0x)?[0-9a-fA-F]{64}$")


class InvalidSpec(ValueError):
    """The resource cannot be acted on as written (the API server's schema normally prevents this)."""


def parse_duration(text: str) -> float:
    """Go-style durations as the CRD accepts them (``10m``, ``1h30m``, ``500ms``, ``0``) in seconds."""
    try:
        return config.parse_duration(text)
    except ValueError as exc:
        raise InvalidSpec(str(exc)) from None


def normalise_hash(value: str) -> str:
    """0x + 64 lower-case hex, for comparing hashes that arrive in different forms."""
    if not _HASH32.match(value.strip()):
        raise InvalidSpec(f"not a 32-byte hex hash: {value!r}")
    return "0x" + value.strip().lower().removeprefix("0x")


def script_sha256(script: bytes) -> str:
    return hashlib.sha256(script).hexdigest()


@dataclass(frozen=True)
class KeyRef:
    name: str
    key: str

    @classmethod
    def parse(cls, raw: object, what: str) -> KeyRef:
        if not isinstance(raw, Mapping) or not raw.get("name") or not raw.get("key"):
            raise InvalidSpec(f"{what} needs name and key")
        return cls(name=str(raw["name"]), key=str(raw["key"]))


@dataclass(frozen=True)
class OnChainSpec:
    rpc_url: str | None
    rpc_url_secret: KeyRef | None
    signer_key_secret: KeyRef | None
    confirmations: int = 1
    approval: Approval = "Automatic"
    verify_compose_hash: bool = True
    max_fee_per_gas: int | None = None  # wei; None: the operator's default ceiling

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> OnChainSpec:
        rpc_url = raw.get("rpcUrl") or None
        rpc_secret = (
            KeyRef.parse(raw["rpcUrlSecretRef"], "onChain.rpcUrlSecretRef")
            if raw.get("rpcUrlSecretRef")
            else None
        )
        if (rpc_url is None) == (rpc_secret is None):
            raise InvalidSpec("onChain needs exactly one of rpcUrl or rpcUrlSecretRef")
        signer = (
            KeyRef.parse(raw["signerKeySecretRef"], "onChain.signerKeySecretRef")
            if raw.get("signerKeySecretRef")
            else None
        )
        confirmations = int(raw.get("confirmations", 1))
        if not 1 <= confirmations <= 64:
            raise InvalidSpec("onChain.confirmations must be within 1..64")
        approval = raw.get("approval", "Automatic")
        if approval not in ("Automatic", "Manual"):
            raise InvalidSpec("onChain.approval must be Automatic or Manual")
        max_fee_text = raw.get("maxFeePerGas")
        try:
            max_fee = parse_gwei(str(max_fee_text)) if max_fee_text not in (None, "") else None
        except ValueError as exc:
            raise InvalidSpec(f"onChain.maxFeePerGas: {exc}") from None
        return cls(
            rpc_url=str(rpc_url) if rpc_url else None,
            rpc_url_secret=rpc_secret,
            signer_key_secret=signer,
            confirmations=confirmations,
            approval=approval,
            verify_compose_hash=bool(raw.get("verifyComposeHash", True)),
            max_fee_per_gas=max_fee,
        )


@dataclass(frozen=True)
class Spec:
    cvm_id: str
    script_ref: KeyRef
    api_key_secret: KeyRef
    on_chain: OnChainSpec | None = None
    suspend: bool = False
    drift_policy: DriftPolicy = "Correct"
    drift_check_interval: float = 600.0
    shellcheck: ShellcheckLevel = "Off"

    @classmethod
    def parse(cls, raw: Mapping[str, Any]) -> Spec:
        cvm_id = raw.get("cvmId")
        if not cvm_id or not isinstance(cvm_id, str):
            raise InvalidSpec("spec.cvmId is required")
        drift_policy = raw.get("driftPolicy", "Correct")
        if drift_policy not in ("Correct", "Report"):
            raise InvalidSpec("spec.driftPolicy must be Correct or Report")
        on_chain_raw = raw.get("onChain")
        interval = parse_duration(str(raw.get("driftCheckInterval", "10m")))
        if 0 < interval < MIN_DRIFT_CHECK_INTERVAL:
            raise InvalidSpec("spec.driftCheckInterval must be 0s (disabled) or at least 30s")
        script_check = raw.get("scriptCheck") if isinstance(raw.get("scriptCheck"), Mapping) else {}
        shellcheck = str((script_check or {}).get("shellcheck", "Off"))
        if shellcheck not in ("Off", "Error", "Warning"):
            raise InvalidSpec("spec.scriptCheck.shellcheck must be Off, Error or Warning")
        return cls(
            cvm_id=cvm_id,
            script_ref=KeyRef.parse(raw.get("scriptRef"), "spec.scriptRef"),
            api_key_secret=KeyRef.parse(raw.get("apiKeySecretRef"), "spec.apiKeySecretRef"),
            on_chain=OnChainSpec.parse(on_chain_raw) if isinstance(on_chain_raw, Mapping) else None,
            suspend=bool(raw.get("suspend", False)),
            drift_policy=drift_policy,
            drift_check_interval=interval,
            shellcheck=cast(ShellcheckLevel, shellcheck),
        )

    def secret_refs(self) -> list[KeyRef]:
        refs = [self.api_key_secret]
        if self.on_chain:
            refs += [r for r in (self.on_chain.rpc_url_secret, self.on_chain.signer_key_secret) if r]
        return refs


def pending_to_status(pending: PendingTransaction) -> dict[str, Any]:
    return {
        "chainId": pending.chain_id,
        "sender": pending.sender,
        "nonce": pending.nonce,
        "txHash": pending.tx_hash,
        "rawTransaction": pending.raw_transaction,
        "composeHash": pending.compose_hash,
        "appContract": pending.app_contract,
    }


def pending_from_status(raw: Mapping[str, Any]) -> PendingTransaction:
    return PendingTransaction(
        chain_id=int(raw["chainId"]),
        sender=str(raw["sender"]),
        nonce=int(raw["nonce"]),
        tx_hash=str(raw["txHash"]),
        raw_transaction=str(raw["rawTransaction"]),
        compose_hash=str(raw["composeHash"]),
        app_contract=str(raw["appContract"]),
    )


Step = Literal["Uploading", "AwaitingApproval", "Registering", "Applying", "Following"]


@dataclass(frozen=True)
class InFlight:
    """A sync under way. Written to status before every remote side effect (see reconcile.sync)."""

    step: Step
    script_sha256: str
    started_at: str
    config_map_resource_version: str | None = None
    compose_hash: str | None = None  # exactly as the 465 gave it: echoed unchanged in Phase 2
    device_id: str | None = None
    chain_id: int | None = None
    app_contract: str | None = None
    pending_transaction: PendingTransaction | None = None
    transaction_hash: str | None = None
    correlation_id: str | None = None
    phase2_attempts: int = 0
    adopted: bool = False  # following an operation found running on resume, not one we saw accepted

    def advance(self, **changes: Any) -> InFlight:
        return replace(self, **changes)

    def to_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "step": self.step,
            "scriptSha256": self.script_sha256,
            "startedAt": self.started_at,
            "configMapResourceVersion": self.config_map_resource_version,
            "composeHash": self.compose_hash,
            "deviceId": self.device_id,
            "chainId": self.chain_id,
            "appContract": self.app_contract,
            "pendingTransaction": pending_to_status(self.pending_transaction)
            if self.pending_transaction
            else None,
            "transactionHash": self.transaction_hash,
            "correlationId": self.correlation_id,
            "phase2Attempts": self.phase2_attempts,
            "adopted": self.adopted or None,
        }
        return out

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> InFlight | None:
        if not raw or not raw.get("step") or not raw.get("scriptSha256"):
            return None
        pending = raw.get("pendingTransaction")
        return cls(
            step=raw["step"],
            script_sha256=str(raw["scriptSha256"]),
            started_at=str(raw.get("startedAt") or ""),
            config_map_resource_version=raw.get("configMapResourceVersion"),
            compose_hash=raw.get("composeHash"),
            device_id=raw.get("deviceId"),
            chain_id=int(raw["chainId"]) if raw.get("chainId") is not None else None,
            app_contract=raw.get("appContract"),
            pending_transaction=pending_from_status(pending) if pending else None,
            transaction_hash=raw.get("transactionHash"),
            correlation_id=raw.get("correlationId"),
            phase2_attempts=int(raw.get("phase2Attempts") or 0),
            adopted=bool(raw.get("adopted")),
        )


@dataclass(frozen=True)
class KnownRegistration:
    compose_hash: str
    transaction_hash: str
    block_number: int
    chain_id: int

    def to_status(self) -> dict[str, Any]:
        return {
            "composeHash": self.compose_hash,
            "transactionHash": self.transaction_hash,
            "blockNumber": self.block_number,
            "chainId": self.chain_id,
        }


MAX_REMEMBERED_REGISTRATIONS = 10


def remember_registration(
    existing: list[Mapping[str, Any]] | None, new: KnownRegistration
) -> list[dict[str, Any]]:
    """Newest first, one entry per (chain, hash), bounded."""
    kept = [
        dict(r)
        for r in (existing or [])
        if not (
            normalise_hash(str(r.get("composeHash", "0" * 64))) == normalise_hash(new.compose_hash)
            and r.get("chainId") == new.chain_id
        )
    ]
    return [new.to_status(), *kept][:MAX_REMEMBERED_REGISTRATIONS]


def known_transaction(
    registrations: list[Mapping[str, Any]] | None, compose_hash: str, chain_id: int
) -> str | None:
    wanted = normalise_hash(compose_hash)
    for r in registrations or []:
        try:
            if normalise_hash(str(r.get("composeHash"))) == wanted and r.get("chainId") == chain_id:
                return str(r["transactionHash"])
        except (InvalidSpec, KeyError):
            continue
    return None


@dataclass(frozen=True)
class Annotations:
    requested_at: str | None = None
    approved_compose_hash: str | None = None
    transaction_hash: str | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, str] | None) -> Annotations:
        raw = raw or {}
        return cls(
            requested_at=raw.get(ANNOTATION_REQUESTED_AT),
            approved_compose_hash=raw.get(ANNOTATION_APPROVED_COMPOSE_HASH),
            transaction_hash=raw.get(ANNOTATION_TRANSACTION_HASH),
        )


@dataclass(frozen=True)
class ResourceSnapshot:
    """One consistent read of a CvmPreLaunchScript, as the reconciler gets it."""

    namespace: str
    name: str
    uid: str
    generation: int
    resource_version: str
    spec: Mapping[str, Any]
    annotations: Mapping[str, str] = field(default_factory=dict)
    status: Mapping[str, Any] = field(default_factory=dict)
