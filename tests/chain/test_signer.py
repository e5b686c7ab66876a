"""The local signer: what it signs anvil accepts and mines under the hash it computed; keys stay hidden."""

from __future__ import annotations

import secrets
import traceback
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from eth_account import Account

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_operator.chain.rpc import JsonRpcChainClient, Web3ChainConnector
from cvm_prelaunch_operator.chain.signer import EthAccountSigner
from cvm_prelaunch_operator.domain.chain import Fees, SendResult, UnsignedTx, add_compose_hash_calldata
from cvm_prelaunch_operator.domain.errors import Permanent
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret

GWEI = 10**9
SIGNER = EthAccountSigner()


@pytest_asyncio.fixture
async def client(anvil: Anvil) -> AsyncIterator[JsonRpcChainClient]:
    connector = Web3ChainConnector()
    yield connector.connect(Secret(anvil.rpc_url))
    await connector.aclose()


@pytest.mark.parametrize("tip", [2 * GWEI, None], ids=["eip1559", "legacy"])
async def test_anvil_mines_what_the_signer_signs_under_the_hash_it_computed(
    anvil: Anvil, app_contract: AppContract, client: JsonRpcChainClient, tip: int | None
) -> None:
    owner = app_contract.owner
    compose_hash = "0x" + secrets.token_hex(32)
    w3 = anvil.web3()
    nonce = w3.eth.get_transaction_count(owner.address, "pending")
    tx = UnsignedTx(
        chain_id=anvil.chain_id,
        nonce=nonce,
        to=app_contract.address.lower(),
        data=add_compose_hash_calldata(compose_hash),
        gas=120_000,
        fees=Fees(max_fee_per_gas=50 * GWEI, max_priority_fee_per_gas=tip),
    )

    signed = SIGNER.sign(owner.private_key, tx)

    assert signed.sender == owner.address == SIGNER.address(owner.private_key)
    assert (signed.nonce, signed.gas, signed.fees) == (nonce, 120_000, tx.fees)
    assert signed.tx_hash == SIGNER.tx_hash(signed.raw)
    assert signed.raw.startswith("0x02" if tip is not None else "0xf8")  # type 2, or an RLP list
    assert await client.send(signed.raw) is SendResult.ACCEPTED
    receipt = w3.eth.wait_for_transaction_receipt(signed.tx_hash, timeout=10, poll_latency=0.01)
    assert receipt["transactionHash"].to_0x_hex() == signed.tx_hash
    assert receipt["status"] == 1
    mined = w3.eth.get_transaction(signed.tx_hash)
    assert mined["from"] == owner.address
    assert mined["nonce"] == nonce
    assert mined["gas"] == 120_000
    if tip is None:
        assert mined["type"] == 0 and mined["gasPrice"] == 50 * GWEI
    else:
        assert mined["type"] == 2
        assert (mined["maxFeePerGas"], mined["maxPriorityFeePerGas"]) == (50 * GWEI, tip)
    tracking = await client.track([signed.tx_hash], sender=owner.address)
    mined_receipt = tracking.receipts[signed.tx_hash]
    assert mined_receipt is not None and mined_receipt.logs_compose_hash(app_contract.address, compose_hash)


def test_tx_hash_is_keccak_of_the_bytes_as_eth_account_computes_it() -> None:
    key = Account.create()
    tx = {"chainId": 8453, "nonce": 3, "to": "0x" + "11" * 20, "value": 0, "gas": 50_000, "data": "0x"}
    signed = key.sign_transaction({**tx, "type": 2, "maxFeePerGas": 10, "maxPriorityFeePerGas": 1})
    raw = "0x" + bytes(signed.raw_transaction).hex()

    assert SIGNER.tx_hash(raw) == "0x" + bytes(signed.hash).hex()
    assert SIGNER.tx_hash(raw.upper().replace("0X", "0x")) == SIGNER.tx_hash(raw)
    for bad in ("", "0x", "0xabc", "deadbeef", "0xzz"):
        with pytest.raises(ValueError, match="not 0x-prefixed hex"):
            SIGNER.tx_hash(bad)


def test_a_key_with_surrounding_white_space_is_the_same_key(anvil: Anvil) -> None:
    account = anvil.accounts[3]
    padded = Secret(f"  {account.private_key.reveal()}\n")
    bare = Secret(account.private_key.reveal().removeprefix("0x"))

    assert SIGNER.address(padded) == SIGNER.address(bare) == account.address


@pytest.mark.parametrize(
    "key",
    [
        "",
        "0x1234",
        "0x" + "zz" * 32,
        "0x" + "00" * 32,  # zero is not a private key
        "0x" + "ff" * 32,  # above the curve order
        "0x" + "ab" * 33,
        "not a key at all, but a sentence " + secrets.token_hex(16),
    ],
)
def test_an_invalid_key_is_permanent_and_never_shown(key: str) -> None:
    tx = UnsignedTx(chain_id=1, nonce=0, to="0x" + "11" * 20, data="0x", gas=21_000, fees=Fees(1, 1))
    for attempt in (lambda: SIGNER.address(Secret(key)), lambda: SIGNER.sign(Secret(key), tx)):
        with pytest.raises(Permanent) as raised:
            attempt()
        assert raised.value.reason is Reason.INVALID_SPEC
        assert raised.value.__cause__ is None and raised.value.__context__ is None
        rendered = "".join(traceback.format_exception(raised.value)) + repr(raised.value)
        for needle in {key, key.removeprefix("0x"), key[2:18]} - {"", "0x"}:
            assert needle not in rendered


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"to": "0x1234"}, "recipient"),
        ({"data": "0xabc"}, "data"),
        ({"nonce": -1}, "nonce"),
        ({"gas": 20_999}, "gas"),
        ({"chain_id": 0}, "chain id"),
        ({"fees": Fees(max_fee_per_gas=1, max_priority_fee_per_gas=2)}, "tip 2 is above the fee cap 1"),
        ({"fees": Fees(max_fee_per_gas=2**256, max_priority_fee_per_gas=None)}, "max fee per gas"),
    ],
)
def test_a_transaction_it_cannot_sign_is_the_callers_error(
    anvil: Anvil, change: dict[str, object], says: str
) -> None:
    fields: dict[str, object] = {
        "chain_id": 1,
        "nonce": 0,
        "to": "0x" + "11" * 20,
        "data": "0x",
        "gas": 21_000,
        "fees": Fees(2, 1),
    }
    fields.update(change)
    tx = UnsignedTx(**fields)  # type: ignore[arg-type]

    with pytest.raises(ValueError, match=says):
        SIGNER.sign(anvil.accounts[0].private_key, tx)


def test_repr_shows_nothing() -> None:
    assert repr(SIGNER) == "EthAccountSigner()"
