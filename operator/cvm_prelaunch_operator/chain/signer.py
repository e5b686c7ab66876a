"""Signs the operator's transactions locally with eth_account (``reconcile.ports.Signer``).

EIP-1559 (type 2) when the fees carry a tip, a legacy EIP-155 transaction with ``gasPrice`` when
they do not (chains without a base fee). The key is read from its Secret at each call and held
nowhere; a key that is not a secp256k1 private key is ``Permanent`` (``InvalidSpec``) with a message
that names no part of it. eth_keys' own errors may quote the value, so they are never chained.
Leading and trailing white space of a key (a Secret made from a file with a newline) is ignored.

A transaction the signer would refuse to sign (no recipient, a negative nonce, a tip above the fee
cap) is the caller's error: ``ValueError``.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak

from cvm_prelaunch_operator.domain.chain import SignedTx, UnsignedTx, is_address
from cvm_prelaunch_operator.domain.errors import Permanent
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret

if TYPE_CHECKING:
    from cvm_prelaunch_operator.reconcile.ports import Signer

_HEX = re.compile(r"^0x(?:[0-9a-fA-F]{2})*$")
_UINT256 = 2**256


class EthAccountSigner:
    """``Signer`` over eth_account; keeps no state, so one instance serves the whole process."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"

    def address(self, key: Secret) -> str:
        return str(_account(key).address)

    def sign(self, key: Secret, tx: UnsignedTx) -> SignedTx:
        fields = _fields(tx)
        account = _account(key)
        try:
            signed = account.sign_transaction(fields)
            raw = "0x" + bytes(signed.raw_transaction).hex()
        except Exception as exc:  # the fields were checked: this is eth_account's own trouble
            failure = type(exc).__name__
        else:
            return SignedTx(
                tx_hash=self.tx_hash(raw),
                raw=raw,
                sender=str(account.address),
                nonce=tx.nonce,
                gas=tx.gas,
                fees=tx.fees,
            )
        raise ValueError(f"eth_account could not sign transaction nonce {tx.nonce} ({failure})")

    def tx_hash(self, raw: str) -> str:
        text = raw.strip()
        if not _HEX.fullmatch(text) or text == "0x":
            raise ValueError("raw is not 0x-prefixed hex bytes")
        return "0x" + keccak(hexstr=text).hex()


def _account(key: Secret) -> LocalAccount:
    try:
        account: LocalAccount = Account.from_key(key.reveal().strip())
    except Exception:  # eth_keys' messages may quote the value
        error = Permanent(
            "the signer key is not a secp256k1 private key (32 bytes of hex, with or without 0x)",
            reason=Reason.INVALID_SPEC,
        )
    else:
        return account
    raise error from None


def _fields(tx: UnsignedTx) -> dict[str, Any]:
    checks = [
        ("chain id", tx.chain_id, 1),
        ("nonce", tx.nonce, 0),
        ("gas", tx.gas, 21_000),
        ("max fee per gas", tx.fees.max_fee_per_gas, 0),
    ]
    if tx.fees.max_priority_fee_per_gas is not None:
        checks.append(("max priority fee per gas", tx.fees.max_priority_fee_per_gas, 0))
    for what, value, minimum in checks:
        if not minimum <= value < _UINT256:
            raise ValueError(f"the transaction's {what} {value} is out of range")
    if not is_address(tx.to):
        raise ValueError("the transaction's recipient is not an address")
    if not _HEX.fullmatch(tx.data):
        raise ValueError("the transaction's data is not 0x-prefixed hex bytes")
    fields: dict[str, Any] = {
        "chainId": tx.chain_id,
        "nonce": tx.nonce,
        "to": to_checksum_address(tx.to),
        "value": 0,
        "data": tx.data.lower(),
        "gas": tx.gas,
    }
    tip = tx.fees.max_priority_fee_per_gas
    if tip is None:
        fields["gasPrice"] = tx.fees.max_fee_per_gas
        return fields
    if tip > tx.fees.max_fee_per_gas:
        raise ValueError(f"the tip {tip} is above the fee cap {tx.fees.max_fee_per_gas}")
    fields.update(type=2, maxFeePerGas=tx.fees.max_fee_per_gas, maxPriorityFeePerGas=tip, accessList=[])
    return fields


if TYPE_CHECKING:  # mypy checks that the adapter implements the port

    def _implements(signer: EthAccountSigner) -> Signer:
        return signer


__all__ = ["EthAccountSigner"]
