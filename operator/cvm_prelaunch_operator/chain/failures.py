"""Turns what web3.py, aiohttp and the node raise into the operator's retry/permanent vocabulary.

web3.py raises transport failures as the transport's own exceptions (aiohttp's, or requests' in
the synchronous stack), JSON-RPC error answers as ``Web3RPCError``, reverts as
``ContractLogicError``. Their texts often quote the RPC URL, which may carry a provider key, so a
translated error is built from our own words plus the node's message passed through a
``Redactor``; the original exception is never chained into it.

The second half (``classify_send_error``, ``revert_data``, ``node_text``) reads what nodes answer
in a JSON-RPC error object, for the JSON-RPC client of ``chain/rpc.py``; it needs no web3 types.
The first half serves the procedural registrar and goes with it.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from typing import Final

import aiohttp
import requests
from web3.exceptions import (
    BadFunctionCallOutput,
    BadResponseFormat,
    ContractCustomError,
    ContractLogicError,
    ProviderConnectionError,
    RequestTimedOut,
    TimeExhausted,
    TooManyRequests,
    Web3RPCError,
)

from cvm_prelaunch_operator.chain.abi import OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR
from cvm_prelaunch_operator.domain.chain import SendResult
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT, cut

# Failures of the way to the node, not answers of the node: worth trying again later.
TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (
    aiohttp.ClientError,
    TimeoutError,  # also asyncio.TimeoutError since Python 3.11
    requests.RequestException,
    ConnectionError,
    ProviderConnectionError,
    RequestTimedOut,
    TooManyRequests,
    TimeExhausted,
    BadResponseFormat,  # a proxy or load balancer answering with an HTML error page
)

# HTTP answers of an RPC endpoint that say "later", not "never".
_TRANSIENT_HTTP = frozenset({408, 425, 429})


class Rejection(enum.Enum):
    """Why a node refused ``eth_sendRawTransaction``, for the cases the registrar resolves itself."""

    ALREADY_KNOWN = "already known"  # the node has these very bytes (pending or mined)
    NONCE_TOO_LOW = "nonce too low"  # the nonce is used: by these bytes or by another transaction
    REPLACEMENT_UNDERPRICED = "replacement underpriced"  # another transaction with this nonce is pending
    INSUFFICIENT_FUNDS = "insufficient funds"


# Substrings of node messages (geth, erigon, nethermind, reth, besu, anvil), lower-cased.
_REJECTION_MARKERS: tuple[tuple[Rejection, tuple[str, ...]], ...] = (
    (
        Rejection.ALREADY_KNOWN,
        ("already known", "already imported", "known transaction", "alreadyknown", "already exists"),
    ),
    (
        Rejection.NONCE_TOO_LOW,
        ("nonce too low", "nonce is too low", "oldnonce", "nonce has already been used"),
    ),
    (Rejection.REPLACEMENT_UNDERPRICED, ("replacement transaction underpriced", "replacement underpriced")),
    (Rejection.INSUFFICIENT_FUNDS, ("insufficient funds", "insufficient balance")),
)


def node_message(exc: Web3RPCError) -> str:
    """The node's own error message (web3 wraps it in a dict-shaped string)."""
    response = exc.rpc_response or {}
    error = response.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    return str(exc.message)


def classify_rejection(exc: Web3RPCError) -> Rejection | None:
    text = node_message(exc).lower()
    for rejection, markers in _REJECTION_MARKERS:
        if any(marker in text for marker in markers):
            return rejection
    return None


def is_transport_failure(exc: BaseException) -> bool:
    return isinstance(exc, TRANSPORT_ERRORS)


def translate(
    exc: Exception,
    *,
    action: str,
    endpoint: str,
    redact: Callable[[str], str],
    contract: str | None = None,
    chain_id: int | None = None,
) -> SyncError:
    """One safe ``SyncError`` for a failure of ``action`` against ``endpoint`` (a redacted URL)."""
    if isinstance(exc, SyncError):
        return exc
    if isinstance(exc, aiohttp.ClientResponseError):
        # The exception's text quotes the request URL: use only its status.
        status = exc.status
        if status in _TRANSIENT_HTTP or status >= 500:
            return RetryLater(
                f"chain RPC {endpoint} answered HTTP {status} while {action}",
                reason=Reason.CHAIN_UNAVAILABLE,
            )
        return Permanent(
            f"chain RPC {endpoint} refused the request with HTTP {status} while {action}: "
            "check the RPC URL and the key it carries",
            reason=Reason.CHAIN_UNAVAILABLE,
        )
    if is_transport_failure(exc):
        return RetryLater(
            f"chain RPC {endpoint} unreachable while {action} ({type(exc).__name__})",
            reason=Reason.CHAIN_UNAVAILABLE,
        )
    if isinstance(exc, ContractCustomError) and _revert_data(exc).startswith(
        OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR
    ):
        return Permanent(
            f"the signer is not the owner of app contract {contract} (OwnableUnauthorizedAccount) "
            f"while {action}",
            reason=Reason.NOT_CONTRACT_OWNER,
        )
    if isinstance(exc, ContractLogicError):
        return Permanent(
            f"app contract {contract} reverted while {action}: "
            f"{redact(str(exc.message or _revert_data(exc)))}",
            reason=Reason.TRANSACTION_FAILED,
        )
    if isinstance(exc, BadFunctionCallOutput):
        return Permanent(
            f"no app contract answers at {contract} on chain {chain_id} (empty call result) while {action}",
            reason=Reason.WRONG_CHAIN,
        )
    if isinstance(exc, Web3RPCError):
        message = redact(node_message(exc))
        if classify_rejection(exc) is Rejection.INSUFFICIENT_FUNDS:
            return Permanent(
                f"the signer cannot pay for the transaction: {message}", reason=Reason.INSUFFICIENT_FUNDS
            )
        # Unknown node errors are mostly provider trouble (rate limits, "header not found", lagging
        # backends): retrying is safer than giving up on a registration for good.
        return RetryLater(
            f"chain RPC {endpoint} returned an error while {action}: {message}",
            reason=Reason.CHAIN_UNAVAILABLE,
        )
    return RetryLater(
        f"unexpected {type(exc).__name__} while {action} on chain RPC {endpoint}: {redact(str(exc))}",
        reason=Reason.CHAIN_UNAVAILABLE,
    )


def _revert_data(exc: ContractLogicError) -> str:
    data = exc.data
    if isinstance(data, dict):
        data = data.get("data") or ""
    return str(data or "").lower()


# -- node answers to JSON-RPC calls (the client of chain/rpc.py) --------------------------------------


class SendRefusal(enum.Enum):
    """Refusals of ``eth_sendRawTransaction`` that no waiting resolves."""

    INSUFFICIENT_FUNDS = "insufficient funds"
    INVALID = "invalid transaction"  # the signed bytes themselves are unacceptable (chain id, gas, type)


# Lower-cased substrings of node messages, checked in this order (the first match wins: "replacement
# transaction underpriced" must not be read as "transaction underpriced"). Sources: geth
# (core/txpool/errors.go, core/error.go), erigon (txpool DiscardReason), nethermind (AcceptTxResult:
# today geth's words, formerly its enum names), besu (RpcErrorType), reth, and anvil 1.7.1 as run.
_SEND_MARKERS: Final[tuple[tuple[SendResult | SendRefusal, tuple[str, ...]], ...]] = (
    (
        SendResult.KNOWN,
        (
            "already known",  # geth, reth, erigon, nethermind
            "already imported",  # anvil: "transaction already imported"; parity
            "known transaction",  # besu: "Known transaction"
            "alreadyknown",  # nethermind before 1.20
            "existing tx with same hash",  # erigon
        ),
    ),
    (
        SendResult.REPLACEMENT_UNDERPRICED,
        (
            "replacement transaction underpriced",  # geth, reth, erigon, anvil, besu
            "replacement underpriced",
            "replacement fee too low",
            "replacementnotallowed",  # nethermind before 1.20
            "insufficient gas price to replace",  # reth, early versions
        ),
    ),
    (
        SendResult.NONCE_TOO_LOW,
        ("nonce too low", "nonce is too low", "oldnonce", "nonce has already been used"),
    ),
    (
        SendRefusal.INSUFFICIENT_FUNDS,
        (
            "insufficient funds",  # geth, reth, erigon, anvil ("Insufficient funds for gas * price + value")
            "insufficientfunds",  # nethermind before 1.20
            "insufficient balance",
            "upfront cost exceeds account balance",  # besu
            "exceeds transaction sender account balance",
        ),
    ),
    (
        SendResult.UNDERPRICED,
        (
            "underpriced",  # geth/reth "transaction underpriced" (below the pool's minimum tip)
            "max fee per gas less than block base fee",  # geth, reth, anvil
            "fee cap less than block base fee",  # erigon
            "fee too low",  # erigon; nethermind "FeeTooLow" lower-cased is "feetoolow"
            "feetoolow",
            "gas price below",  # besu: "Gas price below configured minimum" / "... current base fee"
            "gas price too low",
            "transaction is outdated",
        ),
    ),
    (
        SendRefusal.INVALID,
        (
            "invalid sender",
            "invalid chain id",
            "intrinsic gas too low",
            "exceeds block gas limit",
            "transaction type not supported",
            "oversized data",
            "only replay-protected",
            "max priority fee per gas higher than max fee per gas",
            "tip higher than fee cap",
            "failed to decode",
        ),
    ),
)


def classify_send_error(message: str) -> SendResult | SendRefusal | None:
    """What a node's error message for ``eth_sendRawTransaction`` means; None when unknown (then the
    safe reading is "later": rate limits, a full pool, a syncing or lagging node)."""
    text = message.lower()
    for outcome, markers in _SEND_MARKERS:
        if any(marker in text for marker in markers):
            return outcome
    return None


_HEX_DATA = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")
_HEX_TOKEN = re.compile(r"0x(?:[0-9a-fA-F]{2})+")


def revert_data(code: object, message: str, data: object) -> str | None:
    """The revert data (``0x`` hex; ``0x`` when the node gave none) of an ``eth_call`` or
    ``eth_estimateGas`` error, or None when the error is not a revert.

    geth, reth and anvil answer code 3 with the data as a string; besu says "Execution reverted"
    with the data; nethermind says "VM execution error." with data like "Reverted 0x..."; some
    providers nest it (``{"data": "0x..."}``).
    """
    if isinstance(data, dict):
        data = data.get("data")
    words = message.lower()
    if isinstance(data, str) and not _HEX_DATA.fullmatch(data):
        words += " " + data.lower()
        token = _HEX_TOKEN.search(data)
        data = token.group(0) if token else None
    if code != 3 and "revert" not in words:
        return None
    return data.lower() if isinstance(data, str) and _HEX_DATA.fullmatch(data) else "0x"


_CONTROL = re.compile(r"\s+")


def node_text(message: object, redact: Callable[[str], str]) -> str:
    """A node's words made safe to quote: redacted first (cutting first could split a secret and
    hide it from the redactor), control characters replaced, whitespace collapsed, then cut to
    ``NODE_TEXT_LIMIT``."""
    text = redact(message if isinstance(message, str) else repr(message)[: NODE_TEXT_LIMIT * 4])
    printable = "".join(
        ch if ch == " " or not unicodedata.category(ch).startswith(("C", "Z")) else " " for ch in text
    )
    return cut(_CONTROL.sub(" ", printable).strip(), NODE_TEXT_LIMIT)
