"""The local chain on a real anvil: runner, TestDstackApp, Multicall3Lite, compile cache, teardown."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path
from typing import Any, cast

import pytest
from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from web3 import Web3
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractCustomError
from web3.types import TxParams, TxReceipt

from cvm_prelaunch_localenv import contracts
from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.contracts import (
    MULTICALL3_ADDRESS,
    AppContract,
    DeploymentError,
    compiled_contract,
    deploy_app_contract,
    install_multicall3,
)
from cvm_prelaunch_localenv.fixtures.chain import AppContractFactory
from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_operator.domain.secrets import looks_like_private_key

COMPOSE_HASH_ADDED_TOPIC = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"
OWNABLE_UNAUTHORIZED_SELECTOR = "0x118cdaa7"
COMPOSE_HASH = bytes.fromhex("a1" * 32)
DEVICE_ID = bytes.fromhex("d3" * 32)


def send(w3: Web3, sender: DevAccount, call: ContractFunction, *, gas: int | None = None) -> TxReceipt:
    """Sign locally (as the operator does) and wait for the receipt."""
    signer = sender.local_account()
    fields: TxParams = {
        "from": signer.address,
        "nonce": w3.eth.get_transaction_count(signer.address, "pending"),
        "chainId": w3.eth.chain_id,
    }
    if gas is not None:
        fields["gas"] = gas  # skips estimation, so a reverting call is mined anyway
    signed = signer.sign_transaction(cast("dict[str, Any]", call.build_transaction(fields)))
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30, poll_latency=0.05)


def selector(signature: str) -> str:
    return Web3.keccak(text=signature)[:4].to_0x_hex()


def assert_unauthorized(error: ContractCustomError, caller: ChecksumAddress) -> None:
    data = str(error.data)
    assert data.startswith(OWNABLE_UNAUTHORIZED_SELECTOR)
    (account,) = abi_decode(["address"], bytes.fromhex(data[10:]))
    assert Web3.to_checksum_address(account) == caller


# -- the contract's interface ------------------------------------------------------------------------


def test_abi_matches_dstack_selectors_and_topic() -> None:
    abi = compiled_contract("TestDstackApp").abi
    functions = {
        f"{item['name']}({','.join(i['type'] for i in item['inputs'])})"
        for item in abi
        if item["type"] == "function"
    }
    assert {
        "owner()",
        "addComposeHash(bytes32)",
        "removeComposeHash(bytes32)",
        "allowedComposeHashes(bytes32)",
        "addDevice(bytes32)",
        "removeDevice(bytes32)",
        "allowedDeviceIds(bytes32)",
        "allowAnyDevice()",
        "setAllowAnyDevice(bool)",
        "transferOwnership(address)",
    } <= functions
    assert selector("addComposeHash(bytes32)") == "0xdfc77223"
    assert selector("allowedComposeHashes(bytes32)") == "0x2f6622e5"
    assert selector("owner()") == "0x8da5cb5b"
    assert selector("OwnableUnauthorizedAccount(address)") == OWNABLE_UNAUTHORIZED_SELECTOR
    assert Web3.keccak(text="ComposeHashAdded(bytes32)").to_0x_hex() == COMPOSE_HASH_ADDED_TOPIC
    (event,) = (item for item in abi if item.get("name") == "ComposeHashAdded")
    assert event["inputs"] == [
        {"indexed": False, "internalType": "bytes32", "name": "composeHash", "type": "bytes32"}
    ]
    (error,) = (item for item in abi if item.get("name") == "OwnableUnauthorizedAccount")
    assert [i["type"] for i in error["inputs"]] == ["address"]


# -- compose hashes ----------------------------------------------------------------------------------


def test_owner_adds_compose_hash_and_the_log_carries_it_in_data(
    anvil: Anvil, app_contract: AppContract
) -> None:
    w3 = anvil.web3()
    app = app_contract.contract(w3)
    assert app.functions.owner().call() == app_contract.owner.address
    assert app.functions.allowedComposeHashes(COMPOSE_HASH).call() is False
    block_before = w3.eth.block_number

    receipt = send(w3, app_contract.owner, app.functions.addComposeHash(COMPOSE_HASH))

    assert receipt["status"] == 1
    assert receipt["blockNumber"] == block_before + 1
    (log,) = receipt["logs"]
    assert log["address"] == app_contract.address
    assert [topic.to_0x_hex() for topic in log["topics"]] == [COMPOSE_HASH_ADDED_TOPIC]
    assert bytes(log["data"]) == COMPOSE_HASH
    (decoded,) = app.events.ComposeHashAdded().process_receipt(receipt)
    assert decoded["args"]["composeHash"] == COMPOSE_HASH
    assert app.functions.allowedComposeHashes(COMPOSE_HASH).call() is True

    # Adding again still mines and logs: the official clients rely on that for a transaction hash.
    again = send(w3, app_contract.owner, app.functions.addComposeHash(COMPOSE_HASH))
    assert again["status"] == 1
    assert len(again["logs"]) == 1


def test_owner_removes_compose_hash(anvil: Anvil, app_contract: AppContract) -> None:
    w3 = anvil.web3()
    app = app_contract.contract(w3)
    send(w3, app_contract.owner, app.functions.addComposeHash(COMPOSE_HASH))

    receipt = send(w3, app_contract.owner, app.functions.removeComposeHash(COMPOSE_HASH))

    (decoded,) = app.events.ComposeHashRemoved().process_receipt(receipt)
    assert decoded["args"]["composeHash"] == COMPOSE_HASH
    assert app.functions.allowedComposeHashes(COMPOSE_HASH).call() is False


def test_non_owner_is_refused_with_ownable_unauthorized_account(
    anvil: Anvil, app_contract: AppContract
) -> None:
    w3 = anvil.web3()
    app = app_contract.contract(w3)
    stranger = anvil.accounts[1]

    # Estimation is where web3 surfaces the revert: the error data encodes the caller.
    with pytest.raises(ContractCustomError) as raised:
        send(w3, stranger, app.functions.addComposeHash(COMPOSE_HASH))
    assert_unauthorized(raised.value, stranger.address)

    # Sent without estimation, the transaction is mined and reverts; nothing changes.
    receipt = send(w3, stranger, app.functions.addComposeHash(COMPOSE_HASH), gas=100_000)
    assert receipt["status"] == 0
    assert receipt["logs"] == []
    assert app.functions.allowedComposeHashes(COMPOSE_HASH).call() is False

    for call in (
        app.functions.removeComposeHash(COMPOSE_HASH),
        app.functions.addDevice(DEVICE_ID),
        app.functions.removeDevice(DEVICE_ID),
        app.functions.setAllowAnyDevice(True),
        app.functions.transferOwnership(stranger.address),
    ):
        with pytest.raises(ContractCustomError) as raised:
            call.call({"from": stranger.address})
        assert_unauthorized(raised.value, stranger.address)


# -- devices and ownership ---------------------------------------------------------------------------


def test_devices_and_allow_any_device(anvil: Anvil, app_contract: AppContract) -> None:
    w3 = anvil.web3()
    app = app_contract.contract(w3)
    owner = app_contract.owner
    assert app.functions.allowAnyDevice().call() is False
    assert app.functions.allowedDeviceIds(DEVICE_ID).call() is False

    added = send(w3, owner, app.functions.addDevice(DEVICE_ID))
    (event,) = app.events.DeviceAdded().process_receipt(added)
    assert event["args"]["deviceId"] == DEVICE_ID
    assert app.functions.allowedDeviceIds(DEVICE_ID).call() is True

    removed = send(w3, owner, app.functions.removeDevice(DEVICE_ID))
    (event,) = app.events.DeviceRemoved().process_receipt(removed)
    assert event["args"]["deviceId"] == DEVICE_ID
    assert app.functions.allowedDeviceIds(DEVICE_ID).call() is False

    send(w3, owner, app.functions.setAllowAnyDevice(True))
    assert app.functions.allowAnyDevice().call() is True
    send(w3, owner, app.functions.setAllowAnyDevice(False))
    assert app.functions.allowAnyDevice().call() is False


def test_factory_sets_owner_and_allow_any_device(
    anvil: Anvil, app_contract_factory: AppContractFactory
) -> None:
    w3 = anvil.web3()
    owner = anvil.accounts[2]
    owner_nonce = w3.eth.get_transaction_count(owner.address)

    deployed = app_contract_factory(owner=owner, allow_any_device=True)

    app = deployed.contract(w3)
    assert deployed.owner == owner
    assert app.functions.owner().call() == owner.address
    assert app.functions.allowAnyDevice().call() is True
    # Another account paid for the deployment.
    assert w3.eth.get_transaction_count(owner.address) == owner_nonce

    successor = anvil.accounts[3]
    send(w3, owner, app.functions.transferOwnership(successor.address))
    assert app.functions.owner().call() == successor.address
    with pytest.raises(ContractCustomError) as raised:
        app.functions.addComposeHash(COMPOSE_HASH).call({"from": owner.address})
    assert_unauthorized(raised.value, owner.address)


def test_deploy_without_separate_deployer_uses_the_owner(anvil: Anvil) -> None:
    owner = anvil.accounts[4]
    nonce = anvil.web3().eth.get_transaction_count(owner.address)

    address = deploy_app_contract(anvil.rpc_url, owner.private_key)

    assert Web3.is_checksum_address(address)
    w3 = anvil.web3()
    assert w3.eth.get_transaction_count(owner.address) == nonce + 1
    app = w3.eth.contract(address=address, abi=contracts.app_contract_abi())
    assert app.functions.owner().call() == owner.address


def test_deploy_failure_does_not_print_the_rpc_key(anvil: Anvil) -> None:
    provider_key = "k3yInThePath0123456789abcdef"
    url = f"http://127.0.0.1:{free_port()}/v2/{provider_key}"

    with pytest.raises(DeploymentError) as raised:
        deploy_app_contract(url, anvil.accounts[0].private_key)

    text = str(raised.value)
    assert "ConnectionError" in text
    assert provider_key not in text
    assert not looks_like_private_key(text)
    assert raised.value.__suppress_context__


# -- Multicall3 --------------------------------------------------------------------------------------


def test_multicall3_aggregate3_batches_the_view_calls(anvil: Anvil, app_contract: AppContract) -> None:
    w3 = anvil.web3()
    app = app_contract.contract(w3)
    send(w3, app_contract.owner, app.functions.addComposeHash(COMPOSE_HASH))
    multicall = w3.eth.contract(address=MULTICALL3_ADDRESS, abi=compiled_contract("Multicall3Lite").abi)
    assert w3.eth.get_code(MULTICALL3_ADDRESS) != b""

    def encoded(call: ContractFunction) -> bytes:
        return bytes.fromhex(call._encode_transaction_data()[2:])

    calls = [
        (app_contract.address, True, encoded(app.functions.allowAnyDevice())),
        (app_contract.address, True, encoded(app.functions.allowedDeviceIds(DEVICE_ID))),
        (app_contract.address, True, encoded(app.functions.allowedComposeHashes(COMPOSE_HASH))),
        (app_contract.address, True, encoded(app.functions.owner())),
        # Multicall is not the owner: this one fails, and allowFailure keeps the batch alive.
        (app_contract.address, True, encoded(app.functions.addComposeHash(COMPOSE_HASH))),
    ]
    results = multicall.functions.aggregate3(calls).call()

    assert [success for success, _ in results] == [True, True, True, True, False]
    assert abi_decode(["bool"], results[0][1]) == (False,)
    assert abi_decode(["bool"], results[1][1]) == (False,)
    assert abi_decode(["bool"], results[2][1]) == (True,)
    assert Web3.to_checksum_address(abi_decode(["address"], results[3][1])[0]) == app_contract.owner.address
    assert results[4][1] == bytes.fromhex(OWNABLE_UNAUTHORIZED_SELECTOR[2:]) + abi_encode(
        ["address"], [MULTICALL3_ADDRESS]
    )

    # A failure the caller does not allow reverts the whole batch.
    strict = [(app_contract.address, False, encoded(app.functions.addComposeHash(COMPOSE_HASH)))]
    with pytest.raises(ContractCustomError):
        multicall.functions.aggregate3(strict).call()

    block_number, return_data = multicall.functions.aggregate(
        [(app_contract.address, encoded(app.functions.allowedComposeHashes(COMPOSE_HASH)))]
    ).call()
    assert block_number == w3.eth.block_number
    assert abi_decode(["bool"], return_data[0]) == (True,)
    assert multicall.functions.getChainId().call() == anvil.chain_id
    assert multicall.functions.getBlockNumber().call() == w3.eth.block_number
    owner_balance = w3.eth.get_balance(app_contract.owner.address)
    assert multicall.functions.getEthBalance(app_contract.owner.address).call() == owner_balance


# -- the runner --------------------------------------------------------------------------------------


def test_base_chain_id_with_block_time() -> None:
    with Anvil(chain_id=8453, block_time=0.5) as chain:
        w3 = chain.web3()
        assert w3.eth.chain_id == 8453
        assert chain.block_time == 0.5
        install_multicall3(chain)
        owner = chain.accounts[0]
        address = deploy_app_contract(chain.rpc_url, owner.private_key)
        app = w3.eth.contract(address=address, abi=contracts.app_contract_abi())

        receipt = send(w3, owner, app.functions.addComposeHash(COMPOSE_HASH))

        assert receipt["status"] == 1
        assert app.functions.allowedComposeHashes(COMPOSE_HASH).call() is True
        multicall = w3.eth.contract(address=MULTICALL3_ADDRESS, abi=compiled_contract("Multicall3Lite").abi)
        assert multicall.functions.getChainId().call() == 8453

        # Blocks keep coming with no transactions.
        start = chain.block_number()
        deadline = time.monotonic() + 5
        while chain.block_number() < start + 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert chain.block_number() >= start + 2

        # Back to automine: a transaction is mined at once.
        chain.set_block_time(None)
        assert chain.rpc("anvil_getAutomine") is True
        again = send(w3, owner, app.functions.addDevice(DEVICE_ID))
        assert again["status"] == 1


def test_set_block_time_switches_to_interval_mining() -> None:
    with Anvil() as chain:
        chain.set_block_time(1)
        assert chain.block_time == 1
        assert chain.rpc("anvil_getAutomine") is False
        with pytest.raises(ValueError, match="whole seconds"):
            chain.set_block_time(0.5)
        chain.set_block_time(None)
        assert chain.rpc("anvil_getAutomine") is True


def test_mine_snapshot_revert_balance_code(anvil: Anvil) -> None:
    target = ChecksumAddress(Web3.to_checksum_address("0x" + "42" * 20))
    snapshot = anvil.snapshot()
    start = anvil.block_number()
    try:
        anvil.mine(3)
        assert anvil.block_number() == start + 3
        anvil.set_balance(target, 12345)
        anvil.set_code(target, bytes.fromhex("6001600055"))
        w3 = anvil.web3()
        assert w3.eth.get_balance(target) == 12345
        assert w3.eth.get_code(target) == bytes.fromhex("6001600055")
    finally:
        anvil.revert(snapshot)
    w3 = anvil.web3()
    assert anvil.block_number() == start
    assert w3.eth.get_balance(target) == 0
    assert w3.eth.get_code(target) == b""


def test_accounts_are_funded_and_keys_never_printed(anvil: Anvil) -> None:
    w3 = anvil.web3()
    assert len(anvil.accounts) == 10
    assert anvil.accounts[0].address == "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    for account in anvil.accounts:
        assert account.local_account().address == account.address
        assert w3.eth.get_balance(account.address) > 0
    printed = f"{anvil!r} {anvil.accounts!r} {anvil.accounts[0]} {anvil.accounts[0].private_key}"
    assert not looks_like_private_key(printed)


def test_start_is_fast_and_teardown_leaves_no_process() -> None:
    started = time.monotonic()
    chain = Anvil().start()
    start_seconds = time.monotonic() - started
    pid, port = chain.pid, chain.port
    assert pid is not None
    assert chain.alive()
    workdir = chain.workdir
    assert workdir.is_dir()

    chain.stop()

    assert start_seconds < 2.0, f"anvil took {start_seconds:.2f}s to start"
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), timeout=1):
        pass
    assert not workdir.exists()
    assert not chain.alive()
    with pytest.raises(RuntimeError, match="not running"):
        _ = chain.rpc_url


def test_log_dir_is_kept_when_given(tmp_path: Path) -> None:
    with Anvil(log_dir=tmp_path) as chain:
        port = chain.port
    assert (tmp_path / f"anvil-{port}.log").is_file()


# -- compilation cache -------------------------------------------------------------------------------


def test_compilation_is_cached_on_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CVM_OPERATOR_CACHE", str(tmp_path))
    contracts._compile_all.cache_clear()
    try:
        fresh = compiled_contract("TestDstackApp")
        (cache_file,) = (tmp_path / "contracts").glob("*.json")
        assert len(cache_file.stem) == 64

        # A later run reads the file and never starts the compiler.
        contracts._compile_all.cache_clear()

        def no_compiler(*_args: object) -> None:
            raise AssertionError("the compiler ran although the cache was warm")

        monkeypatch.setattr(contracts, "_run_solc", no_compiler)
        assert compiled_contract("TestDstackApp") == fresh
        assert compiled_contract("Multicall3Lite").runtime_bytecode.startswith("0x")
        with pytest.raises(KeyError, match="NoSuchContract"):
            compiled_contract("NoSuchContract")
    finally:
        contracts._compile_all.cache_clear()


# viem is the chain library of the official Phala CLI; it reads the app contract through Multicall3.
VIEM_MULTICALL = """
import { createRequire } from 'node:module';
const require = createRequire(process.argv[1]);
const { createPublicClient, http, parseAbi } = require('viem');
const { base } = require('viem/chains');
const [, , rpc, app, hash] = process.argv;
const abi = parseAbi([
  'function allowAnyDevice() view returns (bool)',
  'function allowedComposeHashes(bytes32) view returns (bool)',
  'function owner() view returns (address)',
]);
const client = createPublicClient({ chain: base, transport: http(rpc) });
const results = await client.multicall({ contracts: [
  { address: app, abi, functionName: 'allowAnyDevice' },
  { address: app, abi, functionName: 'allowedComposeHashes', args: [hash] },
  { address: app, abi, functionName: 'owner' },
] });
process.stdout.write(JSON.stringify(results));
"""


def test_viem_multicall_reads_the_app_contract_on_a_base_chain() -> None:
    from cvm_prelaunch_localenv import paths

    viem = paths.node_modules() / "viem"
    node = shutil.which("node")
    if node is None or not viem.is_dir():
        pytest.skip("node or node_modules/viem (a dependency of the Phala CLI) is missing")
    with Anvil(chain_id=8453) as chain:
        install_multicall3(chain)
        owner = chain.accounts[0]
        address = deploy_app_contract(chain.rpc_url, owner.private_key, allow_any_device=True)
        app = chain.web3().eth.contract(address=address, abi=contracts.app_contract_abi())
        send(chain.web3(), owner, app.functions.addComposeHash(COMPOSE_HASH))

        completed = subprocess.run(
            [
                node,
                "--input-type=module",
                "-e",
                VIEM_MULTICALL,
                f"{paths.node_modules()}/",
                chain.rpc_url,
                address,
                "0x" + COMPOSE_HASH.hex(),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout) == [
        {"result": True, "status": "success"},
        {"result": True, "status": "success"},
        {"result": owner.address, "status": "success"},
    ]


def test_start_refuses_a_missing_binary_and_bad_block_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cvm_prelaunch_localenv import paths

    with pytest.raises(ValueError, match="block_time"):
        Anvil(block_time=0)
    monkeypatch.setattr(paths, "anvil_bin", lambda: tmp_path / "no-anvil")
    with pytest.raises(RuntimeError, match="no anvil at"):
        Anvil().start()
