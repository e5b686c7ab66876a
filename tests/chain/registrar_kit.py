"""Helpers of the registrar tests: an RPC proxy whose URL carries a key, the secrets to scan for, a
log capture shared by the whole chain suite, and small chain helpers.

The proxy stands for a hosted RPC (``https://host/v2/<key>``): anvil serves only ``/``, so the
proxy forwards ``POST /v2/<key>`` to it. It also records the JSON-RPC methods it forwarded and can
answer with an HTTP status, refuse a wrong key, or cut connections like a dead node.
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from eth_account import Account
from web3 import Web3

from cvm_prelaunch_localenv.chain import Anvil, DevAccount
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_operator.chain.abi import COMPOSE_HASH_ADDED_TOPIC
from cvm_prelaunch_operator.chain.registrar import RegistrarSettings
from cvm_prelaunch_operator.domain.models import PendingTransaction
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.reconcile.ports import ChainTarget, RegistrationRequest

# A value shaped like a hosted RPC's key (the secret part of the URL) and like a Phala API key: the
# registrar never receives the latter, the scan makes sure it never shows up either.
RPC_KEY = "rpckey" + secrets.token_hex(16)
PHALA_API_KEY = "phak_" + secrets.token_hex(20)

# Fast settings for tests: short waits so failure paths end quickly.
FAST = RegistrarSettings(poll_interval=0.05, receipt_timeout=20.0, rpc_failure_grace=0.5)


class RpcProxy:
    """``POST /v2/<key>`` → the upstream JSON-RPC endpoint, with faults on demand."""

    def __init__(self, upstream: str, key: str = RPC_KEY) -> None:
        self.upstream = upstream
        self.key = key
        self.port = free_port()
        self.methods: list[str] = []
        self.fail_status: int | None = None  # answer every request with this HTTP status
        self.cut_connections = False  # close the connection without an answer, like a dead node
        # Answers a call itself when this returns a result (not None): a lagging backend, say.
        self.answer: Callable[[dict[str, Any]], object | None] | None = None
        self._runner: web.AppRunner | None = None
        self._client: aiohttp.ClientSession | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v2/{self.key}"

    def url_with_key(self, key: str) -> str:
        return f"http://127.0.0.1:{self.port}/v2/{key}"

    def reset(self) -> None:
        self.fail_status = None
        self.cut_connections = False
        self.answer = None
        self.methods.clear()

    def sent_transactions(self) -> int:
        return self.methods.count("eth_sendRawTransaction")

    async def start(self) -> RpcProxy:
        app = web.Application()
        app.router.add_post("/v2/{key}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        self._client = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._client is not None:
            await self._client.close()
            self._client = None

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        if request.match_info["key"] != self.key:
            return web.json_response({"error": "invalid api key"}, status=401)
        body = await request.read()
        payload = json.loads(body)
        calls = payload if isinstance(payload, list) else [payload]
        self.methods.extend(str(call.get("method")) for call in calls)
        if self.fail_status is not None:
            return web.Response(status=self.fail_status, text="upstream trouble")
        if self.answer is not None and isinstance(payload, dict):
            result = self.answer(payload)
            if result is not None:
                return web.json_response({"jsonrpc": "2.0", "id": payload.get("id"), "result": result})
        assert self._client is not None
        try:
            if self.cut_connections:
                raise aiohttp.ClientConnectionError("cut")
            async with self._client.post(
                self.upstream, data=body, headers={"Content-Type": "application/json"}
            ) as upstream:
                answer = await upstream.read()
                return web.Response(body=answer, status=upstream.status, content_type="application/json")
        except aiohttp.ClientConnectionError:
            # What a client of a dead node sees: the connection closes with no answer.
            if request.transport is not None:
                request.transport.close()
            raise


# -- everything logged in the chain suite, scanned for secrets by test_zz_secrets ------------------


@dataclass
class Captured:
    """Log lines and error texts produced by the chain tests (kept for the final secrets scan)."""

    logs: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def error(self, exc: BaseException) -> None:
        # The full rendering, chained exceptions included, as a traceback would print it.
        self.errors.append("".join(traceback.format_exception(exc)))
        self.errors.append(repr(exc))


CAPTURED = Captured()


class CaptureHandler(logging.Handler):
    """Adds every record it sees to ``CAPTURED``."""

    def emit(self, record: logging.LogRecord) -> None:
        text = record.getMessage()
        if record.exc_info:
            text += "\n" + "".join(traceback.format_exception(*record.exc_info))
        CAPTURED.logs.append(text)


def secret_needles(*keys: Secret | str) -> list[str]:
    """The strings that must never appear: the RPC key, the Phala API key, private keys (with and
    without 0x)."""
    needles = [RPC_KEY, PHALA_API_KEY]
    for key in keys:
        value = key.reveal() if isinstance(key, Secret) else key
        needles += [value, value.lower().removeprefix("0x")]
    return needles


# -- chain helpers --------------------------------------------------------------------------------


def compose_hash() -> str:
    """A fresh compose hash (0x + 64 hex): every test registers its own."""
    return "0x" + secrets.token_hex(32)


def request_for(
    contract: AppContract,
    rpc_url: str,
    *,
    hash_hex: str | None = None,
    signer: DevAccount | None = None,
    chain_id: int = 31337,
    device_id: str | None = None,
    confirmations: int = 1,
    known_tx_hash: str | None = None,
) -> RegistrationRequest:
    return RegistrationRequest(
        target=ChainTarget(rpc_url=Secret(rpc_url), chain_id=chain_id, app_contract=contract.address),
        signer_key=(signer or contract.owner).private_key,
        compose_hash=hash_hex or compose_hash(),
        device_id=device_id,
        confirmations=confirmations,
        known_tx_hash=known_tx_hash,
    )


class Recorder:
    """A ``persist`` callback that keeps what it was given and can fail like a crash."""

    def __init__(self, *, crash: bool = False) -> None:
        self.records: list[PendingTransaction] = []
        self.crash = crash

    async def __call__(self, pending: PendingTransaction) -> None:
        self.records.append(pending)
        if self.crash:
            raise SimulatedCrash(f"crashed after persisting {pending.tx_hash}")

    @property
    def last(self) -> PendingTransaction:
        return self.records[-1]


class SimulatedCrash(Exception):
    """Stands for the process dying at a chosen point."""


def compose_hash_logs(anvil: Anvil, contract: AppContract, hash_hex: str) -> list[dict[str, Any]]:
    """Every ``ComposeHashAdded(hash)`` the contract ever emitted."""
    logs = anvil.rpc(
        "eth_getLogs",
        {
            "address": contract.address,
            "fromBlock": "0x0",
            "toBlock": "latest",
            "topics": [COMPOSE_HASH_ADDED_TOPIC],
        },
    )
    return [entry for entry in logs if entry["data"].lower() == hash_hex.lower()]


@contextmanager
def manual_mining(anvil: Anvil) -> Iterator[None]:
    """Transactions wait in the pool until the test mines (``anvil.mine()``)."""
    anvil.rpc("evm_setAutomine", False)
    try:
        yield
    finally:
        anvil.rpc("evm_setAutomine", True)
        if anvil.rpc("txpool_status")["pending"] not in ("0x0", 0):
            anvil.mine()


def fresh_account() -> DevAccount:
    account = Account.create()
    return DevAccount(
        address=Web3.to_checksum_address(account.address), private_key=Secret(account.key.hex())
    )
