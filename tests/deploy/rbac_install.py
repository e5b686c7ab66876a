"""The operator's install path on the local control plane: apply a Kustomize overlay of `deploy/`,
mint a token for its ServiceAccount (TokenRequest), and edit its RBAC one permission at a time.

There is no kubelet here, so the Deployment never runs a pod; the tests run the operator as a local
process holding the ServiceAccount's token instead, which is what the pod would hold.
"""

from __future__ import annotations

import copy
import json
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client
import yaml

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.kube import ControlPlane

DEPLOY = paths.repo_root() / "deploy"
CLUSTER_WIDE = "overlays/cluster-wide"
NAMESPACED = "overlays/namespaced"
RULES_SOURCE = DEPLOY / "rbac" / "rules" / "cluster-role.yaml"
LEASE_ROLE_SOURCE = DEPLOY / "rbac" / "leader-election" / "role.yaml"
OPERATOR_NAMESPACE = "cvm-prelaunch-operator"
SERVICE_ACCOUNT = "cvm-prelaunch-operator"
CLUSTER_ROLE = "cvm-prelaunch-operator"
LEASE_ROLE = "cvm-prelaunch-operator-leader-election"
# The Lease the Deployment's replicas elect their leader with (LEADER_ELECTION_ID's default).
LEASE = "cvm-prelaunch-operator"
SERVICE_ACCOUNT_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{SERVICE_ACCOUNT}"
# kubectl's field manager for the RBAC edits; --force-conflicts takes the rules over from the install.
FIELD_MANAGER = "rbac-e2e"
# How long the apiserver may take to see an RBAC change (its authorizer reads from an informer).
AUTHORIZATION_SETTLE_SECONDS = 10.0

Manifest = dict[str, Any]


@cache
def _rendered_yaml(overlay: str) -> str:
    completed = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(DEPLOY / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return completed.stdout


def render(overlay: str) -> list[Manifest]:
    """The overlay as `kubectl kustomize` renders it (a fresh copy each call)."""
    return [doc for doc in yaml.safe_load_all(_rendered_yaml(overlay)) if doc]


def one_of_kind(docs: Sequence[Manifest], kind: str) -> Manifest:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


def named(docs: Sequence[Manifest], kind: str, name: str, namespace: str | None = None) -> Manifest:
    (found,) = [
        d
        for d in docs
        if d["kind"] == kind
        and d["metadata"]["name"] == name
        and (namespace is None or d["metadata"].get("namespace") == namespace)
    ]
    return found


def lease_role_source() -> Manifest:
    """The leader-election Role as deploy/rbac/leader-election declares it."""
    return named(list(yaml.safe_load_all(LEASE_ROLE_SOURCE.read_text())), "Role", LEASE_ROLE)


def deployment_env(docs: Sequence[Manifest]) -> dict[str, str]:
    """The operator container's environment as the overlay sets it (a field of the pod's own
    metadata, from the downward API, resolved as the kubelet would: only metadata.namespace)."""
    deployment = one_of_kind(docs, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {}
    for e in container.get("env", []):
        field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        env[e["name"]] = (
            deployment["metadata"]["namespace"] if field == "metadata.namespace" else e.get("value", "")
        )
    return env


def watched_namespaces(docs: Sequence[Manifest]) -> tuple[str, ...]:
    """WATCH_NAMESPACES of the overlay's Deployment, parsed as the operator parses it."""
    raw = deployment_env(docs)["WATCH_NAMESPACES"]
    return tuple(n.strip() for n in raw.split(",") if n.strip())


# --- permissions --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Permission:
    """One verb on one resource (``plural`` or ``plural/subresource``) of one API group."""

    group: str
    resource: str
    verb: str

    @property
    def id(self) -> str:
        group = f".{self.group}" if self.group else ""
        return f"{self.verb}-{self.resource}{group}"


def permissions_of(role: Manifest) -> list[Permission]:
    """Every (group, resource, verb) the role grants, in the order the rules list them."""
    return [
        Permission(group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    ]


def without(role: Manifest, removed: Permission) -> Manifest:
    """A copy of the role that grants everything it did except ``removed``.

    A rule naming several groups or resources is split so that only the one permission goes; a rule
    left without verbs is dropped (the API rejects empty verb lists).
    """
    rules: list[Manifest] = []
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                verbs = [v for v in rule["verbs"] if Permission(group, resource, v) != removed]
                if verbs:
                    rules.append({"apiGroups": [group], "resources": [resource], "verbs": verbs})
    assert len(permissions_of({"rules": rules})) == len(permissions_of(role)) - 1, removed
    edited = copy.deepcopy(role)
    edited["rules"] = rules
    return edited


# --- on the control plane -----------------------------------------------------------------------


def install(cp: ControlPlane, overlay: str) -> None:
    """``kubectl apply --server-side -k`` of deploy/crd, then of the overlay, as the README says."""
    cp.kubectl("apply", "--server-side", "-k", str(DEPLOY / "crd"), timeout=120)
    cp.kubectl("apply", "--server-side", "-k", str(DEPLOY / overlay), timeout=120)
    cp.kubectl(
        "wait", "--for=condition=Established", "crd/cvmprelaunchscripts.cloud.phala.com", "--timeout=30s"
    )


def uninstall(cp: ControlPlane, overlay: str) -> None:
    """Delete what the overlay installed except the CRD, which the session's other tests share.

    Namespaces go through the control plane's own deletion: no namespace controller runs here.
    """
    docs = [d for d in render(overlay) if d["kind"] not in {"CustomResourceDefinition", "Namespace"}]
    manifest = json.dumps({"apiVersion": "v1", "kind": "List", "items": docs})
    cp.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest)
    for namespace in (d for d in render(overlay) if d["kind"] == "Namespace"):
        cp.delete_namespace(namespace["metadata"]["name"])


def mint_token(cp: ControlPlane, duration: str = "1h") -> str:
    """A bound token of the operator's ServiceAccount through the TokenRequest API.

    The value is a credential: it is returned, never printed or put into an assertion message.
    """
    completed = cp.kubectl(
        "create", "token", SERVICE_ACCOUNT, "-n", OPERATOR_NAMESPACE, f"--duration={duration}"
    )
    token = completed.stdout.strip()
    assert token.count(".") == 2, "TokenRequest did not return a JWT"
    return token


def whoami(cp: ControlPlane, kubeconfig: Path) -> str:
    answer = json.loads(cp.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    return str(answer["status"]["userInfo"]["username"])


class AccessReviewer:
    """Asks the apiserver what a bearer token may do (SelfSubjectAccessReviews, in process)."""

    def __init__(self, cp: ControlPlane, token: str) -> None:
        self._client = cp.api_client(token=token)
        self._api = kubernetes.client.AuthorizationV1Api(self._client)

    def close(self) -> None:
        self._client.close()  # type: ignore[no-untyped-call]

    def allowed(self, permission: Permission, namespace: str | None) -> bool:
        """``namespace=None`` asks at the cluster scope, as a cluster-wide list or watch needs it."""
        plural, _, subresource = permission.resource.partition("/")
        review = kubernetes.client.V1SelfSubjectAccessReview(
            spec=kubernetes.client.V1SelfSubjectAccessReviewSpec(
                resource_attributes=kubernetes.client.V1ResourceAttributes(
                    namespace=namespace or "",
                    group=permission.group,
                    resource=plural,
                    subresource=subresource,
                    verb=permission.verb,
                )
            )
        )
        status = self._api.create_self_subject_access_review(review).status
        assert status is not None
        return bool(status.allowed)

    def wait_for(
        self,
        expected: Mapping[Permission, bool],
        namespace: str | None,
        timeout: float = AUTHORIZATION_SETTLE_SECONDS,
    ) -> None:
        """Poll until every permission is granted or denied as expected (RBAC changes reach the
        authorizer through an informer, a moment after the write)."""
        deadline = time.monotonic() + timeout
        while True:
            wrong = sorted(p.id for p, want in expected.items() if self.allowed(p, namespace) != want)
            if not wrong:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"RBAC still disagrees after {timeout:.0f}s on: {wrong}")
            time.sleep(0.1)


def apply_role(cp: ControlPlane, role: Manifest) -> None:
    """Replace a Role's or ClusterRole's rules (server-side apply; a role's rules list is atomic)."""
    cp.kubectl(
        "apply",
        "--server-side",
        "--force-conflicts",
        f"--field-manager={FIELD_MANAGER}",
        "-f",
        "-",
        input=json.dumps(role),
    )


def delete_lease(cp: ControlPlane) -> None:
    """Forget the last election: a killed operator leaves its Lease held for a lease duration."""
    cp.kubectl("delete", "lease", LEASE, "-n", OPERATOR_NAMESPACE, "--ignore-not-found")


def log_lines(text: str, *needles: str) -> Iterator[str]:
    """Lines of an operator log that contain every one of ``needles``."""
    return (line for line in text.splitlines() if all(n in line for n in needles))
