"""The six benchmark scenarios of issue 7. Each takes the shared run and returns its figures, the
targets with what was measured against them, and notes. Targets are the issue's, never lowered."""

from __future__ import annotations

import math
import os
import random
import secrets
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.env import (
    Bench,
    Fleet,
    error_lines,
    kube_requests,
    metric_samples,
    metric_sum,
    process_cpu_seconds,
    requests_between,
    script_text,
    try_metrics,
)
from benchmarks.mainnet import mainnet
from benchmarks.stats import process_memory, summary, target
from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.contracts import deploy_app_contract, install_multicall3
from cvm_prelaunch_localenv.operator_process import OperatorProcess
from cvm_prelaunch_localenv.paths import node_modules
from cvm_prelaunch_localenv.simulator.server import LoggedRequest, peak_concurrency_of
from cvm_prelaunch_operator.domain.secrets import Redactor

Result = dict[str, Any]

# The official CLI's chain library knows Multicall3 only on chains 1 and 8453: play Base.
BASE_CHAIN_ID = 8453
DOCKER_COMPOSE = "services:\n  web:\n    image: nginx:1.27-alpine\n"
CLI_TIMEOUT_S = 180.0
FLEET_NAMESPACE = "bench-fleet"
NOISE_NAMESPACE = "bench-noise"
BENCH_OPERATION_SECONDS = 0.05  # what benchmarks.env.Bench starts the simulator with


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is. The defaults are the issue's; ``SMOKE`` only checks the code runs."""

    fleet: int = 1000
    reaction_edits: int = 50
    noise_configmaps: int = 5000
    noise_kib: int = 10
    noise_edits: int = 50
    fanout_resources: int = 200
    fanout_limit: int = 8
    fanout_sweep: tuple[int, ...] = (16,)  # further limits measured the same way
    fanout_latency_ms: int = 50
    block_time: float = 2.0
    onchain_edits: int = 20
    mainnet_resources: int = 50
    mainnet_block_time: float = 12.0
    mainnet_offchain: int = 10
    cli_runs: int = 5
    secrets_small: int = 10000
    secrets_small_kib: int = 10
    secrets_large: int = 20
    secrets_large_kib: int = 1024
    secrets_namespaces: int = 10
    secrets_edits: int = 50
    soak_seconds: float = 600.0
    soak_resources: int = 100
    soak_edit_interval: float = 1.0
    soak_sample_interval: float = 5.0


SMOKE = Sizes(
    fleet=12,
    reaction_edits=3,
    noise_configmaps=60,
    noise_edits=3,
    fanout_resources=12,
    fanout_limit=4,
    fanout_sweep=(),
    secrets_small=60,
    secrets_large=2,
    secrets_namespaces=2,
    secrets_edits=1,
    block_time=1.0,
    onchain_edits=1,
    mainnet_resources=3,
    mainnet_block_time=2.0,
    mainnet_offchain=2,
    cli_runs=1,
    soak_seconds=5.0,
    soak_resources=6,
    soak_edit_interval=0.5,
    soak_sample_interval=1.0,
)


@dataclass
class Run:
    bench: Bench
    sizes: Sizes
    smoke: bool
    fleet: Fleet | None = None
    fleet_operator: OperatorProcess | None = None
    results: dict[str, Result] = field(default_factory=dict)

    @property
    def fleet_namespaces(self) -> tuple[str, ...]:
        return (FLEET_NAMESPACE, NOISE_NAMESPACE)


def rss(operator: OperatorProcess) -> dict[str, float]:
    assert operator.pid is not None
    return {k: round(v, 1) for k, v in process_memory(operator.pid).items()}


# -- what a sync costs the operator ----------------------------------------------------------------

INPUT_READS = ("GET secrets", "GET configmaps")
EVENT_POSTS = ("POST events",)
LEASE_CALLS = ("GET leases", "PUT leases", "POST leases")


def per_process(kind: str) -> bool:
    """A request the process makes whatever it syncs (leader election, opening a watch stream): reported
    apart, not divided among the syncs."""
    return kind in LEASE_CALLS or kind.startswith("WATCH ")


MAX_REQUESTS_PER_SYNC = 4  # plus one per input read (issue 12)
MAX_CPU_MS_PER_SYNC = 5.0


@dataclass(frozen=True)
class SyncCost:
    """The operator's CPU time and its own Kubernetes requests over ``syncs`` syncs."""

    syncs: int
    cpu_seconds: float
    requests: dict[str, float]

    @classmethod
    def measure(
        cls, operator: OperatorProcess, syncs: int, cpu_before: float, before: dict[str, float]
    ) -> SyncCost:
        after = kube_requests(metric_samples(operator))
        return cls(syncs, process_cpu(operator) - cpu_before, requests_between(before, after))

    def per_sync(self, kinds: tuple[str, ...] | None = None) -> float:
        chosen = [v for k, v in self.requests.items() if (kinds is None or k in kinds) and not per_process(k)]
        return sum(chosen) / self.syncs

    def cpu_ms(self) -> float:
        return self.cpu_seconds * 1000 / self.syncs

    def figures(self) -> dict[str, Any]:
        return {
            "operator_cpu_ms_per_sync": round(self.cpu_ms(), 2),
            "kubernetes_requests_per_sync": round(self.per_sync(), 2),
            "kubernetes_requests_per_sync_by_kind": {
                k: round(v / self.syncs, 2) for k, v in self.requests.items() if not per_process(k)
            },
            "kubernetes_requests_of_the_process": {k: v for k, v in self.requests.items() if per_process(k)},
            "input_reads_per_sync": round(self.per_sync(INPUT_READS), 2),
            "events_per_sync": round(self.per_sync(EVENT_POSTS), 2),
        }

    def targets(self, label: str) -> list[dict[str, Any]]:
        inputs = self.per_sync(INPUT_READS)
        return [
            target(
                f"{label}: operator CPU per sync",
                self.cpu_seconds * 1000 / self.syncs,
                MAX_CPU_MS_PER_SYNC,
                "ms",
            ),
            target(
                f"{label}: Kubernetes requests per sync, input reads ({inputs:.2f}) not counted",
                self.per_sync() - inputs,
                MAX_REQUESTS_PER_SYNC,
                "",
            ),
        ]


def process_cpu(operator: OperatorProcess) -> float:
    assert operator.pid is not None
    return process_cpu_seconds(operator.pid)


# -- the fleet shared by reaction, restart and noise --------------------------------------------------


def ensure_fleet(run: Run) -> tuple[Fleet, OperatorProcess]:
    """The fleet and an operator over it, all Synced. The first time, the operator's first sync of the
    fleet is measured (time from the process start, CPU and Kubernetes requests per sync), with the
    simulator's operations completing at once."""
    if run.fleet is not None and run.fleet_operator is not None and run.fleet_operator.alive():
        return run.fleet, run.fleet_operator
    bench = run.bench
    for namespace in run.fleet_namespaces:
        bench.namespace(namespace)
    if run.fleet is not None:
        run.fleet_operator = bench.start_operator(run.fleet_namespaces, name=f"fleet-{len(run.results)}")
        bench.wait_fleet_synced(run.fleet, timeout=max(120.0, run.sizes.fleet * 0.6))
        return run.fleet, run.fleet_operator
    began = time.monotonic()
    fleet = run.fleet = bench.create_fleet(FLEET_NAMESPACE, run.sizes.fleet, prefix="app")
    created = time.monotonic() - began
    admin = bench.simulator.admin
    admin.settings(operation_seconds=0)
    since = bench.list_version(fleet.namespace)
    try:
        started = time.monotonic()
        operator = run.fleet_operator = bench.start_operator(run.fleet_namespaces, name="fleet-0")
        healthy = time.monotonic()
        cpu_before = process_cpu(operator)
        everyone_before = bench.cpu_seconds(operator)
        synced = bench.watch_fleet_synced(fleet, since, timeout=max(120.0, run.sizes.fleet * 0.6))
        everyone_after = bench.cpu_seconds(operator)
        time.sleep(0.5)  # the Events of the last syncs
        # Requests from the process start (it made none before); CPU from its health check on, so that
        # the interpreter's start-up (imports, about a second) is not spread over the syncs.
        cost = SyncCost.measure(operator, len(fleet), cpu_before, {})
    finally:
        admin.settings(operation_seconds=BENCH_OPERATION_SECONDS)
    run.results["_fleet"] = {
        "created_seconds": round(created, 1),
        "initial_sync_seconds": round(synced - started, 2),
        "process_start_to_healthy_seconds": round(healthy - started, 2),
        "cpu_seconds_to_healthy": round(cpu_before, 2),
        "cpu_seconds_during_sync": {
            name: round(everyone_after[name] - everyone_before.get(name, 0.0), 2) for name in everyone_after
        },
        "cost": cost,
    }
    return fleet, operator


def first_sync(run: Run) -> Result:
    fleet, operator = ensure_fleet(run)
    figures = run.results["_fleet"]
    cost: SyncCost = figures["cost"]
    return {
        "title": f"First sync: an operator starts over {len(fleet)} new resources (simulator at 0 ms)",
        "figures": {
            "resources": len(fleet),
            "created_seconds": figures["created_seconds"],
            "process_start_to_healthy_seconds": figures["process_start_to_healthy_seconds"],
            "process_start_to_all_synced_seconds": figures["initial_sync_seconds"],
            "operator_cpu_seconds_to_healthy": figures["cpu_seconds_to_healthy"],
            "cpu_seconds_during_sync": figures["cpu_seconds_during_sync"],
            **cost.figures(),
            "operator_memory_mib": rss(operator),
        },
        "targets": [
            target("all Synced, from the process start", figures["initial_sync_seconds"], 20, "s"),
            *cost.targets("first sync"),
        ],
        "notes": [
            "Each resource has its own ConfigMap; all share one API-key Secret. The simulator's operations "
            "complete at once. Requests are counted from the process start, CPU from the moment it "
            "answers its health check (the interpreter's start-up is reported apart), both to the last "
            "resource Synced as a watch of the resources sees it; requests are the operator's own (its "
            "metric cvm_prelaunch_kubernetes_requests_total), kopf's list and watch not included; the "
            "requests a process makes whatever it syncs (opening its Secret watch, Lease calls) are "
            "reported apart, not divided among the syncs.",
        ],
    }


def _phase1_of(cvm: str) -> Callable[[LoggedRequest], bool]:
    def check(r: LoggedRequest) -> bool:
        return r.method == "PATCH" and cvm in r.path

    return check


def measure_reactions(run: Run, edits: int, label: str) -> list[float]:
    """ConfigMap edit -> first Phase-1 PATCH at the simulator, in ms, one edit at a time."""
    fleet, _operator = ensure_fleet(run)
    bench = run.bench
    admin = bench.simulator.admin
    samples: list[float] = []
    for i in range(edits):
        index = (i * 7919 + len(label)) % len(fleet)  # spread over the fleet, never the same twice in a row
        cvm, name, config_map = fleet.cvm_ids[index], fleet.names[index], fleet.config_maps[index]
        text = script_text(f"{label} {i} {secrets.token_hex(4)}")
        admin.clear_requests()
        began = time.monotonic()
        bench.edit_script(fleet, config_map, text)
        patch = bench.wait_request(_phase1_of(cvm), timeout=30.0)
        samples.append((patch.started - began) * 1000)
        bench.wait_synced(fleet.namespace, name, text, timeout=60.0)
    return samples


def reaction(run: Run) -> Result:
    fleet, operator = ensure_fleet(run)
    samples = measure_reactions(run, run.sizes.reaction_edits, "reaction")
    stats = summary(samples)
    run.results.setdefault("_reaction_ms", {"samples": samples})
    return {
        "title": f"Reaction: ConfigMap edit to the first Phase-1 PATCH, {len(fleet)} resources present",
        "figures": {
            "resources": len(fleet),
            "edits": len(samples),
            "fleet_initial_sync_seconds": run.results["_fleet"]["initial_sync_seconds"],
            "operator_memory_mib": rss(operator),
        },
        "latency_ms": {"edit to Phase-1 PATCH": stats},
        "samples_ms": {"edit to Phase-1 PATCH": [round(x, 1) for x in samples]},
        "targets": [
            target("p50", stats["median"], 100, "ms"),
            target("p99", stats["p99"], 500, "ms"),
            target("edits", len(samples), 50, "", at_most=False),
        ],
    }


# -- restart -------------------------------------------------------------------------------------------


def wait_reconfirmed(operator: OperatorProcess, count: int, *, timeout: float) -> dict[str, float]:
    """Until ``count`` reconcile passes ended and none is running, stable over two scrapes."""
    deadline = time.monotonic() + timeout
    last_total = -1.0
    while time.monotonic() < deadline:
        samples = try_metrics(operator)
        if samples is not None:
            total = metric_sum(samples, "cvm_prelaunch_reconciles_total")
            running = metric_sum(samples, "cvm_prelaunch_reconciles_in_progress")
            if total >= count and running == 0 and total == last_total:
                return samples
            last_total = total
        time.sleep(0.1)
    raise TimeoutError(f"the operator did not re-confirm {count} resources in {timeout:.0f}s")


def restart(run: Run) -> Result:
    fleet, old = ensure_fleet(run)
    bench = run.bench
    admin = bench.simulator.admin
    old.stop()  # SIGTERM, as a rolling update does; elsewhere operators that are done are killed
    versions = {
        item["metadata"]["name"]: item["metadata"]["resourceVersion"]
        for item in bench.resources(fleet.namespace)
    }
    admin.clear_requests()
    began = time.monotonic()
    operator = bench.start_operator(run.fleet_namespaces, name="fleet-restarted")
    ready = time.monotonic() - began
    samples = wait_reconfirmed(operator, len(fleet), timeout=120.0)
    # The stability check of wait_reconfirmed adds one scrape interval; the last pass ended before it.
    reconfirmed = time.monotonic() - began - 0.1
    run.fleet_operator = operator
    time.sleep(1.0)  # anything still on its way to Phala Cloud is in the log now
    requests = admin.requests()
    remote_writes = [r for r in requests if r.method != "GET"]
    changed = sum(
        1
        for item in bench.resources(fleet.namespace)
        if versions.get(item["metadata"]["name"]) != item["metadata"]["resourceVersion"]
    )
    memory = rss(operator)
    errors = metric_sum(samples, "cvm_prelaunch_reconciles_total", result="error")
    return {
        "title": f"Restart: {len(fleet)} synced resources, operator restarted",
        "figures": {
            "resources": len(fleet),
            "process_start_to_healthy_seconds": round(ready, 2),
            "process_start_to_all_reconfirmed_seconds": round(reconfirmed, 2),
            "reconcile_passes": metric_sum(samples, "cvm_prelaunch_reconciles_total"),
            "reconcile_errors": errors,
            "remote_requests": len(requests),
            "remote_writes": len(remote_writes),
            "resources_whose_object_changed": changed,
            "operator_memory_mib": memory,
        },
        "targets": [
            target("remote writes", len(remote_writes), 0, ""),
            target("every status re-confirmed within", reconfirmed, 20, "s"),
            target("peak RSS", memory["peak_rss_mib"], 200, "MiB"),
        ],
        "notes": [
            "Re-confirmed: the metrics endpoint counts at least one reconcile pass per resource with "
            "none running (two equal scrapes 0.1 s apart); measured from the process start."
        ],
    }


# -- noise ---------------------------------------------------------------------------------------------


def settle_rss(operator: OperatorProcess, *, minimum: float, timeout: float) -> float:
    """RSS once it stops moving (two readings a second apart within 0.5 MiB), after ``minimum`` s."""
    began = time.monotonic()
    previous = rss(operator)["rss_mib"]
    while True:
        time.sleep(1.0)
        current = rss(operator)["rss_mib"]
        elapsed = time.monotonic() - began
        if (elapsed >= minimum and abs(current - previous) <= 0.5) or elapsed > timeout:
            return current
        previous = current


def noise(run: Run) -> Result:
    fleet, operator = ensure_fleet(run)
    bench = run.bench
    sizes = run.sizes
    settle = 1.0 if run.smoke else 3.0  # seconds RSS is watched before it counts as settled
    baseline = settle_rss(operator, minimum=settle, timeout=30.0)
    payload_chars = sizes.noise_kib * 1024
    began = time.monotonic()
    data = {
        f"noise-{i}": {"blob": (secrets.token_hex(payload_chars // 2 + 1))[:payload_chars]}
        for i in range(sizes.noise_configmaps)
    }
    bench.create_configmaps(NOISE_NAMESPACE, data)
    del data
    created = time.monotonic() - began
    live = settle_rss(operator, minimum=2 * settle, timeout=60.0)
    noisy = measure_reactions(run, sizes.noise_edits, "noise")
    # A restart lists every ConfigMap of the watched namespaces, the noise included.
    operator.kill()
    restarted = bench.start_operator(run.fleet_namespaces, name="fleet-noise")
    run.fleet_operator = restarted
    wait_reconfirmed(restarted, len(fleet), timeout=120.0)
    after_restart = settle_rss(restarted, minimum=settle, timeout=30.0)
    growth = max(live, after_restart) - baseline
    quiet = run.results.get("_reaction_ms", {}).get("samples")
    noisy_stats = summary(noisy)
    latency = {"edit to Phase-1 PATCH, with noise": noisy_stats}
    targets = [target("RSS growth over the baseline", growth, 30, "MiB")]
    notes = [
        "Baseline: the fleet operator's RSS with the noise namespace empty. Growth is the larger of the "
        "RSS after the noise arrived through the watch and the RSS of an operator restarted with it.",
    ]
    if quiet:
        quiet_stats = summary(quiet)
        latency["edit to Phase-1 PATCH, without noise (scenario 1)"] = quiet_stats
        # "Unchanged within noise": the median may move by at most the quiet run's p50..p90 spread.
        spread = max(quiet_stats["p90"] - quiet_stats["median"], 5.0)
        targets.append(
            target(
                "p50 with noise - p50 without", noisy_stats["median"] - quiet_stats["median"], spread, "ms"
            )
        )
        notes.append(
            f"Unchanged within noise: the median may rise by at most the quiet run's p90 - p50 spread "
            f"({spread:.1f} ms, at least 5 ms)."
        )
    targets.append(target("p50 with noise", noisy_stats["median"], 100, "ms"))
    return {
        "title": f"Noise: {sizes.noise_configmaps} unreferenced ConfigMaps of {sizes.noise_kib} KiB",
        "figures": {
            "configmaps": sizes.noise_configmaps,
            "create_seconds": round(created, 1),
            "baseline_rss_mib": baseline,
            "rss_after_noise_mib": live,
            "rss_after_restart_with_noise_mib": after_restart,
            "rss_growth_mib": round(growth, 1),
            "operator_memory_after_restart_mib": rss(restarted),
        },
        "latency_ms": latency,
        "samples_ms": {"edit to Phase-1 PATCH, with noise": [round(x, 1) for x in noisy]},
        "targets": targets,
        "notes": notes,
    }


# -- secrets -------------------------------------------------------------------------------------------


def _reaction_targets(quiet: list[float], noisy: list[float], what: str) -> tuple[list[dict[str, Any]], str]:
    """p50 with ``what`` present against p50 without: "unchanged within noise" means the median may
    rise by at most the quiet run's p90 - p50 spread (at least 5 ms)."""
    quiet_stats, noisy_stats = summary(quiet), summary(noisy)
    spread = max(quiet_stats["p90"] - quiet_stats["median"], 5.0)
    return [
        target(f"p50 with {what} - p50 without", noisy_stats["median"] - quiet_stats["median"], spread, "ms"),
        target(f"p50 with {what}", noisy_stats["median"], 100, "ms"),
    ], (
        f"Unchanged within noise: the median may rise by at most the p90 - p50 spread of the run without "
        f"{what} ({spread:.1f} ms, at least 5 ms)."
    )


def secrets_scenario(run: Run) -> Result:
    """Unreferenced Secrets in other namespaces, as a cluster with many Helm releases has: the operator
    (cluster-wide, as the default install runs) follows Secrets metadata-only, so their values never
    reach it."""
    sizes = run.sizes
    bench = run.bench
    fleet, operator = ensure_fleet(run)
    operator.kill()
    operator = run.fleet_operator = bench.start_operator((), name="secrets-cluster-wide")
    try:
        wait_reconfirmed(operator, len(fleet), timeout=120.0)
        settle = 1.0 if run.smoke else 3.0
        baseline = settle_rss(operator, minimum=settle, timeout=30.0)
        quiet = measure_reactions(run, sizes.secrets_edits, "secrets-quiet")
        namespaces = [bench.namespace(f"bench-secrets-{i}") for i in range(sizes.secrets_namespaces)]
        began = time.monotonic()
        per_namespace = math.ceil(sizes.secrets_small / len(namespaces))
        for i, namespace in enumerate(namespaces):
            count = min(per_namespace, sizes.secrets_small - i * per_namespace)
            bench.create_secrets(namespace, max(0, count), kib=sizes.secrets_small_kib, prefix="small")
        for i in range(sizes.secrets_large):
            namespace = namespaces[i % len(namespaces)]
            bench.create_secrets(namespace, 1, kib=sizes.secrets_large_kib, prefix=f"large-{i}")
        created = time.monotonic() - began
        live = settle_rss(operator, minimum=2 * settle, timeout=60.0)
        noisy = measure_reactions(run, sizes.secrets_edits, "secrets")
        # A restart lists every Secret of the cluster (metadata only).
        operator.kill()
        operator = run.fleet_operator = bench.start_operator((), name="secrets-restarted")
        samples = wait_reconfirmed(operator, len(fleet), timeout=120.0)
        after_restart = settle_rss(operator, minimum=settle, timeout=30.0)
        secret_reads = kube_requests(samples).get("GET secrets", 0.0)
        memory = rss(operator)
    finally:
        if run.fleet_operator is not None:
            run.fleet_operator.kill()  # cluster-wide: it must not act on the next scenarios' resources
            run.fleet_operator = None
    for namespace in namespaces:
        bench.cp.delete_namespace(namespace, timeout=120.0)
    growth = max(live, after_restart) - baseline
    reaction_targets, reaction_note = _reaction_targets(quiet, noisy, "the Secrets")
    total_mib = (
        sizes.secrets_small * sizes.secrets_small_kib + sizes.secrets_large * sizes.secrets_large_kib
    ) / 1024
    return {
        "title": (
            f"Secrets: {sizes.secrets_small} unreferenced Secrets of {sizes.secrets_small_kib} KiB and "
            f"{sizes.secrets_large} of {sizes.secrets_large_kib} KiB ({total_mib:.0f} MiB of values) in "
            f"{len(namespaces)} other namespaces, operator cluster-wide"
        ),
        "figures": {
            "secrets": sizes.secrets_small + sizes.secrets_large,
            "values_mib": round(total_mib, 1),
            "create_seconds": round(created, 1),
            "baseline_rss_mib": baseline,
            "rss_after_secrets_mib": live,
            "rss_after_restart_with_secrets_mib": after_restart,
            "rss_growth_mib": round(growth, 1),
            "secret_gets_by_the_restarted_operator": secret_reads,
            "operator_memory_after_restart_mib": memory,
        },
        "latency_ms": {
            "edit to Phase-1 PATCH, with the Secrets": summary(noisy),
            "edit to Phase-1 PATCH, without them (same operator)": summary(quiet),
        },
        "samples_ms": {"with the Secrets": [round(x, 1) for x in noisy]},
        "targets": [target("RSS growth over the baseline", growth, 20, "MiB"), *reaction_targets],
        "notes": [
            "Baseline: the cluster-wide operator's RSS over the Synced fleet before the Secrets existed. "
            "Growth is the larger of the RSS once they arrived through the watch and the RSS of an operator "
            "restarted with them present. Secret GETs: what the restarted operator read with values (only "
            "Secrets that a resource references).",
            reaction_note,
        ],
    }


# -- fan-out -------------------------------------------------------------------------------------------


def _fanout_once(run: Run, fleet: Fleet, limit: int) -> tuple[dict[str, Any], SyncCost]:
    """One edit of the shared ConfigMap under ``limit`` concurrent remote calls, from a fresh operator."""
    sizes = run.sizes
    bench = run.bench
    admin = bench.simulator.admin
    operator = bench.start_operator(
        (fleet.namespace,), name=f"fanout-{limit}", extra_env={"PHALA_CLOUD_MAX_CONCURRENCY": str(limit)}
    )
    try:
        bench.wait_fleet_synced(fleet, timeout=300.0)
        # Synced already (by the operator before this one): the fresh process looks at every resource
        # once at its start. The edit waits for that to end, or its passes would share the machine
        # (and the measured CPU) with the start-up's.
        wait_reconfirmed(operator, len(fleet), timeout=120.0)
        latency_s = sizes.fanout_latency_ms / 1000
        admin.settings(operation_seconds=0)
        admin.inject(latency_ms=sizes.fanout_latency_ms, count=None)
        admin.clear_requests()
        since = bench.list_version(fleet.namespace)
        cpu_before = bench.cpu_seconds(operator)
        requests_before = kube_requests(metric_samples(operator))
        began = time.monotonic()
        bench.edit_script(fleet, fleet.config_maps[0], script_text(f"fan-out {secrets.token_hex(4)}"))
        elapsed = bench.watch_fleet_synced(fleet, since, timeout=300.0) - began
        cpu_after = bench.cpu_seconds(operator)
        time.sleep(0.5)  # Events are posted after the status that reports the sync: let them land
        cost = SyncCost.measure(operator, len(fleet), cpu_before["operator"], requests_before)
        requests = admin.requests()
        peak_server = admin.peak_concurrency()
    finally:
        admin.clear_faults()
        admin.settings(operation_seconds=0.05)
        operator.kill()
    per_cvm = Counter(r.cvm for r in requests if r.cvm)
    calls_min = min(per_cvm[c] for c in fleet.cvm_ids) if all(c in per_cvm for c in fleet.cvm_ids) else 0
    # Ideal: every resource's calls at exactly the limit, back to back, each taking the latency.
    ideal = math.ceil(len(fleet) * calls_min / limit) * latency_s
    last_call = max((r.ended or r.started) for r in requests) - began if requests else 0.0
    first_call = min(r.started for r in requests) - began if requests else 0.0
    # Where the time over the ideal went: in the calls (the simulator answering later than the injected
    # latency on a busy machine) or between them (slots the operator left idle).
    served = [r.ended - r.started for r in requests if r.ended is not None]
    busy = sum(served) / (limit * last_call) if last_call > 0 else 0.0
    endpoints = Counter(
        f"{r.method} {r.path.split('/')[-1] if r.path.count('/') > 4 else '{id}'}" for r in requests
    )
    return {
        "concurrency_limit": limit,
        "remote_calls": len(requests),
        "calls_per_resource_min": calls_min,
        "calls_by_endpoint": dict(endpoints),
        "ideal_seconds": round(ideal, 3),
        "edit_to_all_synced_seconds": round(elapsed, 3),
        "edit_to_first_remote_call_seconds": round(first_call, 3),
        "edit_to_last_remote_call_seconds": round(last_call, 3),
        "remote_call_ms_server_side": summary([x * 1000 for x in served]),
        "call_slots_busy_fraction": round(busy, 3),
        "ratio_to_ideal": round(elapsed / ideal, 3) if ideal else None,
        "peak_concurrency_server": peak_server,
        "peak_concurrency_log": peak_concurrency_of(requests),
        "cpu_seconds_during_sync": {
            name: round(cpu_after[name] - cpu_before.get(name, 0.0), 2) for name in cpu_after
        },
        **cost.figures(),
    }, cost


def _fanout_targets(figures: dict[str, Any]) -> list[dict[str, Any]]:
    limit = figures["concurrency_limit"]
    return [
        target(
            f"limit {limit}: all Synced within 1.25 x ideal",
            figures["edit_to_all_synced_seconds"],
            1.25 * figures["ideal_seconds"],
            "s",
        ),
        target(
            f"limit {limit}: peak concurrent calls (simulator log)",
            figures["peak_concurrency_log"],
            limit,
            "",
        ),
        target(
            f"limit {limit}: peak concurrent calls (simulator counter)",
            figures["peak_concurrency_server"],
            limit,
            "",
        ),
    ]


def fanout(run: Run) -> Result:
    sizes = run.sizes
    bench = run.bench
    if run.fleet_operator is not None:  # keep the machine to this scenario
        run.fleet_operator.kill()
        run.fleet_operator = None
    namespace = bench.namespace("bench-fanout")
    fleet = bench.create_fleet(namespace, sizes.fanout_resources, prefix="fan", shared_config_map=True)
    primary, cost = _fanout_once(run, fleet, sizes.fanout_limit)
    targets = _fanout_targets(primary) + cost.targets(f"limit {sizes.fanout_limit}")
    sweep = {}
    for limit in sizes.fanout_sweep:
        if limit != sizes.fanout_limit:
            figures, _cost = _fanout_once(run, fleet, limit)
            sweep[f"limit_{limit}"] = figures
            targets += _fanout_targets(figures)
    return {
        "title": (
            f"Fan-out: one ConfigMap, {len(fleet)} resources, {sizes.fanout_latency_ms} ms per call, "
            f"limit {sizes.fanout_limit} (and {', '.join(map(str, sizes.fanout_sweep)) or 'no other'})"
        ),
        "figures": {
            "resources": len(fleet),
            "latency_per_call_ms": sizes.fanout_latency_ms,
            **primary,
            **{
                f"{name}_{key}": value
                for name, figures in sweep.items()
                for key, value in figures.items()
                if key
                in (
                    "ideal_seconds",
                    "edit_to_all_synced_seconds",
                    "ratio_to_ideal",
                    "peak_concurrency_log",
                    "cpu_seconds_during_sync",
                    "operator_cpu_ms_per_sync",
                    "kubernetes_requests_per_sync",
                )
            },
        },
        "targets": targets,
        "notes": [
            "Ideal = ceil(resources x calls per resource / limit) x latency, with the minimal "
            f"{primary['calls_per_resource_min']} calls per resource the sync needs (Phase-1 PATCH, "
            "operation lookup, CVM read); the simulator's operation completes at once so only the limit "
            "and the latency count. 'All Synced' is the time the watch of the resources delivered the last "
            "one Synced. Each limit runs on a freshly started operator with PHALA_CLOUD_MAX_CONCURRENCY "
            "set to it.",
        ],
    }


# -- on-chain ------------------------------------------------------------------------------------------


def _phase2_accepted(cvm_path_part: str | None) -> Callable[[LoggedRequest], bool]:
    def check(r: LoggedRequest) -> bool:
        return (
            r.method == "PATCH"
            and r.status == 202
            and r.ended is not None
            and bool(r.header("x-compose-hash"))
            and (cvm_path_part is None or cvm_path_part in r.path)
        )

    return check


def onchain(run: Run) -> Result:
    sizes = run.sizes
    bench = run.bench
    admin = bench.simulator.admin
    block_time = sizes.block_time
    phala = node_modules() / ".bin" / "phala"
    with Anvil(chain_id=BASE_CHAIN_ID, block_time=block_time, log_dir=bench.work_dir / "anvil") as chain:
        install_multicall3(chain)
        admin.settings(rpc_urls={BASE_CHAIN_ID: chain.rpc_url})
        owner, deployer = chain.accounts[0], chain.accounts[-1]
        contracts = [
            deploy_app_contract(
                chain.rpc_url,
                owner.private_key,
                allow_any_device=True,
                deployer_private_key=deployer.private_key,
            )
            for _ in range(2)
        ]
        workspace = admin.add_workspace(name="bench-onchain")
        cvm_op, cvm_cli = (
            admin.add_cvm(
                workspace=workspace["id"],
                name=f"bench-onchain-{who}",
                kms_type="base",
                chain_id=BASE_CHAIN_ID,
                app_id=address,
                docker_compose_file=DOCKER_COMPOSE,
                pre_launch_script=script_text("initial"),
            )
            for who, address in zip(("operator", "cli"), contracts, strict=True)
        )
        namespace = bench.namespace("bench-onchain")
        first = script_text("on-chain v0")
        scenario.apply(
            bench.cp,
            scenario.configmap("chain-script", namespace, {"pre-launch.sh": first}),
            scenario.secret("chain-api", namespace, {"api-key": workspace["api_key"]}),
            scenario.secret("chain-signer", namespace, {"private-key": owner.private_key.reveal()}),
            scenario.cvm_prelaunch_script(
                "chain",
                namespace,
                cvm_id=cvm_op.id,
                config_map="chain-script",
                api_key_secret="chain-api",  # noqa: S106 (a Secret's name)
                on_chain={
                    "rpcUrl": chain.rpc_url,
                    "signerKeySecretRef": {"name": "chain-signer", "key": "private-key"},
                    "confirmations": 1,
                },
            ),
        )
        operator = bench.start_operator((namespace,), name="onchain")
        operator_samples: list[float] = []
        cli_samples: list[float] = []
        cli_wall: list[float] = []
        try:
            bench.wait_synced(namespace, "chain", first, timeout=120.0)
            # Edits come at any moment of a block, as users make them. The moments are spread evenly
            # over the block (stratified, in a shuffled order), so that a handful of edits measures
            # the average over the block's phase and not the luck of a few random draws.
            count = sizes.onchain_edits
            phases = [(i + 0.5) / count * block_time for i in range(count)]
            random.Random(20261130).shuffle(phases)
            w3 = chain.web3()
            for i, phase in enumerate(phases):
                text = script_text(f"on-chain {i} {secrets.token_hex(4)}")
                admin.clear_requests()
                _after_a_new_block(w3, phase, timeout=block_time * 3 + 5)
                began = time.monotonic()
                scenario.patch_configmap(bench.cp, namespace, "chain-script", {"pre-launch.sh": text})
                accepted = bench.wait_request(_phase2_accepted(cvm_op.id), timeout=120.0, interval=0.02)
                assert accepted.ended is not None
                operator_samples.append(accepted.ended - began)
                bench.wait_synced(namespace, "chain", text, timeout=120.0)
            if phala.exists():
                for i in range(sizes.cli_runs):
                    admin.clear_requests()
                    began = time.monotonic()
                    _run_cli(
                        phala,
                        bench.work_dir / f"cli-{i}",
                        bench.simulator.base_url,
                        chain,
                        cvm_cli.vm_uuid,
                        cvm_cli.api_key,
                        i,
                    )
                    cli_wall.append(time.monotonic() - began)
                    accepted = next(r for r in admin.requests() if _phase2_accepted(None)(r))
                    assert accepted.ended is not None
                    cli_samples.append(accepted.ended - began)
        finally:
            operator.kill()
    op_stats = summary([s * 1000 for s in operator_samples])
    cli_stats = summary([s * 1000 for s in cli_samples])
    latency = {"operator: edit to Phase-2 202": op_stats}
    # Issue 11: at B = 2 s at most 1.4 s (half a block on average plus round trips is about 1.1 s).
    targets = [target("operator median", op_stats["median"] / 1000, 0.7 * block_time, "s")]
    figures: dict[str, Any] = {
        "block_time_seconds": block_time,
        "confirmations": 1,
        "operator_edits": len(operator_samples),
        # The operator learns when blocks become visible from the heads it happens to see: its first
        # registrations on a new chain may look later than needed. Reported apart, not a target.
        "operator_median_after_the_first_5_edits_ms": round(
            summary([s * 1000 for s in operator_samples[5:]]).get("median", 0.0), 1
        ),
    }
    if cli_samples:
        latency["official CLI (phala deploy): start to Phase-2 202"] = cli_stats
        ratio = cli_stats["median"] / op_stats["median"]
        figures.update(
            {
                "cli_runs": len(cli_samples),
                "cli_wall_seconds_median": round(summary(cli_wall)["median"], 2),
                "ratio_cli_median_to_operator_median": round(ratio, 2),
            }
        )
        targets.append(target("CLI median / operator median", ratio, 1.0, "", at_most=False))
        targets[-1]["met"] = ratio > 1.0  # strictly faster, not merely as fast
    else:
        figures["cli"] = "not installed (npm ci); no comparison"
    return {
        "title": f"On-chain sync: anvil mining every {block_time:g} s, 1 confirmation",
        "figures": figures,
        "latency_ms": latency,
        "samples_ms": {
            "operator": [round(x * 1000, 1) for x in operator_samples],
            "official CLI": [round(x * 1000, 1) for x in cli_samples],
        },
        "targets": targets,
        "notes": [
            "Each edit is made a set time after a new block is first seen (polled every 20 ms): times "
            "spread evenly over the block, (i + 1/2) / n x B for i < n, in a shuffled order.",
            "Operator: ConfigMap edit to the Phase-2 202 answered by the simulator. CLI: process start of "
            "`phala deploy --cvm-id ... --pre-launch-script ... --private-key ... --rpc-url ... --wait` on "
            "another CVM of the same simulator and chain, to the Phase-2 202 of its update.",
        ],
    }


def _after_a_new_block(w3: Any, delay: float, *, timeout: float) -> None:
    """Returns ``delay`` seconds after the chain's next block is first seen."""
    start = int(w3.eth.block_number)
    deadline = time.monotonic() + timeout
    while int(w3.eth.block_number) == start:
        if time.monotonic() > deadline:
            raise TimeoutError(f"no block after {start} within {timeout:.0f} s")
        time.sleep(0.02)
    time.sleep(delay)


def _run_cli(
    phala: Path, work: Path, base_url: str, chain: Anvil, vm_uuid: str, api_key: str, index: int
) -> None:
    work.mkdir(parents=True, exist_ok=True)
    (work / "home").mkdir(exist_ok=True)
    (work / "docker-compose.yml").write_text(DOCKER_COMPOSE)
    (work / "prelaunch.sh").write_text(script_text(f"official CLI {index} {secrets.token_hex(4)}"))
    key = chain.accounts[0].private_key
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(work / "home"),
        "PHALA_CLOUD_API_PREFIX": base_url,
        "PHALA_CLOUD_API_KEY": api_key,
        "PHALA_DISABLE_UPDATE_CHECK": "1",
        "NO_COLOR": "1",
    }
    argv = [
        str(phala),
        "deploy",
        "--cvm-id",
        vm_uuid,
        "-c",
        str(work / "docker-compose.yml"),
        "--pre-launch-script",
        str(work / "prelaunch.sh"),
        "--private-key",
        key.reveal(),
        "--rpc-url",
        chain.rpc_url,
        "--wait",
        "--json",
    ]
    result = subprocess.run(
        argv, env=env, cwd=work, capture_output=True, text=True, timeout=CLI_TIMEOUT_S, check=False
    )
    if result.returncode != 0:
        redact = Redactor([key, api_key])
        raise RuntimeError(
            f"the official CLI failed ({result.returncode}): {redact(result.stdout + result.stderr)[-2000:]}"
        )


# -- soak ----------------------------------------------------------------------------------------------


def soak(run: Run) -> Result:
    sizes = run.sizes
    bench = run.bench
    admin = bench.simulator.admin
    namespace = bench.namespace("bench-soak")
    fleet = bench.create_fleet(namespace, sizes.soak_resources, prefix="soak")
    operator = bench.start_operator((namespace,), name="soak")
    try:
        bench.wait_fleet_synced(fleet, timeout=300.0)
        start_memory = rss(operator)["rss_mib"]
        began = time.monotonic()
        memory: list[tuple[float, float]] = [(0.0, start_memory)]
        edits = 0
        next_sample = began + sizes.soak_sample_interval
        next_clear = began + 30.0
        while (now := time.monotonic()) < began + sizes.soak_seconds:
            index = edits % len(fleet)
            bench.edit_script(fleet, fleet.config_maps[index], script_text(f"soak {edits}"))
            edits += 1
            if now >= next_sample:
                memory.append((round(now - began, 1), rss(operator)["rss_mib"]))
                next_sample += sizes.soak_sample_interval
            if now >= next_clear:
                admin.clear_requests()  # the simulator's log is not what is measured
                next_clear += 30.0
            time.sleep(max(0.0, began + edits * sizes.soak_edit_interval - time.monotonic()))
        settle = bench.wait_fleet_synced(fleet, timeout=120.0)
        end_memory = rss(operator)
        memory.append((round(time.monotonic() - began, 1), end_memory["rss_mib"]))
        errors = error_lines(operator.logs())
        warnings = sum(1 for line in operator.logs().splitlines() if " WARNING " in line)
        reconciles = try_metrics(operator) or {}
    finally:
        operator.kill()
    warm = next((m for t, m in memory if t >= sizes.soak_seconds * 0.1), start_memory)
    growth = (end_memory["rss_mib"] - start_memory) / start_memory * 100
    return {
        "title": f"Soak: {sizes.soak_seconds / 60:g} minutes of edits across {len(fleet)} resources",
        "figures": {
            "resources": len(fleet),
            "seconds": sizes.soak_seconds,
            "edits": edits,
            "all_synced_after_last_edit_seconds": round(settle, 1),
            "rss_start_mib": start_memory,
            "rss_after_warmup_mib": warm,
            "rss_end_mib": end_memory["rss_mib"],
            "peak_rss_mib": end_memory["peak_rss_mib"],
            "rss_growth_percent": round(growth, 1),
            "rss_growth_after_warmup_percent": round((end_memory["rss_mib"] - warm) / warm * 100, 1),
            "rss_samples_mib": memory,
            "reconcile_passes": metric_sum(reconciles, "cvm_prelaunch_reconciles_total"),
            "reconcile_errors": metric_sum(reconciles, "cvm_prelaunch_reconciles_total", result="error"),
            "log_warnings": warnings,
            "log_errors": errors[:20],
        },
        "targets": [
            target("RSS growth", growth, 10, "%"),
            target("errors in the log", len(errors), 0, ""),
        ],
        "notes": ["Growth is from the RSS right after the initial sync to the RSS at the end."],
    }


SCENARIOS: dict[str, Callable[[Run], Result]] = {
    "first_sync": first_sync,
    "reaction": reaction,
    "restart": restart,
    "noise": noise,
    "secrets": secrets_scenario,
    "fanout": fanout,
    "onchain": onchain,
    "mainnet": mainnet,
    "soak": soak,
}


__all__ = ["SCENARIOS", "SMOKE", "Run", "Sizes"]
