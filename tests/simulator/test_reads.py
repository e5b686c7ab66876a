"""Read endpoints: operations pagination and filters, compose file forms, script forms."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable

import httpx
from simtest_helpers import wait_for_operation

from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer

Api = Callable[[SimTarget], httpx.Client]


def run_updates(client: httpx.Client, target: SimTarget, count: int) -> list[str]:
    correlation_ids = []
    for index in range(count):
        response = client.patch(
            f"/cvms/{target.id}/pre-launch-script",
            content=f"echo {index}\n".encode(),
            headers={"Content-Type": "text/plain"},
        )
        assert response.status_code == 202
        correlation_ids.append(response.json()["correlation_id"])
        wait_for_operation(client, target.id, correlation_ids[-1])
    return correlation_ids


def test_operations_are_paginated_newest_first(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api
) -> None:
    sim.admin.settings(operation_seconds=0.0)
    client = api(sim_offchain_cvm)
    started = time.time()
    correlation_ids = run_updates(client, sim_offchain_cvm, 3)
    seen: list[str] = []
    params: dict[str, str | int] = {"limit": 2}
    for _page in range(3):
        body = client.get(f"/cvms/{sim_offchain_cvm.id}/operations", params=params).json()
        assert body["total"] == 3
        seen += [item["correlation_id"] for item in body["items"]]
        if body["next_cursor"] is None:
            break
        params = {"limit": 2, "cursor": body["next_cursor"]}
    assert seen == correlation_ids[::-1]
    none = client.get(
        f"/cvms/{sim_offchain_cvm.id}/operations", params={"operation_types": "power_on"}
    ).json()
    assert none["items"] == [] and none["total"] == 0
    future = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started + 3600))
    assert (
        client.get(f"/cvms/{sim_offchain_cvm.id}/operations", params={"start_time": future}).json()["total"]
        == 0
    )


def test_compose_file_as_object_and_raw_text(sim_offchain_cvm: SimTarget, api: Api) -> None:
    client = api(sim_offchain_cvm)
    detail = client.get(f"/cvms/{sim_offchain_cvm.id}").json()
    raw = client.get(f"/cvms/{sim_offchain_cvm.id}/compose_file", params={"raw": "true"})
    assert raw.headers["content-type"].startswith("text/plain")
    assert hashlib.sha256(raw.content).hexdigest() == detail["compose_hash"]
    assert client.get(f"/cvms/{sim_offchain_cvm.id}/compose_file").json() == json.loads(raw.text)


def test_pre_launch_script_as_json_string_or_raw_text(
    sim: SimulatorServer, sim_offchain_cvm: SimTarget, api: Api
) -> None:
    client = api(sim_offchain_cvm)
    assert client.get(f"/cvms/{sim_offchain_cvm.id}/pre-launch-script").json() == "#!/bin/sh\necho v1\n"
    sim.admin.settings(prelaunch_get="text")
    raw = client.get(f"/cvms/{sim_offchain_cvm.id}/pre-launch-script")
    assert raw.text == "#!/bin/sh\necho v1\n"


def test_unknown_versions_fall_back_to_the_nearest_known(sim_offchain_cvm: SimTarget, api: Api) -> None:
    client = api(sim_offchain_cvm)
    path = f"/cvms/{sim_offchain_cvm.id}"
    assert (
        client.get(path, headers={"X-Phala-Version": "2025-12-01"}).json()["id"]
        == sim_offchain_cvm.cvm.numeric_id
    )
    assert client.get(path, headers={"X-Phala-Version": "2027-01-01"}).json()["id"] == sim_offchain_cvm.id
