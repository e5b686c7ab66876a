"""No RPC key in anything the chain client logs, raises or prints.

Every path is driven through URLs that carry a key (in the path, the query, the user info), with
the node echoing the URL and the key back in its error texts; every log record (DEBUG and up, from
every library) and every rendered error is scanned.
"""

from __future__ import annotations

import json
import logging
import secrets
import traceback
from collections.abc import Awaitable

import pytest

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import AppContract
from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_localenv.rpc_proxy import JsonRpcProxy
from cvm_prelaunch_operator.chain.rpc import ChainRpcSettings, JsonRpcChainClient, Web3ChainConnector
from cvm_prelaunch_operator.chain.signer import EthAccountSigner
from cvm_prelaunch_operator.domain.chain import Fees, UnsignedTx, add_compose_hash_calldata
from cvm_prelaunch_operator.domain.errors import SyncError
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT

PATH_KEY = "pathkey" + secrets.token_hex(16)
QUERY_KEY = "querykey" + secrets.token_hex(16)
PASSWORD = "password" + secrets.token_hex(16)


class Drive:
    def __init__(self) -> None:
        self.errors: list[SyncError] = []
        self.texts: list[str] = []

    async def __call__(self, call: Awaitable[object]) -> None:
        try:
            self.texts.append(repr(await call))
        except SyncError as error:
            self.errors.append(error)
            self.texts += ["".join(traceback.format_exception(error)), repr(error), str(error)]


async def drive_every_path(
    client: JsonRpcChainClient, proxy: JsonRpcProxy, anvil: Anvil, contract: AppContract, url: str, key: str
) -> Drive:
    drive = Drive()
    owner = contract.owner
    compose_hash = "0x" + secrets.token_hex(32)
    echo = f"upstream {url} refused key {key}: " + "x" * 1000  # a node that quotes the URL and the key

    def survey() -> Awaitable[object]:
        return client.survey(
            contract=contract.address,
            compose_hash=compose_hash,
            device_id=None,
            signer=owner.address,
            call_data=add_compose_hash_calldata(compose_hash),
        )

    nonce = anvil.web3().eth.get_transaction_count(owner.address, "pending")
    signed = EthAccountSigner().sign(
        owner.private_key,
        UnsignedTx(
            anvil.chain_id,
            nonce,
            contract.address,
            add_compose_hash_calldata(compose_hash),
            90_000,
            Fees(10**11, 10**9),
        ),
    )
    await drive(survey())
    await drive(client.send(signed.raw))
    await drive(client.send(signed.raw))  # nonce too low
    await drive(client.track([signed.tx_hash], sender=owner.address))
    await drive(
        client.compose_hash_logs(
            contract=contract.address, compose_hash=compose_hash, from_block=0, to_block=10
        )
    )
    await drive(
        client.replay(
            sender=anvil.accounts[8].address, to=contract.address, data="0xdfc77223", block_number=1
        )
    )
    await drive(client.block_timestamp(10**9))
    await drive(
        client.survey(
            contract="0x" + "12" * 20,
            compose_hash=compose_hash,
            device_id=None,
            signer=owner.address,
            call_data="0x",
        )
    )
    for method in (
        "eth_chainId",
        "eth_sendRawTransaction",
        "eth_getLogs",
        "eth_call",
        "eth_getBlockByNumber",
    ):
        proxy.override(method, error={"code": -32000, "message": echo, "data": url})
    await drive(survey())
    await drive(client.send(signed.raw))
    await drive(
        client.compose_hash_logs(
            contract=contract.address, compose_hash=compose_hash, from_block=0, to_block=1
        )
    )
    await drive(client.replay(sender=owner.address, to=contract.address, data="0x", block_number=1))
    await drive(client.block_timestamp(1))
    proxy.override("eth_sendRawTransaction", error={"code": -32000, "message": "insufficient funds " + echo})
    await drive(client.send(signed.raw))
    proxy.reset_faults()
    refusal = {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": echo}}
    for body in (
        json.dumps(refusal).encode(),
        json.dumps([refusal]).encode(),
        b"<html>" + url.encode(),
        b"[" * 5000,
    ):
        proxy.fail(200, body=body)
        await drive(client.track([], sender=None))
    for status in (401, 429, 502):
        proxy.fail(status, body=echo.encode())
        await drive(client.track([], sender=None))
    proxy.pad_answers(5 * 1024 * 1024)
    await drive(client.block_timestamp(0))
    proxy.reset_faults()
    proxy.cut(2)
    await drive(client.block_timestamp(0))
    proxy.delay(2.0)
    await drive(client.block_timestamp(0))
    proxy.reset_faults()
    return drive


@pytest.mark.parametrize("style", ["path", "query", "userinfo"])
async def test_nothing_logged_raised_or_printed_carries_the_rpc_key(
    anvil: Anvil, app_contract: AppContract, caplog: pytest.LogCaptureFixture, style: str
) -> None:
    caplog.set_level(logging.DEBUG)
    proxy = JsonRpcProxy(anvil.rpc_url, key=PATH_KEY if style == "path" else None).start()
    connector = Web3ChainConnector(ChainRpcSettings(request_timeout=1.0))
    base = f"127.0.0.1:{proxy.port}"
    url, key = {
        "path": (f"http://{base}/v2/{PATH_KEY}", PATH_KEY),
        "query": (f"http://{base}/?apikey={QUERY_KEY}", QUERY_KEY),
        "userinfo": (f"http://user:{PASSWORD}@{base}/", PASSWORD),
    }[style]
    try:
        client = connector.connect(Secret(url))
        drive = await drive_every_path(client, proxy, anvil, app_contract, url, key)
        refused = connector.connect(
            Secret(f"http://127.0.0.1:{free_port()}/v2/{PATH_KEY}?apikey={QUERY_KEY}")
        )
        await drive(refused.block_timestamp(0))
        with pytest.raises(SyncError) as bad_url:
            connector.connect(Secret(f"ftp://user:{PASSWORD}@{base}/v2/{PATH_KEY}?apikey={QUERY_KEY}"))
        drive.errors.append(bad_url.value)
        drive.texts += [repr(bad_url.value), repr(connector), str(client), repr(client), repr(proxy)]
    finally:
        await connector.aclose()
        proxy.stop()

    assert len(drive.errors) >= 20, "every failure path was driven"
    logs = [record.getMessage() for record in caplog.records] + [caplog.text]
    assert any("chain RPC http://127.0.0.1:" in line for line in logs), (
        "the client's debug logs were captured"
    )
    needles = {key, key[8:24]}
    leaks = [(needle[:9], text[:300]) for text in drive.texts + logs for needle in needles if needle in text]
    assert leaks == []
    for error in drive.errors:
        assert error.__cause__ is None
        assert error.__context__ is None or error.__suppress_context__
        assert len(error.message) < NODE_TEXT_LIMIT + 300, "node text is cut"
    assert any(f"http://{base}/***" in error.message for error in drive.errors), (
        "the endpoint shows, redacted"
    )
