"""Prometheus metrics of the operator, served by prometheus-client on ``METRICS_PORT``.

Only ``cli`` imports this module: the layers below report through plain callbacks (the Phala Cloud
client's request observer, the reconciler's drift and transaction hooks, the runtime's reconcile
observer and its map of Ready conditions), so none of them knows Prometheus.

Series (all prefixed ``cvm_prelaunch_``):

``reconciles_total{result}``
    Reconcile passes by result: ``done``, ``requeue``, ``conflict``, ``gone``, ``error``.
``reconcile_duration_seconds{result}``
    Histogram of the wall time of one pass.
``reconciles_in_progress``
    Reconcile passes running now (at most ``MAX_CONCURRENT_RECONCILES``).
``phala_requests_total{endpoint,code}``
    Phala Cloud API requests by endpoint template (``PATCH /cvms/{id}/pre-launch-script``) and HTTP
    status code; ``code="none"`` when no answer came (timeout, refused or broken connection).
``phala_request_duration_seconds{endpoint,code}``
    Histogram of the time of each of those requests.
``transactions_total{outcome}``
    On-chain registrations: ``registered`` (sent and confirmed), ``reused`` (an existing
    registration was found instead), ``verified`` (a transaction named by annotation was checked),
    ``failed`` (the registrar gave up for this pass).
``resources{condition,status,reason,phase}``
    Gauge computed at scrape time: resources watched, by their Ready condition's status and reason
    and their phase (``status="Unknown"``, ``reason="None"`` before the first status write).
``drift_detected_total``
    Idle checks that found a CVM running another script than the ConfigMap's.
``build_info{version}``
    Always 1.
"""

from __future__ import annotations

from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cvm_prelaunch_operator import __version__

NAMESPACE: Final = "cvm_prelaunch"

# Reconciles are mostly a few milliseconds (status confirmed) up to seconds (a chain confirmation);
# Phala Cloud answers in tens of milliseconds to a few seconds.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

TRANSACTION_OUTCOMES: Final = ("registered", "reused", "verified", "failed")


ReadyStates = Callable[[], Iterable[tuple[str, str, str]]]
"""Returns the (Ready status, Ready reason, phase) of every watched resource."""

_COPY_ATTEMPTS: Final = 3


class _ResourceCollector(Collector):
    """Counts resources by Ready status, reason and phase when Prometheus scrapes."""

    def __init__(self, states: ReadyStates) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_resources",
            "CvmPreLaunchScript resources watched, by Ready condition status and reason and by phase.",
            labels=["condition", "status", "reason", "phase"],
        )
        tally = Tally(self._snapshot())
        for (status, reason, phase), count in sorted(tally.items()):
            family.add_metric(["Ready", status, reason, phase], count)
        yield family

    def _snapshot(self) -> list[tuple[str, str, str]]:
        # Scrapes run on the server's thread while the event loop updates the map: copy it, and
        # try again if it changed size under the copy.
        for _attempt in range(_COPY_ATTEMPTS - 1):
            try:
                return list(self._states())
            except RuntimeError:
                continue
        return list(self._states())

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registered without a first collect: the states may not exist yet at registration.
        return iter(())


class OperatorMetrics:
    """The operator's metric families in one registry, with the callbacks the layers report to."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.reconciles = Counter(
            "reconciles",
            "Reconcile passes by result.",
            ["result"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.reconcile_duration = Histogram(
            "reconcile_duration_seconds",
            "Wall time of one reconcile pass.",
            ["result"],
            namespace=NAMESPACE,
            buckets=RECONCILE_BUCKETS,
            registry=self.registry,
        )
        self.in_progress = Gauge(
            "reconciles_in_progress",
            "Reconcile passes running now.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.phala_requests = Counter(
            "phala_requests",
            "Phala Cloud API requests by endpoint and HTTP status code (none: no answer).",
            ["endpoint", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.phala_request_duration = Histogram(
            "phala_request_duration_seconds",
            "Time of each Phala Cloud API request, by endpoint and HTTP status code.",
            ["endpoint", "code"],
            namespace=NAMESPACE,
            buckets=REQUEST_BUCKETS,
            registry=self.registry,
        )
        self.transactions = Counter(
            "transactions",
            "On-chain compose-hash registrations by outcome.",
            ["outcome"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.drift_detected = Counter(
            "drift_detected",
            "Idle checks that found a CVM running another script than the desired one.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        build_info = Gauge(
            "build_info",
            "The operator's version; always 1.",
            ["version"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        build_info.labels(version=__version__).set(1)
        for outcome in TRANSACTION_OUTCOMES:
            self.transactions.labels(outcome=outcome)  # present at 0 before the first transaction

    # -- callbacks handed to the layers -----------------------------------------------------------

    def observe_reconcile(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result=result).inc()
        self.reconcile_duration.labels(result=result).observe(seconds)

    def observe_request(self, endpoint: str, status: int | None, seconds: float) -> None:
        code = str(status) if status is not None else "none"
        self.phala_requests.labels(endpoint=endpoint, code=code).inc()
        self.phala_request_duration.labels(endpoint=endpoint, code=code).observe(seconds)

    def observe_transaction(self, outcome: str) -> None:
        self.transactions.labels(outcome=outcome).inc()

    def observe_drift(self) -> None:
        self.drift_detected.inc()

    def watch_resources(self, states: ReadyStates) -> None:
        """Count resources from ``states`` at every scrape."""
        self.registry.register(_ResourceCollector(states))

    def watch_in_progress(self, running: Callable[[], int]) -> None:
        """Report ``running()`` as the number of reconciles in progress at every scrape."""
        self.in_progress.set_function(lambda: float(running()))

    def serve(self, port: int, address: str = "0.0.0.0") -> Callable[[], None]:  # noqa: S104
        """Serve ``/metrics`` on ``port`` in a background thread; returns a function that stops it."""
        server, thread = start_http_server(port, addr=address, registry=self.registry)

        def stop() -> None:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

        return stop


__all__ = ["OperatorMetrics", "ReadyStates"]
