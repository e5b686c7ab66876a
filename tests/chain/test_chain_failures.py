"""The failure vocabulary of the chain adapter, and the hand-written ABI against the real contract."""

from __future__ import annotations

import aiohttp
import pytest
import requests
from multidict import CIMultiDict, CIMultiDictProxy
from web3 import Web3
from web3.exceptions import (
    BadFunctionCallOutput,
    ContractCustomError,
    ContractLogicError,
    TimeExhausted,
    Web3RPCError,
)
from yarl import URL

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import AppContract, app_contract_abi
from cvm_prelaunch_operator.chain import abi
from cvm_prelaunch_operator.chain.failures import Rejection, classify_rejection, translate
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Redactor, redact_url

KEYED_URL = "https://eth.example.org/v2/Sup3rS3cretKeyValue0123456789"


def translated(exc: Exception) -> SyncError:
    return translate(
        exc,
        action="testing",
        endpoint=redact_url(KEYED_URL),
        redact=Redactor([KEYED_URL]),
        contract="0x" + "ab" * 20,
        chain_id=8453,
    )


def rpc_error(message: str, code: int = -32000) -> Web3RPCError:
    return Web3RPCError(
        str({"code": code, "message": message}),
        rpc_response={"jsonrpc": "2.0", "id": 1, "error": {"code": code, "message": message}},
    )


def response_error(status: int) -> aiohttp.ClientResponseError:
    info = aiohttp.RequestInfo(URL(KEYED_URL), "POST", CIMultiDictProxy(CIMultiDict()), URL(KEYED_URL))
    return aiohttp.ClientResponseError(info, (), status=status, message="nope")


@pytest.mark.parametrize(
    ("exc", "kind", "reason"),
    [
        (
            aiohttp.ClientConnectionError(f"Cannot connect to {KEYED_URL}"),
            RetryLater,
            Reason.CHAIN_UNAVAILABLE,
        ),
        (TimeoutError(), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (requests.ConnectionError(f"HTTPSConnectionPool: {KEYED_URL}"), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (TimeExhausted("receipt not found"), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (response_error(503), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (response_error(429), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (response_error(401), Permanent, Reason.CHAIN_UNAVAILABLE),
        (
            ContractCustomError(
                "0x118cdaa7" + "00" * 12 + "ab" * 20, data="0x118cdaa7" + "00" * 12 + "ab" * 20
            ),
            Permanent,
            Reason.NOT_CONTRACT_OWNER,
        ),
        (
            ContractLogicError("execution reverted: paused", data="0x08c379a0"),
            Permanent,
            Reason.TRANSACTION_FAILED,
        ),
        (BadFunctionCallOutput("Could not decode"), Permanent, Reason.WRONG_CHAIN),
        (
            rpc_error("insufficient funds for gas * price + value: have 0 want 5"),
            Permanent,
            Reason.INSUFFICIENT_FUNDS,
        ),
        (rpc_error("header not found"), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (rpc_error(f"upstream {KEYED_URL} failed"), RetryLater, Reason.CHAIN_UNAVAILABLE),
        (RuntimeError(f"surprise at {KEYED_URL}"), RetryLater, Reason.CHAIN_UNAVAILABLE),
    ],
)
def test_translation(exc: Exception, kind: type[SyncError], reason: Reason) -> None:
    error = translated(exc)
    assert type(error) is kind
    assert error.reason is reason
    assert "Sup3rS3cretKeyValue" not in str(error)
    assert error.__cause__ is None and error.__context__ is None


def test_http_errors_name_the_status_and_the_redacted_endpoint() -> None:
    text = str(translated(response_error(502)))
    assert "HTTP 502" in text
    assert "https://eth.example.org/***" in text


@pytest.mark.parametrize(
    ("message", "rejection"),
    [
        ("already known", Rejection.ALREADY_KNOWN),  # geth
        ("transaction already imported", Rejection.ALREADY_KNOWN),  # anvil
        ("Known transaction (0x12ab)", Rejection.ALREADY_KNOWN),  # besu / parity
        ("nonce too low: next nonce 7, tx nonce 6", Rejection.NONCE_TOO_LOW),
        ("OldNonce", Rejection.NONCE_TOO_LOW),  # nethermind
        ("replacement transaction underpriced", Rejection.REPLACEMENT_UNDERPRICED),
        ("Insufficient funds for gas * price + value", Rejection.INSUFFICIENT_FUNDS),
        ("max fee per gas less than block base fee", None),
    ],
)
def test_classify_rejection(message: str, rejection: Rejection | None) -> None:
    assert classify_rejection(rpc_error(message)) is rejection


def test_selectors_and_topic_match_the_abi() -> None:
    def selector(signature: str) -> str:
        return Web3.keccak(text=signature)[:4].to_0x_hex()

    assert selector("addComposeHash(bytes32)") == abi.ADD_COMPOSE_HASH_SELECTOR
    assert selector("allowedComposeHashes(bytes32)") == abi.ALLOWED_COMPOSE_HASHES_SELECTOR
    assert selector("owner()") == abi.OWNER_SELECTOR
    assert selector("OwnableUnauthorizedAccount(address)") == abi.OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR
    assert Web3.keccak(text="ComposeHashAdded(bytes32)").to_0x_hex() == abi.COMPOSE_HASH_ADDED_TOPIC
    assert Web3.keccak(text="DeviceAdded(bytes32)").to_0x_hex() == abi.DEVICE_ADDED_TOPIC


def test_the_hand_written_abi_is_a_subset_of_the_contracts() -> None:
    def signatures(entries: list[dict[str, object]]) -> set[tuple[object, ...]]:
        return {
            (
                entry["type"],
                entry["name"],
                tuple((i["type"], i.get("indexed")) for i in entry["inputs"]),  # type: ignore[attr-defined]
                tuple(o["type"] for o in entry.get("outputs", [])),  # type: ignore[attr-defined]
            )
            for entry in entries
            if "name" in entry
        }

    assert signatures(abi.DSTACK_APP_ABI) <= signatures(app_contract_abi())


def test_a_non_owner_estimate_reverts_with_the_owner_error(anvil: Anvil, app_contract: AppContract) -> None:
    # The exception web3 really raises, translated.
    contract = app_contract.contract(anvil.web3())
    with pytest.raises(ContractCustomError) as info:
        contract.functions.addComposeHash(b"\x01" * 32).estimate_gas({"from": anvil.accounts[5].address})
    error = translated(info.value)
    assert error.reason is Reason.NOT_CONTRACT_OWNER
