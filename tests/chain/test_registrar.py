"""Web3Registrar against a real anvil and the TestDstackApp contract: checks, sending, verifying."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

import pytest
from registrar_kit import (
    FAST,
    Captured,
    Recorder,
    RpcProxy,
    compose_hash,
    compose_hash_logs,
    fresh_account,
    request_for,
)
from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import AppContract, deploy_app_contract
from cvm_prelaunch_localenv.fixtures.chain import AppContractFactory
from cvm_prelaunch_operator.chain.registrar import SignerLocks, Web3Registrar
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater, SyncError
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.reconcile.ports import ChainTarget, Registrar


async def expect(
    captured: Captured, error_type: type[SyncError], reason: Reason, awaitable: object
) -> SyncError:
    """Await and return the expected error; its rendering joins the suite's secrets scan."""
    assert asyncio.iscoroutine(awaitable)
    with pytest.raises(error_type) as info:
        await awaitable
    error = info.value
    captured.error(error)
    assert error.reason is reason, error
    # Nothing a library raised hangs off our errors: its text may quote the RPC URL.
    assert error.__cause__ is None
    assert error.__suppress_context__ or error.__context__ is None
    return error


def test_web3_registrar_is_a_registrar() -> None:
    registrar: Registrar = Web3Registrar()
    assert registrar is not None


async def test_registers_once_with_the_event_and_returns_the_block(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    persist = Recorder()

    registration = await registrar.register(request, persist=persist)

    assert registration.compose_hash == request.compose_hash
    assert registration.chain_id == 31337
    assert not registration.reused
    [record] = persist.records
    assert record.tx_hash == registration.tx_hash
    assert record.sender == app_contract.owner.address
    assert record.compose_hash == request.compose_hash
    assert record.app_contract == app_contract.address
    [log] = compose_hash_logs(anvil, app_contract, request.compose_hash)
    assert log["transactionHash"] == registration.tx_hash
    assert int(log["blockNumber"], 16) == registration.block_number
    assert app_contract.contract(anvil.web3()).functions.allowedComposeHashes(request.compose_hash).call()
    # Persisted strictly before the broadcast: the proxy saw exactly one transaction.
    assert proxy.sent_transactions() == 1


async def test_a_hash_without_0x_is_registered_as_the_same_bytes(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    hash_hex = compose_hash()
    request = request_for(app_contract, proxy.url, hash_hex=hash_hex.removeprefix("0x").upper())
    registration = await registrar.register(request, persist=Recorder())
    assert registration.compose_hash == hash_hex
    assert len(compose_hash_logs(anvil, app_contract, hash_hex)) == 1


async def test_waits_for_the_requested_confirmations(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url, confirmations=3)
    task = asyncio.create_task(registrar.register(request, persist=Recorder()))
    await asyncio.sleep(0.3)
    assert not task.done(), "returned before the confirmations"
    await asyncio.to_thread(anvil.mine, 2)
    registration = await asyncio.wait_for(task, 5)
    assert anvil.block_number() - registration.block_number + 1 >= 3


async def test_persist_failure_sends_nothing(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    nonce_before = anvil.web3().eth.get_transaction_count(app_contract.owner.address)

    class Unwritable(Exception):
        pass

    async def persist(_: object) -> None:
        raise Unwritable("status write refused")

    with pytest.raises(Unwritable):
        await registrar.register(request, persist=persist)
    assert proxy.sent_transactions() == 0
    assert anvil.web3().eth.get_transaction_count(app_contract.owner.address, "pending") == nonce_before
    assert compose_hash_logs(anvil, app_contract, request.compose_hash) == []


async def test_non_owner_is_refused_before_signing(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    request = request_for(app_contract, proxy.url, signer=anvil.accounts[1])
    persist = Recorder()
    error = await expect(
        captured, Permanent, Reason.NOT_CONTRACT_OWNER, registrar.register(request, persist=persist)
    )
    assert anvil.accounts[1].address in str(error)
    assert persist.records == []
    assert proxy.sent_transactions() == 0
    preflight = await registrar.preflight(request)
    assert not preflight.signer_is_owner and preflight.owner == app_contract.owner.address
    assert preflight.required_wei is None  # the estimate would revert
    assert [p.reason for p in preflight.problems()] == [Reason.NOT_CONTRACT_OWNER]


async def test_wrong_chain_is_refused(
    app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    request = request_for(app_contract, proxy.url, chain_id=8453)
    persist = Recorder()
    error = await expect(
        captured, Permanent, Reason.WRONG_CHAIN, registrar.register(request, persist=persist)
    )
    assert "31337" in str(error) and "8453" in str(error)
    assert persist.records == []
    preflight = await registrar.preflight(request)
    assert not preflight.chain_ok
    assert preflight.owner is None


async def test_an_address_without_the_contract_is_a_wrong_chain(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    nowhere = replace(app_contract, address="0x000000000000000000000000000000000000dEaD")
    request = request_for(nowhere, proxy.url)
    await expect(captured, Permanent, Reason.WRONG_CHAIN, registrar.register(request, persist=Recorder()))


async def test_empty_balance_is_refused_and_funding_lets_it_through(
    anvil: Anvil,
    app_contract_factory: AppContractFactory,
    proxy: RpcProxy,
    registrar: Web3Registrar,
    captured: Captured,
) -> None:
    owner = fresh_account()  # no ether at all
    contract = app_contract_factory(owner=owner)
    request = request_for(contract, proxy.url)
    persist = Recorder()

    error = await expect(
        captured, Permanent, Reason.INSUFFICIENT_FUNDS, registrar.register(request, persist=persist)
    )
    assert "fund" in str(error)
    assert persist.records == []
    preflight = await registrar.preflight(request)
    assert preflight.signer_is_owner and not preflight.funded
    assert preflight.required_wei is not None and preflight.required_wei > 0

    # Just enough for gas x max fee: the check is the real cost, not a flat minimum.
    anvil.set_balance(owner.address, preflight.required_wei)
    registration = await registrar.register(request, persist=persist)
    assert len(compose_hash_logs(anvil, contract, request.compose_hash)) == 1
    assert registration.tx_hash == persist.last.tx_hash


async def test_device_not_allowed_says_how_to_allow_it_and_add_device_does(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    device = "d1" * 32  # the 465 sends device ids without 0x
    request = request_for(app_contract, proxy.url, device_id=device)
    persist = Recorder()

    error = await expect(
        captured, Permanent, Reason.DEVICE_NOT_ALLOWED, registrar.register(request, persist=persist)
    )
    assert f"addDevice(0x{device})" in str(error)
    assert persist.records == []

    added = await registrar.add_device(request.target, request.signer_key, device)
    assert added is not None
    contract = app_contract.contract(anvil.web3())
    assert contract.functions.allowedDeviceIds(bytes.fromhex(device)).call()
    assert await registrar.add_device(request.target, request.signer_key, device) is None

    registration = await registrar.register(request, persist=persist)
    assert registration.block_number > added.block_number


async def test_any_device_allowed_skips_the_device_list(
    anvil: Anvil, app_contract_factory: AppContractFactory, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    contract = app_contract_factory(allow_any_device=True)
    request = request_for(contract, proxy.url, device_id="d2" * 32)
    preflight = await registrar.preflight(request)
    assert preflight.any_device_allowed and preflight.device_allowed is False and preflight.device_ok
    await registrar.register(request, persist=Recorder())
    assert len(compose_hash_logs(anvil, contract, request.compose_hash)) == 1


async def test_preflight_reads_everything_and_sends_nothing(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url, device_id="0x" + "d3" * 32)
    preflight = await registrar.preflight(request)
    assert preflight.chain_ok and preflight.signer_is_owner and preflight.funded
    assert preflight.owner == app_contract.owner.address
    assert preflight.device_allowed is False and not preflight.device_ok
    assert preflight.hash_allowed is False
    assert preflight.estimated_gas is not None and preflight.estimated_gas > 21_000
    assert preflight.max_priority_fee_per_gas is not None  # anvil has EIP-1559 fees
    assert [problem.reason for problem in preflight.problems()] == [Reason.DEVICE_NOT_ALLOWED]
    assert proxy.sent_transactions() == 0


async def test_already_allowed_hash_reuses_a_known_registration(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    first = await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())
    again = request_for(app_contract, proxy.url, hash_hex=first.compose_hash, known_tx_hash=first.tx_hash)
    persist = Recorder()

    reused = await registrar.register(again, persist=persist)

    assert reused.reused
    assert (reused.tx_hash, reused.block_number) == (first.tx_hash, first.block_number)
    assert persist.records == []
    assert len(compose_hash_logs(anvil, app_contract, first.compose_hash)) == 1


async def test_already_allowed_hash_without_a_usable_record_is_registered_again(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    first = await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())
    other = await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())

    # No known transaction, and a known transaction that logs another hash: both send anew.
    plain = request_for(app_contract, proxy.url, hash_hex=first.compose_hash)
    wrong = request_for(app_contract, proxy.url, hash_hex=first.compose_hash, known_tx_hash=other.tx_hash)
    second = await registrar.register(plain, persist=Recorder())
    third = await registrar.register(wrong, persist=Recorder())

    assert not second.reused and not third.reused
    assert len({first.tx_hash, second.tx_hash, third.tx_hash}) == 3
    assert len(compose_hash_logs(anvil, app_contract, first.compose_hash)) == 3


async def test_one_signer_two_hashes_concurrently_get_distinct_nonces(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy
) -> None:
    # Two registrars (two resources) sharing one key: the process-wide lock orders their nonces.
    first_registrar, second_registrar = Web3Registrar(FAST), Web3Registrar(FAST)
    first, second = request_for(app_contract, proxy.url), request_for(app_contract, proxy.url)
    first_persist, second_persist = Recorder(), Recorder()
    try:
        results = await asyncio.gather(
            first_registrar.register(first, persist=first_persist),
            second_registrar.register(second, persist=second_persist),
        )
    finally:
        await first_registrar.aclose()
        await second_registrar.aclose()
    assert {r.compose_hash for r in results} == {first.compose_hash, second.compose_hash}
    assert first_persist.last.nonce != second_persist.last.nonce
    assert len(first_persist.records) == len(second_persist.records) == 1
    assert len(compose_hash_logs(anvil, app_contract, first.compose_hash)) == 1
    assert len(compose_hash_logs(anvil, app_contract, second.compose_hash)) == 1


async def test_many_concurrent_registrations_of_one_signer_with_interval_mining(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy
) -> None:
    # Pending (not yet mined) transactions must count for the next nonce: mine once per second.
    registrar = Web3Registrar(FAST, signer_locks=SignerLocks())
    requests = [request_for(app_contract, proxy.url) for _ in range(4)]
    recorders = [Recorder() for _ in requests]
    anvil.set_block_time(1)
    try:
        results = await asyncio.gather(
            *(registrar.register(r, persist=p) for r, p in zip(requests, recorders, strict=True))
        )
    finally:
        anvil.set_block_time(None)
        await registrar.aclose()
    nonces = sorted(p.last.nonce for p in recorders)
    assert nonces == list(range(nonces[0], nonces[0] + 4))
    assert all(len(p.records) == 1 for p in recorders)
    for request, result in zip(requests, results, strict=True):
        assert [
            log["transactionHash"] for log in compose_hash_logs(anvil, app_contract, request.compose_hash)
        ] == [result.tx_hash]


async def test_verify_registration_accepts_a_transaction_made_elsewhere(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    hash_hex = compose_hash()
    w3 = anvil.web3()
    owner = app_contract.owner
    tx_hash = (
        app_contract.contract(w3)
        .functions.addComposeHash(bytes.fromhex(hash_hex[2:]))
        .transact({"from": owner.address})
    )
    w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    target = ChainTarget(Secret(proxy.url), 31337, app_contract.address)

    registration = await registrar.verify_registration(target, hash_hex, tx_hash.to_0x_hex(), 1)

    assert registration.reused and registration.tx_hash == tx_hash.to_0x_hex()
    # The same transaction does not register another hash.
    await expect(
        captured,
        Permanent,
        Reason.TRANSACTION_FAILED,
        registrar.verify_registration(target, compose_hash(), tx_hash.to_0x_hex(), 1),
    )
    # A transaction the chain never saw is waited for by the caller, not failed.
    await expect(
        captured,
        RetryLater,
        Reason.AWAITING_TRANSACTION,
        registrar.verify_registration(target, hash_hex, "0x" + "ab" * 32, 1),
    )
    # A transaction to another contract does not count.
    other = deploy_app_contract(
        anvil.rpc_url, owner.private_key, deployer_private_key=anvil.accounts[-1].private_key
    )
    other_contract = w3.eth.contract(address=Web3.to_checksum_address(other), abi=app_contract.abi)
    other_tx = other_contract.functions.addComposeHash(bytes.fromhex(hash_hex[2:])).transact(
        {"from": owner.address}
    )
    w3.eth.wait_for_transaction_receipt(other_tx, timeout=10)
    error = await expect(
        captured,
        Permanent,
        Reason.TRANSACTION_FAILED,
        registrar.verify_registration(target, hash_hex, other_tx.to_0x_hex(), 1),
    )
    assert "not to app contract" in str(error)


async def test_verify_registration_refuses_a_reverted_transaction(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    hash_hex = compose_hash()
    w3 = anvil.web3()
    stranger = anvil.accounts[2]
    # A fixed gas limit skips estimation, so the non-owner's call is mined and reverts.
    tx_hash = (
        app_contract.contract(w3)
        .functions.addComposeHash(bytes.fromhex(hash_hex[2:]))
        .transact({"from": stranger.address, "gas": 100_000})
    )
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10)
    assert receipt["status"] == 0
    target = ChainTarget(Secret(proxy.url), 31337, app_contract.address)
    error = await expect(
        captured,
        Permanent,
        Reason.TRANSACTION_FAILED,
        registrar.verify_registration(target, hash_hex, tx_hash.to_0x_hex(), 1),
    )
    assert "reverted" in str(error)


async def test_rpc_errors_map_to_retry_or_permanent(
    app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    request = request_for(app_contract, proxy.url)
    proxy.fail_status = 503
    error = await expect(
        captured, RetryLater, Reason.CHAIN_UNAVAILABLE, registrar.register(request, persist=Recorder())
    )
    assert "HTTP 503" in str(error)
    proxy.fail_status = 429
    await expect(captured, RetryLater, Reason.CHAIN_UNAVAILABLE, registrar.preflight(request))
    proxy.fail_status = None
    proxy.cut_connections = True
    await expect(
        captured, RetryLater, Reason.CHAIN_UNAVAILABLE, registrar.register(request, persist=Recorder())
    )
    proxy.cut_connections = False
    # A wrong key in the URL: the user must fix it, retrying changes nothing.
    bad_key = request_for(app_contract, proxy.url_with_key("rpckey-wrong-0123456789abcdef"))
    error = await expect(
        captured, Permanent, Reason.CHAIN_UNAVAILABLE, registrar.register(bad_key, persist=Recorder())
    )
    assert "HTTP 401" in str(error)
    assert "0123456789abcdef" not in str(error)


async def test_rpc_down_mid_wait_is_retry_later_without_secrets(
    app_contract: AppContract, captured: Captured
) -> None:
    """A chain of our own with one-second blocks, killed while the registrar waits for a receipt."""
    chain = Anvil(block_time=1).start()
    proxy = await RpcProxy(chain.rpc_url).start()
    registrar = Web3Registrar(FAST)
    try:
        owner = chain.accounts[0]
        address = await asyncio.to_thread(
            deploy_app_contract,
            chain.rpc_url,
            owner.private_key,
            deployer_private_key=chain.accounts[-1].private_key,
        )
        contract = replace(app_contract, address=address, owner=owner)
        persist = Recorder()
        request = request_for(contract, proxy.url, confirmations=5)
        task = asyncio.create_task(registrar.register(request, persist=persist))
        deadline = time.monotonic() + 10
        while proxy.sent_transactions() == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        assert proxy.sent_transactions() == 1
        await asyncio.to_thread(chain.stop)

        error = await expect(captured, RetryLater, Reason.CHAIN_UNAVAILABLE, asyncio.wait_for(task, 10))
        assert persist.last.tx_hash in str(error)  # the caller learns which transaction to follow up
        assert proxy.url not in str(error) and "127.0.0.1" in str(error)
    finally:
        await registrar.aclose()
        await proxy.stop()
        chain.stop()


async def test_invalid_inputs_are_permanent_and_quote_no_key(
    app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    bad_key = replace(request_for(app_contract, proxy.url), signer_key=Secret("0x" + "zz" * 32))
    error = await expect(
        captured, Permanent, Reason.INVALID_SPEC, registrar.register(bad_key, persist=Recorder())
    )
    assert "zz" * 8 not in str(error)
    bad_hash = replace(request_for(app_contract, proxy.url), compose_hash="0x1234")
    await expect(captured, Permanent, Reason.INVALID_SPEC, registrar.register(bad_hash, persist=Recorder()))


async def test_register_speed_on_an_automining_chain(
    app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())  # warm session
    timings = []
    for _ in range(5):
        started = time.perf_counter()
        await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())
        timings.append(time.perf_counter() - started)
    timings.sort()
    print(f"register on automine: median {timings[2] * 1000:.1f} ms, max {timings[-1] * 1000:.1f} ms")
    assert timings[2] < 0.3


@pytest.mark.slow
async def test_register_waits_about_one_block_time(app_contract: AppContract) -> None:
    """With block time B the registration returns within B plus one poll interval."""
    block_time = 1.0
    chain = Anvil(block_time=block_time).start()
    registrar = Web3Registrar()  # default settings: the 0.2 s poll the operator ships with
    try:
        owner = chain.accounts[0]
        address = await asyncio.to_thread(
            deploy_app_contract,
            chain.rpc_url,
            owner.private_key,
            deployer_private_key=chain.accounts[-1].private_key,
        )
        contract = replace(app_contract, address=address, owner=owner)
        timings = []
        for _ in range(3):
            started = time.perf_counter()
            await registrar.register(request_for(contract, chain.rpc_url), persist=Recorder())
            timings.append(time.perf_counter() - started)
    finally:
        await registrar.aclose()
        await asyncio.to_thread(chain.stop)
    print(f"register with {block_time:.0f} s blocks: {', '.join(f'{t:.2f}' for t in timings)} s")
    assert max(timings) < block_time + 0.3


async def test_one_session_per_rpc_url_until_aclose(app_contract: AppContract, proxy: RpcProxy) -> None:
    registrar = Web3Registrar(FAST)
    request = request_for(app_contract, proxy.url)
    await asyncio.gather(registrar.preflight(request), registrar.preflight(request))
    await registrar.register(request, persist=Recorder())
    [client] = registrar._clients.values()
    sessions = list(client.provider._request_session_manager.session_cache._data.values())
    assert len(sessions) == 1 and not sessions[0].closed

    await registrar.aclose()

    assert sessions[0].closed
    assert registrar._clients == {}
    # Usable again afterwards, with a new session.
    await registrar.preflight(request)
    await registrar.aclose()
