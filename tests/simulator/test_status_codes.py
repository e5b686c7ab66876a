"""Every status code of the brief's table, produced over HTTP with the body the brief describes."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from simtest_helpers import SendTx, api_client, hash_bytes

from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer

Api = Callable[[SimTarget], httpx.Client]
TEXT = {"Content-Type": "text/plain"}
NEW_SCRIPT = "#!/bin/sh\necho v2\n"


def patch_script(client: httpx.Client, cvm_id: str, script: str, **headers: str) -> httpx.Response:
    return client.patch(
        f"/cvms/{cvm_id}/pre-launch-script", content=script.encode(), headers={**TEXT, **headers}
    )


def assert_structured(response: httpx.Response, status: int, error_code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body: dict[str, Any] = response.json()
    assert body["error_code"] == error_code
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["request_id"], str)
    assert isinstance(body["details"], list)
    return body


def details_of(body: dict[str, Any]) -> dict[str, Any]:
    return {d["field"]: d["value"] for d in body["details"]}


def phase1(client: httpx.Client, target: SimTarget, script: str = NEW_SCRIPT) -> str:
    response = patch_script(client, target.id, script)
    assert response.status_code == 465, response.text
    compose_hash: str = details_of(response.json())["compose_hash"]
    return compose_hash


def phase2(
    client: httpx.Client, target: SimTarget, compose_hash: str, tx: str, script: str = NEW_SCRIPT
) -> httpx.Response:
    return patch_script(
        client, target.id, script, **{"X-Compose-Hash": compose_hash, "X-Transaction-Hash": tx}
    )


# -- 400 ---------------------------------------------------------------------------------------------


def test_400_empty_body(sim_offchain_cvm: SimTarget, api: Api) -> None:
    response = api(sim_offchain_cvm).patch(
        f"/cvms/{sim_offchain_cvm.id}/pre-launch-script", content=b"", headers=TEXT
    )
    assert response.status_code == 400
    assert "empty" in response.json()["detail"].lower()


def test_400_bad_content_type(sim_offchain_cvm: SimTarget, api: Api) -> None:
    response = api(sim_offchain_cvm).patch(
        f"/cvms/{sim_offchain_cvm.id}/pre-launch-script", json={"file": "echo"}
    )
    assert response.status_code == 400
    assert "content type" in response.json()["detail"].lower()


def test_400_structured_when_app_compose_exceeds_200_kib(sim_offchain_cvm: SimTarget, api: Api) -> None:
    response = patch_script(api(sim_offchain_cvm), sim_offchain_cvm.id, "#" * (200 * 1024))
    body = assert_structured(response, 400, "ERR-01-004")
    assert "200KB" in body["message"]


def test_multipart_file_is_accepted_like_text(
    sim_offchain_cvm: SimTarget, api: Api, sim: SimulatorServer
) -> None:
    response = api(sim_offchain_cvm).patch(
        f"/cvms/{sim_offchain_cvm.id}/pre-launch-script",
        files={"file": ("prelaunch.sh", NEW_SCRIPT.encode(), "application/x-sh")},
    )
    assert response.status_code == 202, response.text
    assert sim.admin.cvm_state(sim_offchain_cvm.id)["operations"][0]["status"] == "in_progress"


# -- 401 / 403 / 404 -----------------------------------------------------------------------------------


@pytest.mark.parametrize("key", [None, "phak_not-a-key"])
def test_401_without_a_valid_key(sim: SimulatorServer, sim_offchain_cvm: SimTarget, key: str | None) -> None:
    with api_client(sim.base_url, key) as client:
        assert_structured(client.get(f"/cvms/{sim_offchain_cvm.id}"), 401, "ERR-03-001")


def test_403_cvm_of_another_workspace(sim: SimulatorServer, sim_cvm_factory: SimCvmFactory) -> None:
    mine = sim_cvm_factory(onchain=False)
    theirs = sim_cvm_factory(onchain=False)
    with api_client(sim.base_url, mine.api_key) as client:
        assert_structured(client.get(f"/cvms/{theirs.id}"), 403, "ERR-03-003")
        assert_structured(patch_script(client, theirs.id, NEW_SCRIPT), 403, "ERR-03-003")


def test_404_unknown_cvm(sim_offchain_cvm: SimTarget, api: Api) -> None:
    body = assert_structured(api(sim_offchain_cvm).get("/cvms/cvm_doesNotEx"), 404, "ERR-03-005")
    assert details_of(body)["cvm_id"] == "cvm_doesNotEx"


def test_every_identifier_form_resolves(sim_offchain_cvm: SimTarget, api: Api) -> None:
    cvm = sim_offchain_cvm.cvm
    client = api(sim_offchain_cvm)
    for ident in (
        cvm.id,
        cvm.vm_uuid,
        cvm.vm_uuid.replace("-", ""),
        f"app_{cvm.app_id}",
        cvm.app_id,
        cvm.instance_id,
        cvm.name,
        str(cvm.numeric_id),
    ):
        response = client.get(f"/cvms/{ident}")
        assert response.status_code == 200, ident
        assert response.json()["vm_uuid"] == cvm.vm_uuid


# -- 409 ---------------------------------------------------------------------------------------------


def test_409_bare_while_an_operation_runs(sim_offchain_cvm: SimTarget, api: Api) -> None:
    client = api(sim_offchain_cvm)
    assert patch_script(client, sim_offchain_cvm.id, NEW_SCRIPT).status_code == 202
    response = patch_script(client, sim_offchain_cvm.id, "#!/bin/sh\necho v3\n")
    assert response.status_code == 409
    assert "error_code" not in response.json()
    assert "in progress" in response.json()["detail"]


def test_409_with_error_code_is_a_business_error(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api
) -> None:
    sim.admin.inject(method="PATCH", status=409, error_code="ERR-02-009", message="CVM is being deleted")
    body = assert_structured(
        patch_script(api(sim_offchain_cvm), sim_offchain_cvm.id, NEW_SCRIPT), 409, "ERR-02-009"
    )
    assert body["message"] == "CVM is being deleted"


# -- 422 ---------------------------------------------------------------------------------------------


def test_422_validation_error_on_the_unified_patch(sim_offchain_cvm: SimTarget, api: Api) -> None:
    response = api(sim_offchain_cvm).patch(f"/cvms/{sim_offchain_cvm.id}", json={"pre_launch_script": 42})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "pre_launch_script"]
    assert error["type"] == "string_type"


def test_422_validation_error_on_a_query(sim_offchain_cvm: SimTarget, api: Api) -> None:
    response = api(sim_offchain_cvm).get(f"/cvms/{sim_offchain_cvm.id}/operations", params={"limit": 0})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


# -- 465 ---------------------------------------------------------------------------------------------


def test_465_structured(sim_onchain_cvm: SimTarget, api: Api, sim: SimulatorServer) -> None:
    body = assert_structured(
        patch_script(api(sim_onchain_cvm), sim_onchain_cvm.id, NEW_SCRIPT), 465, "ERR-01-005"
    )
    details = details_of(body)
    assert details["compose_hash"].startswith("0x") and len(details["compose_hash"]) == 66
    assert details["app_id"] == sim_onchain_cvm.cvm.app_id
    assert len(details["device_id"]) == 64
    kms_info = details["kms_info"]
    assert kms_info["chain_id"] == sim_onchain_cvm.cvm.chain_id
    assert {"id", "slug", "url", "version", "kms_contract_address", "gateway_app_id"} <= set(kms_info)
    assert (
        sim.admin.cvm_state(sim_onchain_cvm.id)["pending_phase1"]["compose_hash"]
        == details["compose_hash"][2:]
    )


def test_465_nested_under_detail(sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.settings(form_465="nested")
    response = patch_script(api(sim_onchain_cvm), sim_onchain_cvm.id, NEW_SCRIPT)
    assert response.status_code == 465
    nested = response.json()["detail"]
    assert nested["error_code"] == "ERR-01-005"
    assert details_of(nested)["compose_hash"].startswith("0x")


def test_465_legacy_flat(sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api) -> None:
    sim.admin.settings(form_465="flat", hash_0x=False)
    response = patch_script(api(sim_onchain_cvm), sim_onchain_cvm.id, NEW_SCRIPT)
    assert response.status_code == 465
    body = response.json()
    assert "error_code" not in body and "details" not in body
    assert len(body["compose_hash"]) == 64 and not body["compose_hash"].startswith("0x")
    assert body["app_id"] == sim_onchain_cvm.cvm.app_id
    assert {"device_id", "kms_info"} <= set(body)


# -- 466 ---------------------------------------------------------------------------------------------


def test_466_unknown_hash(sim_onchain_cvm: SimTarget, api: Api) -> None:
    response = phase2(api(sim_onchain_cvm), sim_onchain_cvm, "0x" + "ab" * 32, "0x" + "cd" * 32)
    body = assert_structured(response, 466, "ERR-01-006")
    assert "unknown" in body["message"]


def test_466_expired(sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx) -> None:
    client = api(sim_onchain_cvm)
    sim.admin.settings(phase1_ttl_seconds=0.2)
    announced = phase1(client, sim_onchain_cvm)
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    time.sleep(0.3)
    body = assert_structured(phase2(client, sim_onchain_cvm, announced, tx), 466, "ERR-01-006")
    assert "expired" in body["message"]


def test_466_superseded_by_a_newer_phase1(sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx) -> None:
    client = api(sim_onchain_cvm)
    older = phase1(client, sim_onchain_cvm)
    newer = phase1(client, sim_onchain_cvm, "#!/bin/sh\necho newer\n")
    assert newer != older
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(older))
    body = assert_structured(phase2(client, sim_onchain_cvm, older, tx), 466, "ERR-01-006")
    assert "superseded" in body["message"]


def test_466_body_differs_from_phase1(sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    response = phase2(client, sim_onchain_cvm, announced, tx, script=NEW_SCRIPT + " ")
    body = assert_structured(response, 466, "ERR-01-006")
    assert "differs" in body["message"]


def test_466_compose_changed_since_phase1(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx
) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    sim.admin.update_cvm(sim_onchain_cvm.id, docker_compose_file="services: {}\n")
    body = assert_structured(phase2(client, sim_onchain_cvm, announced, tx), 466, "ERR-01-006")
    assert "changed" in body["message"]


# -- 467 ---------------------------------------------------------------------------------------------


def test_467_receipt_missing_after_a_short_retry(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api
) -> None:
    client = api(sim_onchain_cvm)
    sim.admin.settings(receipt_retry_seconds=0.5)
    announced = phase1(client, sim_onchain_cvm)
    started = time.monotonic()
    response = phase2(client, sim_onchain_cvm, announced, "0x" + secrets.token_hex(32))
    assert time.monotonic() - started >= 0.5  # the server retried before giving up
    body = assert_structured(response, 467, "ERR-01-007")
    assert details_of(body)["reason"] == "receipt_missing"


def test_467_reverted(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx, anvil: Any
) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    # Not the owner: mined with a fixed gas limit, the call reverts (OwnableUnauthorizedAccount).
    tx = send_tx(
        sim_onchain_cvm.contract,
        "addComposeHash",
        hash_bytes(announced),
        sender=anvil.accounts[5],
        gas=100_000,
    )
    body = assert_structured(phase2(client, sim_onchain_cvm, announced, tx), 467, "ERR-01-007")
    assert details_of(body)["reason"] == "reverted"


def test_467_wrong_target(sim_cvm_factory: SimCvmFactory, api: Api, send_tx: SendTx) -> None:
    target = sim_cvm_factory(onchain=True)
    other = sim_cvm_factory(onchain=True)
    client = api(target)
    announced = phase1(client, target)
    tx = send_tx(other.contract, "addComposeHash", hash_bytes(announced))
    body = assert_structured(phase2(client, target, announced, tx), 467, "ERR-01-007")
    assert details_of(body)["reason"] == "wrong_target"


def test_467_transaction_without_the_compose_hash_added_log(
    sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx
) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    unrelated = send_tx(sim_onchain_cvm.contract, "addDevice", bytes.fromhex(sim_onchain_cvm.cvm.device_id))
    body = assert_structured(phase2(client, sim_onchain_cvm, announced, unrelated), 467, "ERR-01-007")
    assert details_of(body)["reason"] == "log_missing"


# -- 468 ---------------------------------------------------------------------------------------------


def test_468_hash_not_allowed_on_chain(sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    # The owner registered some other hash: the transaction is real, this hash is not allowed.
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", secrets.token_bytes(32))
    body = assert_structured(phase2(client, sim_onchain_cvm, announced, tx), 468, "ERR-01-008")
    assert details_of(body)["compose_hash"] == "0x" + announced.removeprefix("0x")


def test_468_hash_removed_after_registration(sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx) -> None:
    client = api(sim_onchain_cvm)
    announced = phase1(client, sim_onchain_cvm)
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    send_tx(sim_onchain_cvm.contract, "removeComposeHash", hash_bytes(announced))
    assert_structured(phase2(client, sim_onchain_cvm, announced, tx), 468, "ERR-01-008")


# -- 500 ---------------------------------------------------------------------------------------------


def test_500_when_phala_has_no_rpc_for_the_chain(
    sim: SimulatorServer, sim_cvm_factory: SimCvmFactory, api: Api
) -> None:
    target = sim_cvm_factory(onchain=False, kms_type="ethereum", chain_id=1, app_id="0x" + "11" * 20)
    client = api(target)
    announced = phase1(client, target)
    response = phase2(client, target, announced, "0x" + "22" * 32)
    assert response.status_code == 500
    assert "RPC" in response.json()["detail"]


@pytest.mark.parametrize("status", [500, 503])
def test_500_and_503_injected(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api, status: int
) -> None:
    sim.admin.inject(path="/pre-launch-script$", status=status)
    response = patch_script(api(sim_offchain_cvm), sim_offchain_cvm.id, NEW_SCRIPT)
    assert response.status_code == status
    assert "detail" in response.json()


# -- 202 ---------------------------------------------------------------------------------------------


def test_202_offchain_update_runs_as_an_operation(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api
) -> None:
    client = api(sim_offchain_cvm)
    before = client.get(f"/cvms/{sim_offchain_cvm.id}").json()
    response = patch_script(client, sim_offchain_cvm.id, NEW_SCRIPT)
    assert response.status_code == 202
    body = response.json()
    assert set(body) == {"status", "message", "correlation_id"} and body["status"] == "in_progress"
    status = client.get(f"/cvms/{sim_offchain_cvm.id}/operation-status").json()
    assert status["status"] == "in_progress" and status["correlation_id"] == body["correlation_id"]
    deadline = time.monotonic() + 10
    while client.get(f"/cvms/{sim_offchain_cvm.id}").json()["in_progress"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    after = client.get(f"/cvms/{sim_offchain_cvm.id}").json()
    assert after["compose_hash"] != before["compose_hash"]
    assert after["pre_launch_script_hash"] != before["pre_launch_script_hash"]
    (operation,) = client.get(f"/cvms/{sim_offchain_cvm.id}/operations").json()["items"]
    assert operation["status"] == "completed" and operation["compose_hash"] == after["compose_hash"]
    assert client.get(f"/cvms/{sim_offchain_cvm.id}/operation-status").json()["status"] == "idle"


def test_202_onchain_through_the_unified_patch_with_cached_phase1(
    sim: SimulatorServer, sim_onchain_cvm: SimTarget, api: Api, send_tx: SendTx
) -> None:
    client = api(sim_onchain_cvm)
    response = client.patch(f"/cvms/{sim_onchain_cvm.id}", json={"pre_launch_script": NEW_SCRIPT})
    announced = details_of(assert_structured(response, 465, "ERR-01-005"))["compose_hash"]
    tx = send_tx(sim_onchain_cvm.contract, "addComposeHash", hash_bytes(announced))
    response = client.patch(
        f"/cvms/{sim_onchain_cvm.id}",
        json={},
        headers={"X-Compose-Hash": announced, "X-Transaction-Hash": tx},
    )
    assert response.status_code == 202, response.text
    assert sim.admin.cvm_state(sim_onchain_cvm.id)["operations"][0]["compose_hash"] == announced[2:]
