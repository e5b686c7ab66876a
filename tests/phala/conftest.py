"""Fixtures of the Phala Cloud client tests: a MockTransport client, and a real client on the
simulator (``sim``, reset per test) with a way to send transactions to the session's anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from eth_account import Account
from phala_test_support import MockCloud, Observed, SendTx
from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSettings


@pytest.fixture
async def cloud() -> AsyncIterator[MockCloud]:
    """A client on a MockTransport; set ``cloud.handler`` or call ``cloud.answer(...)``."""
    mock = MockCloud()
    yield mock
    await mock.client.aclose()


@pytest.fixture
def observed() -> Observed:
    """What the ``sim_client`` observer saw: (endpoint template, status, seconds) per request."""
    return []


@pytest.fixture
async def sim_client(sim: SimulatorServer, observed: Observed) -> AsyncIterator[PhalaCloudClient]:
    """The real client over real HTTP on the simulator (reset for this test)."""
    settings = PhalaCloudSettings(
        base_url=sim.base_url, connect_timeout=2.0, read_timeout=10.0, max_concurrency=4
    )
    client = PhalaCloudClient(settings, observer=lambda *event: observed.append(event))
    yield client
    await client.aclose()


@pytest.fixture
def send_tx(anvil: Anvil) -> SendTx:
    """``send_tx(contract, "addComposeHash", b32, sender=None, gas=None)``: sign, send, wait for the
    receipt; returns the transaction hash (0x hex). With ``gas`` given, a reverting call is mined."""
    w3 = anvil.web3()

    def send(
        contract: AppContract,
        function: str,
        *args: Any,
        sender: DevAccount | None = None,
        gas: int | None = None,
    ) -> str:
        account = sender or contract.owner
        bound = w3.eth.contract(address=contract.address, abi=contract.abi)
        params: dict[str, Any] = {
            "from": account.address,
            "nonce": w3.eth.get_transaction_count(Web3.to_checksum_address(account.address), "pending"),
            "chainId": anvil.chain_id,
        }
        if gas is not None:
            params["gas"] = gas
        tx = getattr(bound.functions, function)(*args).build_transaction(params)
        signed = Account.sign_transaction(tx, account.private_key.reveal())
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        return "0x" + bytes(tx_hash).hex()

    return send
