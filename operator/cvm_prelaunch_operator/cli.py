"""The ``cvm-prelaunch-operator`` command: wires settings, adapters, the reconciler and kopf."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Sequence

import kopf

from cvm_prelaunch_operator import __version__
from cvm_prelaunch_operator.assembly import build_core
from cvm_prelaunch_operator.handlers.kopf_glue import build_registry
from cvm_prelaunch_operator.handlers.runtime import Runtime
from cvm_prelaunch_operator.kube.cluster import Cluster, load_api_client
from cvm_prelaunch_operator.metrics import OperatorMetrics
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
            "PHALA_CLOUD_MAX_CONCURRENCY, HEALTH_PORT, METRICS_PORT, LOG_LEVEL."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    return parser


async def run(settings: OperatorSettings, stop: asyncio.Event | None = None) -> None:
    metrics = OperatorMetrics()
    cluster = Cluster(load_api_client())
    core = build_core(metrics)
    runtime = Runtime(cluster, core.reconciler, workers=settings.workers, observer=metrics.observe_reconcile)
    metrics.watch_resources(lambda: list(runtime.ready_states.values()))
    metrics.watch_in_progress(lambda: runtime.queue.processing)
    stop_metrics = metrics.serve(settings.metrics_port) if settings.metrics_port else None
    registry = build_registry(runtime)
    stop_flag = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop_flag.set)
    logger.info(
        "cvm-prelaunch-operator %s starting (%s)",
        __version__,
        "namespaces " + ",".join(settings.namespaces) if settings.namespaces else "cluster-wide",
    )
    # Started before kopf, so kopf does not count the workers among its own tasks at shutdown.
    runtime.queue.start()

    async def drain_on_stop() -> None:
        await stop_flag.wait()
        await runtime.queue.shutdown(grace=SHUTDOWN_GRACE_SECONDS)

    draining = asyncio.create_task(drain_on_stop(), name="drain-on-stop")
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=not settings.namespaces,
            namespaces=settings.namespaces,
            liveness_endpoint=f"http://0.0.0.0:{settings.health_port}/healthz"
            if settings.health_port
            else None,
            stop_flag=stop_flag,
        )
    finally:
        stop_flag.set()
        await draining
        await core.close()
        if stop_metrics is not None:
            stop_metrics()


def main(argv: Sequence[str] | None = None) -> int:
    build_parser().parse_args(argv)
    settings = OperatorSettings.from_env()
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    # Per-request lines of the HTTP libraries and kopf's per-object lines are noise at scale: the
    # operator logs each transition itself. Warnings still show.
    quiet = max(logging.WARNING, logging.getLevelName(settings.log_level))
    for name in ("kopf", "httpx", "httpcore", "aiohttp.access", "web3.providers"):
        logging.getLogger(name).setLevel(quiet)
    asyncio.run(run(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
