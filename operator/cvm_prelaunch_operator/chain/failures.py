"""What nodes answer in a JSON-RPC error object, read for the JSON-RPC client of ``chain/rpc.py``:
the outcome of ``eth_sendRawTransaction`` (``classify_send_error``), revert data (``revert_data``) and
node text safe to quote (``node_text``: redacted, one line, cut). Node texts quote RPC URLs, which may
carry a provider key, so nothing a node or a library said reaches a message unredacted.
"""

from __future__ import annotations

import enum
import re
import unicodedata
from collections.abc import Callable
from typing import Final

from cvm_prelaunch_operator.domain.chain import SendResult
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT, cut


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
