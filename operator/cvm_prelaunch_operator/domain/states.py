"""The steps of a sync as typed states, each carrying the inputs it was made for.

A sync that is under way is exactly one of these, persisted in ``status.inFlight`` *before* the
remote side effect it leads to (write-ahead). No state means Idle: nothing under way.

    Uploading ──202──────────────────────────────────────────────────────► Following ──► Idle (Synced)
        │ 465                                                                 ▲
        ▼                                                                     │ 202
    AwaitingApproval ──approved──► Registering ──mined──► AwaitingConfirmations ──confirmed──► Applying
        (or an outside transaction)    ▲  │ replaced, re-broadcast       │ reorg                │ 466
                                       │  └──────────────────────────────┘                      ▼
                                       └───────────────────────────────────────────────── Uploading

Every state records the CVM and the script it is for; on-chain states also the chain, the app
contract, the compose hash (exactly as Phala Cloud gave it) and the signer's address. The engine
compares them with the spec on every pass (``reconcile.engine``), so a state is never carried over
to another CVM, contract, chain, signer or script.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeAlias

from cvm_prelaunch_operator.domain.chain import Fees, Receipt, hex32
from cvm_prelaunch_operator.domain.text import format_time, parse_time

StepName = Literal[
    "Uploading", "AwaitingApproval", "Registering", "AwaitingConfirmations", "Applying", "Following"
]
WaitingFor = Literal["Approval", "Transaction"]


@dataclass(frozen=True)
class SyncTarget:
    """What a sync is for: the CVM and the script (by sha256), and when it began."""

    cvm_id: str
    script_sha256: str
    started_at: float
    config_map_version: str | None = None  # resourceVersion of the ConfigMap the script was read from


@dataclass(frozen=True)
class ChainTarget:
    """Where and by whom the compose hash is registered."""

    compose_hash: str  # exactly as the 465 gave it: echoed unchanged in Phase 2
    chain_id: int
    app_contract: str
    signer: str | None  # the signer's address; None when an outside transaction is awaited
    device_id: str | None = None

    @property
    def compose_hash_hex(self) -> str:
        return hex32(self.compose_hash)


@dataclass(frozen=True)
class TxVersion:
    """One signed version of the registration transaction (versions of one sync share a nonce)."""

    tx_hash: str
    raw: str
    sender: str
    nonce: int
    gas: int
    fees: Fees
    sent_in_block: int | None = None  # the head when it was signed


@dataclass(frozen=True)
class Uploading:
    target: SyncTarget
    look_first: bool = False  # an earlier attempt may have reached Phala Cloud: look before sending
    start_overs: int = 0  # times this sync went back to Phase 1 (466, or 467 too often)


@dataclass(frozen=True)
class AwaitingApproval:
    target: SyncTarget
    chain: ChainTarget
    waiting_for: WaitingFor
    since: float
    start_overs: int = 0


@dataclass(frozen=True)
class Registering:
    target: SyncTarget
    chain: ChainTarget
    start_block: int | None = None  # the head when the registration began: logs are searched from it
    versions: tuple[TxVersion, ...] = ()  # oldest first; all share one nonce
    underpriced_since: int | None = None  # first block at which the base fee exceeded the newest version
    start_overs: int = 0

    @property
    def newest(self) -> TxVersion | None:
        return self.versions[-1] if self.versions else None

    def mined(self, receipt: Receipt, versions: tuple[TxVersion, ...]) -> AwaitingConfirmations:
        """The next state once one of ``versions`` (all sharing one nonce) is mined."""
        return AwaitingConfirmations(
            self.target,
            self.chain,
            tx_hash=receipt.tx_hash,
            block_number=receipt.block_number,
            block_hash=receipt.block_hash,
            versions=versions,
            start_block=self.start_block,
            start_overs=self.start_overs,
        )


@dataclass(frozen=True)
class AwaitingConfirmations:
    target: SyncTarget
    chain: ChainTarget
    tx_hash: str  # the mined registration
    block_number: int
    block_hash: str
    versions: tuple[TxVersion, ...] = ()  # ours (empty for an outside or reused transaction)
    start_block: int | None = None
    external: bool = False  # named by the cloud.phala.com/transaction-hash annotation
    reused: bool = False  # an earlier registration of the same hash, found on chain
    start_overs: int = 0


@dataclass(frozen=True)
class Applying:
    target: SyncTarget
    chain: ChainTarget
    transaction_hash: str
    block_number: int | None = None
    rechecks: int = 0  # 467s in a row
    start_overs: int = 0


@dataclass(frozen=True)
class Following:
    target: SyncTarget
    correlation_id: str
    accepted_at: float
    polls: int = 0
    adopted: bool = False  # found running on resume, not seen accepted: check its script at the end
    chain: ChainTarget | None = None
    transaction_hash: str | None = None


State: TypeAlias = Uploading | AwaitingApproval | Registering | AwaitingConfirmations | Applying | Following

ON_CHAIN_STATES = (AwaitingApproval, Registering, AwaitingConfirmations, Applying)

STEP_NAMES: dict[type[Any], StepName] = {
    Uploading: "Uploading",
    AwaitingApproval: "AwaitingApproval",
    Registering: "Registering",
    AwaitingConfirmations: "AwaitingConfirmations",
    Applying: "Applying",
    Following: "Following",
}


def step_name(state: State) -> StepName:
    return STEP_NAMES[type(state)]


def chain_of(state: State) -> ChainTarget | None:
    return getattr(state, "chain", None)


def broadcast_versions(state: State) -> tuple[TxVersion, ...]:
    """Transactions of ours that were (or may have been) broadcast: they must be finished, never lost."""
    if isinstance(state, Registering | AwaitingConfirmations):
        return state.versions
    return ()


def with_start_overs(state: State, start_overs: int) -> State:
    if isinstance(state, Following):
        return state
    return replace(state, start_overs=start_overs)


# -- status.inFlight ---------------------------------------------------------------------------------


def _fees_out(fees: Fees) -> dict[str, Any]:
    return {
        "maxFeePerGas": str(fees.max_fee_per_gas),
        "maxPriorityFeePerGas": None
        if fees.max_priority_fee_per_gas is None
        else str(fees.max_priority_fee_per_gas),
    }


def version_to_status(version: TxVersion) -> dict[str, Any]:
    return {
        "txHash": version.tx_hash,
        "rawTransaction": version.raw,
        "sender": version.sender,
        "nonce": version.nonce,
        "gas": version.gas,
        **_fees_out(version.fees),
        "sentInBlock": version.sent_in_block,
    }


def to_status(state: State) -> dict[str, Any]:
    """The state as ``status.inFlight`` (a complete object: absent fields are written as null)."""
    target = state.target
    out: dict[str, Any] = {
        "step": step_name(state),
        "cvmId": target.cvm_id,
        "scriptSha256": target.script_sha256,
        "startedAt": format_time(target.started_at),
        "configMapResourceVersion": target.config_map_version,
        "lookFirst": None,
        "startOvers": None,
        "composeHash": None,
        "deviceId": None,
        "chainId": None,
        "appContract": None,
        "signer": None,
        "waitingFor": None,
        "since": None,
        "startBlock": None,
        "transactions": None,
        "underpricedSince": None,
        "transactionHash": None,
        "blockNumber": None,
        "blockHash": None,
        "external": None,
        "reused": None,
        "rechecks": None,
        "correlationId": None,
        "polls": None,
        "adopted": None,
    }
    chain = chain_of(state)
    if chain is not None:
        out.update(
            composeHash=chain.compose_hash,
            deviceId=chain.device_id,
            chainId=chain.chain_id,
            appContract=chain.app_contract,
            signer=chain.signer,
        )
    if not isinstance(state, Following) and state.start_overs:
        out["startOvers"] = state.start_overs
    match state:
        case Uploading(look_first=look_first):
            out["lookFirst"] = look_first or None
        case AwaitingApproval(waiting_for=waiting_for, since=since):
            out.update(waitingFor=waiting_for, since=format_time(since))
        case Registering(start_block=start_block, versions=versions, underpriced_since=underpriced):
            out.update(
                startBlock=start_block,
                transactions=[version_to_status(v) for v in versions] or None,
                underpricedSince=underpriced,
            )
        case AwaitingConfirmations():
            out.update(
                transactionHash=state.tx_hash,
                blockNumber=state.block_number,
                blockHash=state.block_hash,
                transactions=[version_to_status(v) for v in state.versions] or None,
                startBlock=state.start_block,
                external=state.external or None,
                reused=state.reused or None,
            )
        case Applying():
            out.update(
                transactionHash=state.transaction_hash,
                blockNumber=state.block_number,
                rechecks=state.rechecks or None,
            )
        case Following():
            out.update(
                correlationId=state.correlation_id,
                since=format_time(state.accepted_at),
                polls=state.polls or None,
                adopted=state.adopted or None,
                transactionHash=state.transaction_hash,
            )
    return out


class CorruptState(ValueError):
    """``status.inFlight`` cannot be read back; carries what could be saved of it: the transactions it
    held, and where they were sent (when readable)."""

    def __init__(
        self,
        message: str,
        versions: tuple[TxVersion, ...] = (),
        *,
        chain_id: int | None = None,
        app_contract: str | None = None,
        compose_hash: str | None = None,
    ) -> None:
        super().__init__(message)
        self.versions = versions
        self.chain_id = chain_id
        self.app_contract = app_contract
        self.compose_hash = compose_hash


def _int(raw: Mapping[str, Any], name: str) -> int | None:
    value = raw.get(name)
    if value is None or isinstance(value, bool):
        return None
    return int(value)


def _time(raw: Mapping[str, Any], name: str, default: float) -> float:
    parsed = parse_time(raw.get(name))
    return default if parsed is None else parsed


def _fees_in(raw: Mapping[str, Any]) -> Fees:
    tip = raw.get("maxPriorityFeePerGas")
    return Fees(
        max_fee_per_gas=int(raw["maxFeePerGas"]), max_priority_fee_per_gas=None if tip is None else int(tip)
    )


def version_from_status(raw: Mapping[str, Any]) -> TxVersion:
    return TxVersion(
        tx_hash=str(raw["txHash"]),
        raw=str(raw["rawTransaction"]),
        sender=str(raw["sender"]),
        nonce=int(raw["nonce"]),
        gas=int(raw.get("gas") or 0),
        fees=_fees_in(raw),
        sent_in_block=_int(raw, "sentInBlock"),
    )


def _legacy_version(raw: Mapping[str, Any]) -> TxVersion:
    """``inFlight.pendingTransaction`` of operator versions before typed states."""
    return TxVersion(
        tx_hash=str(raw["txHash"]),
        raw=str(raw["rawTransaction"]),
        sender=str(raw["sender"]),
        nonce=int(raw["nonce"]),
        gas=0,
        fees=Fees(0, 0),
    )


def from_status(raw: Mapping[str, Any] | None, *, now: float, default_cvm_id: str) -> State | None:
    """Read ``status.inFlight`` back. Raises ``CorruptState`` (with any transactions it holds) when it
    cannot be read; ``default_cvm_id`` serves records written before states named their CVM."""
    if not raw or not raw.get("step"):
        return None
    try:
        return _from_status(raw, now=now, default_cvm_id=default_cvm_id)
    except (KeyError, TypeError, ValueError) as exc:
        versions: list[TxVersion] = []
        for item in raw.get("transactions") or []:
            try:
                versions.append(version_from_status(item))
            except (KeyError, TypeError, ValueError):
                continue
        legacy = raw.get("pendingTransaction")
        if isinstance(legacy, Mapping):
            with contextlib.suppress(KeyError, TypeError, ValueError):
                versions.append(_legacy_version(legacy))
        legacy_map = legacy if isinstance(legacy, Mapping) else {}
        try:
            chain_id = int(raw.get("chainId") or legacy_map.get("chainId"))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            chain_id = None
        contract = raw.get("appContract") or legacy_map.get("appContract")
        compose = raw.get("composeHash") or legacy_map.get("composeHash")
        raise CorruptState(
            f"status.inFlight cannot be read ({type(exc).__name__}: {exc})",
            tuple(versions),
            chain_id=chain_id,
            app_contract=str(contract) if contract else None,
            compose_hash=str(compose) if compose else None,
        ) from None


def _from_status(raw: Mapping[str, Any], *, now: float, default_cvm_id: str) -> State:
    step = str(raw["step"])
    target = SyncTarget(
        cvm_id=str(raw.get("cvmId") or default_cvm_id),
        script_sha256=str(raw["scriptSha256"]),
        started_at=_time(raw, "startedAt", now),
        config_map_version=raw.get("configMapResourceVersion"),
    )
    start_overs = _int(raw, "startOvers") or 0
    chain: ChainTarget | None = None
    if raw.get("composeHash") and raw.get("chainId") is not None and raw.get("appContract"):
        chain = ChainTarget(
            compose_hash=str(raw["composeHash"]),
            chain_id=int(raw["chainId"]),
            app_contract=str(raw["appContract"]),
            signer=raw.get("signer"),
            device_id=raw.get("deviceId"),
        )
    versions = tuple(version_from_status(v) for v in raw.get("transactions") or [])
    legacy = raw.get("pendingTransaction")
    if isinstance(legacy, Mapping) and not versions:
        versions = (_legacy_version(legacy),)
        if chain is not None and chain.signer is None:
            chain = replace(chain, signer=versions[0].sender)
    if step == "Uploading":
        return Uploading(target, look_first=bool(raw.get("lookFirst")), start_overs=start_overs)
    if step == "Following":
        return Following(
            target,
            correlation_id=str(raw["correlationId"]),
            accepted_at=_time(raw, "since", target.started_at),
            polls=_int(raw, "polls") or 0,
            adopted=bool(raw.get("adopted")),
            chain=chain,
            transaction_hash=raw.get("transactionHash"),
        )
    if chain is None:
        raise ValueError(f"step {step} without its chain (composeHash, chainId, appContract)")
    if step == "AwaitingApproval":
        written = raw.get("waitingFor") or ("Approval" if chain.signer else "Transaction")
        waiting_for: WaitingFor
        if written == "Approval":
            waiting_for = "Approval"
        elif written == "Transaction":
            waiting_for = "Transaction"
        else:
            raise ValueError(f"waitingFor {written!r}")
        return AwaitingApproval(
            target, chain, waiting_for=waiting_for, since=_time(raw, "since", now), start_overs=start_overs
        )
    if step == "Registering":
        return Registering(
            target,
            chain,
            start_block=_int(raw, "startBlock"),
            versions=versions,
            underpriced_since=_int(raw, "underpricedSince"),
            start_overs=start_overs,
        )
    if step == "AwaitingConfirmations":
        return AwaitingConfirmations(
            target,
            chain,
            tx_hash=str(raw["transactionHash"]),
            block_number=int(raw["blockNumber"]),
            block_hash=str(raw.get("blockHash") or ""),
            versions=versions,
            start_block=_int(raw, "startBlock"),
            external=bool(raw.get("external")),
            reused=bool(raw.get("reused")),
            start_overs=start_overs,
        )
    if step == "Applying":
        return Applying(
            target,
            chain,
            transaction_hash=str(raw["transactionHash"]),
            block_number=_int(raw, "blockNumber"),
            rechecks=_int(raw, "rechecks") or _int(raw, "phase2Attempts") or 0,
            start_overs=start_overs,
        )
    raise ValueError(f"unknown step {step!r}")


__all__ = [
    "ON_CHAIN_STATES",
    "Applying",
    "AwaitingApproval",
    "AwaitingConfirmations",
    "ChainTarget",
    "CorruptState",
    "Following",
    "Registering",
    "State",
    "StepName",
    "SyncTarget",
    "TxVersion",
    "Uploading",
    "broadcast_versions",
    "chain_of",
    "from_status",
    "step_name",
    "to_status",
    "with_start_overs",
]
