"""The Kustomize install path: rendered shape, least-privilege RBAC, a security scan, server-side
dry runs (and RBAC checks) on the real local kube-apiserver, the CRD installed apart (deleting an
overlay keeps it and every resource), and the namespaced overlay moved by a user's `namespace:`."""

from __future__ import annotations

import copy
import json
import os
import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes.client
import pytest
import yaml

from cvm_prelaunch_localenv import paths, scenario
from cvm_prelaunch_localenv.kube import ControlPlane

ROOT = paths.repo_root()
DEPLOY = ROOT / "deploy"
OVERLAYS = ("overlays/cluster-wide", "overlays/namespaced")
INSTALLABLE = ("crd", "base", *OVERLAYS)
OPERATOR_NAMESPACE = "cvm-prelaunch-operator"
OPERATOR_NAME = "cvm-prelaunch-operator"
CRD_NAME = "cvmprelaunchscripts.cloud.phala.com"
# The labels the operator's selectors use: never changed after an install, never added by kustomize.
SELECTOR = {"app.kubernetes.io/name": "cvm-prelaunch-operator", "app.kubernetes.io/component": "operator"}
# The RBAC checks install the overlay's RBAC under this name, so they never touch (or are skewed by)
# an operator that another test installed under the real name.
PROBE_NAME = "cvm-prelaunch-operator-rbac-probe"
PROBE_USER = f"system:serviceaccount:{OPERATOR_NAMESPACE}:{PROBE_NAME}"
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


def wrapper(overlay: str, work: Path, namespace: str) -> Path:
    """A user's kustomization that takes ``overlay`` and moves it with ``namespace:``."""
    user = work / f"wrap-{overlay.replace('/', '-')}"
    user.mkdir(parents=True, exist_ok=True)
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "namespace": namespace,
                "resources": [os.path.relpath(DEPLOY / overlay, user)],
            }
        )
    )
    return user


def render_dir(path: Path) -> tuple[dict[str, Any], ...]:
    completed = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(path)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
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
    """The container's environment; a field of the pod's metadata resolved as the kubelet would
    (metadata.namespace: the Deployment's; metadata.name: a pod name)."""
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    fields = {"metadata.namespace": deployment["metadata"]["namespace"], "metadata.name": "pod-a"}
    return {
        e["name"]: fields[e["valueFrom"]["fieldRef"]["fieldPath"]] if "valueFrom" in e else e.get("value", "")
        for e in container["env"]
    }


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
    deployment = the_deployment(namespaced)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    (watch,) = [e for e in container["env"] if e["name"] == "WATCH_NAMESPACES"]
    # The pod's own namespace, wherever the Deployment is placed.
    assert watch == {
        "name": "WATCH_NAMESPACES",
        "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
    }
    roles = [r for r in of_kind(namespaced, "Role") if r["metadata"]["name"] == OPERATOR_NAME]
    bindings = [b for b in of_kind(namespaced, "RoleBinding") if b["metadata"]["name"] == OPERATOR_NAME]
    assert [r["metadata"]["namespace"] for r in roles] == [OPERATOR_NAMESPACE]
    assert [b["metadata"]["namespace"] for b in bindings] == [OPERATOR_NAMESPACE]
    assert deployment["metadata"]["namespace"] == OPERATOR_NAMESPACE


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
    assert len(roles) == 1
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
def test_waves_put_the_crd_and_the_namespace_first(overlay: str) -> None:
    """With Argo CD syncing deploy/crd and an overlay together, the CRD (wave -10) lands first, then
    the Namespace (-5), then everything in it."""
    waves = [(d["kind"], int(d["metadata"].get("annotations", {}).get(WAVE, 0))) for d in render(overlay)]
    crd = [w for kind, w in waves if kind == "CustomResourceDefinition"]
    namespaces = [w for kind, w in waves if kind == "Namespace"]
    others = [w for kind, w in waves if kind not in {"Namespace", "CustomResourceDefinition"}]
    assert max(crd, default=-10) == -10
    assert -10 < max(namespaces, default=-5) <= -5 < min(others, default=0)


def test_the_crd_is_installed_apart_from_every_overlay() -> None:
    """Only deploy/crd holds the CRD: deleting an install path never deletes it (and with it every
    CvmPreLaunchScript)."""
    docs = render("crd")
    assert [d["kind"] for d in docs] == ["CustomResourceDefinition"]
    assert docs[0]["metadata"]["name"] == CRD_NAME
    assert docs[0]["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    for path in ("base", *OVERLAYS):
        assert not of_kind(render(path), "CustomResourceDefinition"), path


def test_no_kustomization_writes_labels_into_selectors() -> None:
    """A Deployment's selector is immutable, and a label added to a selector also narrows every
    selector it lands in (it once made the NetworkPolicy's DNS rule select no resolver)."""
    for path in DEPLOY.rglob("kustomization.yaml"):
        for entry in yaml.safe_load(path.read_text()).get("labels") or []:
            assert entry.get("includeSelectors") is not True, path
        assert "commonLabels" not in yaml.safe_load(path.read_text()), path


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_name_the_operator_by_its_stable_labels(overlay: str) -> None:
    docs = render(overlay)
    deployment = the_deployment(docs)
    assert deployment["spec"]["selector"] == {"matchLabels": SELECTOR}
    assert SELECTOR.items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (budget,) = of_kind(docs, "PodDisruptionBudget")
    assert budget["spec"]["selector"] == {"matchLabels": SELECTOR}
    (policy,) = of_kind(docs, "NetworkPolicy")
    assert policy["spec"]["podSelector"] == {"matchLabels": SELECTOR}
    (dns,) = [r for r in policy["spec"]["egress"] if any(p["port"] == 53 for p in r["ports"])]
    assert [peer["podSelector"] for peer in dns["to"]] == [{"matchLabels": {"k8s-app": "kube-dns"}}]


def test_example_application_installs_the_crd_and_an_overlay() -> None:
    application = yaml.safe_load((DEPLOY / "argocd" / "application.yaml").read_text())
    assert application["kind"] == "Application"
    paths_ = [source["path"] for source in application["spec"]["sources"]]
    assert paths_[0] == "deploy/crd"
    assert paths_[1:] in ([f"deploy/{o}"] for o in OVERLAYS)
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
    for name in (OPERATOR_NAMESPACE,):
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
    # A prefix, not the whole name: the Lease's Role sits beside the operator's in one namespace.
    renamed["metadata"]["name"] = renamed["metadata"]["name"].replace(OPERATOR_NAME, PROBE_NAME, 1)
    if "roleRef" in renamed:
        renamed["roleRef"]["name"] = renamed["roleRef"]["name"].replace(OPERATOR_NAME, PROBE_NAME, 1)
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
def test_namespaced_operator_may_work_only_in_its_namespace(
    authz: kubernetes.client.AuthorizationV1Api, installed_rbac: str
) -> None:
    assert _grants(authz, OPERATOR_NAMESPACE) == EXPECTED_RULES | LEASE_RULES
    assert _grants(authz, "team-c") == {}
    assert not _allowed(authz, "", "cloud.phala.com", "cvmprelaunchscripts", "list")


# --- the namespaced overlay, moved by a user's kustomization ---------------------------------


def test_namespaced_overlay_wrapped_with_a_namespace_moves_all_of_it(tmp_path: Path) -> None:
    docs = render_dir(wrapper("overlays/namespaced", tmp_path, "x"))
    assert {d["kind"] for d in docs} == {d["kind"] for d in render("overlays/namespaced")}
    # Everything is namespaced, and in x: nothing stays behind in the overlay's own namespace.
    assert {d["metadata"].get("namespace") for d in docs} == {"x"}
    assert not of_kind(docs, "Namespace")
    roles = {r["metadata"]["name"]: r for r in of_kind(docs, "Role")}
    assert rules_of(roles[OPERATOR_NAME]) == EXPECTED_RULES
    assert rules_of(roles[LEASE_ROLE]) == LEASE_RULES
    for binding in of_kind(docs, "RoleBinding"):
        assert binding["roleRef"]["name"] in roles
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": "x"}]
    deployment = the_deployment(docs)
    env = env_of(deployment)
    assert env["WATCH_NAMESPACES"] == env["POD_NAMESPACE"] == "x"
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == OPERATOR_NAME


def test_cluster_wide_overlay_wrapped_with_a_namespace(tmp_path: Path) -> None:
    docs = render_dir(wrapper("overlays/cluster-wide", tmp_path, "x"))
    (namespace,) = of_kind(docs, "Namespace")
    assert namespace["metadata"]["name"] == "x"
    (binding,) = of_kind(docs, "ClusterRoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": OPERATOR_NAME, "namespace": "x"}]
    cluster_scoped = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] not in cluster_scoped} == {"x"}
    assert env_of(the_deployment(docs))["WATCH_NAMESPACES"] == ""


def _exists(cp: ControlPlane, *what: str) -> bool:
    return cp.kubectl("get", *what, "-o", "name", check=False).returncode == 0


@pytest.fixture
def operator_namespace_restored(cluster: ControlPlane) -> Iterator[ControlPlane]:
    """Deleting the cluster-wide overlay deletes the operator's Namespace; no namespace controller
    runs here to finish that, so the control plane does it, and the module's namespace comes back."""
    yield cluster
    cluster.delete_namespace(OPERATOR_NAMESPACE)
    cluster.create_namespace(OPERATOR_NAMESPACE, exist_ok=True)
    cluster.kubectl("apply", "-f", str(DEPLOY / "operator" / "namespace.yaml"))


def _apply_then_delete_keeps_the_crd(
    cp: ControlPlane, path: Path, docs: tuple[dict[str, Any], ...], namespace: str
) -> None:
    """deploy/crd, then the install path, for real; a resource; then ``kubectl delete -k`` of the
    install path, as the README says: the path's objects go, the CRD and the resource stay."""
    cp.kubectl("apply", "--server-side", "-k", str(DEPLOY / "crd"), timeout=120)
    cp.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")
    cp.kubectl("apply", "--server-side", "-k", str(path), timeout=120)
    resource = scenario.cvm_prelaunch_script("kept", namespace, cvm_id="app_kept", config_map="kept-script")
    scenario.apply(cp, resource)
    crd_uid = cp.kubectl("get", f"crd/{CRD_NAME}", "-o", "jsonpath={.metadata.uid}").stdout

    cp.kubectl("delete", "--wait=false", "-k", str(path), timeout=120)

    for doc in docs:
        name = f"{doc['kind'].lower()}/{doc['metadata']['name']}"
        scope = ["-n", doc["metadata"]["namespace"]] if "namespace" in doc["metadata"] else []
        gone = not _exists(cp, name, *scope) or doc["kind"] == "Namespace"  # Terminating, no controller
        assert gone, f"{name} is still there"
    assert cp.kubectl("get", f"crd/{CRD_NAME}", "-o", "jsonpath={.metadata.uid}").stdout == crd_uid
    assert _exists(cp, "cvmprelaunchscripts.cloud.phala.com/kept", "-n", namespace)


def test_deleting_the_cluster_wide_overlay_keeps_the_crd_and_the_resources(
    operator_namespace_restored: ControlPlane, crd: Path, namespace: str
) -> None:
    path = DEPLOY / "overlays" / "cluster-wide"
    _apply_then_delete_keeps_the_crd(
        operator_namespace_restored, path, render("overlays/cluster-wide"), namespace
    )


def test_namespaced_overlay_moved_to_a_namespace_installs_there_and_deletes_without_the_crd(
    control_plane: ControlPlane, crd: Path, namespace: str, tmp_path: Path
) -> None:
    """The wrapped overlay, applied for real in an existing namespace: the ServiceAccount may do its
    work there and nowhere else; deleting it keeps the CRD and the resources."""
    path = wrapper("overlays/namespaced", tmp_path, namespace)
    docs = render_dir(path)
    cp = control_plane
    cp.kubectl("apply", "--server-side", "-k", str(path), timeout=120)
    user = f"system:serviceaccount:{namespace}:{OPERATOR_NAME}"
    for where, allowed in ((namespace, "yes"), ("default", "no")):
        answer = cp.kubectl("auth", "can-i", "list", "configmaps", "-n", where, "--as", user, check=False)
        assert answer.stdout.strip() == allowed, (where, answer.stdout)
    _apply_then_delete_keeps_the_crd(cp, path, docs, namespace)
