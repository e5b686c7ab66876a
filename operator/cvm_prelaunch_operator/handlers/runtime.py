"""The operator's moving parts wired together: watches feed an index and a work queue; workers
reconcile one resource at a time with a fresh read. kopf is used as the informer only: handlers here
store nothing on users' objects (no finalizers, no annotations, no progress records)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cvm_prelaunch_operator.domain.resource import Spec
from cvm_prelaunch_operator.kube.cluster import Cluster, ObjectKey
from cvm_prelaunch_operator.reconcile.ports import StatusConflict
from cvm_prelaunch_operator.reconcile.sync import Reconciler
from cvm_prelaunch_operator.reconcile.workqueue import WorkQueue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class References:
    config_map: str | None
    secrets: frozenset[str]


def references_of(spec: Mapping[str, Any]) -> References:
    """What a resource points at, tolerant of specs the schema would reject."""
    try:
        parsed = Spec.parse(spec)
    except (ValueError, TypeError):
        script_ref = spec.get("scriptRef") if isinstance(spec, Mapping) else None
        name = script_ref.get("name") if isinstance(script_ref, Mapping) else None
        return References(config_map=str(name) if name else None, secrets=frozenset())
    return References(
        config_map=parsed.script_ref.name, secrets=frozenset(ref.name for ref in parsed.secret_refs())
    )


@dataclass
class ReferenceIndex:
    """Which resources reference which ConfigMap and Secret: a ConfigMap event touches only those."""

    _by_resource: dict[ObjectKey, References] = field(default_factory=dict)
    _by_configmap: dict[ObjectKey, set[ObjectKey]] = field(default_factory=lambda: defaultdict(set))
    _by_secret: dict[ObjectKey, set[ObjectKey]] = field(default_factory=lambda: defaultdict(set))

    def update(self, resource: ObjectKey, refs: References) -> None:
        self.remove(resource)
        namespace = resource[0]
        self._by_resource[resource] = refs
        if refs.config_map:
            self._by_configmap[(namespace, refs.config_map)].add(resource)
        for secret in refs.secrets:
            self._by_secret[(namespace, secret)].add(resource)

    def remove(self, resource: ObjectKey) -> References | None:
        old = self._by_resource.pop(resource, None)
        if old is None:
            return None
        namespace = resource[0]
        if old.config_map:
            _discard(self._by_configmap, (namespace, old.config_map), resource)
        for secret in old.secrets:
            _discard(self._by_secret, (namespace, secret), resource)
        return old

    def by_configmap(self, key: ObjectKey) -> frozenset[ObjectKey]:
        return frozenset(self._by_configmap.get(key, ()))

    def by_secret(self, key: ObjectKey) -> frozenset[ObjectKey]:
        return frozenset(self._by_secret.get(key, ()))

    def __len__(self) -> int:
        return len(self._by_resource)


def _discard(index: dict[ObjectKey, set[ObjectKey]], key: ObjectKey, resource: ObjectKey) -> None:
    users = index.get(key)
    if users is not None:
        users.discard(resource)
        if not users:
            del index[key]


ReconcileObserver = Callable[[str, float], None]  # (result, seconds)


def ready_state(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(status, reason) of the Ready condition and the phase, as the watched body shows them."""
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), None) or {}
    return (
        str(ready.get("status") or "Unknown"),
        str(ready.get("reason") or "None"),
        str(status.get("phase") or "None"),
    )


class Runtime:
    def __init__(
        self,
        cluster: Cluster,
        reconciler: Reconciler,
        *,
        workers: int,
        observer: ReconcileObserver | None = None,
    ) -> None:
        self.cluster = cluster
        self.reconciler = reconciler
        self.index = ReferenceIndex()
        self.queue: WorkQueue[ObjectKey] = WorkQueue(self._reconcile, workers=workers)
        self._observer = observer
        # Ready condition and phase of every watched resource, for the metrics gauge at scrape time.
        self.ready_states: dict[ObjectKey, tuple[str, str, str]] = {}

    # -- watch events -----------------------------------------------------------------------------

    def on_resource(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        if body is None:
            self.ready_states.pop(key, None)
            old = self.index.remove(key)
            self.queue.forget(key)
            if old is not None:
                self._drop_unreferenced(key[0], old)
            return
        self.ready_states[key] = ready_state(body)
        old = self.index.remove(key)
        self.index.update(key, references_of(body.get("spec") or {}))
        if old is not None:
            self._drop_unreferenced(key[0], old)
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        if self.cluster.wrote(key, version):
            return  # the echo of our own status write: the pass that wrote it has planned what follows
        self.queue.add(key)

    def on_configmap(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        users = self.index.by_configmap(key)
        if not users:
            return  # unreferenced: keep nothing of it
        self.cluster.observe_configmap(key, body)
        for resource in users:
            self.queue.add(resource)

    def on_secret(self, key: ObjectKey, resource_version: str | None) -> None:
        users = self.index.by_secret(key)
        if not users:
            return
        self.cluster.observe_secret(key, resource_version)
        for resource in users:
            self.queue.add(resource)

    def _drop_unreferenced(self, namespace: str, old: Any) -> None:
        if old.config_map and not self.index.by_configmap((namespace, old.config_map)):
            self.cluster.forget_configmap((namespace, old.config_map))
        for secret in old.secrets:
            if not self.index.by_secret((namespace, secret)):
                self.cluster.forget_secret((namespace, secret))

    # -- the worker ---------------------------------------------------------------------------------

    async def _reconcile(self, key: ObjectKey) -> float | None:
        started = time.monotonic()
        result = "error"
        try:
            snapshot = await self.cluster.get_resource(*key)
            if snapshot is None:
                result = "gone"
                return None
            outcome = await self.reconciler.reconcile(snapshot, self.cluster.io_for(snapshot))
            result = "requeue" if outcome.requeue_after is not None else "done"
            return outcome.requeue_after
        except StatusConflict as exc:
            result = "conflict"
            logger.debug("%s/%s: %s; re-planning", key[0], key[1], exc)
            return 0.0
        except Exception as exc:  # a Kubernetes read failed, or a bug: back off, keep the worker
            logger.warning("%s/%s: reconcile failed: %s", key[0], key[1], exc)
            return 5.0
        finally:
            if self._observer is not None:
                self._observer(result, time.monotonic() - started)
