"""Helpers of the end-to-end tests that play real chains: status predicates, contract storage tricks,
and the chain's own view of registrations."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget

COMPOSE_HASH_ADDED = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
# TestDstackApp packs allowAnyDevice (1 byte) and _owner (20 bytes) into storage slot 2.
OWNER_SLOT = 2


def flight(body: Any) -> dict[str, Any]:
    return dict((body.get("status") or {}).get("inFlight") or {})


def step_is(step: str, *, with_transactions: bool | None = None) -> Callable[[Any], bool]:
    def check(body: Any) -> bool:
        state = flight(body)
        if state.get("step") != step:
            return False
        return with_transactions is None or bool(state.get("transactions")) == with_transactions

    return check


def broadcast_on(anvil: Anvil) -> Callable[[Any], bool]:
    """Registering with its newest transaction known to the node. The state is written *before* the
    broadcast, so a test that acts on the chain (drops, mines, reorgs) must wait for the node too."""
    w3 = anvil.web3()
    registering = step_is("Registering", with_transactions=True)

    def check(body: Any) -> bool:
        if not registering(body):
            return False
        tx_hash = flight(body)["transactions"][-1]["txHash"]
        return w3.provider.make_request("eth_getTransactionByHash", [tx_hash]).get("result") is not None  # type: ignore[arg-type]

    return check


def registrations_of(anvil: Anvil, contract: str, compose_hash: str) -> list[dict[str, Any]]:
    """``ComposeHashAdded(compose_hash)`` logs of ``contract`` on the canonical chain."""
    logs = anvil.web3().eth.get_logs(
        {
            "address": Web3.to_checksum_address(contract),
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [COMPOSE_HASH_ADDED],
        }
    )
    wanted = compose_hash.lower().removeprefix("0x")
    return [dict(log) for log in logs if bytes(log["data"]).hex() == wanted]


def set_owner(anvil: Anvil, contract: str, owner: str) -> None:
    """Move the contract's ownership at once, whatever the owner's pending transactions (storage write)."""
    current = int(anvil.rpc("eth_getStorageAt", contract, hex(OWNER_SLOT), "latest"), 16)
    packed = (int(owner, 16) << 8) | (current & 0xFF)
    anvil.rpc(
        "anvil_setStorageAt", contract, "0x" + format(OWNER_SLOT, "064x"), "0x" + format(packed, "064x")
    )


def owner_of(target: SimTarget) -> str:
    assert target.contract is not None
    return str(target.contract.owner.address)


@contextmanager
def mining(anvil: Anvil, *, block_time: int | None = None) -> Iterator[Anvil]:
    """Manual mining (``block_time=None``) or interval mining for the block; automine again after, with
    the pool emptied so no test leaves a pending transaction behind."""
    anvil.set_automine(False)
    anvil.set_interval_mining(block_time or 0)
    try:
        yield anvil
    finally:
        anvil.set_interval_mining(0)
        anvil.drop_all_transactions()
        anvil.set_automine(True)


def events_of(cp: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    out = cp.kubectl(
        "get", "events", "-n", namespace, "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    return list(json.loads(out.stdout)["items"])
