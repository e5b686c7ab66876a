"""The local chain plays a real network: block times, dropped transactions, reorgs, base-fee spikes.

Each helper of ``Anvil`` is shown to do what it says on a chain of its own (anvil starts in well
under a second), so the session chain keeps automining for everyone else.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account.datastructures import SignedTransaction
from web3 import Web3

from cvm_prelaunch_localenv import cli
from cvm_prelaunch_localenv.chain import CHAIN_PROFILES, Anvil, AnvilRpcError, DevAccount, chain_profile
from cvm_prelaunch_localenv.env import LocalEnv

GWEI = 10**9


@pytest.fixture
def chain() -> Iterator[Anvil]:
    with Anvil() as own:
        yield own


def transfer(chain: Anvil, sender: DevAccount, nonce: int, *, max_fee: int = 100 * GWEI) -> SignedTransaction:
    signed: SignedTransaction = sender.local_account().sign_transaction(
        {
            "type": 2,
            "chainId": chain.chain_id,
            "nonce": nonce,
            "to": chain.accounts[9].address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": max_fee,
            "maxPriorityFeePerGas": min(GWEI, max_fee),
        }
    )
    return signed


def send(chain: Anvil, signed: SignedTransaction) -> str:
    tx_hash: str = chain.rpc("eth_sendRawTransaction", "0x" + bytes(signed.raw_transaction).hex())
    return tx_hash


def receipt(chain: Anvil, tx_hash: str) -> dict[str, Any] | None:
    found: dict[str, Any] | None = chain.rpc("eth_getTransactionReceipt", tx_hash)
    return found


def known(chain: Anvil, tx_hash: str) -> bool:
    return chain.rpc("eth_getTransactionByHash", tx_hash) is not None


# -- mining modes ---------------------------------------------------------------------------------


def test_manual_mining_holds_transactions_until_a_block_is_mined(chain: Anvil) -> None:
    sender = chain.accounts[0]
    with chain.manual_mining():
        tx_hash = send(chain, transfer(chain, sender, 0))
        assert chain.txpool_status() == (1, 0)
        assert receipt(chain, tx_hash) is None
        assert known(chain, tx_hash)
        chain.mine()
        assert receipt(chain, tx_hash) is not None
    assert chain.rpc("anvil_getAutomine") is True
    automined = send(chain, transfer(chain, sender, 1))
    assert chain.wait_for_receipt(automined, timeout=5)["status"] == "0x1"  # mined without mine()


def test_interval_mining_makes_empty_blocks_and_automine_stops_it(chain: Anvil) -> None:
    chain.set_interval_mining(1)
    assert chain.block_time == 1.0
    assert chain.rpc("anvil_getAutomine") is False
    start = chain.block_number()
    deadline = time.monotonic() + 5
    while chain.block_number() < start + 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert chain.block_number() >= start + 2

    chain.set_automine(True)
    assert chain.block_time is None
    settled = chain.block_number()
    time.sleep(1.3)
    assert chain.block_number() == settled

    chain.set_automine(False)
    tx_hash = send(chain, transfer(chain, chain.accounts[0], 0))
    time.sleep(0.3)
    assert receipt(chain, tx_hash) is None  # neither automine nor interval mining
    chain.mine()
    assert receipt(chain, tx_hash) is not None
    with pytest.raises(ValueError, match="0 or more"):
        chain.set_interval_mining(-1)


# -- a node forgets -------------------------------------------------------------------------------


def test_a_dropped_transaction_is_unknown_to_the_node_and_never_mined(chain: Anvil) -> None:
    with chain.manual_mining():
        kept = send(chain, transfer(chain, chain.accounts[0], 0))
        dropped = send(chain, transfer(chain, chain.accounts[1], 0))

        assert chain.drop_transaction(dropped) is True
        assert not known(chain, dropped)
        assert known(chain, kept)
        assert chain.drop_transaction(dropped) is False  # nothing left to drop
        chain.mine()

    assert receipt(chain, dropped) is None
    assert receipt(chain, kept) is not None
    assert chain.web3().eth.get_transaction_count(chain.accounts[1].address) == 0


def test_drop_all_empties_the_pool(chain: Anvil) -> None:
    with chain.manual_mining():
        hashes = [send(chain, transfer(chain, chain.accounts[i], 0)) for i in range(3)]
        assert chain.txpool_status() == (3, 0)
        chain.drop_all_transactions()
        assert chain.txpool_status() == (0, 0)
        chain.mine()
    assert all(receipt(chain, tx_hash) is None and not known(chain, tx_hash) for tx_hash in hashes)


# -- reorgs ---------------------------------------------------------------------------------------


def test_a_reorg_removes_a_mined_receipt(chain: Anvil) -> None:
    tx_hash = send(chain, transfer(chain, chain.accounts[0], 0))
    chain.wait_for_receipt(tx_hash)
    chain.mine(2)
    head = chain.block_number()
    old_head_hash = chain.web3().eth.get_block(head)["hash"]

    chain.reorg(3)

    assert chain.block_number() == head  # same height, other blocks
    assert chain.web3().eth.get_block(head)["hash"] != old_head_hash
    assert receipt(chain, tx_hash) is None
    assert not known(chain, tx_hash)  # anvil does not return it to the pool
    assert chain.web3().eth.get_transaction_count(chain.accounts[0].address) == 0


def test_a_reorg_can_move_a_receipt_to_another_block(chain: Anvil) -> None:
    signed = transfer(chain, chain.accounts[0], 0)
    tx_hash = send(chain, signed)
    before = chain.wait_for_receipt(tx_hash)
    chain.mine(2)

    chain.reorg(3, [("0x" + bytes(signed.raw_transaction).hex(), 2)])

    after = receipt(chain, tx_hash)
    assert after is not None
    assert int(after["blockNumber"], 16) == int(before["blockNumber"], 16) + 2
    assert after["blockHash"] != before["blockHash"]
    with pytest.raises(ValueError, match="not among the 3 new blocks"):
        chain.reorg(3, [("0x00", 3)])
    with pytest.raises(ValueError, match="depth"):
        chain.reorg(chain.block_number() + 1)


def test_a_reorg_can_put_a_dev_accounts_request_in(chain: Anvil) -> None:
    chain.mine(1)
    chain.reorg(
        1, [({"from": chain.accounts[2].address, "to": chain.accounts[3].address, "value": "0x1"}, 0)]
    )
    (tx_hash,) = chain.web3().eth.get_block("latest")["transactions"]
    assert receipt(chain, tx_hash.to_0x_hex()) is not None


def test_rollback_removes_the_last_blocks(chain: Anvil) -> None:
    tx_hash = send(chain, transfer(chain, chain.accounts[0], 0))
    chain.mine(2)
    head = chain.block_number()

    chain.rollback(3)

    assert chain.block_number() == head - 3
    assert receipt(chain, tx_hash) is None
    with pytest.raises(ValueError, match="depth"):
        chain.rollback(0)


# -- fees -----------------------------------------------------------------------------------------


def test_a_base_fee_spike_leaves_a_cheap_transaction_unmined(chain: Anvil) -> None:
    sender = chain.accounts[0]
    with chain.manual_mining():
        cheap = send(chain, transfer(chain, sender, 0, max_fee=3 * GWEI))
        chain.set_next_base_fee(50 * GWEI)
        chain.mine()
        block = chain.web3().eth.get_block("latest")

        assert block["baseFeePerGas"] == 50 * GWEI == chain.base_fee()
        assert block["transactions"] == []
        assert receipt(chain, cheap) is None
        # A new transaction below the next base fee is refused outright.
        with pytest.raises(AnvilRpcError, match="max fee per gas less than block base fee"):
            send(chain, transfer(chain, sender, 0, max_fee=3 * GWEI))
        paying = send(chain, transfer(chain, sender, 0, max_fee=200 * GWEI))
        chain.mine()
    assert receipt(chain, paying) is not None
    with pytest.raises(ValueError, match="negative"):
        chain.set_next_base_fee(-1)


# -- profiles -------------------------------------------------------------------------------------


def test_chain_profiles_are_the_networks_block_times_and_chain_ids() -> None:
    assert {name: (p.chain_id, p.block_time) for name, p in CHAIN_PROFILES.items()} == {
        "instant": (31337, None),
        "base": (8453, 2.0),
        "ethereum": (1, 12.0),
    }
    with pytest.raises(ValueError, match="no chain profile 'goerli'; known: instant, base, ethereum"):
        chain_profile("goerli")


@pytest.mark.parametrize("name", ["base", "ethereum"])
def test_a_profile_runs_anvil_at_the_networks_pace(name: str) -> None:
    profile = chain_profile(name)
    with Anvil(chain_id=profile.chain_id, block_time=profile.block_time) as chain:
        assert chain.web3().eth.chain_id == profile.chain_id
        assert chain.rpc("anvil_getIntervalMining") == profile.block_time
        assert chain.rpc("anvil_getAutomine") is False


def test_local_env_takes_the_profile_and_its_overrides(tmp_path: Path) -> None:
    base = LocalEnv(tmp_path / "a", chain_profile="base")
    assert (base.anvil.chain_id, base.anvil.block_time) == (8453, 2.0)
    instant = LocalEnv(tmp_path / "b")
    assert (instant.anvil.chain_id, instant.anvil.block_time) == (31337, None)
    custom = LocalEnv(tmp_path / "c", chain_profile="ethereum", chain_id=5, block_time=0)
    assert (custom.anvil.chain_id, custom.anvil.block_time) == (5, None)
    assert LocalEnv(tmp_path / "d", chain_profile="ethereum", block_time=3).anvil.block_time == 3.0


def test_cli_refuses_an_unknown_profile_and_a_negative_block_time(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["up", "--chain-profile", "goerli"], ["up", "--block-time", "-1"]):
        with pytest.raises(SystemExit) as raised:
            cli.main(argv)
        assert raised.value.code == 2
    assert "--block-time must be 0" in capsys.readouterr().err


def test_base_profile_mines_a_block_every_two_seconds() -> None:
    profile = chain_profile("base")
    with Anvil(chain_id=profile.chain_id, block_time=profile.block_time) as chain:
        w3 = Web3(Web3.HTTPProvider(chain.rpc_url))
        first = w3.eth.get_block("latest")
        deadline = time.monotonic() + 6
        while w3.eth.block_number < first["number"] + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        second = w3.eth.get_block("latest")
    assert second["number"] >= first["number"] + 2
    seconds_per_block = (second["timestamp"] - first["timestamp"]) / (second["number"] - first["number"])
    assert seconds_per_block == pytest.approx(2.0, abs=0.5)
