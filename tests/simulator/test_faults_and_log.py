"""Fault injection, the request log (with API keys redacted) and the concurrency accounting."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Callable

import httpx
import pytest
from simtest_helpers import SendTx, api_client, hash_bytes, wait_for_operation

from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.simulator import AdminError, SimulatorServer, compose_hash, peak_concurrency_of

Api = Callable[[SimTarget], httpx.Client]
TEXT = {"Content-Type": "text/plain"}
NEW_SCRIPT = "#!/bin/sh\necho faults\n"


def test_latency(sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.inject(method="GET", path=r"^/cvms/[^/]+$", latency_ms=300)
    client = api(sim_offchain_cvm)
    started = time.monotonic()
    assert client.get(f"/cvms/{sim_offchain_cvm.id}").status_code == 200
    assert time.monotonic() - started >= 0.3
    started = time.monotonic()
    assert client.get(f"/cvms/{sim_offchain_cvm.id}").status_code == 200
    assert time.monotonic() - started < 0.3  # count=1: used up


def test_bare_409_twice_then_success(sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.inject(method="PATCH", status=409, count=2)
    client = api(sim_offchain_cvm)
    statuses = [
        client.patch(
            f"/cvms/{sim_offchain_cvm.id}/pre-launch-script", content=NEW_SCRIPT.encode(), headers=TEXT
        )
        for _ in range(3)
    ]
    assert [r.status_code for r in statuses] == [409, 409, 202]
    assert "error_code" not in statuses[0].json()


def test_429_with_retry_after(sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.inject(status=429, retry_after="7")
    response = api(sim_offchain_cvm).get(f"/cvms/{sim_offchain_cvm.id}")
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "7"


def test_503_for_one_cvm_only(sim: SimulatorServer, sim_cvm_factory: SimCvmFactory, api: Api) -> None:
    hit = sim_cvm_factory(onchain=False)
    spared = sim_cvm_factory(onchain=False)
    sim.admin.inject(cvm=hit.cvm.vm_uuid, status=503, count=None)
    assert api(spared).get(f"/cvms/{spared.id}").status_code == 200
    assert api(hit).get(f"/cvms/{hit.id}").status_code == 503
    assert api(hit).get(f"/cvms/{hit.cvm.name}/operations").status_code == 503  # any id form
    sim.admin.clear_faults()
    assert api(hit).get(f"/cvms/{hit.id}").status_code == 200


def test_dropped_connection(sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.inject(path="/attestation$", drop=True)
    client = api(sim_offchain_cvm)
    with pytest.raises(httpx.TransportError):
        client.get(f"/cvms/{sim_offchain_cvm.id}/attestation")
    assert client.get(f"/cvms/{sim_offchain_cvm.id}/attestation").status_code == 200
    dropped, served = sim.admin.requests()[-2:]
    assert dropped.dropped and dropped.status is None
    assert not served.dropped and served.status == 200


def test_operation_fails_with_message(sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.inject(fail_operation="image pull failed: registry unreachable")
    client = api(sim_offchain_cvm)
    before = client.get(f"/cvms/{sim_offchain_cvm.id}").json()
    response = client.patch(
        f"/cvms/{sim_offchain_cvm.id}/pre-launch-script", content=NEW_SCRIPT.encode(), headers=TEXT
    )
    operation = wait_for_operation(client, sim_offchain_cvm.id, response.json()["correlation_id"])
    assert operation["status"] == "failed"
    assert operation["error_message"] == "image pull failed: registry unreachable"
    after = client.get(f"/cvms/{sim_offchain_cvm.id}").json()
    assert after["compose_hash"] == before["compose_hash"]  # nothing changed
    assert after["status"] == "running" and after["in_progress"] is False


def test_wrong_compose_hash_in_465(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx
) -> None:
    sim.admin.inject(wrong_compose_hash=True)
    client = api(sim_onchain_cvm)
    current = json.loads(
        client.get(f"/cvms/{sim_onchain_cvm.id}/attestation").json()["tcb_info"]["app_compose"]
    )
    expected = compose_hash(current | {"pre_launch_script": NEW_SCRIPT})
    response = client.patch(
        f"/cvms/{sim_onchain_cvm.id}/pre-launch-script", content=NEW_SCRIPT.encode(), headers=TEXT
    )
    announced = {d["field"]: d["value"] for d in response.json()["details"]}["compose_hash"]
    assert announced != "0x" + expected  # a verifying client refuses to sign this
    # Signed anyway: the server still knows the real hash, so the wrong one is unknown to it.
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    phase2 = client.patch(
        f"/cvms/{sim_onchain_cvm.id}/pre-launch-script",
        content=NEW_SCRIPT.encode(),
        headers={**TEXT, "X-Compose-Hash": announced, "X-Transaction-Hash": tx},
    )
    assert phase2.status_code == 466


def test_request_log_records_exactly_what_was_sent_with_keys_redacted(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget
) -> None:
    sim.admin.clear_requests()
    body = "#!/bin/sh\necho 'ünïcode'\n".encode()
    with httpx.Client(base_url=sim.base_url, timeout=10) as client:
        client.patch(
            f"/cvms/{sim_offchain_cvm.id}/pre-launch-script",
            content=body,
            headers={"x-api-key": sim_offchain_cvm.api_key, "content-type": "text/plain", "X-Custom": "kept"},
        )
    (entry,) = sim.admin.requests()
    assert entry.method == "PATCH"
    assert entry.path == f"/api/v1/cvms/{sim_offchain_cvm.id}/pre-launch-script"
    assert entry.body == body
    assert entry.status == 202
    assert entry.header("X-API-KEY") == "***"
    assert entry.header("x-custom") == "kept"
    assert entry.header("Content-Type") == "text/plain"
    assert entry.started <= (entry.ended or 0)
    # The key appears nowhere in the log, nor in the admin API's view of it.
    raw_log = httpx.get(f"{sim.admin_url}/requests").text
    assert sim_offchain_cvm.api_key not in raw_log
    assert sim_offchain_cvm.api_key not in repr(sim.admin.requests())


def test_peak_concurrency(sim: SimulatorServer, sim_offchain_cvm: SimTarget) -> None:
    sim.admin.inject(method="GET", latency_ms=300, count=None)
    sim.admin.clear_requests()
    barrier = threading.Barrier(4)

    def read() -> None:
        with api_client(sim.base_url, sim_offchain_cvm.api_key) as client:
            barrier.wait(timeout=10)
            assert client.get(f"/cvms/{sim_offchain_cvm.id}").status_code == 200

    threads = [threading.Thread(target=read) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sim.admin.peak_concurrency() == 4
    assert peak_concurrency_of(sim.admin.requests()) == 4
    sim.admin.clear_requests()
    assert sim.admin.peak_concurrency() == 0


def test_reset_restores_the_initial_state(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api
) -> None:
    sim.admin.inject(status=500, count=None)
    sim.admin.settings(form_465="flat")
    assert api(sim_offchain_cvm).get(f"/cvms/{sim_offchain_cvm.id}").status_code == 500
    sim.admin.reset()
    assert sim.admin.faults() == []
    assert sim.admin.requests() == []
    assert sim.admin.settings()["form_465"] == "structured"
    assert (
        api(sim_offchain_cvm).get(f"/cvms/{sim_offchain_cvm.id}").status_code == 401
    )  # its workspace is gone


def test_admin_rejects_bad_rules(sim: SimulatorServer) -> None:
    with pytest.raises(AdminError, match="unknown fault fields"):
        sim.admin.inject(stauts=500)
    with pytest.raises(AdminError, match="needs latency_ms, status or drop"):
        sim.admin.inject(path="x")
    with pytest.raises(AdminError, match="form_465"):
        sim.admin.settings(form_465="weird")


def test_seeded_cvm_survives_reset_with_the_same_ids(anvil: object) -> None:
    seed = {
        "workspaces": [{"name": "demo", "api_key": "phak_demo_key"}],
        "cvms": [{"workspace": "demo", "name": "seeded-app", "pre_launch_script": "echo seeded\n"}],
    }
    with SimulatorServer(seed=seed) as server:
        first = server.admin.cvm_state("seeded-app")
        with api_client(server.base_url, "phak_demo_key") as client:
            assert client.get("/cvms/seeded-app/pre-launch-script").json() == "echo seeded\n"
        server.admin.reset()
        second = server.admin.cvm_state("seeded-app")
        assert (first["id"], first["vm_uuid"], first["app_id"]) == (
            second["id"],
            second["vm_uuid"],
            second["app_id"],
        )
        assert second["compose_hash"] == hashlib.sha256(second["app_compose"].encode()).hexdigest()
