"""Kubernetes access for the reconciler: reads of the resource, guarded status writes, events, and
caches of the ConfigMaps and Secrets that resources reference (fed by the watches, never of
unreferenced ones).

A pass starts from the resource's watched body when nothing this process has heard of is newer than
it (``kube.bodies``), which is the case after its own last status write; otherwise from a GET.

A referenced Secret's values are read with a GET the first time a pass needs them and kept while the
metadata-only Secret watch reports the same resourceVersion (a change, or a deletion, drops them at
once) and for at most ``SECRET_VALUES_MAX_AGE`` seconds, in case a watch stays open without telling.
A Secret no resource references any more is dropped with its version.

Every call goes through the asyncio client of ``kube.client`` (raw JSON, one connection pool). Writes
(status patches, Events) pass the leadership ``Fence`` first: a process that is not the leader, or
no longer sure it is, writes nothing.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from cvm_prelaunch_operator.domain.errors import NotLeader, Permanent, RetryLater
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import GROUP, KIND, PLURAL, VERSION, ResourceSnapshot
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.kube.bodies import WatchedBodies
from cvm_prelaunch_operator.kube.client import MERGE_PATCH, KubeApiError, KubeClient
from cvm_prelaunch_operator.reconcile.ports import AlwaysLeader, Fence, ScriptSource, StatusConflict

logger = logging.getLogger(__name__)

REPORTING_COMPONENT = "cvm-prelaunch-operator"

ObjectKey = tuple[str, str]  # (namespace, name)

WRITES_REMEMBERED = 8  # a pass writes status a handful of times; their echoes arrive after
# Events are posted in the background; if the API server falls behind, at most this many wait, and
# newer ones are dropped (status, not Events, is the record of truth).
MAX_PENDING_EVENTS = 2048
EVENT_FLUSH_SECONDS = 1.0
# Events go out one at a time, behind the reads and status writes of the passes: a burst of syncs
# (one ConfigMap edit fanning out to hundreds of resources, fifty registrations confirmed by one block)
# posts an Event or two each, and letting them compete with the passes' own requests at the API server
# slowed every pass down. A post takes a few milliseconds, so one lane keeps up with hundreds of
# syncs a second; the backlog is bounded by MAX_PENDING_EVENTS.
EVENT_CONCURRENCY = 1
# Requests of passes that asked for themselves (requeued looks: fifty registrations woken by one block)
# go to the API server one at a time; those of passes a change asked for (an edit) never wait for a
# turn. When the eight looks under way wrote at once, the API server answered each write in 60 to
# 120 ms, an edit's write-ahead among them (measured in the mainnet benchmark: the edits' reaction p99
# went from 104-221 ms to 47-48 ms, while the last registration still reached Synced within 1.2 s of
# its confirmations).
BACKGROUND_REQUESTS = 1
# Values of referenced Secrets kept between passes (see the module); more distinct Secrets than this
# are read again as passes need them, the least recently used first.
SECRET_VALUES_KEPT = 1024
SECRET_VALUES_MAX_AGE = 300.0
_UNSEEN = object()


def resource_path(namespace: str, name: str) -> str:
    return f"/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}/{name}"


def core_path(namespace: str, plural: str, name: str | None = None) -> str:
    base = f"/api/v1/namespaces/{namespace}/{plural}"
    return f"{base}/{name}" if name else base


@dataclass(frozen=True)
class CachedSecret:
    resource_version: str
    data: Mapping[str, str] = field(repr=False)  # base64, as the API server sends it
    read_at: float


@dataclass(frozen=True)
class CachedConfigMap:
    uid: str
    resource_version: str
    data: Mapping[str, str]
    binary_data: Mapping[str, str]


def _transient(what: str, exc: KubeApiError) -> RetryLater:
    answer = f"HTTP {exc.status} {exc.reason}" if exc.status is not None else f"no answer ({exc.reason})"
    return RetryLater(f"Kubernetes API error while {what}: {answer}", reason=Reason.KUBERNETES_API_ERROR)


class Cluster:
    """One per operator process."""

    def __init__(
        self,
        client: KubeClient,
        *,
        fence: Fence | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._client = client
        self._clock = clock
        self._fence: Fence = fence or AlwaysLeader()
        self.events_dropped = 0
        self._configmaps: dict[ObjectKey, CachedConfigMap | None] = {}
        # resourceVersions our own status writes produced, so their watch events are not new work.
        self._written: dict[ObjectKey, deque[str]] = {}
        # Status writes under way per resource: the watch may deliver a write's echo before its answer
        # (and so its resourceVersion) arrives; whoever watches is told when the last one settles.
        self._writing: dict[ObjectKey, int] = {}
        self._write_settled: Callable[[ObjectKey], None] | None = None
        self._event_posts: set[asyncio.Task[None]] = set()
        self._event_lane: asyncio.Semaphore | None = None  # made in the loop, on first use
        self._background_lane: asyncio.Semaphore | None = None
        self._secret_versions: dict[ObjectKey, str | None] = {}
        self._secret_values: OrderedDict[ObjectKey, CachedSecret] = OrderedDict()
        self._bodies: WatchedBodies[ResourceSnapshot] = WatchedBodies()

    # -- caches fed by the watches ---------------------------------------------------------------

    def observe_configmap(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        if body is None:
            self._configmaps[key] = None
            return
        meta = body.get("metadata") or {}
        self._configmaps[key] = CachedConfigMap(
            uid=str(meta.get("uid", "")),
            resource_version=str(meta.get("resourceVersion", "")),
            data=dict(body.get("data") or {}),
            binary_data=dict(body.get("binaryData") or {}),
        )

    def known_configmap_version(self, key: ObjectKey) -> str | None:
        """The resourceVersion of the ConfigMap as cached (None: absent, or not cached)."""
        cached = self._configmaps.get(key)
        return cached.resource_version if cached is not None else None

    def observe_secret(self, key: ObjectKey, resource_version: str | None) -> None:
        self._secret_versions[key] = resource_version
        cached = self._secret_values.get(key)
        if cached is not None and cached.resource_version != resource_version:
            del self._secret_values[key]

    def known_secret_version(self, key: ObjectKey) -> str | None:
        """The Secret's resourceVersion as last seen (None: absent, or not known)."""
        return self._secret_versions.get(key)

    def forget_configmap(self, key: ObjectKey) -> None:
        self._configmaps.pop(key, None)

    def forget_secret(self, key: ObjectKey) -> None:
        self._secret_versions.pop(key, None)
        self._secret_values.pop(key, None)

    def wrote(self, key: ObjectKey, resource_version: str) -> bool:
        """True when ``resource_version`` is the result of one of our recent status writes."""
        recent = self._written.get(key)
        return bool(resource_version) and recent is not None and resource_version in recent

    def observe_resource(self, key: ObjectKey, body: Mapping[str, Any] | None) -> None:
        """A watch event of a resource (None: deleted), in the watch's order."""
        snapshot = None if body is None else snapshot_of(body)
        self._bodies.observed(key, snapshot.resource_version if snapshot else "", snapshot)
        if body is None:
            self._written.pop(key, None)

    def doubt_resources(self) -> None:
        """Every resource's next pass reads it with a GET (this process starts leading: another one
        may have written since)."""
        self._bodies.doubt_all()

    def writing(self, key: ObjectKey) -> bool:
        """True while a status write of ours to this resource waits for its answer."""
        return key in self._writing

    def on_write_settled(self, callback: Callable[[ObjectKey], None]) -> None:
        """``callback(key)`` runs when the last status write under way to ``key`` has its answer (or
        failed): an event that arrived meanwhile can then be told apart from the write's echo."""
        self._write_settled = callback

    @property
    def cached_configmaps(self) -> int:
        return len(self._configmaps)

    # -- reads ----------------------------------------------------------------------------------

    def _lane(self, background: bool) -> contextlib.AbstractAsyncContextManager[object]:
        """The turn a request waits for: none for a pass a change asked for (see BACKGROUND_REQUESTS)."""
        if not background:
            return contextlib.nullcontext()
        if self._background_lane is None:
            self._background_lane = asyncio.Semaphore(BACKGROUND_REQUESTS)
        return self._background_lane

    async def read_resource(
        self, namespace: str, name: str, *, background: bool = False
    ) -> ResourceSnapshot | None:
        """The state a pass starts from: the watched body when nothing newer is known (see
        ``kube.bodies``), otherwise a fresh (quorum) read. Never a watch event that may predate our
        own last write."""
        key = (namespace, name)
        watched = self._bodies.trusted(key)
        if watched is not None:
            return watched
        try:
            async with self._lane(background):
                marker = self._bodies.marker(key)
                body = await self._client.get(resource_path(namespace, name), resource=PLURAL)
        except KubeApiError as exc:
            raise _transient(f"reading {namespace}/{name}", exc) from None
        if body is None:
            return None
        read = snapshot_of(cast(Mapping[str, Any], body))
        self._bodies.answered(key, read.resource_version, read, marker)
        return read

    async def configmap(self, namespace: str, name: str) -> CachedConfigMap | None:
        key = (namespace, name)
        if key in self._configmaps:
            return self._configmaps[key]
        try:
            body = await self._client.get(core_path(namespace, "configmaps", name), resource="configmaps")
        except KubeApiError as exc:
            raise _transient(f"reading ConfigMap {namespace}/{name}", exc) from None
        self.observe_configmap(key, body)
        return self._configmaps[key]

    async def secret(self, namespace: str, name: str) -> tuple[str, Mapping[str, str]] | None:
        """(resourceVersion, base64 data) of a Secret: kept from an earlier read while the watch
        reports no change (see the module), else read with a GET."""
        key = (namespace, name)
        cached = self._secret_values.get(key)
        if cached is not None:
            if (
                cached.resource_version == self._secret_versions.get(key)
                and self._clock() - cached.read_at < SECRET_VALUES_MAX_AGE
            ):
                self._secret_values.move_to_end(key)
                return cached.resource_version, cached.data
            del self._secret_values[key]
        read_at = self._clock()
        known = self._secret_versions.get(key, _UNSEEN)
        try:
            body = await self._client.get(core_path(namespace, "secrets", name), resource="secrets")
        except KubeApiError as exc:
            raise _transient(f"reading Secret {namespace}/{name}", exc) from None
        if body is None:
            return None
        rv = str((body.get("metadata") or {}).get("resourceVersion") or "")
        data = {str(k): str(v) for k, v in (body.get("data") or {}).items()}
        if self._secret_versions.get(key, _UNSEEN) != known:
            # The watch reported a version while the GET was under way: which of the two is newer is
            # not knowable (resourceVersions are opaque), so the watch's stays and nothing is kept.
            return rv, data
        self._secret_versions[key] = rv
        self._secret_values[key] = CachedSecret(resource_version=rv, data=data, read_at=read_at)
        while len(self._secret_values) > SECRET_VALUES_KEPT:
            self._secret_values.popitem(last=False)
        return rv, data

    async def secret_version(self, namespace: str, name: str) -> str | None:
        key = (namespace, name)
        if key in self._secret_versions:
            return self._secret_versions[key]
        found = await self.secret(namespace, name)
        if found is None:
            self._secret_versions[key] = None
            return None
        return found[0]

    # -- writes ---------------------------------------------------------------------------------

    async def patch_status(
        self,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        resource_version: str,
        *,
        background: bool = False,
    ) -> str:
        """Merge-patch the status subresource. The resourceVersion in the body is a precondition:
        the API server refuses the write with 409 if the object changed since."""
        key = (namespace, name)
        self._writing[key] = self._writing.get(key, 0) + 1
        try:
            async with self._lane(background):
                self._fence.check()  # here, after any wait for the lane: right before the request
                marker = self._bodies.marker(key)
                written, body = await self._patch_status(namespace, name, patch, resource_version)
        except BaseException:
            self._bodies.doubt(key)  # refused as stale, or perhaps applied without our hearing back
            raise
        else:
            complete = isinstance(body.get("spec"), Mapping)
            self._bodies.answered(key, written, snapshot_of(body) if complete else None, marker)
            return written
        finally:
            left = self._writing.pop(key) - 1
            if left:
                self._writing[key] = left
            elif self._write_settled is not None:
                self._write_settled(key)

    async def _patch_status(
        self, namespace: str, name: str, patch: Mapping[str, Any], resource_version: str
    ) -> tuple[str, Mapping[str, Any]]:
        body = {"metadata": {"resourceVersion": resource_version}, "status": dict(patch)}
        try:
            answer = await self._client.request(
                "PATCH",
                resource_path(namespace, name) + "/status",
                resource=PLURAL + "/status",
                body=body,
                content_type=MERGE_PATCH,
            )
        except KubeApiError as exc:
            if exc.status == 409:
                raise StatusConflict(f"{namespace}/{name} changed since it was read") from None
            if exc.status == 404:
                raise StatusConflict(f"{namespace}/{name} is gone") from None
            raise _transient(f"writing the status of {namespace}/{name}", exc) from None
        answered = cast(Mapping[str, Any], answer.body)
        written = str(answered["metadata"]["resourceVersion"])
        self._written.setdefault((namespace, name), deque(maxlen=WRITES_REMEMBERED)).append(written)
        return written, answered

    def record_event(self, res: ResourceSnapshot, type_: str, reason: str, message: str) -> None:
        """Post an Event in the background: events are best effort, so a sync never waits for one."""
        try:
            self._fence.check()
        except NotLeader:
            return
        if len(self._event_posts) >= MAX_PENDING_EVENTS:
            self.events_dropped += 1
            logger.warning(
                "dropped event %s on %s/%s: too many events pending", reason, res.namespace, res.name
            )
            return
        task = asyncio.create_task(self._post_event(res, type_, reason, message), name=f"event-{reason}")
        self._event_posts.add(task)
        task.add_done_callback(self._event_posts.discard)

    async def _post_event(self, res: ResourceSnapshot, type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{res.name}.{uuid.uuid4().hex[:16]}", "namespace": res.namespace},
            "involvedObject": {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": KIND,
                "name": res.name,
                "namespace": res.namespace,
                "uid": res.uid,
                "resourceVersion": res.resource_version,
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": REPORTING_COMPONENT,
        }
        if self._event_lane is None:
            self._event_lane = asyncio.Semaphore(EVENT_CONCURRENCY)
        try:
            async with self._event_lane:
                await self._client.request(
                    "POST", core_path(res.namespace, "events"), resource="events", body=body
                )
        except KubeApiError as exc:
            # Events are best effort: status is the record of truth.
            logger.warning(
                "could not record event %s on %s/%s: %s",
                reason,
                res.namespace,
                res.name,
                f"HTTP {exc.status}" if exc.status is not None else exc.reason,
            )

    async def aclose(self) -> None:
        """Let Events under way finish for a moment, then drop the rest and close the client."""
        if self._event_posts:
            _done, pending = await asyncio.wait(set(self._event_posts), timeout=EVENT_FLUSH_SECONDS)
            for task in pending:
                task.cancel()
        await self._client.aclose()

    def io_for(self, res: ResourceSnapshot, *, background: bool = False) -> KubeResourceIO:
        """``background``: the pass asked for itself (a requeue); its requests wait for their lane."""
        return KubeResourceIO(self, res, background=background)


class KubeResourceIO:
    """``reconcile.ports.ResourceIO`` for one pass over one resource."""

    def __init__(self, cluster: Cluster, res: ResourceSnapshot, *, background: bool = False) -> None:
        self._cluster = cluster
        self._res = res
        self._resource_version = res.resource_version
        self._background = background

    async def read_script(self, config_map: str, key: str) -> ScriptSource:
        found = await self._cluster.configmap(self._res.namespace, config_map)
        if found is None:
            raise Permanent(
                f"ConfigMap {self._res.namespace}/{config_map} not found", reason=Reason.CONFIGMAP_NOT_FOUND
            )
        if key in found.data:
            data = found.data[key].encode("utf-8")
        elif key in found.binary_data:
            try:
                data = base64.b64decode(found.binary_data[key], validate=True)
            except (binascii.Error, ValueError):
                raise Permanent(
                    f"binaryData key {key!r} is not base64", reason=Reason.KEY_NOT_FOUND
                ) from None
        else:
            raise Permanent(
                f"ConfigMap {self._res.namespace}/{config_map} has no key {key!r}",
                reason=Reason.KEY_NOT_FOUND,
            )
        return ScriptSource(
            data=data, config_map_name=config_map, uid=found.uid, resource_version=found.resource_version
        )

    async def read_secret(self, name: str, key: str) -> Secret:
        found = await self._cluster.secret(self._res.namespace, name)
        if found is None:
            raise Permanent(f"Secret {self._res.namespace}/{name} not found", reason=Reason.SECRET_NOT_FOUND)
        encoded = found[1].get(key)
        if encoded is None:
            raise Permanent(
                f"Secret {self._res.namespace}/{name} has no key {key!r}", reason=Reason.SECRET_NOT_FOUND
            )
        try:
            value = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
        except (binascii.Error, ValueError):
            raise Permanent(
                f"Secret {self._res.namespace}/{name} key {key!r} is not valid UTF-8",
                reason=Reason.SECRET_NOT_FOUND,
            ) from None
        return Secret(value)

    async def secret_version(self, name: str) -> str | None:
        return await self._cluster.secret_version(self._res.namespace, name)

    async def patch_status(self, patch: dict[str, object]) -> None:
        self._resource_version = await self._cluster.patch_status(
            self._res.namespace, self._res.name, patch, self._resource_version, background=self._background
        )

    async def record_event(self, type_: str, reason: str, message: str) -> None:
        self._cluster.record_event(self._res, type_, reason, message)


def snapshot_of(body: Mapping[str, Any]) -> ResourceSnapshot:
    meta = body.get("metadata") or {}
    return ResourceSnapshot(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid", "")),
        generation=int(meta.get("generation") or 0),
        resource_version=str(meta.get("resourceVersion", "")),
        spec=dict(body.get("spec") or {}),
        annotations=dict(meta.get("annotations") or {}),
        status=dict(body.get("status") or {}),
    )
