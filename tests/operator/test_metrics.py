"""The metrics endpoint of the operator process, scraped after real syncs on the local environment:
every figure is checked against what the simulator, the chain and the API server saw."""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping

from prometheus_client.parser import text_string_to_metric_families

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.operator_process import OperatorProcess
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator import __version__

Labels = tuple[tuple[str, str], ...]
Samples = dict[str, dict[Labels, float]]

_CVM_SEGMENT = re.compile(r"^/api/v1/cvms/[^/]+")


def scrape(operator: OperatorProcess) -> Samples:
    """Every sample of the endpoint: name -> sorted labels -> value."""
    samples: Samples = {}
    for family in text_string_to_metric_families(operator.metrics()):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


def by_label(samples: Samples, name: str, *keep: str) -> dict[tuple[str, ...], float]:
    """Sum a family over every label but ``keep``; zero series left out."""
    totals: Counter[tuple[str, ...]] = Counter()
    for labels, number in samples.get(name, {}).items():
        if number:
            as_dict = dict(labels)
            totals[tuple(as_dict[k] for k in keep)] += number
    return dict(totals)


def eventually(operator: OperatorProcess, check: Callable[[Samples], bool], timeout: float = 10.0) -> Samples:
    """Scrape until ``check`` holds: the gauge follows the watch, a few milliseconds behind the API."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(operator)
        if check(samples) or time.monotonic() > deadline:
            return samples
        time.sleep(0.1)


def endpoint_of(method: str, path: str) -> str:
    """The client's endpoint template of a logged request path."""
    return method + " " + _CVM_SEGMENT.sub("/cvms/{id}", path).removeprefix("/api/v1")


def logged_requests(sim: SimulatorServer) -> dict[tuple[str, str], float]:
    counts: Counter[tuple[str, str]] = Counter(
        (endpoint_of(r.method, r.path), str(r.status)) for r in sim.admin.requests()
    )
    return {key: float(n) for key, n in counts.items()}


def ready_of(body: Mapping[str, object]) -> tuple[str, str, str, str]:
    ready = scenario.condition(body)
    status = body.get("status")
    phase = status.get("phase") if isinstance(status, Mapping) else None
    return ("Ready", str(ready.get("status")), str(ready.get("reason")), str(phase))


def test_metrics_after_off_chain_and_on_chain_syncs(
    setup: Workbench,
    offchain_cvm: SimTarget,
    onchain_cvm: SimTarget,
    sim: SimulatorServer,
    operator_factory: OperatorFactory,
) -> None:
    operator = operator_factory()
    before = scrape(operator)
    assert value(before, "cvm_prelaunch_build_info", version=__version__) == 1
    assert by_label(before, "cvm_prelaunch_resources", "status") == {}

    setup.create(offchain_cvm, name="plain", driftPolicy="Report")
    setup.create(onchain_cvm, name="chained")
    setup.synced("plain")
    setup.synced("chained")

    both_synced = {("Ready", "True", "Synced", "Synced"): 2.0}
    samples = eventually(
        operator,
        lambda s: (
            by_label(s, "cvm_prelaunch_resources", "condition", "status", "reason", "phase") == both_synced
        ),
    )
    # Every request the simulator logged was counted once, under its endpoint and status code.
    requests = by_label(samples, "cvm_prelaunch_phala_requests_total", "endpoint", "code")
    assert requests == logged_requests(sim)
    assert requests[("PATCH /cvms/{id}/pre-launch-script", "465")] == 1
    assert requests[("PATCH /cvms/{id}/pre-launch-script", "202")] == 2
    durations = by_label(samples, "cvm_prelaunch_phala_request_duration_seconds_count", "endpoint", "code")
    assert durations == requests
    assert by_label(samples, "cvm_prelaunch_phala_request_duration_seconds_sum", "endpoint")

    # One registration was sent and confirmed; nothing was reused, verified or failed.
    assert by_label(samples, "cvm_prelaunch_transactions_total", "outcome") == {("registered",): 1}
    assert value(samples, "cvm_prelaunch_transactions_total", outcome="failed") == 0

    # Reconciles: the passes that drove both syncs ended well, and durations match the counts.
    reconciles = by_label(samples, "cvm_prelaunch_reconciles_total", "result")
    assert reconciles.get(("requeue",), 0) + reconciles.get(("done",), 0) >= 2
    assert ("error",) not in reconciles
    assert by_label(samples, "cvm_prelaunch_reconcile_duration_seconds_count", "result") == reconciles

    # Resources by condition: both Synced, as the API server says.
    gauge = by_label(samples, "cvm_prelaunch_resources", "condition", "status", "reason", "phase")
    assert gauge == both_synced
    assert value(samples, "cvm_prelaunch_drift_detected_total") == 0

    # Someone changes the off-chain CVM's script by hand; checked every second, drift is reported.
    sim.admin.update_cvm(offchain_cvm.id, pre_launch_script="#!/bin/sh\necho changed by hand\n")
    scenario.patch_spec(setup.cp, setup.namespace, "plain", {"driftCheckInterval": "30s"})
    drifted = setup.reason("plain", "Drifted", timeout=30)
    chained = scenario.get(setup.cp, setup.namespace, "chained")
    expected = {key: float(n) for key, n in Counter([ready_of(drifted), ready_of(chained)]).items()}
    samples = eventually(
        operator,
        lambda s: (
            by_label(s, "cvm_prelaunch_resources", "condition", "status", "reason", "phase") == expected
        ),
    )
    assert value(samples, "cvm_prelaunch_drift_detected_total") >= 1
    gauge = by_label(samples, "cvm_prelaunch_resources", "condition", "status", "reason", "phase")
    assert gauge == expected
    assert gauge[("Ready", "True", "Synced", "Synced")] == 1
