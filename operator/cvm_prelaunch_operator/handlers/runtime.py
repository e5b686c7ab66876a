"""The operator's moving parts wired together: watches feed an index and a work queue; workers
reconcile one resource at a time from its newest known state. kopf is used as the informer only: handlers here
store nothing on users' objects (no finalizers, no annotations, no progress records)."""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from cvm_prelaunch_operator.domain.blocks import BlockWaiters, Waiter
from cvm_prelaunch_operator.domain.errors import NotLeader
from cvm_prelaunch_operator.domain.resource import Spec
from cvm_prelaunch_operator.domain.text import parse_time
from cvm_prelaunch_operator.kube.cluster import Cluster, ObjectKey
from cvm_prelaunch_operator.reconcile.engine import Reconciler
from cvm_prelaunch_operator.reconcile.ports import StatusConflict
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

    def secrets(self) -> frozenset[ObjectKey]:
        """Every Secret some resource references."""
        return frozenset(self._by_secret)

    def __len__(self) -> int:
        return len(self._by_resource)


def _discard(index: dict[ObjectKey, set[ObjectKey]], key: ObjectKey, resource: ObjectKey) -> None:
    users = index.get(key)
    if users is not None:
        users.discard(resource)
        if not users:
            del index[key]


ReconcileObserver = Callable[[str, float], None]  # (result, seconds)


@dataclass(frozen=True)
class ResourceSummary:
    """What the metrics need of one watched resource, read from its last watched body (the metrics'
    ``ResourceView``)."""

    namespace: str
    name: str
    ready_status: str  # True, False or Unknown
    ready_reason: str  # "None" before the first status write
    phase: str  # "None" before the first status write
    stalled: bool
    last_sync_time: float | None
    pending_approval: bool
    pending_since: float | None


def summarize(key: ObjectKey, body: Mapping[str, Any]) -> ResourceSummary:
    """The summary of a watched body, tolerant of any shape a status may have."""
    status = _mapping(body.get("status"))
    conditions = status.get("conditions")
    by_type = (
        {c.get("type"): c for c in conditions if isinstance(c, Mapping)}
        if isinstance(conditions, list)
        else {}
    )
    ready = _mapping(by_type.get("Ready"))
    pending = status.get("pendingApproval")
    return ResourceSummary(
        namespace=key[0],
        name=key[1],
        ready_status=str(ready.get("status") or "Unknown"),
        ready_reason=str(ready.get("reason") or "None"),
        phase=str(status.get("phase") or "None"),
        stalled=_mapping(by_type.get("Stalled")).get("status") == "True",
        last_sync_time=parse_time(status.get("lastSyncTime")),
        pending_approval=bool(pending),
        pending_since=parse_time(pending.get("since")) if isinstance(pending, Mapping) else None,
    )


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


class Runtime:
    def __init__(
        self,
        cluster: Cluster,
        reconciler: Reconciler,
        *,
        workers: int,
        observer: ReconcileObserver | None = None,
        active: bool = True,
    ) -> None:
        self.cluster = cluster
        self.reconciler = reconciler
        self.index = ReferenceIndex()
        self.queue: WorkQueue[ObjectKey] = WorkQueue(self._reconcile, workers=workers)
        self._observer = observer
        # A standby (not the leader) keeps its index and caches warm from the watches but parks the
        # keys that would need a pass; they are all handed to the queue when it becomes the leader,
        # so every resource is looked at once by the new leader.
        self.active = active
        self._parked: set[ObjectKey] = set()
        self._generations: dict[ObjectKey, object] = {}  # the generation the index was built from
        # A summary of every watched resource, for the metrics at scrape time.
        self.ready_states: dict[ObjectKey, ResourceSummary] = {}
        # resourceVersions seen while a status write of ours was under way: decided when it settles.
        self._unsure: dict[ObjectKey, set[str]] = {}
        cluster.on_write_settled(self._write_settled)
        # Resources whose pass ended waiting for a chain's next block: the first pass that sees it
        # wakes the others (their own estimates back off differently while a block is overdue).
        self.block_waiters: BlockWaiters[ObjectKey] = BlockWaiters()
        self._look_floor = reconciler.policy.block_poll_min
        reconciler.on_new_block(self._new_block)

    # -- leadership ---------------------------------------------------------------------------------

    def activate(self) -> None:
        """This process leads now: every resource seen so far gets a pass."""
        self.active = True
        self.cluster.doubt_resources()
        parked, self._parked = self._parked, set()
        for key in parked:
            self.queue.add(key)

    @property
    def parked(self) -> int:
        return len(self._parked)

    def _enqueue(self, key: ObjectKey) -> None:
        if self.active:
            self.queue.add(key)
        else:
            self._parked.add(key)

    # -- watch events -----------------------------------------------------------------------------

    def on_resource(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        self.cluster.observe_resource(key, body)
        if body is None:
            self._unsure.pop(key, None)
            self.ready_states.pop(key, None)
            self._generations.pop(key, None)
            old = self.index.remove(key)
            self.queue.forget(key)
            self.block_waiters.cancel(key)
            self._parked.discard(key)
            if old is not None:
                self._drop_unreferenced(key[0], old)
            return
        self.ready_states[key] = summarize(key, body)
        generation = (body.get("metadata") or {}).get("generation")
        if generation is None or self._generations.get(key) != generation:
            # The spec (and so what it references) changes only with the generation; the echoes of
            # status writes, most of the events, skip parsing it again.
            old = self.index.remove(key)
            self.index.update(key, references_of(body.get("spec") or {}))
            self._generations[key] = generation
            if old is not None:
                self._drop_unreferenced(key[0], old)
        version = str((body.get("metadata") or {}).get("resourceVersion", ""))
        if self.cluster.wrote(key, version):
            return  # the echo of our own status write: the pass that wrote it has planned what follows
        if self.cluster.writing(key):
            # Perhaps the echo of the write under way, its answer not back yet: decided when it is.
            self._unsure.setdefault(key, set()).add(version)
            return
        self._enqueue(key)

    def _write_settled(self, key: ObjectKey) -> None:
        versions = self._unsure.pop(key, None)
        if versions and not all(self.cluster.wrote(key, version) for version in versions):
            self._enqueue(key)

    def on_configmap(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        users = self.index.by_configmap(key)
        if not users:
            return  # unreferenced: keep nothing of it
        version = str(((body or {}).get("metadata") or {}).get("resourceVersion") or "")
        if body is not None and version and self.cluster.known_configmap_version(key) == version:
            # What the passes read already (a first listing arriving after them): nothing changed.
            return
        self.cluster.observe_configmap(key, body)
        for resource in users:
            self._enqueue(resource)

    def on_secret(self, key: ObjectKey, resource_version: str | None) -> None:
        users = self.index.by_secret(key)
        if not users:
            return
        if self.cluster.known_secret_version(key) == resource_version:
            return  # a relisting repeating what we know: nothing changed
        self.cluster.observe_secret(key, resource_version)
        # The core may cache clients built from a Secret's value (an RPC URL): they are stale now.
        secret_changed = getattr(self.reconciler, "secret_changed", None)
        if callable(secret_changed):
            secret_changed(*key)
        for resource in users:
            self._enqueue(resource)

    def secret_sink(self, namespace: str | None) -> SecretSink:
        """The receiver of a metadata-only Secret watch over ``namespace`` (None: every namespace)."""
        return SecretSink(self, namespace)

    def _drop_unreferenced(self, namespace: str, old: Any) -> None:
        if old.config_map and not self.index.by_configmap((namespace, old.config_map)):
            self.cluster.forget_configmap((namespace, old.config_map))
        for secret in old.secrets:
            if not self.index.by_secret((namespace, secret)):
                self.cluster.forget_secret((namespace, secret))

    # -- the worker ---------------------------------------------------------------------------------

    def _new_block(self, chain_id: int, number: int) -> None:
        now = time.monotonic()
        for key, waiter in self.block_waiters.woken_by(chain_id, number):
            self.queue.add(key, max(0.0, waiter.looked_at + self._look_floor - now), timed=True)

    async def _reconcile(self, key: ObjectKey) -> float | None:
        started = time.monotonic()
        result = "error"
        self.block_waiters.cancel(key)  # this pass looks itself
        try:
            background = self.queue.timed_run(key)
            snapshot = await self.cluster.read_resource(*key, background=background)
            if snapshot is None:
                result = "gone"
                return None
            io = self.cluster.io_for(snapshot, background=background)
            outcome = await self.reconciler.reconcile(snapshot, io)
            result = "requeue" if outcome.requeue_after is not None else "done"
            if outcome.awaits_block is not None:
                chain_id, seen = outcome.awaits_block
                self.block_waiters.wait(key, Waiter(chain_id=chain_id, after=seen, looked_at=started))
            return outcome.requeue_after
        except StatusConflict as exc:
            result = "conflict"
            logger.debug("%s/%s: %s; re-planning", key[0], key[1], exc)
            return 0.0
        except NotLeader as exc:
            # Leadership ended mid-pass: stop here without any further write; whichever process
            # leads next reconciles every resource from its status.
            result = "not-leader"
            logger.info("%s/%s: pass stopped: %s", key[0], key[1], exc)
            return None
        except Exception as exc:  # a Kubernetes read failed, or a bug: back off, keep the worker
            logger.warning("%s/%s: reconcile failed: %s", key[0], key[1], exc)
            return 5.0
        finally:
            if self._observer is not None:
                self._observer(result, time.monotonic() - started)


class SecretSink:
    """Feeds a metadata-only Secret watch into the runtime: only referenced Secrets matter, and only
    their resourceVersion (values are read with a GET when a pass needs them)."""

    def __init__(self, runtime: Runtime, namespace: str | None) -> None:
        self._runtime = runtime
        self._namespace = namespace
        self._listed: set[ObjectKey] | None = None  # referenced Secrets a listing announced so far

    def relisting(self) -> None:
        self._listed = set()

    def event(self, type_: str, obj: Mapping[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        key = (str(meta.get("namespace") or ""), str(meta.get("name") or ""))
        if not self._runtime.index.by_secret(key):
            return
        if self._listed is not None:
            self._listed.add(key)
        version = None if type_ == "DELETED" else str(meta.get("resourceVersion") or "")
        self._runtime.on_secret(key, version)

    def relisted(self) -> None:
        """Referenced Secrets the listing did not announce were deleted while no watch was open."""
        listed, self._listed = self._listed or set(), None
        for key in self._runtime.index.secrets():
            if self._namespace is not None and key[0] != self._namespace:
                continue
            if key not in listed and self._runtime.cluster.known_secret_version(key) is not None:
                self._runtime.on_secret(key, None)
