"""The API key never reaches a log record, an exception text, a repr or a traceback.

One run through every error path of the client (over real HTTP against the simulator, and against
a mock server for what the simulator cannot produce: malformed answers echoing the key, answers that
are not HTTP and quote it, a proxy with credentials) with every logger at DEBUG, aiohttp's and
asyncio's included; then everything captured is scanned for the secrets in play.
"""

from __future__ import annotations

import base64
import logging
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from phala_test_support import MockCloud, Reply, Request, SendTx, wait_until_idle

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory
from cvm_prelaunch_localenv.processes import free_port
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.domain.errors import RegistrationRequired, RetryLater, SyncError
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSettings

CANARY_KEY = "phak_CANARY_4f1d2c3b9a8e7d6c5b4a3928"
WRONG_KEY = "phak_WRONGCANARY_0a9b8c7d6e5f4a3b2c1d"
SCRIPT = b"#!/bin/sh\necho leak-test\n"
RPC_SECRET = "RPCSECRET0f9e8d7c6b5a4f3e2d1c"
RPC_URL_WITH_KEY = f"http://127.0.0.1:{free_port()}/v2/{RPC_SECRET}"
PROXY_SECRET = "PROXYSECRET5e4d3c2b1a0f9e8d"


class Captured:
    """Every text the client produced: log records and everything about raised exceptions."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.errors: list[BaseException] = []

    async def failure(self, call: Awaitable[object]) -> BaseException:
        try:
            await call
        except (SyncError, ValueError) as exc:
            self.record(exc)
            return exc
        raise AssertionError("expected a failure")

    def record(self, exc: BaseException) -> None:
        self.errors.append(exc)
        self.texts.extend(traceback.format_exception(exc))
        seen: BaseException | None = exc
        while seen is not None:
            self.texts += [str(seen), repr(seen), repr(seen.args), repr(vars(seen))]
            seen = seen.__cause__ or seen.__context__


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Captured:
    caplog.set_level(logging.DEBUG)
    for name in ("aiohttp", "asyncio", "cvm_prelaunch_operator"):
        caplog.set_level(logging.DEBUG, logger=name)
    return Captured()


async def test_no_secret_in_anything_the_client_logs_or_raises(
    captured: Captured,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    send_tx: SendTx,
    anvil: Anvil,
    cloud: MockCloud,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    onchain = sim_cvm_factory(onchain=True, api_key=CANARY_KEY, pre_launch_script="#!/bin/sh\necho v1\n")
    offchain = sim_cvm_factory(onchain=False, workspace=onchain.cvm.workspace_id)
    other = sim_cvm_factory(onchain=False)
    settings = PhalaCloudSettings(
        base_url=sim.base_url, connect_timeout=1.0, read_timeout=1.0, max_concurrency=2
    )
    client = PhalaCloudClient(settings)
    session = client.for_api_key(Secret(CANARY_KEY))
    fail = captured.failure
    try:
        # The happy path logs too.
        await session.get_cvm(onchain.id)
        await session.get_pre_launch_script(onchain.id)
        await session.get_app_compose(onchain.id)
        # 401 with a wrong key (itself a secret), 403, 404.
        await fail(client.for_api_key(Secret(WRONG_KEY)).get_cvm(onchain.id))
        await fail(session.get_cvm(other.id))
        await fail(session.get_cvm("cvm_nothere"))
        # 465 in all forms, then 466, 467, 468 in Phase 2.
        challenge = None
        for form in ("structured", "nested", "flat"):
            sim.admin.settings(form_465=form)
            error = await fail(session.patch_pre_launch_script(onchain.id, SCRIPT))
            assert isinstance(error, RegistrationRequired)
            challenge = error.challenge
        assert challenge is not None
        await fail(
            session.patch_pre_launch_script(
                onchain.id, SCRIPT, compose_hash="0x" + "ab" * 32, transaction_hash="0x" + "cd" * 32
            )
        )
        sim.admin.settings(receipt_retry_seconds=0.1)
        await fail(
            session.patch_pre_launch_script(
                onchain.id, SCRIPT, compose_hash=challenge.compose_hash, transaction_hash="0x" + "ee" * 32
            )
        )
        assert onchain.contract is not None
        unrelated = send_tx(onchain.contract, "addComposeHash", b"\x01" * 32)
        await fail(
            session.patch_pre_launch_script(
                onchain.id, SCRIPT, compose_hash=challenge.compose_hash, transaction_hash=unrelated
            )
        )
        # 409 bare and with a code, 422, 429, 500, 503, dropped connections, a timeout.
        await session.patch_pre_launch_script(offchain.id, SCRIPT)
        await fail(session.patch_pre_launch_script(offchain.id, SCRIPT + b"#"))
        for rule in (
            {"status": 409, "error_code": "ERR-02-009"},
            {"status": 422},
            {"status": 429, "retry_after": "2"},
            {"status": 500},
            {"status": 503},
            {"drop": True},
        ):
            sim.admin.inject(method="PATCH", **rule)
            await fail(session.patch_pre_launch_script(onchain.id, SCRIPT))
        sim.admin.inject(method="GET", drop=True, count=2)
        await fail(session.get_cvm(onchain.id))
        sim.admin.inject(method="GET", latency_ms=1300)
        await fail(session.get_cvm(onchain.id))
        # Phala's side failing to reach an RPC whose URL carries a provider key: a 500.
        sim.admin.settings(rpc_urls={1: RPC_URL_WITH_KEY})
        keyed = sim_cvm_factory(
            onchain=False,
            workspace=onchain.cvm.workspace_id,
            kms_type="ethereum",
            chain_id=1,
            app_id="0x" + "11" * 20,
        )
        announced = await fail(session.patch_pre_launch_script(keyed.id, SCRIPT))
        assert isinstance(announced, RegistrationRequired)
        rpc_failure = await fail(
            session.patch_pre_launch_script(
                keyed.id,
                SCRIPT,
                compose_hash=announced.challenge.compose_hash,
                transaction_hash="0x" + "22" * 32,
            )
        )
        assert isinstance(rpc_failure, RetryLater)
        assert rpc_failure.status_code == 500
        # Caller mistakes and inputs refused before sending.
        await fail(session.patch_pre_launch_script(onchain.id, b""))
        await fail(session.patch_pre_launch_script(onchain.id, SCRIPT, compose_hash=challenge.compose_hash))
        await fail(session.get_cvm("../" + CANARY_KEY))
        await fail(client.for_api_key(Secret(CANARY_KEY + "\n")).get_cvm(onchain.id))
    finally:
        await client.aclose()

    # Nothing listening at all.
    unreachable = PhalaCloudSettings(base_url=f"http://127.0.0.1:{free_port()}/api/v1", connect_timeout=0.5)
    async with PhalaCloudClient(unreachable) as down:
        await fail(down.for_api_key(Secret(CANARY_KEY)).get_cvm(onchain.id))

    # What the simulator cannot serve: malformed, oversized and redirected answers, an echoing server,
    # answers that are not HTTP (aiohttp quotes the offending bytes in its error).
    def key(request: Request) -> bytes:
        return request.headers["x-api-key"].encode()

    answers: list[Callable[[Request], Reply]] = [
        lambda request: Reply(200, content=b"<html>" + key(request)),
        lambda request: Reply(200, json={"id": ["x"], "app_id": request.headers["x-api-key"]}),
        lambda request: Reply(401, json={"detail": f"key {request.headers['x-api-key']} revoked"}),
        lambda request: Reply(302, headers={"location": f"https://evil.example/{CANARY_KEY}"}),
        lambda request: Reply(465, json={"compose_hash": request.headers["x-api-key"]}),
        lambda request: Reply(raw=b"HTTP/1.1 2" + key(request) + b" OK\r\n\r\n"),
        lambda request: Reply(raw=b"HTTP/1.1 200 OK\r\nContent-Length: " + key(request) + b"\r\n\r\n"),
        lambda request: Reply(raw=b"HTTP/1.1 200 OK\r\n" + key(request) + b"\r\n\r\n"),
        lambda request: Reply(raw=key(request) + b"\r\n\r\n"),
        lambda request: Reply(content=b"not gzip " + key(request), headers={"Content-Encoding": "gzip"}),
    ]
    quoted = 0
    for answer in answers:
        cloud.handler = answer
        error = await fail(cloud.new_client().for_api_key(Secret(CANARY_KEY)).get_cvm("cvm_x"))
        quoted += "***" in str(error)
    assert quoted >= 6  # the key was echoed, quoted and masked, not merely absent

    # A proxy with credentials, unreachable, and one that answers for the host.
    for name in ("http_proxy", "HTTP_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PROXY_SECRET}@127.0.0.1:{free_port()}")
    behind_proxy = cloud.new_client()
    await fail(behind_proxy.for_api_key(Secret(CANARY_KEY)).get_cvm("cvm_x"))
    monkeypatch.setenv("HTTP_PROXY", f"http://user:{PROXY_SECRET}@127.0.0.1:{cloud.port}")
    cloud.handler = lambda request: Reply(407, json={"detail": request.headers.get("proxy-authorization")})
    await fail(cloud.new_client().for_api_key(Secret(CANARY_KEY)).get_cvm("cvm_x"))

    assert len(captured.errors) >= 35
    await wait_until_idle(sim)
    output = capfd.readouterr()
    everything: list[Any] = [
        *captured.texts,
        *(record.getMessage() for record in caplog.records),
        *(repr(record.args) for record in caplog.records),
        caplog.text,
        output.out,
        output.err,
        repr(session),
        repr(client),
        repr(behind_proxy),
    ]
    # Captured at DEBUG indeed (aiohttp logs no request, unlike httpx: the client's own lines it is).
    assert any(
        record.name == "cvm_prelaunch_operator.phala.client" and record.levelno == logging.DEBUG
        for record in caplog.records
    )
    secrets_in_play = [
        PROXY_SECRET,
        base64.b64encode(f"user:{PROXY_SECRET}".encode()).decode(),  # as in Proxy-Authorization
        RPC_SECRET,
        CANARY_KEY,
        WRONG_KEY,
        *(a.private_key.reveal().removeprefix("0x") for a in anvil.accounts),
    ]
    # Any 12 characters in a row of a secret count: a cut-off snippet must not leak a prefix either.
    needles = {secret[i : i + 12] for secret in secrets_in_play for i in range(len(secret) - 11)}
    needles -= {n for n in needles if n.startswith("phak_")}  # the public key prefix plus 7 characters
    for text in everything:
        for needle in needles:
            assert needle not in str(text), f"a secret leaked into: {str(text)[:200]}"
