"""Building blocks for driving the operator on the local environment: manifests of ConfigMaps,
Secrets and CvmPreLaunchScripts, applying them with kubectl, and waiting on status. Shared by the
integration tests, the demo and the benchmarks so all three exercise the same paths."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, cast

from kubernetes import client as k8s
from kubernetes.client.exceptions import ApiException

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane

GROUP, VERSION, PLURAL = "cloud.phala.com", "v1alpha1", "cvmprelaunchscripts"

Body = dict[str, Any]


def configmap(name: str, namespace: str, data: Mapping[str, str]) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace},
        "data": dict(data),
    }


def secret(name: str, namespace: str, data: Mapping[str, str]) -> Body:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace},
        "type": "Opaque",
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def cvm_prelaunch_script(
    name: str,
    namespace: str,
    *,
    cvm_id: str,
    config_map: str,
    key: str = "pre-launch.sh",
    api_key_secret: str = "phala-api-key",  # noqa: S107 (a Secret name)
    on_chain: Mapping[str, Any] | None = None,
    annotations: Mapping[str, str] | None = None,
    **spec: Any,
) -> Body:
    body: Body = {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "CvmPreLaunchScript",
        "metadata": {"name": name, "namespace": namespace, "annotations": dict(annotations or {})},
        "spec": {
            "cvmId": cvm_id,
            "scriptRef": {"name": config_map, "key": key},
            "apiKeySecretRef": {"name": api_key_secret, "key": "api-key"},
            **spec,
        },
    }
    if on_chain is not None:
        body["spec"]["onChain"] = dict(on_chain)
    return body


def apply(cp: ControlPlane, *bodies: Body) -> None:
    """``kubectl apply`` as a user would (server-side validation, defaults, CEL)."""
    documents = {"apiVersion": "v1", "kind": "List", "items": list(bodies)}
    cp.kubectl("apply", "-f", "-", input=json.dumps(documents))


def custom_api(cp: ControlPlane) -> k8s.CustomObjectsApi:
    return k8s.CustomObjectsApi(cp.api_client())


def get(cp: ControlPlane, namespace: str, name: str, api: k8s.CustomObjectsApi | None = None) -> Body:
    api = api or custom_api(cp)
    return cast(Body, api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name))


def condition(body: Mapping[str, Any], kind: str = "Ready") -> Mapping[str, Any]:
    for cond in (body.get("status") or {}).get("conditions") or []:
        if cond.get("type") == kind:
            return dict(cond)
    return {}


def is_synced(body: Mapping[str, Any]) -> bool:
    ready = condition(body)
    generation = (body.get("metadata") or {}).get("generation")
    return (
        ready.get("status") == "True"
        and ready.get("observedGeneration") == generation
        and (body.get("status") or {}).get("phase") == "Synced"
    )


def has_reason(reason: str) -> Callable[[Mapping[str, Any]], bool]:
    def check(body: Mapping[str, Any]) -> bool:
        return condition(body).get("reason") == reason

    return check


def wait_for(
    cp: ControlPlane,
    namespace: str,
    name: str,
    predicate: Callable[[Mapping[str, Any]], bool],
    *,
    timeout: float = 60.0,
    interval: float = 0.05,
    what: str = "the condition",
) -> Body:
    """Poll the resource until ``predicate`` holds; on timeout, say what the status was."""
    api = custom_api(cp)
    deadline = time.monotonic() + timeout
    last: Body = {}
    while True:
        try:
            last = get(cp, namespace, name, api)
            if predicate(last):
                return last
        except ApiException as exc:
            if exc.status != 404:
                raise
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"{namespace}/{name} did not reach {what} in {timeout:.0f}s; status: "
                + json.dumps(last.get("status"), indent=2)
            )
        time.sleep(interval)


def patch_configmap(cp: ControlPlane, namespace: str, name: str, data: Mapping[str, str]) -> None:
    k8s.CoreV1Api(cp.api_client()).patch_namespaced_config_map(name, namespace, {"data": dict(data)})


def annotate(cp: ControlPlane, namespace: str, name: str, annotations: Mapping[str, str | None]) -> None:
    custom_api(cp).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"metadata": {"annotations": dict(annotations)}}
    )


def patch_spec(cp: ControlPlane, namespace: str, name: str, spec: Mapping[str, Any]) -> None:
    custom_api(cp).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"spec": dict(spec)}
    )


SCRIPT_V1 = "#!/bin/sh\necho 'configured by the operator: v1'\n"
SCRIPT_V2 = "#!/bin/sh\necho 'configured by the operator: v2'\n"


@dataclass
class Workbench:
    """One namespace of the local environment, with helpers to create and watch resources."""

    cp: ControlPlane
    namespace: str
    anvil: Anvil

    def create(
        self,
        target: SimTarget,
        *,
        name: str = "app",
        script: str = SCRIPT_V1,
        signer: int | None = 0,
        on_chain: dict[str, Any] | None = None,
        api_key: str | None = None,
        **spec: Any,
    ) -> None:
        """ConfigMap + Secrets + resource for one simulator CVM, applied with kubectl."""
        bodies = [
            configmap(f"{name}-script", self.namespace, {"pre-launch.sh": script}),
            secret(f"{name}-api", self.namespace, {"api-key": api_key or target.api_key}),
        ]
        chain_spec: dict[str, Any] | None = None
        if target.contract is not None:
            chain_spec = {"rpcUrl": self.anvil.rpc_url}
            if signer is not None:
                key = self.anvil.accounts[signer].private_key.reveal()
                bodies.append(secret(f"{name}-signer", self.namespace, {"private-key": key}))
                chain_spec["signerKeySecretRef"] = {"name": f"{name}-signer", "key": "private-key"}
            chain_spec.update(on_chain or {})
        bodies.append(
            cvm_prelaunch_script(
                name,
                self.namespace,
                cvm_id=target.id,
                config_map=f"{name}-script",
                api_key_secret=f"{name}-api",
                on_chain=chain_spec,
                **spec,
            )
        )
        apply(self.cp, *bodies)

    def wait(self, name: str, predicate: Callable[[Any], bool], what: str, timeout: float = 60.0) -> Any:
        return wait_for(self.cp, self.namespace, name, predicate, timeout=timeout, what=what)

    def synced(self, name: str = "app", timeout: float = 60.0) -> Any:
        return self.wait(name, is_synced, "Synced", timeout)

    def reason(self, name: str, reason: str, timeout: float = 60.0) -> Any:
        return self.wait(name, has_reason(reason), f"reason {reason}", timeout)
