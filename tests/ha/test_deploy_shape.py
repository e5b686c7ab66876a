"""The install paths run two replicas the way high availability needs: a leader and a standby on
different nodes, rolled one at a time, never both evicted, electing on a Lease in their own
namespace with the identity the downward API gives them."""

from __future__ import annotations

import subprocess
from functools import cache
from typing import Any

import pytest
import yaml

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_operator.settings import OperatorSettings

DEPLOY = paths.repo_root() / "deploy"
OVERLAYS = ("overlays/cluster-wide", "overlays/namespaced")
OPERATOR_NAMESPACE = "cvm-prelaunch-operator"
LEASE_ROLE = "cvm-prelaunch-operator-leader-election"


@cache
def render(overlay: str) -> tuple[dict[str, Any], ...]:
    out = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(DEPLOY / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    return tuple(d for d in yaml.safe_load_all(out) if d)


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_two_replicas_rolled_one_at_a_time_on_different_nodes(overlay: str) -> None:
    docs = render(overlay)
    deployment = one(docs, "Deployment")
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    rolling = {"maxSurge": 1, "maxUnavailable": 0}
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": rolling}
    pod_labels = spec["template"]["metadata"]["labels"]
    (term,) = spec["template"]["spec"]["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert term["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    assert term["podAffinityTerm"]["labelSelector"]["matchLabels"].items() <= pod_labels.items()

    budget = one(docs, "PodDisruptionBudget")
    assert budget["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert budget["spec"]["selector"]["matchLabels"] == spec["selector"]["matchLabels"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_replica_elects_under_its_pod_name_in_its_own_namespace(overlay: str) -> None:
    deployment = one(render(overlay), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # As the operator reads it in a pod of this Deployment:
    plain = {name: e.get("value", "") for name, e in env.items() if "value" in e}
    settings = OperatorSettings.from_env({**plain, "POD_NAME": "pod-a", "POD_NAMESPACE": OPERATOR_NAMESPACE})
    assert settings.leader_election is True
    assert settings.leader_election_id == "cvm-prelaunch-operator"
    assert (settings.leader_election_namespace or settings.pod_namespace) == OPERATOR_NAMESPACE


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_keep_a_standby_ready(overlay: str) -> None:
    """Both probes ask /healthz, which answers on a standby as on the leader (tests/ha/test_replicas.py
    checks the answer); readiness that followed leadership would leave one replica never Ready and
    block every rollout under maxUnavailable 0."""
    (container,) = one(render(overlay), "Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_lease_role_is_namespaced_to_the_operator_and_minimal(overlay: str) -> None:
    docs = render(overlay)
    role = one(docs, "Role", LEASE_ROLE)
    assert role["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert role["rules"] == [
        {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["get", "create", "update"]}
    ]
    binding = one(docs, "RoleBinding", LEASE_ROLE)
    assert binding["metadata"]["namespace"] == OPERATOR_NAMESPACE
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": LEASE_ROLE}
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "cvm-prelaunch-operator", "namespace": OPERATOR_NAMESPACE}
    ]
    # No other grant anywhere mentions Leases.
    for other in (d for d in docs if d["kind"] in {"Role", "ClusterRole"} and d is not role):
        assert not any("leases" in rule["resources"] for rule in other["rules"])
