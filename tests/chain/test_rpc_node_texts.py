"""What nodes other than anvil say, read the way the chain client reads it (no node needed).

anvil 1.7.1's own answers are checked live in ``test_rpc.py``; these are the texts of the clients
production RPCs run, from their sources (geth core/txpool/errors.go and core/error.go, erigon's
txpool, nethermind's AcceptTxResult before and after it adopted geth's words, besu's RpcErrorType,
reth's pool errors).
"""

from __future__ import annotations

import pytest

from cvm_prelaunch_operator.chain.failures import SendRefusal, classify_send_error, node_text, revert_data
from cvm_prelaunch_operator.domain.chain import SendResult
from cvm_prelaunch_operator.domain.secrets import Redactor
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT


@pytest.mark.parametrize(
    ("text", "outcome"),
    [
        # geth / reth / erigon
        ("already known", SendResult.KNOWN),
        ("nonce too low: next nonce 7, tx nonce 5", SendResult.NONCE_TOO_LOW),
        ("replacement transaction underpriced", SendResult.REPLACEMENT_UNDERPRICED),
        ("transaction underpriced: tip needed 1000000000, tip permitted 1", SendResult.UNDERPRICED),
        (
            "max fee per gas less than block base fee: address 0xabc, maxFeePerGas: 1, baseFee: 7",
            SendResult.UNDERPRICED,
        ),
        (
            "insufficient funds for gas * price + value: address 0xabc have 0 want 10",
            SendRefusal.INSUFFICIENT_FUNDS,
        ),
        ("invalid sender", SendRefusal.INVALID),
        ("intrinsic gas too low: gas 20000, minimum needed 21000", SendRefusal.INVALID),
        ("exceeds block gas limit", SendRefusal.INVALID),
        ("only replay-protected (EIP-155) transactions allowed over RPC", SendRefusal.INVALID),
        ("max priority fee per gas higher than max fee per gas", SendRefusal.INVALID),
        ("txpool is full", None),
        ("header not found", None),
        ("tx fee (1.20 ether) exceeds the configured cap (1.00 ether)", None),
        # erigon
        ("INTERNAL_ERROR: existing tx with same hash", SendResult.KNOWN),
        ("fee cap less than block base fee", SendResult.UNDERPRICED),
        ("fee too low", SendResult.UNDERPRICED),
        # nethermind, old and new
        ("AlreadyKnown", SendResult.KNOWN),
        ("OldNonce, Current nonce: 7, nonce of rejected tx: 5", SendResult.NONCE_TOO_LOW),
        ("ReplacementNotAllowed", SendResult.REPLACEMENT_UNDERPRICED),
        ("FeeTooLow, MaxFeePerGas too low", SendResult.UNDERPRICED),
        ("InsufficientFunds, Account balance: 0", SendRefusal.INSUFFICIENT_FUNDS),
        # besu
        ("Known transaction", SendResult.KNOWN),
        ("Nonce too low", SendResult.NONCE_TOO_LOW),
        ("Replacement transaction underpriced", SendResult.REPLACEMENT_UNDERPRICED),
        ("Gas price below configured minimum gas price", SendResult.UNDERPRICED),
        ("Upfront cost exceeds account balance", SendRefusal.INSUFFICIENT_FUNDS),
        # reth, early versions
        (
            "[0xab..]: insufficient gas price to replace existing transaction.",
            SendResult.REPLACEMENT_UNDERPRICED,
        ),
        # anvil 1.7.1
        ("transaction already imported", SendResult.KNOWN),
        ("Insufficient funds for gas * price + value", SendRefusal.INSUFFICIENT_FUNDS),
        ("invalid chain id for signer", SendRefusal.INVALID),
        ("Failed to decode transaction", SendRefusal.INVALID),
    ],
)
def test_send_errors_of_every_client(text: str, outcome: SendResult | SendRefusal | None) -> None:
    assert classify_send_error(text) == outcome


@pytest.mark.parametrize(
    ("code", "message", "data", "expected"),
    [
        (
            3,
            "execution reverted: custom error 0x118cdaa7",
            "0x118cdaa7" + "00" * 32,
            "0x118cdaa7" + "00" * 32,
        ),
        (3, "execution reverted", None, "0x"),
        (-32000, "execution reverted", None, "0x"),  # geth without data
        (-32000, "Execution reverted", "0x08C379A0", "0x08c379a0"),  # besu
        (-32015, "VM execution error.", "Reverted 0x118cdaa7ab", "0x118cdaa7ab"),  # nethermind
        (-32015, "VM execution error.", "revert", "0x"),
        (-32000, "reverted", {"data": "0x1234"}, "0x1234"),  # nested by a provider
        (-32000, "header not found", None, None),
        (-32003, "Out of gas: gas required exceeds allowance: 0", None, None),
        (-32000, "missing trie node", "0x1234", None),
    ],
)
def test_revert_data_of_every_client(code: int, message: str, data: object, expected: str | None) -> None:
    assert revert_data(code, message, data) == expected


def test_node_text_is_redacted_before_it_is_cut_and_printable() -> None:
    key = "secretkey" + "9" * 30
    url = f"https://rpc.example/v2/{key}"
    # The key straddles the cut: cutting first would leave a piece the redactor no longer recognises.
    text = "x" * (NODE_TEXT_LIMIT - 20) + f" {url} \x00\n\tend"

    said = node_text(text, Redactor([url]))

    assert key[:12] not in said
    assert len(said) <= NODE_TEXT_LIMIT
    assert said.isprintable()
    assert node_text({"not": "a string"}, Redactor()) == "{'not': 'a string'}"
