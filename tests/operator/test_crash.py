"""SIGKILL the operator at each step of the on-chain flow, start it again, and check the outcome:
always Synced, exactly one ComposeHashAdded for the compose hash, exactly one accepted Phase 2."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer

COMPOSE_HASH_ADDED = "0xfecb34306dd9d8b785b54d65489d06afc8822a0893ddacedff40c50a4942d0af"


def in_flight(step: str, *, pending: bool | None = None) -> Callable[[Any], bool]:
    def check(body: Any) -> bool:
        flight = (body.get("status") or {}).get("inFlight") or {}
        if flight.get("step") != step:
            return False
        return pending is None or bool(flight.get("transactions")) == pending

    return check


@pytest.fixture
def slow_chain(anvil: Anvil) -> Iterator[Anvil]:
    """Blocks every 2 s, so the window between broadcast and receipt is wide enough to kill in."""
    anvil.set_block_time(2)
    yield anvil
    anvil.set_block_time(None)


# (name, how to widen the window, when to kill)
KILL_POINTS: list[tuple[str, dict[str, Any], Callable[[Any], bool]]] = [
    (
        "during-phase-1",
        {"method": "PATCH", "path": "pre-launch-script", "latency_ms": 1500, "count": 1},
        in_flight("Uploading"),
    ),
    (
        "verifying-before-signing",
        {"method": "GET", "path": "attestation", "latency_ms": 1500, "count": 1},
        lambda b: (
            (b.get("status") or {}).get("phase") == "Uploading"
            and ((b.get("status") or {}).get("inFlight") or {}).get("step") == "Uploading"
        ),
    ),
    ("after-signing-before-receipt", {}, in_flight("Registering", pending=True)),
    (
        "after-receipt-before-phase-2",
        {"method": "PATCH", "path": "pre-launch-script", "latency_ms": 1500, "count": 2},
        in_flight("Applying"),
    ),
    ("following-the-operation", {}, in_flight("Following")),
]


@pytest.mark.parametrize(("kill_at", "fault", "when"), KILL_POINTS, ids=[k[0] for k in KILL_POINTS])
def test_sigkill_at_each_step_still_syncs_once(
    kill_at: str,
    fault: dict[str, Any],
    when: Callable[[Any], bool],
    setup: Workbench,
    onchain_cvm: SimTarget,
    sim: SimulatorServer,
    slow_chain: Anvil,
    operator_factory: OperatorFactory,
) -> None:
    sim.admin.settings(operation_seconds=3.0)
    if fault:
        sim.admin.inject(cvm=onchain_cvm.id, **fault)
    operator = operator_factory()
    setup.create(onchain_cvm)
    setup.wait("app", when, f"kill point {kill_at}", timeout=60)
    operator.kill()

    operator_factory()
    body = setup.synced(timeout=90)

    compose_hash = body["status"]["composeHash"]
    assert sim.admin.cvm_state(onchain_cvm.id)["pre_launch_script"].startswith("#!/bin/sh\necho 'configured")
    assert compose_hash == "0x" + sim.admin.cvm_state(onchain_cvm.id)["compose_hash"]
    logs = slow_chain.web3().eth.get_logs(
        {
            "address": onchain_cvm.contract.address,  # type: ignore[union-attr]
            "fromBlock": 0,
            "toBlock": "latest",
            "topics": [COMPOSE_HASH_ADDED],
        }
    )
    registered = [bytes(log["data"]).hex() for log in logs]
    assert registered.count(compose_hash.removeprefix("0x")) == 1, registered
    accepted_phase2 = [
        r
        for r in sim.admin.requests()
        if r.method == "PATCH" and r.header("x-compose-hash") and r.status == 202 and r.cvm == onchain_cvm.id
    ]
    assert len(accepted_phase2) == 1
    time.sleep(0)  # keep the operator alive until the assertions ran (stopped by the fixture)
    assert scenario.condition(body, "Stalled").get("status") == "False"
