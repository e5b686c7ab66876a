"""Helpers of the plugin tests: running ``kubectl cpls`` as people do, and resources with the status
the operator would write (fixtures live in ``conftest``).

The plugin runs through the real kubectl binary, which finds the installed ``kubectl-cpls`` console
script on PATH, against the real API server. Until the reconcile core writes
``status.pendingApproval``, most tests write the status they need themselves through the status
subresource, exactly as the operator does.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client as k8s

from cvm_prelaunch_localenv import paths, scenario
from cvm_prelaunch_localenv.kube import ControlPlane

GROUP, VERSION, PLURAL = "cloud.phala.com", "v1alpha1", "cvmprelaunchscripts"
APPROVED = "cloud.phala.com/approved-compose-hash"
REQUESTED_AT = "cloud.phala.com/requested-at"
HASH_A = "0x" + "ab" * 32
HASH_B = "0x" + "cd" * 32
SCRIPT_SHA = "5" * 64
CONTRACT = "0x700b6a60ce7eaaea56f065753d8dcb9653dbad35"
PLUGIN_TIMEOUT = 60.0


@dataclass(frozen=True)
class Run:
    code: int
    out: str
    err: str


Cpls = Callable[..., Run]
"""The ``cpls`` fixture: ``cpls(*args, namespace_flag=..., env=...)``."""


def plugin_dir() -> Path:
    """Where pip put the console script: next to this interpreter."""
    where = Path(sys.executable).parent
    if not (where / "kubectl-cpls").exists():
        found = shutil.which("kubectl-cpls")
        assert found, "kubectl-cpls is not installed: run hack/bootstrap.sh"
        where = Path(found).parent
    return where


def run_cpls(env: Mapping[str, str], *args: str) -> Run:
    """``kubectl cpls ARGS`` through the real kubectl, in ``env``."""
    completed = subprocess.run(
        [str(paths.kubectl_bin()), "cpls", *args],
        capture_output=True,
        text=True,
        env=dict(env),
        timeout=PLUGIN_TIMEOUT,
        check=False,
    )
    return Run(completed.returncode, completed.stdout, completed.stderr)


def condition(kind: str, status: str, reason: str, message: str, generation: int = 1) -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }


def conditions(
    ready: tuple[str, str, str],
    *,
    reconciling: tuple[str, str, str] = ("False", "Idle", "No work in progress"),
    stalled: tuple[str, str, str] = ("False", "NotStalled", "No permanent failure"),
    generation: int = 1,
) -> list[dict[str, Any]]:
    return [
        condition("Ready", *ready, generation),
        condition("Reconciling", *reconciling, generation),
        condition("Stalled", *stalled, generation),
    ]


def awaiting_status(
    compose_hash: str = HASH_A, *, generation: int = 1, since: str | None = None
) -> dict[str, Any]:
    """What the core writes while a person must approve ``compose_hash``."""
    return {
        "observedGeneration": generation,
        "phase": "AwaitingApproval",
        "message": f"Approve compose hash {compose_hash}",
        "pendingApproval": {
            "composeHash": compose_hash,
            "scriptSha256": SCRIPT_SHA,
            "cvmId": "cvm_ykL5lbAn",
            "appContract": CONTRACT,
            "chainId": 8453,
            "since": since or "2026-01-01T00:00:00Z",
        },
        "conditions": conditions(
            ("False", "AwaitingApproval", f"Approve compose hash {compose_hash}"), generation=generation
        ),
    }


def synced_status(generation: int = 1) -> dict[str, Any]:
    return {
        "observedGeneration": generation,
        "phase": "Synced",
        "message": "Script sha256 555555555555 applied to CVM cvm_ykL5lbAn",
        "conditions": conditions(("True", "Synced", "Script applied"), generation=generation),
    }


class Cluster:
    """Resources of one test namespace, created with kubectl and given a status like the operator's."""

    def __init__(self, cp: ControlPlane, namespace: str) -> None:
        self.cp = cp
        self.namespace = namespace
        self.api = k8s.CustomObjectsApi(cp.api_client())

    def create(
        self,
        name: str,
        *,
        status: Mapping[str, Any] | None = None,
        annotations: Mapping[str, str] | None = None,
        namespace: str | None = None,
        **spec: Any,
    ) -> dict[str, Any]:
        ns = namespace or self.namespace
        spec.setdefault("cvm_id", "cvm_ykL5lbAn")
        spec.setdefault("config_map", f"{name}-script")
        scenario.apply(self.cp, scenario.cvm_prelaunch_script(name, ns, annotations=annotations, **spec))
        if status is not None:
            self.set_status(name, status, namespace=ns)
        return self.get(name, namespace=ns)

    def set_status(self, name: str, status: Mapping[str, Any], *, namespace: str | None = None) -> None:
        self.api.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace or self.namespace, PLURAL, name, {"status": dict(status)}
        )

    def get(self, name: str, *, namespace: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = self.api.get_namespaced_custom_object(
            GROUP, VERSION, namespace or self.namespace, PLURAL, name
        )
        return body

    def annotations(self, name: str) -> dict[str, str]:
        return dict(self.get(name)["metadata"].get("annotations") or {})
