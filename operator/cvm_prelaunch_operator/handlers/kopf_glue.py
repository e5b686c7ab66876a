"""kopf handlers: thin glue from watch events to the runtime's index and work queue."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf

from cvm_prelaunch_operator.domain.resource import GROUP, PLURAL, VERSION
from cvm_prelaunch_operator.handlers.runtime import Runtime

# The initial listing of ConfigMaps comes in pages, so thousands of unrelated objects
# never sit in memory at once.
LIST_CHUNK_SIZE = 250
WORKER_IDLE_SECONDS = 0.2


class NoDiffBase(kopf.DiffBaseStorage):
    """kopf copies every object it receives (a deep copy of the whole body) to tell what changed for
    on.update/on.field handlers. There are none here: the handlers are on.event, which take each event
    as it comes. Without the copy kopf's CPU per event halves, and a stream of large unreferenced
    ConfigMaps is not copied at all."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence | None:  # type: ignore[override]
        return None

    def fetch(self, *, body: kopf.Body) -> kopf.BodyEssence | None:
        return None

    def store(self, *, body: kopf.Body, patch: kopf.Patch, essence: kopf.BodyEssence) -> None:
        return None


def build_registry(
    runtime: Runtime, *, on_started: Callable[[], None] | None = None
) -> kopf.OperatorRegistry:
    """``on_started`` runs on the event loop once kopf has set itself up (its signal handlers included)."""
    registry = kopf.OperatorRegistry()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.posting.loggers = False  # log lines are not Events; we post Events on transitions only
        settings.watching.server_timeout = 300  # the API server ends each watch within 5 minutes
        settings.watching.client_timeout = 330  # and a silent connection is dropped soon after
        settings.watching.connect_timeout = 15
        settings.watching.inactivity_timeout = 120
        settings.watching.chunk_size = LIST_CHUNK_SIZE
        # Strict mode: watch exactly the namespaces we are given and the resources we name, without
        # listing Namespaces or CRDs (which least-privilege RBAC does not grant).
        settings.scanning.disabled = True
        # kopf keeps one worker task per object until it has been idle this long, and the worker
        # holds the object's last event meanwhile. The handlers here return at once, so a short
        # wait is enough; kopf's 5 s default would hold every ConfigMap of a listing (thousands,
        # none of them referenced) in memory at the same time.
        settings.queueing.idle_timeout = WORKER_IDLE_SECONDS
        settings.persistence.diffbase_storage = NoDiffBase()

    @kopf.on.startup(registry=registry)
    async def started(**_: Any) -> None:
        # Async, so it runs on the loop's thread (kopf runs sync handlers in an executor), and a loop
        # turn later than kopf's own start-up, which installs its signal handlers.
        await asyncio.sleep(0)
        if on_started is not None:
            on_started()

    # The handlers are coroutines, though they only hand the event over: kopf runs plain functions in
    # a thread pool, a thread hop per event that cost more CPU than the whole rest of the handling.
    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    async def resource_event(
        *, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> None:
        runtime.on_resource((namespace or "", name), None if type == "DELETED" else body)

    @kopf.on.event("", "v1", "configmaps", registry=registry)
    async def configmap_event(
        *, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any
    ) -> None:
        runtime.on_configmap((namespace or "", name), None if type == "DELETED" else body)

    # Secrets are not watched through kopf, which would stream every Secret's values into the process:
    # kube.watch follows them metadata-only (see cli).

    return registry
