"""A small list+watch of one collection, for what kopf cannot do: metadata-only watches.

The operator must learn that a Secret it uses changed (a rotated API key ends a permanent failure)
without receiving the values of the cluster's other Secrets. Asked with
``Accept: application/json;as=PartialObjectMetadata...``, the API server sends names, namespaces and
resourceVersions only (cert-manager's and client-go's metadata informers do the same); values are read
with a GET when a reconcile needs them.

The loop is the informer's: list in pages (the list's resourceVersion is where the watch starts),
watch with bookmarks from there, resume from the last resourceVersion seen when a watch ends, list
again after 410 Gone (history compacted), and back off exponentially (bounded, jittered) on any
failure. Nothing of the objects is kept here; the sink decides what to remember.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

from cvm_prelaunch_operator.kube.client import METADATA_LIST, METADATA_WATCH, KubeApiError, KubeClient

logger = logging.getLogger(__name__)

PAGE_SIZE: Final = 500
# The API server ends each watch after this long (randomised like client-go's, so that many watches do
# not reconnect at once); a stream silent for longer than the watch plus a margin is dead.
WATCH_SECONDS: Final = (240, 300)
SILENCE_MARGIN: Final = 30.0
LIST_TIMEOUT: Final = 60.0
KEPT_METADATA: Final = ("namespace", "name", "uid", "resourceVersion", "generation")
QUICK_END: Final = 1.0  # a watch that ends sooner than this without a single event counts as a failure


class WatchSink(Protocol):
    """Receives a collection's state; called on the event loop, must not block."""

    def relisting(self) -> None:
        """A full listing starts: what it does not announce before ``relisted`` is gone."""
        ...

    def event(self, type_: str, obj: Mapping[str, Any]) -> None:
        """``ADDED``, ``MODIFIED`` or ``DELETED`` with the object (metadata only if so asked)."""
        ...

    def relisted(self) -> None: ...


@dataclass(frozen=True)
class Backoff:
    """Exponential with full jitter on the upper half: first ``initial``, at most ``cap`` seconds."""

    initial: float = 0.5
    cap: float = 30.0

    def delay(self, failures: int, rng: random.Random) -> float:
        ceiling = min(self.cap, self.initial * 2 ** max(0, failures - 1))
        return rng.uniform(ceiling / 2, ceiling)


class _Gone(Exception):
    """410: the resourceVersion to resume from is too old; list again."""


class Watcher:
    def __init__(
        self,
        client: KubeClient,
        *,
        path: str,
        resource: str,
        sink: WatchSink,
        metadata_only: bool,
        page_size: int = PAGE_SIZE,
        backoff: Backoff | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._path = path
        self._resource = resource
        self._sink = sink
        self._metadata_only = metadata_only
        self._page_size = page_size
        self._backoff = backoff or Backoff()
        self._rng = rng or random.Random()
        self.synced = asyncio.Event()  # set once the first listing was delivered
        self.lists = 0
        self.watches = 0

    def __repr__(self) -> str:
        return f"Watcher({self._path}, metadata_only={self._metadata_only})"

    async def run(self, since: str | None = None) -> None:
        """Until cancelled. With ``since``, watch from that resourceVersion first instead of listing."""
        loop = asyncio.get_running_loop()
        version: str | None = since
        failures = 0
        while True:
            try:
                if version is None:
                    version = await self._list()
                    failures = 0
                began = loop.time()
                version, delivered = await self._watch(version)
                if delivered or loop.time() - began >= QUICK_END:
                    failures = 0
                else:
                    # Ended at once with nothing in it (a proxy cutting streams): not a reason to spin.
                    failures += 1
                    await asyncio.sleep(self._backoff.delay(failures, self._rng))
            except _Gone:
                logger.debug("watch of %s: resourceVersion too old; listing again", self._path)
                version = None
            except KubeApiError as exc:
                failures += 1
                if exc.gone:
                    version = None
                delay = self._backoff.delay(failures, self._rng)
                # Kept at WARNING: a refused list or watch (RBAC) is what an administrator must see.
                logger.warning(
                    "cannot %s %s: %s; retrying in %.1fs",
                    "list" if version is None else "watch",
                    self._path,
                    exc,
                    delay,
                )
                await asyncio.sleep(delay)
            except Exception as exc:  # a malformed answer, or a bug: never end the watch over it
                failures += 1
                version = None
                delay = self._backoff.delay(failures, self._rng)
                logger.warning(
                    "unexpected %s while watching %s; listing again in %.1fs",
                    type(exc).__name__,
                    self._path,
                    delay,
                    exc_info=not isinstance(exc, ValueError | KeyError | TypeError),
                )
                await asyncio.sleep(delay)

    def _shape(self, obj: Mapping[str, Any]) -> Mapping[str, Any]:
        """In metadata-only mode, only what identifies the object and its version goes on. Annotations
        are dropped at once: a Secret applied with client-side ``kubectl apply`` repeats its values in
        one (``last-applied-configuration``), and metadata is all the API server can leave out."""
        if not self._metadata_only:
            return obj
        meta = obj.get("metadata") or {}
        return {
            "kind": obj.get("kind"),
            "metadata": {key: meta[key] for key in KEPT_METADATA if key in meta},
        }

    async def _list(self) -> str:
        self.lists += 1
        params = {"limit": str(self._page_size)}
        accept = METADATA_LIST if self._metadata_only else None
        started = False
        while True:
            try:
                answer = await self._client.request(
                    "GET",
                    self._path,
                    resource=self._resource,
                    params=params,
                    accept=accept,
                    request_timeout=LIST_TIMEOUT,
                )
            except KubeApiError as exc:
                if exc.gone and "continue" in params:
                    # The continue token expired mid-listing: start the listing over.
                    params = {"limit": str(self._page_size)}
                    continue
                raise
            page = answer.body or {}
            if not started:
                self._sink.relisting()
                started = True
            for item in page.get("items") or []:
                self._sink.event("ADDED", self._shape(item))
            meta = page.get("metadata") or {}
            token = meta.get("continue")
            if not token:
                self._sink.relisted()
                self.synced.set()
                return str(meta.get("resourceVersion") or "")
            params = {"limit": str(self._page_size), "continue": str(token)}

    async def _watch(self, version: str) -> tuple[str, int]:
        """Follow the watch until the server ends it; the last resourceVersion and the events seen."""
        self.watches += 1
        seconds = self._rng.randint(*WATCH_SECONDS)
        params = {
            "watch": "1",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(seconds),
        }
        accept = METADATA_WATCH if self._metadata_only else None
        delivered = 0
        async with self._client.stream_lines(
            self._path,
            resource=self._resource,
            params=params,
            accept=accept,
            read_timeout=seconds + SILENCE_MARGIN,
        ) as lines:
            async for line in lines:
                event = json.loads(line)
                type_ = str(event.get("type") or "")
                obj = event.get("object") or {}
                if type_ == "ERROR":
                    code = obj.get("code")
                    if code == 410:
                        raise _Gone()
                    raise KubeApiError(
                        code if isinstance(code, int) else None,
                        str(obj.get("reason") or "Error"),
                        str(obj.get("message") or ""),
                    )
                delivered += 1
                new_version = (obj.get("metadata") or {}).get("resourceVersion")
                if new_version:
                    version = str(new_version)
                if type_ in ("ADDED", "MODIFIED", "DELETED"):
                    self._sink.event(type_, self._shape(obj))
        return version, delivered


__all__ = ["Backoff", "WatchSink", "Watcher"]
