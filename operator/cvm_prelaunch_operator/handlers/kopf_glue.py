"""kopf handlers: thin glue from watch events to the runtime's index and work queue."""

from __future__ import annotations

from typing import Any

import kopf

from cvm_prelaunch_operator.domain.resource import GROUP, PLURAL, VERSION
from cvm_prelaunch_operator.handlers.runtime import Runtime

# The initial listing of ConfigMaps and Secrets comes in pages, so thousands of unrelated objects
# never sit in memory at once.
LIST_CHUNK_SIZE = 250
WORKER_IDLE_SECONDS = 0.2


def build_registry(runtime: Runtime) -> kopf.OperatorRegistry:
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

    @kopf.on.event(GROUP, VERSION, PLURAL, registry=registry)
    def resource_event(*, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        runtime.on_resource((namespace or "", name), None if type == "DELETED" else body)

    @kopf.on.event("", "v1", "configmaps", registry=registry)
    def configmap_event(*, type: str, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
        runtime.on_configmap((namespace or "", name), None if type == "DELETED" else body)

    # Secrets are watched (list/watch RBAC) only to react when an API key, RPC URL or signer key
    # changes; their values are read with a GET when a reconcile needs them and never cached.
    @kopf.on.event("", "v1", "secrets", registry=registry)
    def secret_event(*, type: str, meta: kopf.Meta, namespace: str | None, name: str, **_: Any) -> None:
        version = None if type == "DELETED" else str(meta.get("resourceVersion"))
        runtime.on_secret((namespace or "", name), version)

    return registry
