"""Exactly once under crashes: a registration interrupted at every step, finished by a NEW registrar
from the persisted record, always ends with exactly one ``ComposeHashAdded`` for the hash."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from registrar_kit import (
    FAST,
    Captured,
    Recorder,
    RpcProxy,
    SimulatedCrash,
    compose_hash,
    compose_hash_logs,
    manual_mining,
    request_for,
)

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_operator.chain.registrar import Web3Registrar
from cvm_prelaunch_operator.domain.errors import Permanent, RetryLater
from cvm_prelaunch_operator.domain.models import PendingTransaction, Registration
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.reconcile.ports import RegistrationRequest


async def resume(
    request: RegistrationRequest, record: PendingTransaction, persist: Recorder | None = None
) -> Registration:
    """What a restarted operator does: a new registrar, the record from the status."""
    registrar = Web3Registrar(FAST)
    try:
        return await registrar.register(request, persist=persist or Recorder(), resume_from=record)
    finally:
        await registrar.aclose()


async def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


async def crash_after_broadcast(
    registrar: Web3Registrar, request: RegistrationRequest, proxy: RpcProxy
) -> PendingTransaction:
    """Run ``register`` and kill it once its transaction is on the wire; returns the record."""
    persist = Recorder()
    task = asyncio.create_task(registrar.register(request, persist=persist))
    await until(lambda: proxy.sent_transactions() == 1)
    await asyncio.sleep(0.1)  # the node has answered the broadcast by now
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return persist.last


async def test_crash_before_broadcast_resumes_with_the_same_bytes(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    crashing = Recorder(crash=True)
    with pytest.raises(SimulatedCrash):
        await registrar.register(request, persist=crashing)
    assert proxy.sent_transactions() == 0
    record = crashing.last

    after_restart = Recorder()
    registration = await resume(request, record, after_restart)

    assert registration.tx_hash == record.tx_hash
    assert after_restart.records == []  # nothing new was signed
    assert proxy.sent_transactions() == 1
    assert [
        log["transactionHash"] for log in compose_hash_logs(anvil, app_contract, request.compose_hash)
    ] == [record.tx_hash]


async def test_crash_after_broadcast_before_receipt(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    with manual_mining(anvil):
        record = await crash_after_broadcast(registrar, request, proxy)
        assert anvil.rpc("eth_getTransactionByHash", record.tx_hash) is not None  # in the pool
        resumed = asyncio.create_task(resume(request, record))
        await asyncio.sleep(0.2)
        assert not resumed.done()
        await asyncio.to_thread(anvil.mine)
        registration = await asyncio.wait_for(resumed, 10)
    assert registration.tx_hash == record.tx_hash
    assert len(compose_hash_logs(anvil, app_contract, request.compose_hash)) == 1


async def test_crash_after_broadcast_on_an_automining_chain(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    # Mined at once: the restarted registrar finds the receipt and sends nothing.
    request = request_for(app_contract, proxy.url, confirmations=2)
    record = await crash_after_broadcast(registrar, request, proxy)
    proxy.reset()
    resumed = asyncio.create_task(resume(request, record))
    await asyncio.sleep(0.1)
    await asyncio.to_thread(anvil.mine)
    registration = await asyncio.wait_for(resumed, 10)
    assert registration.tx_hash == record.tx_hash
    assert proxy.sent_transactions() == 0
    assert len(compose_hash_logs(anvil, app_contract, request.compose_hash)) == 1


async def test_crash_after_receipt(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    # The registration completed, but the process died before the caller stored the result.
    request = request_for(app_contract, proxy.url)
    persist = Recorder()
    done = await registrar.register(request, persist=persist)
    proxy.reset()

    registration = await resume(request, persist.last)

    assert (registration.tx_hash, registration.block_number) == (done.tx_hash, done.block_number)
    assert proxy.sent_transactions() == 0
    assert len(compose_hash_logs(anvil, app_contract, request.compose_hash)) == 1


async def test_transaction_dropped_from_the_pool_is_sent_again_unchanged(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    with manual_mining(anvil):
        record = await crash_after_broadcast(registrar, request, proxy)
        anvil.rpc("anvil_dropTransaction", record.tx_hash)
        assert anvil.rpc("eth_getTransactionByHash", record.tx_hash) is None
        proxy.reset()
        resumed = asyncio.create_task(resume(request, record))
        await until(lambda: proxy.sent_transactions() == 1)
        await asyncio.sleep(0.1)
        await asyncio.to_thread(anvil.mine)
        registration = await asyncio.wait_for(resumed, 10)
    assert registration.tx_hash == record.tx_hash
    assert len(compose_hash_logs(anvil, app_contract, request.compose_hash)) == 1


async def test_nonce_used_by_another_transaction_signs_a_fresh_one(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    request = request_for(app_contract, proxy.url)
    crashing = Recorder(crash=True)
    with pytest.raises(SimulatedCrash):
        await registrar.register(request, persist=crashing)
    record = crashing.last
    # Meanwhile the same key spends that nonce on something else (here: a plain transfer).
    w3 = anvil.web3()
    owner = app_contract.owner.local_account()
    transfer = owner.sign_transaction(
        {
            "chainId": 31337,
            "nonce": record.nonce,
            "to": anvil.accounts[3].address,
            "value": 1,
            "gas": 21_000,
            "maxFeePerGas": 10 * 10**9,
            "maxPriorityFeePerGas": 10**9,
            "type": 2,
        }
    )
    w3.eth.wait_for_transaction_receipt(w3.eth.send_raw_transaction(transfer.raw_transaction), timeout=10)

    after_restart = Recorder()
    registration = await resume(request, record, after_restart)

    [fresh] = after_restart.records  # persisted again before the new broadcast
    assert fresh.nonce == record.nonce + 1
    assert registration.tx_hash == fresh.tx_hash != record.tx_hash
    assert [
        log["transactionHash"] for log in compose_hash_logs(anvil, app_contract, request.compose_hash)
    ] == [fresh.tx_hash]


async def test_refusing_a_fresh_transaction_on_resume_sends_nothing(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    # The reconciler settles a record of a stale script with a persist that refuses new ones.
    request = request_for(app_contract, proxy.url)
    crashing = Recorder(crash=True)
    with pytest.raises(SimulatedCrash):
        await registrar.register(request, persist=crashing)
    record = crashing.last
    other = await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())
    assert other.tx_hash != record.tx_hash  # took the recorded nonce
    proxy.reset()

    refusing = Recorder(crash=True)
    with pytest.raises(SimulatedCrash):
        await resume(request, record, refusing)
    assert proxy.sent_transactions() == 0
    assert compose_hash_logs(anvil, app_contract, request.compose_hash) == []


async def test_receipt_timeout_keeps_the_record_for_a_later_resume(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, captured: Captured
) -> None:
    request = request_for(app_contract, proxy.url)
    persist = Recorder()
    impatient = Web3Registrar(replace(FAST, receipt_timeout=0.4))
    try:
        with manual_mining(anvil):
            with pytest.raises(RetryLater) as info:
                await impatient.register(request, persist=persist)
            captured.error(info.value)
            assert info.value.reason is Reason.CHAIN_UNAVAILABLE
            assert persist.last.tx_hash in str(info.value)
            await asyncio.to_thread(anvil.mine)
    finally:
        await impatient.aclose()
    registration = await resume(request, persist.last)
    assert registration.tx_hash == persist.last.tx_hash
    assert len(compose_hash_logs(anvil, app_contract, request.compose_hash)) == 1


async def test_a_record_of_another_registration_is_refused(
    app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar, captured: Captured
) -> None:
    request = request_for(app_contract, proxy.url)
    crashing = Recorder(crash=True)
    with pytest.raises(SimulatedCrash):
        await registrar.register(request, persist=crashing)
    other_hash = replace(request, compose_hash=compose_hash())
    with pytest.raises(Permanent) as info:
        await resume(other_hash, crashing.last)
    captured.error(info.value)
    assert info.value.reason is Reason.INVALID_SPEC
    tampered = replace(crashing.last, tx_hash="0x" + "00" * 32)
    with pytest.raises(Permanent):
        await resume(request, tampered)
    assert proxy.sent_transactions() == 0


async def test_a_lagging_pending_nonce_costs_a_retry_never_a_second_registration(
    anvil: Anvil, app_contract: AppContract, proxy: RpcProxy, registrar: Web3Registrar
) -> None:
    """A load-balanced RPC whose backend lags answers a pending nonce that is already used."""
    await registrar.register(request_for(app_contract, proxy.url), persist=Recorder())
    used = anvil.web3().eth.get_transaction_count(app_contract.owner.address) - 1
    lies = [hex(used)]

    def lagging(call: dict[str, Any]) -> object | None:
        if call["method"] == "eth_getTransactionCount" and call["params"][1] == "pending" and lies:
            return lies.pop()
        return None

    proxy.answer = lagging
    request = request_for(app_contract, proxy.url)
    persist = Recorder()

    registration = await registrar.register(request, persist=persist)

    stale, fresh = persist.records  # each persisted before its broadcast
    assert stale.nonce == used and fresh.nonce > used
    assert registration.tx_hash == fresh.tx_hash
    assert [
        log["transactionHash"] for log in compose_hash_logs(anvil, app_contract, request.compose_hash)
    ] == [fresh.tx_hash]
