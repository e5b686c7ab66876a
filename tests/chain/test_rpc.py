"""The JSON-RPC chain client against a real anvil: each ChainClient method, one HTTP request each.

The proxy (``anvil_proxy``) in front of anvil counts HTTP requests and JSON-RPC calls and plays a
misbehaving node where a test needs one.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
import pytest_asyncio
from eth_abi.abi import encode as abi_encode
from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.contracts import AppContract, deploy_app_contract
from cvm_prelaunch_localenv.fixtures.chain import AppContractFactory
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_operator.chain.rpc import (
    ALLOW_ANY_DEVICE_SELECTOR,
    ALLOWED_COMPOSE_HASHES_SELECTOR,
    ALLOWED_DEVICE_IDS_SELECTOR,
    OWNER_SELECTOR,
    JsonRpcChainClient,
    Web3ChainConnector,
)
from cvm_prelaunch_operator.chain.signer import EthAccountSigner
from cvm_prelaunch_operator.domain.chain import (
    OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR,
    Fees,
    SendResult,
    SignedTx,
    UnsignedTx,
    add_compose_hash_calldata,
)
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret

GWEI = 10**9
SURVEY_METHODS = (
    "eth_chainId",
    "eth_getBlockByNumber",
    "eth_call",
    "eth_call",
    "eth_call",
    "eth_getBalance",
    "eth_getTransactionCount",
    "eth_getTransactionCount",
    "eth_estimateGas",
    "eth_maxPriorityFeePerGas",
    "eth_gasPrice",
)
SIGNER = EthAccountSigner()


def new_hash() -> str:
    return "0x" + secrets.token_hex(32)


class Observations(list[tuple[str, float, bool]]):
    def __call__(self, operation: str, seconds: float, ok: bool) -> None:
        self.append((operation, seconds, ok))


@pytest.fixture
def observed() -> Observations:
    return Observations()


@pytest_asyncio.fixture
async def connector(observed: Observations) -> AsyncIterator[Web3ChainConnector]:
    chain = Web3ChainConnector(observer=observed)
    yield chain
    await chain.aclose()


@pytest.fixture
def client(connector: Web3ChainConnector, anvil_proxy: JsonRpcProxy) -> JsonRpcChainClient:
    return connector.connect(Secret(anvil_proxy.url))


@pytest.fixture(scope="module")
def own_chain() -> Iterator[Anvil]:
    """A chain of this module's own, for tests that stop mining or fill the pool."""
    with Anvil() as chain:
        yield chain


def unsigned(
    chain_id: int,
    nonce: int,
    to: str,
    *,
    data: str = "0x",
    gas: int = 100_000,
    max_fee: int = 100 * GWEI,
    tip: int | None = GWEI,
) -> UnsignedTx:
    return UnsignedTx(chain_id=chain_id, nonce=nonce, to=to, data=data, gas=gas, fees=Fees(max_fee, tip))


def signed_transfer(chain: Anvil, sender: DevAccount, nonce: int, **kwargs: Any) -> SignedTx:
    return SIGNER.sign(
        sender.private_key, unsigned(chain.chain_id, nonce, chain.accounts[9].address, **kwargs)
    )


# -- survey -----------------------------------------------------------------------------------------


async def test_survey_reads_the_chain_the_contract_and_the_signer_in_one_request(
    anvil: Anvil,
    app_contract: AppContract,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    observed: Observations,
    send_tx: Callable[..., str],
) -> None:
    owner = app_contract.owner
    compose_hash = new_hash()
    w3 = anvil.web3()

    survey = await client.survey(
        contract=app_contract.address,
        compose_hash=compose_hash,
        device_id=None,
        signer=owner.address,
        call_data=add_compose_hash_calldata(compose_hash),
    )

    assert anvil_proxy.http_requests == 1
    assert anvil_proxy.requests == [SURVEY_METHODS]
    assert [(op, ok) for op, _, ok in observed] == [("survey", True)]
    latest = w3.eth.get_block("latest")
    assert survey.chain_id == 31337
    assert survey.head.number == latest["number"]
    assert survey.head.hash == latest["hash"].to_0x_hex()
    assert survey.head.timestamp == latest["timestamp"]
    assert survey.head.base_fee == latest["baseFeePerGas"]
    assert survey.owner == owner.address
    assert survey.hash_allowed is False
    assert survey.any_device_allowed is False
    assert survey.device_allowed is None
    assert survey.signer_balance == w3.eth.get_balance(owner.address)
    assert survey.pending_nonce == survey.mined_nonce == w3.eth.get_transaction_count(owner.address)
    assert survey.gas_estimate is not None and 21_000 < survey.gas_estimate < 100_000
    assert survey.estimate_revert is None
    assert survey.priority_fee == GWEI  # anvil's suggestion
    assert survey.gas_price == w3.eth.gas_price

    send_tx(app_contract, "addComposeHash", bytes.fromhex(compose_hash[2:]))
    again = await client.survey(
        contract=app_contract.address.lower(),
        compose_hash=compose_hash.upper().replace("0X", "0x"),
        device_id=None,
        signer=owner.address,
        call_data=add_compose_hash_calldata(compose_hash),
    )
    assert again.hash_allowed is True
    assert again.mined_nonce == survey.mined_nonce + 1
    assert again.head.number == survey.head.number + 1


async def test_survey_asks_about_the_device_only_when_given_one(
    app_contract_factory: AppContractFactory,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    send_tx: Callable[..., str],
) -> None:
    contract = app_contract_factory()
    device = "ab" * 32  # without 0x, as Phala's 465 may give it
    compose_hash = new_hash()

    async def survey(app: AppContract) -> Any:
        return await client.survey(
            contract=app.address,
            compose_hash=compose_hash,
            device_id=device,
            signer=app.owner.address,
            call_data=add_compose_hash_calldata(compose_hash),
        )

    first = await survey(contract)
    send_tx(contract, "addDevice", bytes.fromhex(device))
    second = await survey(contract)
    open_contract = app_contract_factory(allow_any_device=True)
    third = await survey(open_contract)

    assert (first.device_allowed, first.any_device_allowed) == (False, False)
    assert (second.device_allowed, second.any_device_allowed) == (True, False)
    assert (third.device_allowed, third.any_device_allowed) == (False, True)
    assert anvil_proxy.requests == [(*SURVEY_METHODS, "eth_call")] * 3


async def test_survey_of_a_non_owner_keeps_the_revert_of_the_estimate(
    anvil: Anvil, app_contract: AppContract, client: JsonRpcChainClient
) -> None:
    stranger = anvil.accounts[5]
    compose_hash = new_hash()

    survey = await client.survey(
        contract=app_contract.address,
        compose_hash=compose_hash,
        device_id=None,
        signer=stranger.address,
        call_data=add_compose_hash_calldata(compose_hash),
    )

    assert survey.gas_estimate is None
    assert (
        survey.estimate_revert
        == OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR + abi_encode(["address"], [stranger.address]).hex()
    )
    assert survey.owner == app_contract.owner.address


async def test_survey_without_fee_suggestions(
    app_contract: AppContract, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.override("eth_maxPriorityFeePerGas", error={"code": -32601, "message": "Method not found"})
    anvil_proxy.override("eth_gasPrice", error={"code": -32000, "message": "no gas price"})
    compose_hash = new_hash()

    survey = await client.survey(
        contract=app_contract.address,
        compose_hash=compose_hash,
        device_id=None,
        signer=app_contract.owner.address,
        call_data=add_compose_hash_calldata(compose_hash),
    )

    assert survey.priority_fee is None
    assert survey.gas_price is None
    assert survey.gas_estimate is not None
    assert anvil_proxy.http_requests == 1


async def test_survey_estimate_reverting_without_data_gives_0x(
    app_contract: AppContract, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.override("eth_estimateGas", error={"code": -32000, "message": "execution reverted"})
    compose_hash = new_hash()

    survey = await client.survey(
        contract=app_contract.address,
        compose_hash=compose_hash,
        device_id=None,
        signer=app_contract.owner.address,
        call_data=add_compose_hash_calldata(compose_hash),
    )

    assert (survey.gas_estimate, survey.estimate_revert) == (None, "0x")


@pytest.mark.parametrize(
    ("method", "named"),
    [
        ("eth_getBalance", "the signer's balance"),
        ("eth_chainId", "eth_chainId"),
        ("eth_estimateGas", "eth_estimateGas"),  # not a revert: nothing to tell the core
    ],
)
async def test_survey_fails_later_when_a_needed_answer_is_an_error(
    app_contract: AppContract,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    observed: Observations,
    method: str,
    named: str,
) -> None:
    anvil_proxy.override(method, error={"code": -32005, "message": "limit exceeded\nfor\x00this key"})
    compose_hash = new_hash()

    with pytest.raises(RetryLater) as raised:
        await client.survey(
            contract=app_contract.address,
            compose_hash=compose_hash,
            device_id=None,
            signer=app_contract.owner.address,
            call_data=add_compose_hash_calldata(compose_hash),
        )

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert f"could not answer {named} during survey: limit exceeded for this key" in raised.value.message
    assert observed[-1][0] == "survey" and observed[-1][2] is True  # the node did answer


async def test_survey_of_an_address_without_contract_is_a_wrong_chain(
    anvil: Anvil, client: JsonRpcChainClient
) -> None:
    nowhere = Web3.to_checksum_address("0x" + secrets.token_hex(20))

    with pytest.raises(Permanent) as raised:
        await client.survey(
            contract=nowhere,
            compose_hash=new_hash(),
            device_id=None,
            signer=anvil.accounts[0].address,
            call_data="0x",
        )

    assert raised.value.reason is Reason.WRONG_CHAIN
    assert f"no DstackApp contract answers owner() at {nowhere} on chain 31337" in raised.value.message


async def test_survey_refuses_a_malformed_answer(
    app_contract: AppContract, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    def not_a_bool(params: list[Any], answer: dict[str, Any]) -> dict[str, Any]:
        if params[0]["data"].startswith(ALLOW_ANY_DEVICE_SELECTOR):
            return {**answer, "result": "0x" + "00" * 31 + "07"}
        return answer

    anvil_proxy.transform("eth_call", not_a_bool)

    with pytest.raises(RetryLater, match="malformed answer to survey: allowAnyDevice"):
        await client.survey(
            contract=app_contract.address,
            compose_hash=new_hash(),
            device_id=None,
            signer=app_contract.owner.address,
            call_data="0x",
        )


def test_view_selectors_are_dstack_apps() -> None:
    assert OWNER_SELECTOR == "0x8da5cb5b"
    assert ALLOWED_COMPOSE_HASHES_SELECTOR == "0x2f6622e5"
    assert Web3.keccak(text="allowAnyDevice()")[:4].to_0x_hex() == ALLOW_ANY_DEVICE_SELECTOR
    assert Web3.keccak(text="allowedDeviceIds(bytes32)")[:4].to_0x_hex() == ALLOWED_DEVICE_IDS_SELECTOR


async def test_arguments_that_are_not_what_they_claim_are_the_callers_error(
    client: JsonRpcChainClient,
) -> None:
    with pytest.raises(ValueError, match="not an address"):
        await client.survey(
            contract="0x12", compose_hash=new_hash(), device_id=None, signer="0x12", call_data="0x"
        )
    with pytest.raises(ValueError, match="32-byte"):
        await client.track(["0x1234"], sender=None)
    with pytest.raises(ValueError, match="at most"):
        await client.track([new_hash() for _ in range(33)], sender=None)
    with pytest.raises(ValueError, match="hex"):
        await client.send("0xabc")


# -- send and track ---------------------------------------------------------------------------------


async def test_send_then_track_a_registration(
    anvil: Anvil, app_contract: AppContract, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    owner = app_contract.owner
    compose_hash = new_hash()
    nonce = anvil.web3().eth.get_transaction_count(owner.address, "pending")
    signed = SIGNER.sign(
        owner.private_key,
        unsigned(31337, nonce, app_contract.address, data=add_compose_hash_calldata(compose_hash)),
    )

    assert await client.send(signed.raw) is SendResult.ACCEPTED
    anvil.wait_for_receipt(signed.tx_hash)  # automine mines in the background
    anvil_proxy.reset_counts()
    tracking = await client.track([signed.tx_hash], sender=owner.address)

    assert anvil_proxy.requests == [
        (
            "eth_chainId",
            "eth_getBlockByNumber",
            "eth_getTransactionCount",
            "eth_getTransactionCount",
            "eth_getTransactionReceipt",
            "eth_getTransactionByHash",
        )
    ]
    receipt = tracking.receipts[signed.tx_hash]
    view = tracking.transactions[signed.tx_hash]
    assert receipt is not None and view is not None
    assert receipt.tx_hash == signed.tx_hash
    assert receipt.succeeded
    assert receipt.to == app_contract.address
    assert receipt.block_number == tracking.head.number
    assert receipt.block_hash == tracking.head.hash
    assert receipt.logs_compose_hash(app_contract.address, compose_hash)
    assert (view.sender, view.to, view.nonce, view.block_number) == (
        owner.address,
        app_contract.address,
        nonce,
        receipt.block_number,
    )
    assert view.input == add_compose_hash_calldata(compose_hash)
    assert tracking.mined_nonce == tracking.pending_nonce == nonce + 1
    assert tracking.chain_id == 31337

    # Sent again once mined, the same bytes meet a used nonce.
    assert await client.send(signed.raw) is SendResult.NONCE_TOO_LOW


async def test_a_receipt_missed_next_to_a_used_nonce_is_asked_again(
    anvil: Anvil, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient, app_contract: AppContract
) -> None:
    # A node answering a batch's calls concurrently (anvil) or a load balancer answering them from
    # two backends can show the nonce used by a transaction whose receipt it did not have yet: read
    # alone, that looks like a replaced transaction.
    owner = app_contract.owner
    nonce = anvil.web3().eth.get_transaction_count(owner.address, "pending")
    signed = SIGNER.sign(
        owner.private_key,
        unsigned(31337, nonce, app_contract.address, data=add_compose_hash_calldata(new_hash())),
    )
    assert await client.send(signed.raw) is SendResult.ACCEPTED
    anvil.wait_for_receipt(signed.tx_hash)
    missed: list[str] = []

    def miss_once(_params: Any, answer: dict[str, Any]) -> dict[str, Any]:
        if missed:
            return answer
        missed.append(answer["result"]["transactionHash"])
        return {**answer, "result": None}

    anvil_proxy.transform("eth_getTransactionReceipt", miss_once)
    anvil_proxy.reset_counts()
    tracking = await client.track([signed.tx_hash], sender=owner.address)

    assert missed == [signed.tx_hash]
    receipt = tracking.receipts[signed.tx_hash]
    assert receipt is not None and receipt.succeeded
    assert tracking.mined_nonce == nonce + 1
    assert anvil_proxy.requests[1] == ("eth_getTransactionReceipt",)

    # A transaction the node does not know has no nonce to compare: asked again only when the sender
    # has used any nonce at all.
    anvil_proxy.transform("eth_getTransactionReceipt", None)
    anvil_proxy.reset_counts()
    await client.track([new_hash()], sender="0x" + "ab" * 20)
    assert anvil_proxy.http_requests == 1
    await client.track([new_hash()], sender=owner.address)
    assert anvil_proxy.http_requests == 3


async def test_track_of_unknown_transactions_and_without_sender(client: JsonRpcChainClient) -> None:
    unknown = new_hash()

    tracking = await client.track([unknown, unknown.upper().replace("0X", "0x")], sender=None)

    assert tracking.mined_nonce is None
    assert set(tracking.receipts) <= {unknown, unknown.upper().replace("0X", "0x")}
    assert all(value is None for value in tracking.receipts.values())
    assert all(value is None for value in tracking.transactions.values())


async def test_track_refuses_a_receipt_of_another_transaction(
    anvil: Anvil,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    send_tx: Callable[..., str],
    app_contract: AppContract,
) -> None:
    tx_hash = send_tx(app_contract, "addComposeHash", bytes.fromhex(new_hash()[2:]))
    other = new_hash()
    anvil_proxy.rewrite_receipt_hash(tx_hash, other)

    with pytest.raises(RetryLater) as raised:
        await client.track([tx_hash], sender=None)

    assert raised.value.reason is Reason.CHAIN_UNAVAILABLE
    assert f"the receipt asked for {tx_hash} is the receipt of {other}" in raised.value.message


async def test_track_refuses_a_transaction_of_another_hash(
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    send_tx: Callable[..., str],
    app_contract: AppContract,
) -> None:
    tx_hash = send_tx(app_contract, "addComposeHash", bytes.fromhex(new_hash()[2:]))
    anvil_proxy.transform(
        "eth_getTransactionByHash",
        lambda _params, answer: {**answer, "result": {**answer["result"], "hash": "0x" + "0" * 64}},
    )

    with pytest.raises(RetryLater, match=f"the transaction asked for {tx_hash} is transaction 0x0000"):
        await client.track([tx_hash], sender=None)


async def test_send_outcomes_the_core_resolves_itself(own_chain: Anvil) -> None:
    connector = Web3ChainConnector()
    client = connector.connect(Secret(own_chain.rpc_url))
    sender = own_chain.accounts[1]
    w3 = own_chain.web3()
    try:
        with own_chain.manual_mining():
            nonce = w3.eth.get_transaction_count(sender.address, "pending")
            first = signed_transfer(own_chain, sender, nonce)
            assert await client.send(first.raw) is SendResult.ACCEPTED
            assert await client.send(first.raw) is SendResult.KNOWN

            pending = await client.track([first.tx_hash], sender=sender.address)
            assert pending.receipts[first.tx_hash] is None
            view = pending.transactions[first.tx_hash]
            assert view is not None and view.block_number is None and view.nonce == nonce
            assert pending.mined_nonce == nonce

            same_fees = signed_transfer(own_chain, sender, nonce, data="0x01")
            assert await client.send(same_fees.raw) is SendResult.REPLACEMENT_UNDERPRICED
            below_base_fee = signed_transfer(own_chain, sender, nonce + 1, max_fee=1, tip=1)
            assert await client.send(below_base_fee.raw) is SendResult.UNDERPRICED
            legacy_below = SIGNER.sign(
                sender.private_key,
                unsigned(own_chain.chain_id, nonce + 1, sender.address, max_fee=1, tip=None),
            )
            assert await client.send(legacy_below.raw) is SendResult.UNDERPRICED
            own_chain.mine()
        mined = await client.track([first.tx_hash], sender=sender.address)
        assert mined.receipts[first.tx_hash] is not None
        assert await client.send(same_fees.raw) is SendResult.NONCE_TOO_LOW
    finally:
        await connector.aclose()


async def test_send_refusals_no_wait_resolves(own_chain: Anvil) -> None:
    connector = Web3ChainConnector()
    client = connector.connect(Secret(own_chain.rpc_url))
    poor_key = Secret("0x" + secrets.token_hex(32))
    poor = SIGNER.address(poor_key)
    try:
        unfunded = SIGNER.sign(poor_key, unsigned(own_chain.chain_id, 0, own_chain.accounts[0].address))
        with pytest.raises(Permanent) as raised:
            await client.send(unfunded.raw)
        assert raised.value.reason is Reason.INSUFFICIENT_FUNDS
        assert unfunded.tx_hash in raised.value.message
        assert "insufficient funds" in raised.value.message.lower()

        other_chain = SIGNER.sign(own_chain.accounts[2].private_key, unsigned(1, 0, poor))
        with pytest.raises(Permanent) as raised:
            await client.send(other_chain.raw)
        assert raised.value.reason is Reason.TRANSACTION_FAILED
        assert "invalid chain id" in raised.value.message
    finally:
        await connector.aclose()


async def test_send_refuses_a_node_that_names_another_hash(
    anvil: Anvil, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.override("eth_sendRawTransaction", result="0x" + "0" * 64)
    signed = signed_transfer(anvil, anvil.accounts[6], 10**6)

    with pytest.raises(RetryLater, match=f"answered hash 0x0+ for transaction {signed.tx_hash}"):
        await client.send(signed.raw)


async def test_send_through_a_gateway_that_puts_node_errors_behind_http_400(
    anvil: Anvil, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient
) -> None:
    anvil_proxy.fail(
        400,
        body=lambda request: (
            b'{"jsonrpc":"2.0","id":%d,"error":{"code":-32000,"message":"nonce too low"}}' % request["id"]
        ),
    )
    assert await client.send(signed_transfer(anvil, anvil.accounts[6], 0).raw) is SendResult.NONCE_TOO_LOW


# -- logs, replay, block times -------------------------------------------------------------------------


async def test_compose_hash_logs_finds_each_registration_of_the_hash(
    anvil: Anvil,
    app_contract_factory: AppContractFactory,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    send_tx: Callable[..., str],
) -> None:
    contract = app_contract_factory()
    other_contract = app_contract_factory()
    compose_hash = new_hash()
    start = anvil.block_number()
    first = send_tx(contract, "addComposeHash", bytes.fromhex(compose_hash[2:]))
    send_tx(contract, "addComposeHash", bytes.fromhex(new_hash()[2:]))  # another hash
    send_tx(other_contract, "addComposeHash", bytes.fromhex(compose_hash[2:]))  # another contract
    second = send_tx(contract, "addComposeHash", bytes.fromhex(compose_hash[2:]))
    head = anvil.block_number()

    logs = await client.compose_hash_logs(
        contract=contract.address, compose_hash=compose_hash, from_block=start, to_block=head
    )

    w3 = anvil.web3()
    assert [(log.tx_hash, log.block_number) for log in logs] == [
        (first, start + 1),
        (second, start + 4),
    ]
    assert logs[0].block_hash == w3.eth.get_block(start + 1)["hash"].to_0x_hex()
    assert anvil_proxy.requests == [("eth_getLogs",)]
    later = await client.compose_hash_logs(
        contract=contract.address, compose_hash=compose_hash, from_block=start + 2, to_block=head
    )
    assert [log.tx_hash for log in later] == [second]


async def test_compose_hash_logs_splits_wide_ranges_into_one_batch_of_chunks(
    anvil: Anvil,
    app_contract: AppContract,
    anvil_proxy: JsonRpcProxy,
    client: JsonRpcChainClient,
    send_tx: Callable[..., str],
) -> None:
    compose_hash = new_hash()
    tx_hash = send_tx(app_contract, "addComposeHash", bytes.fromhex(compose_hash[2:]))
    block = anvil.block_number()
    queries: list[dict[str, Any]] = []

    def far_log(params: list[Any], answer: dict[str, Any]) -> dict[str, Any]:
        # anvil has no block 10,000 and refuses to look there: the chunks past its head are answered
        # here, the last with a made-up log and one out of the range asked for.
        queries.append(params[0])
        if params[0]["fromBlock"] == hex(10_000):
            return {"id": answer["id"], "jsonrpc": "2.0", "result": []}
        if params[0]["fromBlock"] != hex(20_000):
            return answer
        made_up = {
            "address": app_contract.address.lower(),
            "topics": ["0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"],
            "data": compose_hash,
            "blockNumber": hex(20_001),
            "blockHash": "0x" + "ee" * 32,
            "transactionHash": "0x" + "ff" * 32,
            "removed": False,
        }
        return {
            "id": answer["id"],
            "jsonrpc": "2.0",
            "result": [made_up, {**made_up, "blockNumber": hex(30_000)}],
        }

    anvil_proxy.transform("eth_getLogs", far_log)

    logs = await client.compose_hash_logs(
        contract=app_contract.address, compose_hash=compose_hash, from_block=0, to_block=25_000
    )

    assert anvil_proxy.requests == [("eth_getLogs",) * 3]
    assert [(q["fromBlock"], q["toBlock"]) for q in queries] == [
        ("0x0", hex(9_999)),
        (hex(10_000), hex(19_999)),
        (hex(20_000), hex(25_000)),
    ]
    assert [(log.tx_hash, log.block_number) for log in logs] == [(tx_hash, block), ("0x" + "ff" * 32, 20_001)]
    with pytest.raises(ValueError, match="more than 10 x 10000"):
        await client.compose_hash_logs(
            contract=app_contract.address, compose_hash=compose_hash, from_block=0, to_block=100_000
        )
    with pytest.raises(ValueError, match="no blocks"):
        await client.compose_hash_logs(
            contract=app_contract.address, compose_hash=compose_hash, from_block=5, to_block=4
        )


async def test_replay_gives_the_revert_of_a_non_owner_and_none_for_the_owner(
    anvil: Anvil, app_contract: AppContract, client: JsonRpcChainClient
) -> None:
    data = add_compose_hash_calldata(new_hash())
    stranger = anvil.accounts[7]
    block = anvil.block_number()

    reverted = await client.replay(
        sender=stranger.address, to=app_contract.address, data=data, block_number=block
    )
    succeeded = await client.replay(
        sender=app_contract.owner.address, to=app_contract.address, data=data, block_number=block
    )

    assert reverted is not None and reverted.startswith(OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR)
    assert stranger.address.lower()[2:] in reverted
    assert succeeded is None


async def test_block_timestamp(anvil: Anvil, anvil_proxy: JsonRpcProxy, client: JsonRpcChainClient) -> None:
    anvil.mine()
    number = anvil.block_number()

    assert await client.block_timestamp(number) == anvil.web3().eth.get_block(number)["timestamp"]
    with pytest.raises(RetryLater, match=f"does not know block {number + 1000} yet"):
        await client.block_timestamp(number + 1000)
    anvil_proxy.transform(
        "eth_getBlockByNumber", lambda _p, answer: {**answer, "result": {**answer["result"], "number": "0x0"}}
    )
    with pytest.raises(RetryLater, match=f"block {number} was answered with block 0"):
        await client.block_timestamp(number)


async def test_every_call_is_observed_once_per_http_request(
    anvil: Anvil, app_contract: AppContract, client: JsonRpcChainClient, observed: Observations
) -> None:
    compose_hash = new_hash()
    await client.survey(
        contract=app_contract.address,
        compose_hash=compose_hash,
        device_id=None,
        signer=app_contract.owner.address,
        call_data="0x",
    )
    await client.track([new_hash()], sender=None)
    await client.compose_hash_logs(
        contract=app_contract.address, compose_hash=compose_hash, from_block=0, to_block=1
    )
    await client.replay(sender=app_contract.owner.address, to=app_contract.address, data="0x", block_number=1)
    await client.block_timestamp(1)
    await client.send(signed_transfer(anvil, anvil.accounts[6], 0, max_fee=1, tip=1).raw)  # refused

    assert [(op, ok) for op, _, ok in observed] == [
        ("survey", True),
        ("track", True),
        ("compose_hash_logs", True),
        ("replay", True),
        ("block_timestamp", True),
        ("send", True),
    ]
    assert all(0 <= seconds < 5 for _, seconds, _ in observed)


async def test_track_and_logs_follow_the_canonical_chain_through_reorgs_and_drops(own_chain: Anvil) -> None:
    connector = Web3ChainConnector()
    client = connector.connect(Secret(own_chain.rpc_url))
    owner = own_chain.accounts[3]
    contract = AppContract(
        address=deploy_app_contract(own_chain.rpc_url, owner.private_key), owner=owner, abi=[]
    )
    compose_hash = new_hash()
    nonce = own_chain.web3().eth.get_transaction_count(owner.address, "pending")
    signed = SIGNER.sign(
        owner.private_key,
        unsigned(own_chain.chain_id, nonce, contract.address, data=add_compose_hash_calldata(compose_hash)),
    )

    async def logs() -> list[str]:
        found = await client.compose_hash_logs(
            contract=contract.address,
            compose_hash=compose_hash,
            from_block=0,
            to_block=own_chain.block_number(),
        )
        return [log.block_hash for log in found]

    try:
        assert await client.send(signed.raw) is SendResult.ACCEPTED
        own_chain.wait_for_receipt(signed.tx_hash)
        own_chain.mine(2)
        first = (await client.track([signed.tx_hash], sender=owner.address)).receipts[signed.tx_hash]
        assert first is not None
        assert await logs() == [first.block_hash]

        own_chain.reorg(3, [(signed.raw, 1)])  # mined again, one block later
        moved = await client.track([signed.tx_hash], sender=owner.address)
        receipt = moved.receipts[signed.tx_hash]
        assert receipt is not None
        assert receipt.block_number == first.block_number + 1
        assert receipt.block_hash != first.block_hash
        assert await logs() == [receipt.block_hash]

        own_chain.reorg(3)  # and gone
        gone = await client.track([signed.tx_hash], sender=owner.address)
        assert gone.receipts[signed.tx_hash] is None
        assert gone.transactions[signed.tx_hash] is None
        assert gone.mined_nonce == nonce
        assert await logs() == []

        with own_chain.manual_mining():
            assert await client.send(signed.raw) is SendResult.ACCEPTED  # the same bytes, still valid
            assert (await client.track([signed.tx_hash], sender=None)).transactions[
                signed.tx_hash
            ] is not None
            assert own_chain.drop_transaction(signed.tx_hash)
            dropped = await client.track([signed.tx_hash], sender=owner.address)
            assert dropped.transactions[signed.tx_hash] is None and dropped.receipts[signed.tx_hash] is None
    finally:
        await connector.aclose()
