"""The ``cvm-prelaunch-operator`` command: wires settings, adapters, the reconciler and kopf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import socket
import sys
from collections.abc import Sequence

import kopf

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.assembly import build_core
from cvm_prelaunch_operator.handlers.kopf_glue import build_registry
from cvm_prelaunch_operator.handlers.runtime import Runtime
from cvm_prelaunch_operator.kube.client import KubeClient
from cvm_prelaunch_operator.kube.cluster import Cluster, core_path
from cvm_prelaunch_operator.kube.leader import LeaderElector, LeaseConfig, lease_namespace
from cvm_prelaunch_operator.kube.watch import Watcher
from cvm_prelaunch_operator.logs import configure_logging
from cvm_prelaunch_operator.metrics import OperatorMetrics
from cvm_prelaunch_operator.reconcile.ports import AlwaysLeader, Fence
from cvm_prelaunch_operator.settings import OperatorSettings

logger = logging.getLogger("cvm_prelaunch_operator")

# On SIGTERM, reconcile passes under way get this long to finish before they are cut (which is safe:
# status records where each sync stands). Well inside Kubernetes' default 30 s termination grace.
SHUTDOWN_GRACE_SECONDS = 3.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cvm-prelaunch-operator",
        description=(
            "Keeps the pre-launch script of Phala Cloud CVMs in sync with Kubernetes. Configuration comes "
            "from the environment: KUBECONFIG (or in-cluster credentials), PHALA_CLOUD_API_URL, "
            "WATCH_NAMESPACES (comma list, empty for cluster-wide), MAX_CONCURRENT_RECONCILES, "
            "PHALA_CLOUD_MAX_CONCURRENCY, HEALTH_PORT, METRICS_PORT, LOG_LEVEL, LEADER_ELECTION, "
            "LEADER_ELECTION_ID, LEADER_ELECTION_NAMESPACE, POD_NAME, POD_NAMESPACE."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


async def run(settings: OperatorSettings, stop: asyncio.Event | None = None) -> int:
    """Run until stopped; the exit code is 1 when leadership was lost (Kubernetes restarts the pod)."""
    identity = settings.pod_name or socket.gethostname()
    metrics = OperatorMetrics()
    client = KubeClient(identity=identity, observer=metrics.observe_kube_request)
    scopes: tuple[str | None, ...] = settings.namespaces or (None,)
    # Watches hold their connections for minutes: a pool of their own, apart from the hot path's.
    watch_client = KubeClient(
        identity=identity, observer=metrics.observe_kube_request, max_connections=len(scopes) + 1
    )
    stop_flag = stop or asyncio.Event()
    lost: list[str] = []  # why leadership ended, once it has

    def stopped_leading(reason: str) -> None:
        lost.append(reason)
        stop_flag.set()

    def runtime_activate() -> None:
        runtime.activate()  # bound late: the runtime needs the fence the elector is

    elector: LeaderElector | None = None
    if settings.leader_election:
        elector = LeaderElector(
            KubeClient(identity=identity, observer=metrics.observe_kube_request, max_connections=2),
            LeaseConfig(
                namespace=lease_namespace(settings.leader_election_namespace, settings.pod_namespace),
                name=settings.leader_election_id,
                identity=identity,
            ),
            on_started_leading=runtime_activate,
            on_stopped_leading=stopped_leading,
            on_state=metrics.observe_leader,
        )
    fence: Fence = elector if elector is not None else AlwaysLeader()
    cluster = Cluster(client, fence=fence)
    core = build_core(metrics, fence=fence)
    runtime = Runtime(
        cluster,
        core.reconciler,
        workers=settings.workers,
        observer=metrics.observe_reconcile,
        active=elector is None,
    )
    if elector is None:
        metrics.observe_leader(True)
    metrics.watch_resources(lambda: list(runtime.ready_states.values()))
    metrics.watch_in_progress(lambda: runtime.queue.processing)
    stop_metrics = metrics.serve(settings.metrics_port) if settings.metrics_port else None
    loop = asyncio.get_running_loop()

    def install_signal_handlers() -> None:
        # kopf installs its own handlers when it starts, which would stop kopf before this process
        # has drained its work and released the Lease: ours are installed again after kopf's.
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop_flag.set)

    install_signal_handlers()
    registry = build_registry(runtime, on_started=install_signal_handlers)
    logger.info(
        "cvm-prelaunch-operator %s starting as %s (%s; %s; Kubernetes credentials: %s)",
        __version__,
        identity,
        "namespaces " + ",".join(settings.namespaces) if settings.namespaces else "cluster-wide",
        f"leader election on Lease {elector.config.describe()}" if elector else "no leader election",
        client.credentials_source,
    )
    # What was built so far (the modules of kopf, web3 and the clients: about 100,000 objects) lives as
    # long as the process: out of the collector's sight, a full collection no longer walks it, which
    # took about 50 ms on an idle core, a pause every pass in flight would wait out.
    gc.collect()
    gc.freeze()
    # Every long-lived task starts before kopf, which at its own exit waits for, then cancels, any
    # task created after it started.
    runtime.queue.start()
    watchers = [
        Watcher(
            watch_client,
            path=core_path(namespace, "secrets") if namespace else "/api/v1/secrets",
            resource="secrets",
            sink=runtime.secret_sink(namespace),
            metadata_only=True,
        )
        for namespace in scopes
    ]
    background = [asyncio.create_task(w.run(), name=f"watch {w!r}") for w in watchers]
    electing = asyncio.create_task(elector.run(), name="leader-election") if elector else None

    def election_ended(task: asyncio.Task[None]) -> None:
        # run() returns only after it reported a lost Lease; a failure of its own must stop the
        # process just the same, or a leader would keep reconciling behind a fence that closes.
        if task.cancelled() or task.exception() is None:
            return
        logger.error("leader election failed", exc_info=task.exception())
        stopped_leading(f"leader election failed: {type(task.exception()).__name__}")

    if electing is not None:
        electing.add_done_callback(election_ended)
    kopf_stop = asyncio.Event()

    async def shut_down_in_order() -> None:
        """Stop every side effect first, then give the Lease up, then let kopf go."""
        await stop_flag.wait()
        # After a lost Lease nothing may wait: another process may lead in lease - renew = 5 s.
        await runtime.queue.shutdown(grace=0.0 if lost else SHUTDOWN_GRACE_SECONDS)
        if electing is not None:
            electing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await electing
        if elector is not None and not lost:
            await elector.release()
        for task in background:
            task.cancel()
        await asyncio.gather(*background, return_exceptions=True)
        await cluster.aclose()
        kopf_stop.set()

    shutting_down = asyncio.create_task(shut_down_in_order(), name="shut-down-in-order")
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz"
            if settings.health_port
            else None,
            stop_flag=kopf_stop,
        )
    finally:
        stop_flag.set()  # kopf may have ended on its own (a fatal error): the same order still holds
        await shutting_down
        await watch_client.aclose()
        if elector is not None:
            await elector.aclose()
        await core.close()
        if stop_metrics is not None:
            stop_metrics()
    if lost:
        logger.error("exiting after losing the leader Lease (%s)", lost[0])
        return 1
    return 0


# Importing eth_account raises Python's recursion limit to 100,000 for the whole process (py_ecc does
# it on import). At that limit the C JSON parser recurses into a segmentation fault on a deeply nested
# answer (from an API server, a node, a proxy) instead of raising RecursionError. The operator never
# needs deep recursion: back to a limit that fails cleanly.
RECURSION_LIMIT = 3000


def main(argv: Sequence[str] | None = None) -> int:
    sys.setrecursionlimit(RECURSION_LIMIT)
    build_parser().parse_args(argv)
    settings = OperatorSettings.from_env()
    configure_logging(settings)
    # Per-request lines of the HTTP libraries and kopf's per-object lines are noise at scale: the
    # operator logs each transition itself. Warnings still show.
    quiet = max(logging.WARNING, logging.getLevelName(settings.log_level))
    for name in ("kopf", "aiohttp.access", "aiohttp.client", "web3.providers"):
        logging.getLogger(name).setLevel(quiet)
    return asyncio.run(run(settings))


if __name__ == "__main__":
    sys.exit(main())
