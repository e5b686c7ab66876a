"""The Phala Cloud client against the simulator over real HTTP: every call, every status code of the
two-phase flow (with on-chain transactions on anvil), all three 465 body forms, transport faults."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest
from phala_test_support import Observed, SendTx, wait_until_idle

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer, peak_concurrency_of
from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.domain.compose_hash import verify_compose_hash
from cvm_prelaunch_operator.domain.errors import (
    Permanent,
    RecheckChain,
    RegistrationRequired,
    RetryLater,
    StartOver,
)
from cvm_prelaunch_operator.domain.models import ComposeHashChallenge
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSession, PhalaCloudSettings
from cvm_prelaunch_operator.phala.client import MAX_SCRIPT_BYTES

NEW_SCRIPT = b"#!/bin/sh\necho v2\n"


def session_for(client: PhalaCloudClient, target: SimTarget) -> PhalaCloudSession:
    return client.for_api_key(Secret(target.api_key))


def hash_bytes(compose_hash: str) -> bytes:
    return bytes.fromhex(compose_hash.removeprefix("0x"))


async def phase1(
    session: PhalaCloudSession, target: SimTarget, script: bytes = NEW_SCRIPT
) -> ComposeHashChallenge:
    with pytest.raises(RegistrationRequired) as required:
        await session.patch_pre_launch_script(target.id, script)
    return required.value.challenge


async def wait_for_operation(session: PhalaCloudSession, cvm_id: str, correlation_id: str) -> str:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        operation = await session.find_operation(cvm_id, correlation_id)
        if operation is not None and operation.status != "in_progress":
            return operation.status
        await asyncio.sleep(0.05)
    raise AssertionError(f"operation {correlation_id} did not finish")


# --- reads ----------------------------------------------------------------------------------------------


async def test_get_cvm(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    info = await session.get_cvm(sim_onchain_cvm.id)
    state = sim.admin.cvm_state(sim_onchain_cvm.id)
    assert info.id == sim_onchain_cvm.id
    assert info.app_id == sim_onchain_cvm.cvm.app_id.lower().removeprefix("0x")
    assert info.on_chain
    assert info.chain_id == sim_onchain_cvm.cvm.chain_id
    assert info.app_contract is not None
    assert info.app_contract.lower() == sim_onchain_cvm.contract.address.lower()  # type: ignore[union-attr]
    assert info.compose_hash is not None
    assert info.compose_hash.removeprefix("0x") == state["compose_hash"]
    assert info.status == "running"
    assert not info.in_progress
    # Every identifier form the API accepts reads the same CVM.
    for identifier in (
        sim_onchain_cvm.cvm.vm_uuid,
        sim_onchain_cvm.cvm.vm_uuid.replace("-", ""),
        info.app_id,
    ):
        assert (await session.get_cvm(identifier)).id == info.id


@pytest.mark.parametrize("form", ["json", "text"])
async def test_get_pre_launch_script_in_both_forms(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer, form: str
) -> None:
    sim.admin.settings(prelaunch_get=form)
    script = await session_for(sim_client, sim_offchain_cvm).get_pre_launch_script(sim_offchain_cvm.id)
    assert script == "#!/bin/sh\necho v1\n"


async def test_get_app_compose_is_what_the_cvm_runs(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    text = await session.get_app_compose(sim_onchain_cvm.id)
    info = await session.get_cvm(sim_onchain_cvm.id)
    assert text == sim.admin.cvm_state(sim_onchain_cvm.id)["app_compose"]
    assert info.compose_hash is not None
    assert hashlib.sha256(text.encode()).hexdigest() == info.compose_hash.removeprefix("0x")


async def test_requests_carry_version_and_user_agent_and_the_key_only_in_its_header(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer, observed: Observed
) -> None:
    await session_for(sim_client, sim_offchain_cvm).get_cvm(sim_offchain_cvm.id)
    (logged,) = sim.admin.requests()
    assert logged.header("x-phala-version") == "2026-06-23"
    assert (logged.header("user-agent") or "").startswith(f"cvm-prelaunch-operator/{__version__} ")
    assert logged.header("x-api-key") == "***"  # the simulator masks it in its log: it was sent
    assert sim_offchain_cvm.api_key not in logged.path + logged.query
    assert [(endpoint, status) for endpoint, status, _ in observed] == [("GET /cvms/{id}", 200)]


# --- off-chain update, operations, 409 ----------------------------------------------------------------------


async def test_offchain_update_runs_as_an_operation(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    session = session_for(sim_client, sim_offchain_cvm)
    accepted = await session.patch_pre_launch_script(sim_offchain_cvm.id, NEW_SCRIPT)
    assert accepted.status == "in_progress"
    current = await session.get_operation_status(sim_offchain_cvm.id)
    assert not current.idle
    assert current.correlation_id == accepted.correlation_id
    info = await session.get_cvm(sim_offchain_cvm.id)
    assert info.in_progress
    assert info.progress_correlation_id in (None, accepted.correlation_id)
    # A second update while the first runs: a bare 409, transient.
    with pytest.raises(RetryLater) as busy:
        await session.patch_pre_launch_script(sim_offchain_cvm.id, b"#!/bin/sh\necho v3\n")
    assert busy.value.status_code == 409
    assert busy.value.error_code is None
    assert await wait_for_operation(session, sim_offchain_cvm.id, accepted.correlation_id) == "completed"
    assert await session.get_pre_launch_script(sim_offchain_cvm.id) == NEW_SCRIPT.decode()
    assert (await session.get_operation_status(sim_offchain_cvm.id)).idle
    (logged,) = [r for r in sim.admin.requests() if r.method == "PATCH" and r.status == 202]
    assert logged.body == NEW_SCRIPT
    assert logged.header("content-type") == "text/plain"


async def test_find_operation_across_pages(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    session = session_for(sim_client, sim_offchain_cvm)
    sim.admin.settings(operation_seconds=0)
    ids = []
    for n in range(3):
        accepted = await session.patch_pre_launch_script(sim_offchain_cvm.id, f"echo {n}\n".encode())
        await wait_for_operation(session, sim_offchain_cvm.id, accepted.correlation_id)
        ids.append(accepted.correlation_id)
    page = await session.list_operations(sim_offchain_cvm.id, limit=1)
    assert [op.correlation_id for op in page.items] == [ids[-1]]  # newest first
    assert page.next_cursor is not None
    assert page.total == 3
    second = await session.list_operations(sim_offchain_cvm.id, cursor=page.next_cursor, limit=1)
    assert [op.correlation_id for op in second.items] == [ids[1]]
    found = await session.find_operation(sim_offchain_cvm.id, ids[0])
    assert found is not None
    assert found.status == "completed"
    assert await session.find_operation(sim_offchain_cvm.id, "no-such-operation") is None


async def test_failed_operation(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    session = session_for(sim_client, sim_offchain_cvm)
    sim.admin.inject(fail_operation="image pull failed")
    accepted = await session.patch_pre_launch_script(sim_offchain_cvm.id, NEW_SCRIPT)
    assert await wait_for_operation(session, sim_offchain_cvm.id, accepted.correlation_id) == "failed"
    operation = await session.find_operation(sim_offchain_cvm.id, accepted.correlation_id)
    assert operation is not None
    assert operation.error_message is not None
    assert "image pull failed" in operation.error_message


# --- the on-chain two-phase flow ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "with_0x"),
    [("structured", True), ("structured", False), ("nested", True), ("flat", False), ("flat", True)],
)
async def test_two_phase_update_with_every_465_form(
    sim_client: PhalaCloudClient,
    sim_onchain_cvm: SimTarget,
    sim: SimulatorServer,
    send_tx: SendTx,
    form: str,
    with_0x: bool,
) -> None:
    sim.admin.settings(form_465=form, hash_0x=with_0x)
    session = session_for(sim_client, sim_onchain_cvm)
    info = await session.get_cvm(sim_onchain_cvm.id)
    current_text = await session.get_app_compose(sim_onchain_cvm.id)

    with pytest.raises(RegistrationRequired) as required:
        await session.patch_pre_launch_script(sim_onchain_cvm.id, NEW_SCRIPT)
    error = required.value
    challenge = error.challenge
    assert error.status_code == 465
    assert error.reason == Reason.REGISTERING_ON_CHAIN
    assert challenge.compose_hash.startswith("0x") == with_0x
    assert challenge.app_id == info.app_id
    assert challenge.device_id == sim_onchain_cvm.cvm.device_id
    assert challenge.chain_id == sim_onchain_cvm.cvm.chain_id
    assert challenge.kms_info.get("chain_id") == sim_onchain_cvm.cvm.chain_id
    if form != "flat":
        assert error.error_code == "ERR-01-005"
        assert error.request_id

    verification = verify_compose_hash(current_text, info.compose_hash, NEW_SCRIPT, challenge.compose_hash)
    assert verification.outcome == "match", verification.detail

    assert sim_onchain_cvm.contract is not None
    tx_hash = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(challenge.compose_hash))
    accepted = await session.patch_pre_launch_script(
        sim_onchain_cvm.id, NEW_SCRIPT, compose_hash=challenge.compose_hash, transaction_hash=tx_hash
    )
    assert await wait_for_operation(session, sim_onchain_cvm.id, accepted.correlation_id) == "completed"
    after = await session.get_cvm(sim_onchain_cvm.id)
    assert after.compose_hash is not None
    assert after.compose_hash.removeprefix("0x") == challenge.compose_hash_hex.removeprefix("0x")

    phase1_request, phase2_request = [r for r in sim.admin.requests() if r.method == "PATCH"]
    assert phase1_request.body == phase2_request.body == NEW_SCRIPT  # byte-identical between phases
    assert phase1_request.header("x-compose-hash") is None
    assert phase2_request.header("x-compose-hash") == challenge.compose_hash  # echoed unchanged
    assert phase2_request.header("x-transaction-hash") == tx_hash


async def test_a_wrong_hash_in_the_465_is_caught_by_verification(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    sim.admin.inject(wrong_compose_hash=True)
    session = session_for(sim_client, sim_onchain_cvm)
    info = await session.get_cvm(sim_onchain_cvm.id)
    current_text = await session.get_app_compose(sim_onchain_cvm.id)
    challenge = await phase1(session, sim_onchain_cvm)
    verification = verify_compose_hash(current_text, info.compose_hash, NEW_SCRIPT, challenge.compose_hash)
    assert verification.outcome == "mismatch"
    assert verification.claimed == challenge.compose_hash


async def test_466_unknown_hash(sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    with pytest.raises(StartOver) as failure:
        await session.patch_pre_launch_script(
            sim_onchain_cvm.id, NEW_SCRIPT, compose_hash="0x" + "ab" * 32, transaction_hash="0x" + "cd" * 32
        )
    assert failure.value.status_code == 466
    assert failure.value.error_code == "ERR-01-006"
    assert failure.value.reason == Reason.REGISTRATION_REJECTED
    assert "unknown" in str(failure.value)
    assert failure.value.request_id


async def test_466_superseded(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, send_tx: SendTx
) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    older = await phase1(session, sim_onchain_cvm)
    await phase1(session, sim_onchain_cvm, b"#!/bin/sh\necho newer\n")
    assert sim_onchain_cvm.contract is not None
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(older.compose_hash))
    with pytest.raises(StartOver, match="superseded"):
        await session.patch_pre_launch_script(
            sim_onchain_cvm.id, NEW_SCRIPT, compose_hash=older.compose_hash, transaction_hash=tx
        )


async def test_467_receipt_missing(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    sim.admin.settings(receipt_retry_seconds=0.2)
    session = session_for(sim_client, sim_onchain_cvm)
    challenge = await phase1(session, sim_onchain_cvm)
    with pytest.raises(RecheckChain) as failure:
        await session.patch_pre_launch_script(
            sim_onchain_cvm.id,
            NEW_SCRIPT,
            compose_hash=challenge.compose_hash,
            transaction_hash="0x" + secrets.token_hex(32),
        )
    assert failure.value.status_code == 467
    assert failure.value.error_code == "ERR-01-007"
    assert failure.value.reason == Reason.REGISTRATION_REJECTED


async def test_467_reverted(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, send_tx: SendTx, anvil: Anvil
) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    challenge = await phase1(session, sim_onchain_cvm)
    assert sim_onchain_cvm.contract is not None
    tx = send_tx(
        sim_onchain_cvm.contract,
        "addComposeHash",
        hash_bytes(challenge.compose_hash),
        sender=anvil.accounts[5],  # not the owner: mined with a fixed gas limit, it reverts
        gas=100_000,
    )
    with pytest.raises(RecheckChain):
        await session.patch_pre_launch_script(
            sim_onchain_cvm.id, NEW_SCRIPT, compose_hash=challenge.compose_hash, transaction_hash=tx
        )


async def test_468_hash_not_allowed(
    sim_client: PhalaCloudClient, sim_onchain_cvm: SimTarget, send_tx: SendTx
) -> None:
    session = session_for(sim_client, sim_onchain_cvm)
    challenge = await phase1(session, sim_onchain_cvm)
    assert sim_onchain_cvm.contract is not None
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", secrets.token_bytes(32))  # some other hash
    with pytest.raises(Permanent) as failure:
        await session.patch_pre_launch_script(
            sim_onchain_cvm.id, NEW_SCRIPT, compose_hash=challenge.compose_hash, transaction_hash=tx
        )
    assert failure.value.status_code == 468
    assert failure.value.error_code == "ERR-01-008"
    assert failure.value.reason == Reason.COMPOSE_HASH_NOT_ALLOWED


async def test_500_when_phala_has_no_rpc_for_the_chain(
    sim_client: PhalaCloudClient, sim_cvm_factory: SimCvmFactory
) -> None:
    target = sim_cvm_factory(onchain=False, kms_type="ethereum", chain_id=1, app_id="0x" + "11" * 20)
    session = session_for(sim_client, target)
    challenge = await phase1(session, target)
    with pytest.raises(RetryLater) as failure:
        await session.patch_pre_launch_script(
            target.id, NEW_SCRIPT, compose_hash=challenge.compose_hash, transaction_hash="0x" + "22" * 32
        )
    assert failure.value.status_code == 500
    assert "RPC" in str(failure.value)


# --- the rest of the status table ---------------------------------------------------------------------------


async def test_400_when_compose_and_script_exceed_200_kib(
    sim_client: PhalaCloudClient, sim_cvm_factory: SimCvmFactory
) -> None:
    target = sim_cvm_factory(onchain=False, docker_compose_file="# " + "x" * (150 * 1024) + "\n")
    script = b"#" * (MAX_SCRIPT_BYTES - 1024)  # fits alone, not with the compose file
    with pytest.raises(Permanent) as failure:
        await session_for(sim_client, target).patch_pre_launch_script(target.id, script)
    assert failure.value.status_code == 400
    assert failure.value.reason == Reason.INVALID_SCRIPT


async def test_401_with_a_wrong_key(sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget) -> None:
    with pytest.raises(Permanent) as failure:
        await sim_client.for_api_key(Secret("phak_not_a_real_key")).get_cvm(sim_offchain_cvm.id)
    assert failure.value.status_code == 401
    assert failure.value.reason == Reason.UNAUTHORIZED
    assert failure.value.error_code == "ERR-03-001"


async def test_403_cvm_of_another_workspace(
    sim_client: PhalaCloudClient, sim_cvm_factory: SimCvmFactory
) -> None:
    mine = sim_cvm_factory(onchain=False)
    theirs = sim_cvm_factory(onchain=False)
    with pytest.raises(Permanent) as failure:
        await session_for(sim_client, mine).get_cvm(theirs.id)
    assert failure.value.status_code == 403
    assert failure.value.reason == Reason.FORBIDDEN


async def test_404_unknown_cvm(sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget) -> None:
    session = session_for(sim_client, sim_offchain_cvm)
    for call in (session.get_cvm, session.get_pre_launch_script, session.get_app_compose):
        with pytest.raises(Permanent) as failure:
            await call("cvm_doesnotexist")
        assert failure.value.status_code == 404
        assert failure.value.reason == Reason.CVM_NOT_FOUND
        assert "CVM cvm_doesnotexist not found" in str(failure.value)


async def test_409_with_an_error_code_is_permanent(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    sim.admin.inject(method="PATCH", status=409, error_code="ERR-02-009", message="CVM is being deleted")
    with pytest.raises(Permanent) as failure:
        await session_for(sim_client, sim_offchain_cvm).patch_pre_launch_script(
            sim_offchain_cvm.id, NEW_SCRIPT
        )
    assert failure.value.reason == Reason.REMOTE_REJECTED
    assert failure.value.error_code == "ERR-02-009"
    assert "CVM is being deleted" in str(failure.value)


async def test_422_on_the_upload_is_an_invalid_script(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    sim.admin.inject(method="PATCH", status=422, message="script rejected")
    with pytest.raises(Permanent) as failure:
        await session_for(sim_client, sim_offchain_cvm).patch_pre_launch_script(
            sim_offchain_cvm.id, NEW_SCRIPT
        )
    assert failure.value.status_code == 422
    assert failure.value.reason == Reason.INVALID_SCRIPT


@pytest.mark.parametrize(("status", "retry_after"), [(429, "3"), (500, None), (503, "http-date")])
async def test_transient_statuses_carry_retry_after(
    sim_client: PhalaCloudClient,
    sim_offchain_cvm: SimTarget,
    sim: SimulatorServer,
    status: int,
    retry_after: str | None,
) -> None:
    header = retry_after
    if retry_after == "http-date":
        header = format_datetime(datetime.now(UTC) + timedelta(seconds=30), usegmt=True)
    sim.admin.inject(path="/pre-launch-script$", status=status, retry_after=header)
    with pytest.raises(RetryLater) as failure:
        await session_for(sim_client, sim_offchain_cvm).patch_pre_launch_script(
            sim_offchain_cvm.id, NEW_SCRIPT
        )
    assert failure.value.status_code == status
    assert failure.value.reason == Reason.REMOTE_UNAVAILABLE
    if retry_after == "3":
        assert failure.value.retry_after == 3.0
    elif retry_after == "http-date":
        assert failure.value.retry_after is not None
        assert 20 < failure.value.retry_after <= 30
    else:
        assert failure.value.retry_after is None


# --- transport faults over real sockets --------------------------------------------------------------


async def test_a_dropped_get_is_retried_once(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer, observed: Observed
) -> None:
    sim.admin.inject(method="GET", drop=True)
    info = await session_for(sim_client, sim_offchain_cvm).get_cvm(sim_offchain_cvm.id)
    assert info.id == sim_offchain_cvm.id
    assert [r.dropped for r in sim.admin.requests()] == [True, False]
    assert [status for _, status, _ in observed] == [None, 200]


async def test_a_dropped_patch_is_not_retried(
    sim_client: PhalaCloudClient, sim_offchain_cvm: SimTarget, sim: SimulatorServer
) -> None:
    sim.admin.inject(method="PATCH", drop=True)
    with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
        await session_for(sim_client, sim_offchain_cvm).patch_pre_launch_script(
            sim_offchain_cvm.id, NEW_SCRIPT
        )
    assert len([r for r in sim.admin.requests() if r.method == "PATCH"]) == 1


async def test_a_slow_answer_times_out(sim: SimulatorServer, sim_offchain_cvm: SimTarget) -> None:
    sim.admin.inject(method="GET", latency_ms=1500)
    settings = PhalaCloudSettings(base_url=sim.base_url, read_timeout=0.3)
    async with PhalaCloudClient(settings) as client:
        started = time.monotonic()
        with pytest.raises(RetryLater, match="did not answer in time"):
            await session_for(client, sim_offchain_cvm).get_cvm(sim_offchain_cvm.id)
        assert time.monotonic() - started < 1.4
    await wait_until_idle(sim)  # the server still sleeps on the abandoned request


async def test_nothing_listening(sim_offchain_cvm: SimTarget) -> None:
    from cvm_prelaunch_localenv.processes import free_port

    settings = PhalaCloudSettings(base_url=f"http://127.0.0.1:{free_port()}/api/v1", connect_timeout=1.0)
    async with PhalaCloudClient(settings) as client:
        with pytest.raises(RetryLater, match="cannot reach Phala Cloud"):
            await session_for(client, sim_offchain_cvm).get_cvm(sim_offchain_cvm.id)


async def test_concurrency_limit_holds_on_the_wire(
    sim: SimulatorServer, sim_cvm_factory: SimCvmFactory
) -> None:
    targets = [sim_cvm_factory(onchain=False) for _ in range(4)]
    sim.admin.inject(method="GET", latency_ms=40, count=None)
    sim.admin.clear_requests()
    settings = PhalaCloudSettings(base_url=sim.base_url, max_concurrency=3)
    async with PhalaCloudClient(settings) as client:
        sessions = [session_for(client, target) for target in targets]
        await asyncio.gather(*(sessions[n % 4].get_cvm(targets[n % 4].id) for n in range(24)))
        assert client.peak_in_flight == 3
    logged = sim.admin.requests()
    assert len(logged) == 24
    assert peak_concurrency_of(logged) <= 3
    assert sim.admin.peak_concurrency() <= 3


async def test_sessions_of_all_keys_share_one_reused_connection(
    sim_client: PhalaCloudClient,
    sim_cvm_factory: SimCvmFactory,
    sim: SimulatorServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    first, second = sim_cvm_factory(onchain=False), sim_cvm_factory(onchain=False)
    # Every TCP connection the client opens goes through the event loop's create_connection.
    loop = asyncio.get_running_loop()
    opened: list[object] = []
    create_connection = loop.create_connection

    async def counting(*args: Any, **kwargs: Any) -> Any:
        connection = await create_connection(*args, **kwargs)
        opened.append(connection[0].get_extra_info("peername"))
        return connection

    monkeypatch.setattr(loop, "create_connection", counting)
    for _ in range(3):
        await session_for(sim_client, first).get_cvm(first.id)
        await session_for(sim_client, second).get_pre_launch_script(second.id)
    assert opened == [("127.0.0.1", sim.port)]
    assert len(sim.admin.requests()) == 6
