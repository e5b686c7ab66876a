"""Phase-2 checks against a real chain over plain JSON-RPC, as Phala's server makes them.

The receipt must exist and have succeeded, must have gone to the app contract, must carry a
``ComposeHashAdded`` log of that contract with the hash, and ``allowedComposeHashes(hash)`` must be
true at the latest block. Phala supplies no RPC to its users; the simulator is told one per chain id.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

ALLOWED_COMPOSE_HASHES_SELECTOR = "0x2f6622e5"
COMPOSE_HASH_ADDED_TOPIC = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
_RPC_TIMEOUT_S = 10.0


class Verdict(enum.Enum):
    OK = "ok"
    RECEIPT_MISSING = "receipt_missing"
    REVERTED = "reverted"
    WRONG_TARGET = "wrong_target"
    LOG_MISSING = "log_missing"
    NOT_ALLOWED = "not_allowed"


@dataclass(frozen=True)
class VerificationResult:
    verdict: Verdict
    detail: str


class ChainRpcError(RuntimeError):
    """The RPC could not be reached or answered an error: Phala answers 500 then."""


class JsonRpcClient:
    """A minimal JSON-RPC client over aiohttp (one session per client, closed by ``close``)."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._ids = itertools.count(1)
        self._session: aiohttp.ClientSession | None = None

    async def call(self, method: str, *params: Any) -> Any:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=_RPC_TIMEOUT_S))
        payload = {"jsonrpc": "2.0", "id": next(self._ids), "method": method, "params": list(params)}
        try:
            async with self._session.post(self._url, json=payload) as response:
                answer = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            # The URL may carry a provider key: name the method, not the endpoint.
            raise ChainRpcError(f"{method}: RPC unreachable ({type(exc).__name__})") from None
        if not isinstance(answer, dict):
            raise ChainRpcError(f"{method}: malformed JSON-RPC answer")
        if "error" in answer:
            raise ChainRpcError(f"{method}: {answer['error']}")
        return answer.get("result")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def verify_registration(
    rpc: JsonRpcClient,
    *,
    app_contract: str,
    compose_hash: str,
    tx_hash: str,
    receipt_retry_seconds: float,
    receipt_poll_seconds: float = 0.25,
) -> VerificationResult:
    """Run the Phase-2 checks; ``compose_hash`` is 64 hex without ``0x``.

    A missing receipt is retried for ``receipt_retry_seconds``: Phala's server does the same to
    ride out RPC lag between the client's node and its own.
    """
    app_contract = app_contract.lower()
    deadline = time.monotonic() + max(0.0, receipt_retry_seconds)
    receipt: dict[str, Any] | None = None
    while True:
        receipt = await rpc.call("eth_getTransactionReceipt", tx_hash)
        if receipt is not None or time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(receipt_poll_seconds, max(0.0, deadline - time.monotonic())))
    if receipt is None:
        return VerificationResult(Verdict.RECEIPT_MISSING, f"no receipt for transaction {tx_hash}")
    if int(str(receipt.get("status", "0x0")), 16) != 1:
        return VerificationResult(Verdict.REVERTED, f"transaction {tx_hash} reverted")
    target = str(receipt.get("to") or "").lower()
    if target != app_contract:
        return VerificationResult(
            Verdict.WRONG_TARGET, f"transaction {tx_hash} was sent to {target or 'no contract'}"
        )
    allowed = await rpc.call(
        "eth_call",
        {"to": app_contract, "data": ALLOWED_COMPOSE_HASHES_SELECTOR + compose_hash},
        "latest",
    )
    if not _is_true_word(allowed):
        return VerificationResult(Verdict.NOT_ALLOWED, f"compose hash 0x{compose_hash} is not allowed")
    if not _has_compose_hash_added(receipt, app_contract, compose_hash):
        return VerificationResult(
            Verdict.LOG_MISSING, f"transaction {tx_hash} carries no ComposeHashAdded(0x{compose_hash})"
        )
    return VerificationResult(Verdict.OK, "registered")


def _is_true_word(result: Any) -> bool:
    # An ABI-encoded bool; "0x" (no code at the address) counts as false, like Solidity's view.
    if not isinstance(result, str) or len(result) <= 2:
        return False
    try:
        return int(result, 16) != 0
    except ValueError:
        return False


def _has_compose_hash_added(receipt: dict[str, Any], app_contract: str, compose_hash: str) -> bool:
    for log in receipt.get("logs") or []:
        topics = [str(t).lower() for t in log.get("topics") or []]
        if str(log.get("address", "")).lower() != app_contract or not topics:
            continue
        # The hash is not indexed: it is the 32-byte data word.
        if topics[0] == COMPOSE_HASH_ADDED_TOPIC and str(log.get("data", "")).lower() == "0x" + compose_hash:
            return True
    return False
