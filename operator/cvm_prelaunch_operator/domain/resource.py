"""The CvmPreLaunchScript resource as the reconciler reads it: parsed spec, annotations, in-flight state."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from cvm_prelaunch_operator.domain import config
from cvm_prelaunch_operator.domain.fees import parse_gwei

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
