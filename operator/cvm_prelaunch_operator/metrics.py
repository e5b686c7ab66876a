"""Prometheus metrics of the operator, served by prometheus-client on ``METRICS_PORT``.

Only ``cli`` and ``assembly`` import this module: the layers below report through plain callbacks
(the Phala Cloud client's request observer, the core's ``Observer`` port from ``observer()``, the
runtime's reconcile observer and its summaries of watched resources), so none of them knows
Prometheus.

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
    ``replaced`` (a pending transaction was replaced with higher fees), ``failed`` (given up).
``resources{condition,status,reason,phase}``
    Gauge computed at scrape time: resources watched, by their Ready condition's status and reason
    and their phase (``status="Unknown"``, ``reason="None"`` before the first status write).
``drift_detected_total``
    Idle checks that found a CVM running another script than the ConfigMap's.
``resource_ready{namespace,name,reason}``
    Per resource, computed at scrape time: 1 while its Ready condition is True, else 0; labelled
    with its current Ready reason (one series per resource; it disappears with the resource).
``resource_stalled{namespace,name}``
    Per resource: 1 while its Stalled condition is True (a permanent failure that waits for a
    change of inputs), else 0.
``resource_last_sync_timestamp_seconds{namespace,name}``
    Per resource: ``status.lastSyncTime`` as a Unix time (absent until its first sync).
``pending_approval{namespace,name}``
    Per resource: 1 while ``status.pendingApproval`` is set, else 0.
``pending_approval_since_timestamp_seconds{namespace,name}``
    Per resource, only while an approval is pending: ``status.pendingApproval.since``.
``signer_balance_wei{chain_id,address}``
    The balance of a signer as read before its last registration (kept for at most
    ``SIGNER_BALANCE_LIMIT`` addresses, the least recently reported dropped first).
``leader``
    1 while this process holds the leader Lease (or runs without leader election), 0 on standby.
``kubernetes_requests_total{method,resource,code}``
    Requests of the operator's own Kubernetes client (reads, status writes, Events, the Lease, the
    Secret watch); ``code="none"`` when no answer came. kopf's watches are not counted.
``build_info{version}``
    Always 1.
"""

from __future__ import annotations

import threading
from collections import Counter as Tally
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from typing import Final, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from cvm_prelaunch_operator import __version__

NAMESPACE: Final = "cvm_prelaunch"

# Reconciles are mostly a few milliseconds (status confirmed) up to seconds (a chain confirmation);
# Phala Cloud answers in tens of milliseconds to a few seconds.
RECONCILE_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
REQUEST_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

TRANSACTION_OUTCOMES: Final = ("registered", "reused", "verified", "replaced", "failed")

# Signers are few (one per app owner key), but keys rotate: the map of balances is bounded.
SIGNER_BALANCE_LIMIT: Final = 1024


class ResourceView(Protocol):
    """What the runtime keeps of one watched resource (``handlers.runtime.ResourceSummary``)."""

    @property
    def namespace(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def ready_status(self) -> str: ...  # True, False or Unknown
    @property
    def ready_reason(self) -> str: ...  # "None" before the first status write
    @property
    def phase(self) -> str: ...
    @property
    def stalled(self) -> bool: ...
    @property
    def last_sync_time(self) -> float | None: ...
    @property
    def pending_approval(self) -> bool: ...
    @property
    def pending_since(self) -> float | None: ...


ReadyStates = Callable[[], Iterable[ResourceView]]
"""Returns what the runtime knows of every watched resource."""

_COPY_ATTEMPTS: Final = 3


class _ResourceCollector(Collector):
    """The aggregate count and the per-resource series, computed when Prometheus scrapes: a deleted
    resource's series disappear with it, and there are never more than the resources watched."""

    def __init__(self, states: ReadyStates) -> None:
        self._states = states

    def collect(self) -> Iterator[GaugeMetricFamily]:
        views = self._snapshot()
        family = GaugeMetricFamily(
            f"{NAMESPACE}_resources",
            "CvmPreLaunchScript resources watched, by Ready condition status and reason and by phase.",
            labels=["condition", "status", "reason", "phase"],
        )
        tally = Tally((v.ready_status, v.ready_reason, v.phase) for v in views)
        for (status, reason, phase), count in sorted(tally.items()):
            family.add_metric(["Ready", status, reason, phase], count)
        yield family

        ready = GaugeMetricFamily(
            f"{NAMESPACE}_resource_ready",
            "1 while the resource's Ready condition is True, else 0; labelled with its Ready reason.",
            labels=["namespace", "name", "reason"],
        )
        stalled = GaugeMetricFamily(
            f"{NAMESPACE}_resource_stalled",
            "1 while the resource's Stalled condition is True, else 0.",
            labels=["namespace", "name"],
        )
        last_sync = GaugeMetricFamily(
            f"{NAMESPACE}_resource_last_sync_timestamp_seconds",
            "status.lastSyncTime of the resource as a Unix time (absent before its first sync).",
            labels=["namespace", "name"],
        )
        pending = GaugeMetricFamily(
            f"{NAMESPACE}_pending_approval",
            "1 while the resource waits for a person to approve a compose hash, else 0.",
            labels=["namespace", "name"],
        )
        pending_since = GaugeMetricFamily(
            f"{NAMESPACE}_pending_approval_since_timestamp_seconds",
            "status.pendingApproval.since of the resource as a Unix time (only while pending).",
            labels=["namespace", "name"],
        )
        for view in sorted(views, key=lambda v: (v.namespace, v.name)):
            key = [view.namespace, view.name]
            ready.add_metric([*key, view.ready_reason], 1.0 if view.ready_status == "True" else 0.0)
            stalled.add_metric(key, 1.0 if view.stalled else 0.0)
            if view.last_sync_time is not None:
                last_sync.add_metric(key, view.last_sync_time)
            pending.add_metric(key, 1.0 if view.pending_approval else 0.0)
            if view.pending_approval and view.pending_since is not None:
                pending_since.add_metric(key, view.pending_since)
        yield from (ready, stalled, last_sync, pending, pending_since)

    def _snapshot(self) -> list[ResourceView]:
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


class _SignerBalances(Collector):
    """The last balance reported per (chain, signer address); written on the event loop, read by the
    scrape thread."""

    def __init__(self, limit: int = SIGNER_BALANCE_LIMIT) -> None:
        self._limit = limit
        self._lock = threading.Lock()
        self._balances: OrderedDict[tuple[int, str], int] = OrderedDict()

    def report(self, chain_id: int, address: str, wei: int) -> None:
        key = (chain_id, address[:64])  # an address is 42 characters: nothing longer becomes a label
        with self._lock:
            self._balances[key] = wei
            self._balances.move_to_end(key)
            while len(self._balances) > self._limit:
                self._balances.popitem(last=False)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            f"{NAMESPACE}_signer_balance_wei",
            "Balance of a signer in wei, as read before its last registration.",
            labels=["chain_id", "address"],
        )
        with self._lock:
            balances = sorted(self._balances.items())
        for (chain_id, address), wei in balances:
            family.add_metric([str(chain_id), address], float(wei))
        yield family

    def describe(self) -> Iterator[GaugeMetricFamily]:
        return iter(())


class _CoreObserver:
    """The reconcile core's ``Observer`` port over the operator's metrics."""

    def __init__(self, metrics: OperatorMetrics) -> None:
        self._metrics = metrics

    def transaction(self, outcome: str) -> None:
        self._metrics.observe_transaction(outcome)

    def drift(self) -> None:
        self._metrics.observe_drift()

    def signer_balance(self, chain_id: int, address: str, wei: int) -> None:
        self._metrics.signer_balances.report(chain_id, address, wei)


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
        self.leader = Gauge(
            "leader",
            "1 while this process holds the leader Lease (or runs without leader election), 0 on standby.",
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.kubernetes_requests = Counter(
            "kubernetes_requests",
            "Requests of the operator's own Kubernetes client by method, resource and HTTP status code.",
            ["method", "resource", "code"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.chain_requests = Counter(
            "chain_requests",
            "Chain JSON-RPC requests (a batch counts once) by the question asked and whether it was answered",
            ["method", "result"],
            namespace=NAMESPACE,
            registry=self.registry,
        )
        self.chain_request_duration = Histogram(
            "chain_request_duration_seconds",
            "Time of each chain JSON-RPC request, by the question asked.",
            ["method"],
            namespace=NAMESPACE,
            buckets=REQUEST_BUCKETS,
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
        self.signer_balances = _SignerBalances()
        self.registry.register(self.signer_balances)

    # -- callbacks handed to the layers -----------------------------------------------------------

    def observe_reconcile(self, result: str, seconds: float) -> None:
        self.reconciles.labels(result=result).inc()
        self.reconcile_duration.labels(result=result).observe(seconds)

    def observe_request(self, endpoint: str, status: int | None, seconds: float) -> None:
        code = str(status) if status is not None else "none"
        self.phala_requests.labels(endpoint=endpoint, code=code).inc()
        self.phala_request_duration.labels(endpoint=endpoint, code=code).observe(seconds)

    def observe_leader(self, leading: bool) -> None:
        self.leader.set(1 if leading else 0)

    def observe_kube_request(self, method: str, resource: str, status: int | None, seconds: float) -> None:
        self.kubernetes_requests.labels(
            method=method, resource=resource, code=str(status) if status is not None else "none"
        ).inc()

    def observe_chain_request(self, method: str, seconds: float, ok: bool) -> None:
        self.chain_requests.labels(method=method, result="ok" if ok else "error").inc()
        self.chain_request_duration.labels(method=method).observe(seconds)

    def observe_transaction(self, outcome: str) -> None:
        self.transactions.labels(outcome=outcome).inc()

    def observe_drift(self) -> None:
        self.drift_detected.inc()

    def observer(self) -> _CoreObserver:
        """The core's ``reconcile.ports.Observer``: transactions, drift and signer balances."""
        return _CoreObserver(self)

    def watch_resources(self, states: ReadyStates) -> None:
        """Count resources from ``states``, and report each one, at every scrape."""
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


__all__ = ["OperatorMetrics", "ReadyStates", "ResourceView"]
