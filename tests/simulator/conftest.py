"""Helpers of the simulator tests: an API client for a CVM and on-chain transactions with web3."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from eth_account import Account
from simtest_helpers import SendTx, api_client
from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer


@pytest.fixture
def api(sim: SimulatorServer) -> Iterator[Callable[[SimTarget], httpx.Client]]:
    """``api(target)``: an httpx client on the simulator with the target's workspace key."""
    clients: list[httpx.Client] = []

    def make(target: SimTarget) -> httpx.Client:
        client = api_client(sim.base_url, target.api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


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
        tx = getattr(bound.functions, function)(*args).build_transaction(params)  # type: ignore[arg-type]
        signed = Account.sign_transaction(tx, account.private_key.reveal())
        tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
        w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)
        return "0x" + bytes(tx_hash).hex()

    return send
