"""No secret in anything the registrar logs or raises.

Runs last in the chain suite (file name): it scans every log record (DEBUG and up, web3's and
aiohttp's included) and every error the earlier chain tests collected, after driving each failure
path once more itself through an RPC URL that carries a key, so it also stands alone.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace

import pytest
from registrar_kit import (
    FAST,
    PHALA_API_KEY,
    RPC_KEY,
    Captured,
    Recorder,
    RpcProxy,
    SimulatedCrash,
    fresh_account,
    request_for,
    secret_needles,
)

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.chain import AppContractFactory
from cvm_prelaunch_operator.chain.registrar import Web3Registrar
from cvm_prelaunch_operator.domain.errors import SyncError
from cvm_prelaunch_operator.domain.secrets import Secret

WRONG_RPC_KEY = "rpckey-wrong-" + "5eC7e7" * 6


async def drive_every_path(
    anvil: Anvil, app_contract_factory: AppContractFactory, proxy: RpcProxy, captured: Captured
) -> Secret:
    """Success, resume, each refusal and each transport failure once; returns the unfunded key."""
    registrar = Web3Registrar(replace(FAST, receipt_timeout=2.0))
    contract = app_contract_factory()
    poor_owner = fresh_account()
    poor_contract = app_contract_factory(owner=poor_owner)

    async def attempt(awaitable: object) -> None:
        assert asyncio.iscoroutine(awaitable)
        try:
            await awaitable
        except (SyncError, SimulatedCrash) as error:
            captured.error(error)

    try:
        crashing = Recorder(crash=True)
        request = request_for(contract, proxy.url, device_id="0x" + "d4" * 32)
        await attempt(registrar.register(request, persist=Recorder()))  # device not allowed
        request = replace(request, device_id=None)
        await attempt(registrar.register(request, persist=crashing))
        captured.logs.append(repr(crashing.last))
        registration = await registrar.register(request, persist=Recorder(), resume_from=crashing.last)
        captured.logs += [repr(registration), repr(await registrar.preflight(request)), repr(request)]
        await attempt(
            registrar.register(request_for(contract, proxy.url, signer=anvil.accounts[4]), persist=Recorder())
        )
        await attempt(registrar.register(request_for(contract, proxy.url, chain_id=1), persist=Recorder()))
        await attempt(registrar.register(request_for(poor_contract, proxy.url), persist=Recorder()))
        await attempt(
            registrar.register(request_for(contract, proxy.url_with_key(WRONG_RPC_KEY)), persist=Recorder())
        )
        await attempt(
            registrar.register(replace(request, signer_key=Secret("0x" + "q" * 64)), persist=Recorder())
        )
        await attempt(
            registrar.verify_registration(request.target, request.compose_hash, "0x" + "12" * 32, 1)
        )
        proxy.fail_status = 502
        await attempt(registrar.register(request_for(contract, proxy.url), persist=Recorder()))
        proxy.fail_status = None
        proxy.cut_connections = True
        await attempt(registrar.register(request_for(contract, proxy.url), persist=Recorder()))
        proxy.cut_connections = False
        # Nothing listening at all: connection refused.
        stopped = await RpcProxy(anvil.rpc_url).start()
        await stopped.stop()
        await attempt(registrar.register(request_for(contract, stopped.url), persist=Recorder()))
        captured.logs += [repr(registrar), str(registrar)]
        for client in registrar._clients.values():  # the provider prints itself in web3's own errors
            captured.logs += [str(client.provider), repr(client.provider)]
    finally:
        proxy.reset()
        await registrar.aclose()
    return poor_owner.private_key


async def test_nothing_logged_or_raised_carries_a_secret(
    anvil: Anvil, app_contract_factory: AppContractFactory, proxy: RpcProxy, captured: Captured
) -> None:
    errors_before = len(captured.errors)
    poor_key = await drive_every_path(anvil, app_contract_factory, proxy, captured)
    assert len(captured.errors) - errors_before >= 10, "every failure path was driven"
    assert any("eth_sendRawTransaction" in line for line in captured.logs), "web3's debug logs were captured"

    needles = secret_needles(poor_key, WRONG_RPC_KEY, "q" * 64, *(a.private_key for a in anvil.accounts))
    assert RPC_KEY in needles and PHALA_API_KEY in needles
    texts = captured.logs + captured.errors
    leaks = [(needle[:10], text[:300]) for text in texts for needle in needles if needle and needle in text]
    assert leaks == []
    # The endpoint still shows, redacted, where it helps.
    assert any("http://127.0.0.1:" in text and "/***" in text for text in captured.errors)


@pytest.mark.parametrize("secret", [RPC_KEY, PHALA_API_KEY])
def test_secrets_are_not_trivially_absent(secret: str) -> None:
    # The needles are long, random and never substrings of hex hashes: a miss means no leak.
    assert len(secret) >= 32
    assert not all(c in "0123456789abcdef" for c in secret)
