"""The chain as the reconcile core sees it: plain values, never web3 types.

The chain adapter (``chain/``) answers each question of the core in one JSON-RPC round and returns
these values; it never decides anything. What the operator does with them (sign, wait, re-broadcast,
replace, give up) is decided in ``reconcile/steps/``.

Facts the values rely on (DstackApp, see docs of ``chain/``):

- ``addComposeHash(bytes32)`` has selector ``0xdfc77223``; its calldata is the selector followed by
  the 32-byte hash.
- ``ComposeHashAdded(bytes32)`` is not indexed: the hash is the log's data, its topic is
  ``COMPOSE_HASH_ADDED_TOPIC``.
- A call by a non-owner reverts with ``OwnableUnauthorizedAccount(address)``, selector ``0x118cdaa7``.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

ADD_COMPOSE_HASH_SELECTOR: Final = "0xdfc77223"
COMPOSE_HASH_ADDED_TOPIC: Final = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR: Final = "0x118cdaa7"

_HASH32 = re.compile(r"^0x[0-9a-f]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")


def hex32(value: str) -> str:
    """``0x`` + 64 lower-case hex; raises ``ValueError`` for anything else."""
    text = "0x" + value.strip().lower().removeprefix("0x")
    if not _HASH32.fullmatch(text):
        raise ValueError(f"not a 32-byte hex value: {value[:80]!r}")
    return text


def is_address(value: str) -> bool:
    return bool(_ADDRESS.fullmatch(value))


def same_address(a: str | None, b: str | None) -> bool:
    return a is not None and b is not None and a.lower() == b.lower()


def add_compose_hash_calldata(compose_hash: str) -> str:
    """Calldata of ``addComposeHash(compose_hash)``."""
    return ADD_COMPOSE_HASH_SELECTOR + hex32(compose_hash)[2:]


def compose_hash_of_calldata(data: str) -> str | None:
    """The hash an ``addComposeHash`` calldata registers, or None for any other call."""
    text = data.strip().lower()
    if not text.startswith(ADD_COMPOSE_HASH_SELECTOR) or len(text) != len(ADD_COMPOSE_HASH_SELECTOR) + 64:
        return None
    try:
        return hex32(text[len(ADD_COMPOSE_HASH_SELECTOR) :])
    except ValueError:
        return None


@dataclass(frozen=True)
class Head:
    """The latest block as the RPC reports it."""

    number: int
    hash: str
    timestamp: int  # seconds, the block's own timestamp
    base_fee: int | None  # wei; None on chains without EIP-1559


@dataclass(frozen=True)
class Fees:
    """What a transaction offers to pay per gas (wei)."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int | None  # None: a legacy transaction whose gas price is max_fee_per_gas

    @property
    def legacy(self) -> bool:
        return self.max_priority_fee_per_gas is None


@dataclass(frozen=True)
class Survey:
    """Everything the core reads before it signs a registration, in one round."""

    chain_id: int
    head: Head
    owner: str
    hash_allowed: bool
    any_device_allowed: bool
    device_allowed: bool | None  # None when no device id was asked about
    signer_balance: int  # wei
    pending_nonce: int
    mined_nonce: int
    gas_estimate: int | None  # None when the estimate reverted
    estimate_revert: str | None  # revert data (0x hex) of a reverted estimate
    priority_fee: int | None  # the node's suggested tip; None when it has no suggestion
    gas_price: int | None  # eth_gasPrice, for chains without a base fee


@dataclass(frozen=True)
class LogEntry:
    address: str
    topics: tuple[str, ...]
    data: str  # 0x hex


@dataclass(frozen=True)
class Receipt:
    tx_hash: str
    block_number: int
    block_hash: str
    succeeded: bool
    to: str | None
    logs: tuple[LogEntry, ...] = ()

    def logs_compose_hash(self, contract: str, compose_hash: str) -> bool:
        """True when the receipt carries ``ComposeHashAdded(compose_hash)`` emitted by ``contract``."""
        wanted = hex32(compose_hash)
        return any(
            same_address(log.address, contract)
            and log.topics[:1] == (COMPOSE_HASH_ADDED_TOPIC,)
            and log.data.lower() == wanted
            for log in self.logs
        )


@dataclass(frozen=True)
class TxView:
    """A transaction as ``eth_getTransactionByHash`` shows it (pending or mined)."""

    tx_hash: str
    sender: str
    to: str | None
    nonce: int
    input: str  # 0x hex calldata
    block_number: int | None  # None while pending


@dataclass(frozen=True)
class Tracking:
    """One round of looking at transactions: the head, each one's receipt and view, the sender's nonce."""

    chain_id: int
    head: Head
    mined_nonce: int | None  # the sender's nonce at 'latest' (None when no sender was asked about)
    receipts: Mapping[str, Receipt | None]
    transactions: Mapping[str, TxView | None]
    pending_nonce: int | None = None  # the sender's nonce at 'pending': past its contiguous pending ones
    asked_at: float | None = None  # when the round was asked for (the head was current then at least)


@dataclass(frozen=True)
class LogRef:
    """A ``ComposeHashAdded`` log found on the canonical chain."""

    tx_hash: str
    block_number: int
    block_hash: str


class SendResult(enum.StrEnum):
    """How a node answered ``eth_sendRawTransaction`` in the cases the core resolves itself."""

    ACCEPTED = "accepted"
    KNOWN = "known"  # the node has these very bytes already
    NONCE_TOO_LOW = "nonce too low"  # the nonce is used: by these bytes or by another transaction
    UNDERPRICED = "underpriced"  # the fee cap is below what the node accepts now (base fee, minimum tip)
    REPLACEMENT_UNDERPRICED = "replacement underpriced"  # another transaction with the nonce is pending


@dataclass(frozen=True)
class UnsignedTx:
    chain_id: int
    nonce: int
    to: str
    data: str  # 0x hex
    gas: int
    fees: Fees


@dataclass(frozen=True)
class SignedTx:
    """A signed transaction. Public once broadcast; reveals nothing of the key."""

    tx_hash: str  # keccak of raw, computed by the signer
    raw: str  # 0x hex of the signed bytes
    sender: str
    nonce: int
    gas: int
    fees: Fees


def revert_selector(data: str | None) -> str | None:
    if not data:
        return None
    text = data.strip().lower()
    return text[:10] if len(text) >= 10 and text.startswith("0x") else None


__all__ = [
    "ADD_COMPOSE_HASH_SELECTOR",
    "COMPOSE_HASH_ADDED_TOPIC",
    "OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR",
    "Fees",
    "Head",
    "LogEntry",
    "LogRef",
    "Receipt",
    "SendResult",
    "SignedTx",
    "Survey",
    "Tracking",
    "TxView",
    "UnsignedTx",
    "add_compose_hash_calldata",
    "compose_hash_of_calldata",
    "hex32",
    "is_address",
    "revert_selector",
    "same_address",
]
