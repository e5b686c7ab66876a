"""The verbs of ``kubectl cpls``. Each returns the process' exit code and writes only to ``out``/``err``.

Exit codes: 0 done (``diff``: no difference); 1 refused or failed, nothing changed (``diff``: the
scripts differ); 2 a usage error (``diff``: also any error, as diff(1) does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import TYPE_CHECKING, Any, TextIO

from cvm_prelaunch_operator.domain.chain import hex32
from cvm_prelaunch_operator.domain.errors import SyncError
from cvm_prelaunch_operator.domain.resource import ANNOTATION_APPROVED_COMPOSE_HASH, ANNOTATION_REQUESTED_AT
from cvm_prelaunch_operator.domain.secrets import Redactor, Secret
from cvm_prelaunch_operator.domain.text import format_time
from cvm_prelaunch_operator.plugin import render
from cvm_prelaunch_operator.plugin.cluster import Body, Conflict, PluginError, Resources

if TYPE_CHECKING:
    # Importing the phala package loads aiohttp; only diff needs it, so the other verbs start faster.
    from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings

OK = 0
REFUSED = 1
FAILED = 1
DIFFERENT = 1
USAGE = 2
DIFF_TROUBLE = 2

APPROVE_ATTEMPTS = 5
"""Each attempt re-reads the resource; a conflict means it changed (a status write, usually) since."""


class Refused(PluginError):
    """The command will not do what was asked, and changed nothing."""


def _ref(resources: Resources, name: str) -> str:
    return f"cvmprelaunchscript {resources.namespace}/{name}"


def _annotations(body: Body) -> dict[str, str]:
    annotations = (body.get("metadata") or {}).get("annotations")
    return dict(annotations) if isinstance(annotations, dict) else {}


def _resource_version(body: Body) -> str:
    version = (body.get("metadata") or {}).get("resourceVersion")
    if not isinstance(version, str) or not version:
        raise PluginError("the API server returned the resource without a resourceVersion")
    return version


def _section(body: Body, name: str) -> dict[str, Any]:
    value = body.get(name)
    return value if isinstance(value, dict) else {}


def _why_nothing_pending(body: Body) -> str:
    status = _section(body, "status")
    ready = render.condition(body, "Ready")
    phase = status.get("phase") or "none yet"
    reason = ready.get("reason")
    return f"phase {phase}" + (f", reason {reason}" if reason else "")


def approve(resources: Resources, name: str, wanted: str | None, out: TextIO) -> int:
    """Set the approval annotation to the pending compose hash.

    The write is a merge patch carrying the resourceVersion that was read, so it lands only on the
    very object that was checked: if anything changed in between, the API server refuses it and the
    resource is read and checked again. The hash seen first is pinned: if a later read shows another
    pending hash, nothing is approved.
    """
    ref = _ref(resources, name)
    pinned: str | None = None
    for _ in range(APPROVE_ATTEMPTS):
        body = resources.get(name)
        pending = render.pending_approval(body)
        if pending is None:
            raise Refused(f"{ref}: nothing pending approval ({_why_nothing_pending(body)})")
        current = hex32(pending.compose_hash)
        if wanted is not None and hex32(wanted) != current:
            raise Refused(f"{ref}: pending hash is {pending.compose_hash}, not {wanted}; nothing approved")
        if pinned is not None and current != pinned:
            raise Refused(
                f"{ref}: the pending hash changed from {pinned} to {pending.compose_hash} while approving; "
                "nothing approved: check the new hash and run again"
            )
        pinned = current
        described = _describe_pending(pending)
        if _annotations(body).get(ANNOTATION_APPROVED_COMPOSE_HASH) == pending.compose_hash:
            out.write(f"{ref}: compose hash {pending.compose_hash} is approved already{described}\n")
            return OK
        patch = {
            "metadata": {
                "resourceVersion": _resource_version(body),
                "annotations": {ANNOTATION_APPROVED_COMPOSE_HASH: pending.compose_hash},
            }
        }
        try:
            resources.merge_patch(name, patch)
        except Conflict:
            continue
        out.write(f"{ref}: approved compose hash {pending.compose_hash}{described}\n")
        return OK
    raise PluginError(
        f"{ref} kept changing while approving ({APPROVE_ATTEMPTS} attempts); nothing approved, try again"
    )


def _describe_pending(pending: render.PendingApproval) -> str:
    parts = []
    if pending.cvm_id:
        parts.append(f"CVM {pending.cvm_id}")
    if pending.script_sha256:
        parts.append(f"script sha256 {pending.script_sha256}")
    if pending.app_contract:
        chain = f" on chain {pending.chain_id}" if pending.chain_id is not None else ""
        parts.append(f"app contract {pending.app_contract}{chain}")
    return f" ({', '.join(parts)})" if parts else ""


def status(
    resources: Resources,
    name: str | None,
    *,
    all_namespaces: bool,
    namespace_flag: str,
    out: TextIO,
    err: TextIO,
) -> int:
    now = time.time()
    if name is not None:
        r = render.row(resources.get(name))
        out.write(render.table([r], now=now, with_namespace=False))
        out.write(render.details(r, now=now, namespace_flag=namespace_flag))
        return OK
    bodies = resources.list(all_namespaces=all_namespaces)
    if not bodies:
        where = "" if all_namespaces else f" in {resources.namespace} namespace"
        err.write(f"No resources found{where}.\n")
        return OK
    rows = sorted((render.row(b) for b in bodies), key=lambda r: (r.namespace, r.name))
    out.write(render.table(rows, now=now, with_namespace=all_namespaces))
    return OK


def diff(resources: Resources, name: str, settings: PhalaCloudSettings, out: TextIO) -> int:
    """Exit 0 when the CVM runs the ConfigMap's script, 1 (with a unified diff) when it does not."""
    body = resources.get(name)
    spec = _section(body, "spec")
    script_ref = spec.get("scriptRef") or {}
    key_ref = spec.get("apiKeySecretRef") or {}
    cvm_id = spec.get("cvmId")
    if not (
        isinstance(cvm_id, str)
        and isinstance(script_ref, dict)
        and isinstance(key_ref, dict)
        and all(isinstance(ref.get(f), str) for ref in (script_ref, key_ref) for f in ("name", "key"))
    ):
        raise PluginError(f"{_ref(resources, name)}: the spec lacks cvmId, scriptRef or apiKeySecretRef")
    desired = resources.config_map_value(script_ref["name"], script_ref["key"])
    api_key = resources.secret_value(key_ref["name"], key_ref["key"])
    running = _running_script(settings, api_key, cvm_id)
    if running.encode("utf-8") == desired:
        return OK
    out.write(
        render.unified_diff(
            running,
            desired.decode("utf-8", errors="replace"),
            running_label=f"cvm/{cvm_id} (running)",
            desired_label=f"configmap/{script_ref['name']}/{script_ref['key']} (desired)",
        )
    )
    return DIFFERENT


def _running_script(settings: PhalaCloudSettings, api_key: Secret, cvm_id: str) -> str:
    from cvm_prelaunch_operator.phala.client import PhalaCloudClient  # noqa: PLC0415 (see TYPE_CHECKING)

    async def fetch() -> str:
        async with PhalaCloudClient(settings) as client:
            return await client.for_api_key(api_key).get_pre_launch_script(cvm_id)

    try:
        return asyncio.run(fetch())
    except SyncError as error:
        # The client's messages are redacted already; the key is scrubbed once more regardless.
        raise PluginError(f"reading the script of CVM {cvm_id}: {Redactor([api_key])(str(error))}") from None


def refresh(resources: Resources, name: str, out: TextIO, err: TextIO) -> int:
    body = resources.get(name)
    requested_at = format_time(time.time())
    if _annotations(body).get(ANNOTATION_REQUESTED_AT) == requested_at:
        # The same value would be no change, which the operator never sees.
        requested_at = format_time(time.time() + 0.001)
    resources.merge_patch(name, {"metadata": {"annotations": {ANNOTATION_REQUESTED_AT: requested_at}}})
    out.write(f"{_ref(resources, name)}: refresh requested at {requested_at}\n")
    if _suspended(body):
        err.write("note: the resource is suspended; the refresh happens once it is resumed\n")
    return OK


def set_suspend(resources: Resources, name: str, suspend: bool, out: TextIO) -> int:
    body = resources.get(name)
    state = "suspended" if suspend else "resumed"
    if _suspended(body) == suspend:
        out.write(f"{_ref(resources, name)}: {state} already\n")
        return OK
    resources.merge_patch(name, {"spec": {"suspend": suspend}})
    out.write(f"{_ref(resources, name)}: {state}\n")
    return OK


def _suspended(body: Body) -> bool:
    spec = body.get("spec")
    return isinstance(spec, dict) and spec.get("suspend") is True


def phala_settings(api_url: str | None) -> PhalaCloudSettings:
    """The operator's own client settings from the environment, the base URL overridden by ``--api-url``."""
    from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings  # noqa: PLC0415 (see TYPE_CHECKING)

    try:
        settings = PhalaCloudSettings.from_env()
        if api_url is not None:
            settings = dataclasses.replace(settings, base_url=api_url)
    except ValueError as error:
        raise PluginError(str(error)) from None
    return settings
