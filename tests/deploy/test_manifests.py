"""The Kustomize install path: rendered shape, least-privilege RBAC, a security scan, and server-side
dry runs (and RBAC checks) on the real local kube-apiserver."""

from __future__ import annotations

import copy
import json
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.kube import ControlPlane

ROOT = paths.repo_root()
DEPLOY = ROOT / "deploy"
OVERLAYS = ("overlays/cluster-wide", "overlays/namespaced")
INSTALLABLE = ("crd", "base", *OVERLAYS)
OPERATOR_NAMESPACE = "cvm-prelaunch-operator"
OPERATOR_NAME = "cvm-prelaunch-operator"
# The RBAC checks install the overlay's RBAC under this name, so they never touch (or are skewed by)
# an operator that another test installed under the real name.
PROBE_NAME = "cvm-prelaunch-operator-rbac-probe"
PROBE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{PROBE_NAME}"
WATCHED_NAMESPACES = ("team-a", "team-b")
RBAC_KINDS = {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
WAVE = "argocd.argoproj.io/sync-wave"

# The operator's whole API usage; a change here is a change of the operator's permissions.
EXPECTED_RULES = {
    ("cloud.phala.com", "cvmprelaunchscripts"): {"get", "list", "watch"},
    ("cloud.phala.com", "cvmprelaunchscripts/status"): {"patch"},
    ("", "configmaps"): {"get", "list", "watch"},
    ("", "secrets"): {"get", "list", "watch"},
    ("", "events"): {"create"},
}
# Leader election: a Role in the operator's own namespace only.
LEASE_ROLE = "cvm-prelaunch-operator-leader-election"
LEASE_RULES = {("coordination.k8s.io", "leases"): {"get", "create", "update"}}
ALL_VERBS = ("get", "list", "watch", "create", "update", "patch", "delete", "deletecollection")
# Things the operator must not be able to touch, next to the ones it may.
PROBED_RESOURCES = (
    *EXPECTED_RULES,
    ("", "pods"),
    ("", "namespaces"),
    ("", "serviceaccounts"),
    ("apps", "deployments"),
    ("rbac.authorization.k8s.io", "roles"),
    ("apiextensions.k8s.io", "customresourcedefinitions"),
    ("coordination.k8s.io", "leases"),
    ("kopf.dev", "clusterkopfpeerings"),
)


@cache
def render(path: str) -> tuple[dict[str, Any], ...]:
    completed = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(DEPLOY / path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return tuple(doc for doc in yaml.safe_load_all(completed.stdout) if doc)


def of_kind(docs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [d for d in docs if d["kind"] == kind]


def rules_of(role: dict[str, Any]) -> dict[tuple[str, str], set[str]]:
    rules: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                rules.setdefault((group, resource), set()).update(rule["verbs"])
    return rules


def the_deployment(docs: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    (deployment,) = of_kind(docs, "Deployment")
    return deployment


def env_of(deployment: dict[str, Any]) -> dict[str, str]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", "") for e in container["env"]}


# --- rendered shape -------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_is_one_hardened_replica(overlay: str) -> None:
    deployment = the_deployment(render(overlay))
    spec = deployment["spec"]
    assert spec["replicas"] == 2  # a leader and a standby (tests/ha/test_deploy_shape.py)
    assert spec["strategy"]["type"] == "RollingUpdate"
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert security["privileged"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    env = env_of(deployment)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"metrics": int(env["METRICS_PORT"]), "health": int(env["HEALTH_PORT"])}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert env["PHALA_CLOUD_API_URL"].startswith("https://")
    image = container["image"]
    assert re.fullmatch(r"[a-z0-9./-]+/cvm-prelaunch-operator:\d+\.\d+\.\d+\S*", image), image
    # Secrets are read per resource through the API, never injected into the environment; only the
    # pod's name and namespace come from the downward API (the Lease holder).
    assert all(set(e.get("valueFrom", {})) <= {"fieldRef"} for e in container["env"])
    assert pod["serviceAccountName"] == OPERATOR_NAME


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_deployment_environment_is_what_the_operator_reads(overlay: str) -> None:
    from cvm_prelaunch_operator.phala.settings import PhalaCloudSettings
    from cvm_prelaunch_operator.settings import OperatorSettings

    deployment = the_deployment(render(overlay))
    env = env_of(deployment)
    settings = OperatorSettings.from_env(env)
    phala = PhalaCloudSettings.from_env(env)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert (settings.metrics_port, settings.health_port) == (ports["metrics"], ports["health"])
    assert settings.namespaces == tuple(n for n in env["WATCH_NAMESPACES"].split(",") if n)
    assert phala.base_url.rstrip("/") == env["PHALA_CLOUD_API_URL"].rstrip("/")


def test_watched_namespaces_per_overlay() -> None:
    assert env_of(the_deployment(render("overlays/cluster-wide")))["WATCH_NAMESPACES"] == ""
    namespaced = render("overlays/namespaced")
    watched = env_of(the_deployment(namespaced))["WATCH_NAMESPACES"].split(",")
    roles = [r for r in of_kind(namespaced, "Role") if r["metadata"]["name"] == OPERATOR_NAME]
    bindings = [b for b in of_kind(namespaced, "RoleBinding") if b["metadata"]["name"] == OPERATOR_NAME]
    assert sorted(watched) == sorted(r["metadata"]["namespace"] for r in roles)
    assert sorted(watched) == sorted(b["metadata"]["namespace"] for b in bindings)
    assert tuple(sorted(watched)) == WATCHED_NAMESPACES


def test_cluster_wide_rbac_is_exactly_the_operators_api_usage() -> None:
    docs = render("overlays/cluster-wide")
    (role,) = of_kind(docs, "ClusterRole")
    assert rules_of(role) == EXPECTED_RULES
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "ClusterRole",
        "name": OPERATOR_NAME,
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE}
    ]
    (lease_role,) = of_kind(docs, "Role")
    assert lease_role["metadata"]["name"] == LEASE_ROLE and rules_of(lease_role) == LEASE_RULES


def test_namespaced_rbac_has_only_roles_with_the_same_rules() -> None:
    docs = render("overlays/namespaced")
    assert not [d for d in docs if d["kind"] in {"ClusterRole", "ClusterRoleBinding"}]
    roles = [r for r in of_kind(docs, "Role") if r["metadata"]["name"] != LEASE_ROLE]
    assert len(roles) == len(WATCHED_NAMESPACES)
    for role in roles:
        assert rules_of(role) == EXPECTED_RULES
    for binding in (b for b in of_kind(docs, "RoleBinding") if b["metadata"]["name"] != LEASE_ROLE):
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": OPERATOR_NAME,
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": OPERATOR_NAMESPACE}
        ]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_rbac_has_no_wildcard_and_no_escalation(overlay: str) -> None:
    for role in (d for d in render(overlay) if d["kind"] in {"ClusterRole", "Role"}):
        for rule in role["rules"]:
            assert set(rule) == {"apiGroups", "resources", "verbs"}, "no nonResourceURLs, no resourceNames"
            for field in ("apiGroups", "resources", "verbs"):
                assert "*" not in rule[field]
            assert not set(rule["verbs"]) & {"escalate", "bind", "impersonate", "create"} or rule[
                "resources"
            ] in (["events"], ["leases"])


def test_secret_access_is_one_commented_rule() -> None:
    source = (DEPLOY / "rbac" / "rules" / "cluster-role.yaml").read_text()
    (role,) = yaml.safe_load_all(source)
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert len(secret_rules) == 1 and secret_rules[0]["resources"] == ["secrets"]
    comment = source[: source.index("resources: [secrets]")].rsplit("- apiGroups", 1)[0].rsplit("\n\n", 1)[-1]
    assert "rotat" in comment and "watch" in comment, "the Secret rule must say why it needs list/watch"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policy_selects_the_operator_and_allows_only_what_it_needs(overlay: str) -> None:
    docs = render(overlay)
    (policy,) = of_kind(docs, "NetworkPolicy")
    pod_labels = the_deployment(docs)["spec"]["template"]["metadata"]["labels"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert sorted(policy["spec"]["policyTypes"]) == ["Egress", "Ingress"]
    ingress_ports = {p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert ingress_ports == {"metrics", "health"}
    egress = {(p["port"], p["protocol"]) for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (6443, "TCP")}
    (dns,) = [r for r in policy["spec"]["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert dns["to"], "DNS goes to the cluster resolver only"


@pytest.mark.parametrize("overlay", INSTALLABLE)
def test_crds_land_first_when_argo_cd_syncs(overlay: str) -> None:
    docs = render(overlay)
    waves = {
        (d["kind"], d["metadata"]["name"]): int(d["metadata"].get("annotations", {}).get(WAVE, 0))
        for d in docs
    }
    crd_waves = [w for (kind, _), w in waves.items() if kind == "CustomResourceDefinition"]
    assert crd_waves, "every install path ships the CRD"
    others = [w for (kind, _), w in waves.items() if kind != "CustomResourceDefinition"]
    assert max(crd_waves) < min(others, default=0)
    namespaces = [w for (kind, _), w in waves.items() if kind == "Namespace"]
    namespaced = [
        w for (kind, _), w in waves.items() if kind not in {"Namespace", "CustomResourceDefinition"}
    ]
    assert max(namespaces, default=-1) < min(namespaced, default=0)


def test_crd_is_installable_alone() -> None:
    docs = render("crd")
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition"]
    assert docs[0]["metadata"]["name"] == "cvmprelaunchscripts.cloud.phala.com"


def test_example_application_points_at_an_overlay() -> None:
    application = yaml.safe_load((DEPLOY / "argocd" / "application.yaml").read_text())
    assert application["kind"] == "Application"
    source = application["spec"]["source"]
    assert source["path"] in {f"deploy/{o}" for o in OVERLAYS}
    assert application["spec"]["destination"]["namespace"] == OPERATOR_NAMESPACE


# --- security scan --------------------------------------------------------------------------

DOCUMENTED_SKIPS = {"CKV_K8S_38", "CKV_K8S_43"}


@pytest.mark.slow
@pytest.mark.timeout(1200)  # the first run installs checkov into its own venv
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_checkov_finds_nothing(overlay: str, tmp_path: Path) -> None:
    manifest = tmp_path / "install.yaml"
    manifest.write_text(yaml.safe_dump_all(render(overlay)))
    completed = subprocess.run(
        ["bash", str(ROOT / "hack" / "checkov.sh"), "scan", str(manifest)],
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert completed.stdout, completed.stderr[-3000:]
    report = json.loads(completed.stdout)
    failed = [
        (c["check_id"], c["check_name"], c["resource"]) for c in report["results"].get("failed_checks", [])
    ]
    assert not failed
    assert completed.returncode == 0
    assert report["summary"]["parsing_errors"] == 0
    skipped = {c["check_id"] for c in report["results"].get("skipped_checks", [])}
    assert skipped <= DOCUMENTED_SKIPS
    scanned = {c["resource"].split(".")[0] for c in report["results"]["passed_checks"]}
    assert {"Deployment", "ServiceAccount"} <= scanned
    assert scanned & {"ClusterRole", "Role"}


# --- on the real kube-apiserver -------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(control_plane: ControlPlane) -> Iterator[ControlPlane]:
    """The control plane with the namespaces the overlays expect to exist.

    A server-side dry run does not create the operator's Namespace, so objects inside it would be
    rejected; the namespace is created for real (with its Pod Security labels, so that the dry run
    of the Deployment is checked against the "restricted" standard) and removed afterwards.
    """
    created = []
    for name in (OPERATOR_NAMESPACE, *WATCHED_NAMESPACES):
        existed = control_plane.kubectl("get", "namespace", name, check=False).returncode == 0
        if not existed:
            control_plane.create_namespace(name, exist_ok=True)
            created.append(name)
    control_plane.kubectl("apply", "-f", str(DEPLOY / "operator" / "namespace.yaml"))
    yield control_plane
    for name in created:
        control_plane.delete_namespace(name)


@pytest.mark.parametrize("server_side", [False, True], ids=["client-side", "server-side"])
@pytest.mark.parametrize("overlay", INSTALLABLE)
def test_server_dry_run_succeeds(cluster: ControlPlane, overlay: str, server_side: bool) -> None:
    args = ["apply", "--dry-run=server", "-k", str(DEPLOY / overlay)]
    if server_side:
        args.insert(1, "--server-side")
    completed = cluster.kubectl(*args, check=False, timeout=120)
    assert completed.returncode == 0, completed.stderr
    # With the namespace labelled "restricted", a non-compliant pod template would be warned about.
    assert "PodSecurity" not in completed.stderr, completed.stderr
    applied = set(
        re.findall(r"^([\w.]+)/(\S+) [\w-]+ \(server dry run\)$", completed.stdout, flags=re.MULTILINE)
    )
    expected = {(d["kind"].lower(), d["metadata"]["name"]) for d in render(overlay)}
    assert {(kind.split(".")[0], name) for kind, name in applied} == expected


def _allowed(
    api: kubernetes.client.AuthorizationV1Api, namespace: str, group: str, resource: str, verb: str
) -> bool:
    plural, _, subresource = resource.partition("/")
    review = kubernetes.client.V1SubjectAccessReview(
        spec=kubernetes.client.V1SubjectAccessReviewSpec(
            user=PROBE_USER,
            groups=[
                "system:serviceaccounts",
                f"system:serviceaccounts:{OPERATOR_NAMESPACE}",
                "system:authenticated",
            ],
            resource_attributes=kubernetes.client.V1ResourceAttributes(
                namespace=namespace, group=group, resource=plural, subresource=subresource, verb=verb
            ),
        )
    )
    status = api.create_subject_access_review(review).status
    assert status is not None
    return bool(status.allowed)


def _grants(api: kubernetes.client.AuthorizationV1Api, namespace: str) -> dict[tuple[str, str], set[str]]:
    grants: dict[tuple[str, str], set[str]] = {}
    for group, resource in PROBED_RESOURCES:
        verbs = {verb for verb in ALL_VERBS if _allowed(api, namespace, group, resource, verb)}
        if verbs:
            grants[(group, resource)] = verbs
    return grants


@pytest.fixture
def authz(cluster: ControlPlane) -> Iterator[kubernetes.client.AuthorizationV1Api]:
    with cluster.api_client() as client:
        yield kubernetes.client.AuthorizationV1Api(client)


def _as_probe(doc: dict[str, Any]) -> dict[str, Any]:
    """The object with the operator's name replaced by PROBE_NAME wherever it names the identity."""
    renamed = copy.deepcopy(doc)
    renamed["metadata"]["name"] = PROBE_NAME
    if "roleRef" in renamed:
        renamed["roleRef"]["name"] = PROBE_NAME
    for subject in renamed.get("subjects", []):
        if subject["name"] == OPERATOR_NAME:
            subject["name"] = PROBE_NAME
    return renamed


@pytest.fixture
def installed_rbac(cluster: ControlPlane, request: pytest.FixtureRequest) -> Iterator[str]:
    """The overlay's ServiceAccount and RBAC objects applied for real (as PROBE_NAME), then deleted."""
    overlay: str = request.param
    objects = [_as_probe(d) for d in render(overlay) if d["kind"] in RBAC_KINDS | {"ServiceAccount"}]
    assert {d["kind"] for d in objects} >= {"ServiceAccount"} and len(objects) > 2
    manifest = yaml.safe_dump_all(objects)
    cluster.kubectl("apply", "-f", "-", input=manifest)
    yield overlay
    cluster.kubectl("delete", "--ignore-not-found", "--wait=false", "-f", "-", input=manifest)


@pytest.mark.parametrize("installed_rbac", ["overlays/cluster-wide"], indirect=True)
def test_cluster_wide_operator_may_do_exactly_its_work_everywhere(
    authz: kubernetes.client.AuthorizationV1Api, installed_rbac: str
) -> None:
    assert _grants(authz, "team-c") == EXPECTED_RULES
    # Cluster-wide list/watch (all namespaces) of its own resources, ConfigMaps and Secrets.
    assert _allowed(authz, "", "cloud.phala.com", "cvmprelaunchscripts", "watch")
    assert not _allowed(authz, "", "", "namespaces", "list")


@pytest.mark.parametrize("installed_rbac", ["overlays/namespaced"], indirect=True)
def test_namespaced_operator_may_work_only_in_its_namespaces(
    authz: kubernetes.client.AuthorizationV1Api, installed_rbac: str
) -> None:
    for namespace in WATCHED_NAMESPACES:
        assert _grants(authz, namespace) == EXPECTED_RULES
    assert _grants(authz, "team-c") == {}
    assert _grants(authz, OPERATOR_NAMESPACE) == LEASE_RULES
    assert not _allowed(authz, "", "cloud.phala.com", "cvmprelaunchscripts", "list")
