"""The local control plane on a real etcd and kube-apiserver: schemas and CEL, RBAC, tokens, teardown."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes.client
import pytest
import yaml
from kubernetes.client.exceptions import ApiException

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.kube import ControlPlane, ControlPlaneError, KubectlError

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.localenv.test.example.com
spec:
  group: localenv.test.example.com
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [replicas]
              properties:
                replicas: {type: integer, minimum: 0}
                minReplicas: {type: integer, minimum: 0, default: 0}
              x-kubernetes-validations:
                - rule: self.minReplicas <= self.replicas
                  message: minReplicas must not exceed replicas
"""


def widget(name: str, *, replicas: int, min_replicas: int) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "localenv.test.example.com/v1",
            "kind": "Widget",
            "metadata": {"name": name},
            "spec": {"replicas": replicas, "minReplicas": min_replicas},
        }
    )


@pytest.fixture(scope="module")
def widget_crd(control_plane: ControlPlane) -> Iterator[str]:
    control_plane.kubectl("apply", "-f", "-", input=WIDGET_CRD)
    control_plane.kubectl(
        "wait", "--for=condition=Established", "crd/widgets.localenv.test.example.com", "--timeout=30s"
    )
    yield "widgets.localenv.test.example.com"
    control_plane.kubectl("delete", "crd", "widgets.localenv.test.example.com", "--wait=false")


def process_tree(pid: int) -> set[int]:
    """``pid`` and all its descendants, from /proc."""
    found = {pid}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            found |= process_tree(int(child))
    return found


def assert_gone(pids: set[int]) -> None:
    """Every pid is gone, and none is left as an unreaped zombie of this test process."""
    for pid in pids:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except FileNotFoundError:
            continue
        # A reused pid is some other process; one of ours would still be our child.
        fields = stat.rsplit(")", 1)[1].split()
        state, parent = fields[0], int(fields[1])
        assert parent != os.getpid(), f"pid {pid} is still our child (state {state})"
        assert state != "Z" or parent != os.getpid()


def test_default_namespace_exists_and_admin_is_admin(control_plane: ControlPlane) -> None:
    control_plane.kubectl("get", "namespace", "default")
    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json").stdout)
    assert whoami["status"]["userInfo"]["username"] == "admin"
    assert "system:masters" in whoami["status"]["userInfo"]["groups"]
    version = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == paths.K8S_VERSION


def test_cel_rule_rejects_a_bad_object_with_its_message(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    with pytest.raises(KubectlError) as rejected:
        control_plane.kubectl(
            "apply", "-n", namespace, "-f", "-", input=widget("bad", replicas=1, min_replicas=2)
        )
    assert "minReplicas must not exceed replicas" in rejected.value.stderr
    assert "minReplicas must not exceed replicas" in str(rejected.value)  # the message carries stderr

    control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=widget("good", replicas=2, min_replicas=1)
    )
    stored = json.loads(control_plane.kubectl("get", "-n", namespace, "widget", "good", "-o", "json").stdout)
    assert stored["spec"] == {"replicas": 2, "minReplicas": 1}
    assert control_plane.kubectl("get", "-n", namespace, "widget", "bad", check=False).returncode != 0


def test_structural_schema_defaults_and_rejects_unknown_fields(
    control_plane: ControlPlane, widget_crd: str, namespace: str
) -> None:
    manifest = yaml.safe_load(widget("defaulted", replicas=3, min_replicas=0))
    del manifest["spec"]["minReplicas"]
    control_plane.kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest))
    stored = json.loads(
        control_plane.kubectl("get", "-n", namespace, "widget", "defaulted", "-o", "json").stdout
    )
    assert stored["spec"] == {"replicas": 3, "minReplicas": 0}

    manifest["spec"]["colour"] = "red"
    refused = control_plane.kubectl(
        "apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(manifest), check=False
    )
    assert refused.returncode != 0
    assert 'unknown field "spec.colour"' in refused.stderr


def test_unprivileged_token_is_authenticated_but_forbidden(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = control_plane.kubeconfig_for_token(
        control_plane.unprivileged_token, tmp_path / "kubeconfig", user="unprivileged"
    )
    assert kubeconfig.stat().st_mode & 0o077 == 0, "a kubeconfig with a token must be private"

    whoami = control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig)
    assert json.loads(whoami.stdout)["status"]["userInfo"]["username"] == "unprivileged"

    listing = control_plane.kubectl("get", "pods", "-n", namespace, kubeconfig=kubeconfig, check=False)
    assert listing.returncode != 0
    assert "Forbidden" in listing.stderr
    assert 'User "unprivileged" cannot list resource "pods"' in listing.stderr

    with control_plane.api_client(token=control_plane.unprivileged_token) as client:
        with pytest.raises(ApiException) as forbidden:
            kubernetes.client.CoreV1Api(client).list_namespaced_pod(namespace)
        assert forbidden.value.status == 403

    with control_plane.api_client(token="not-a-token") as client:
        with pytest.raises(ApiException) as unauthorized:
            kubernetes.client.CoreV1Api(client).list_namespaced_pod(namespace)
        assert unauthorized.value.status == 401


def test_service_account_token_from_token_request_authenticates(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    with control_plane.api_client() as client:
        core = kubernetes.client.CoreV1Api(client)
        core.create_namespaced_service_account(
            namespace,
            kubernetes.client.V1ServiceAccount(metadata=kubernetes.client.V1ObjectMeta(name="robot")),
        )
        token_request = core.create_namespaced_service_account_token(
            "robot",
            namespace,
            kubernetes.client.AuthenticationV1TokenRequest(
                spec=kubernetes.client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
            ),
        )
    token = token_request.status.token
    kubeconfig = control_plane.kubeconfig_for_token(
        token, tmp_path / "robot", user="robot", namespace=namespace
    )

    whoami = json.loads(control_plane.kubectl("auth", "whoami", "-o", "json", kubeconfig=kubeconfig).stdout)
    assert whoami["status"]["userInfo"]["username"] == f"system:serviceaccount:{namespace}:robot"

    # RBAC applies to it like to any subject: nothing before the binding, exactly the role after.
    assert control_plane.kubectl("get", "configmaps", kubeconfig=kubeconfig, check=False).returncode != 0
    control_plane.kubectl(
        "create", "role", "read-configmaps", "-n", namespace, "--verb=get,list", "--resource=configmaps"
    )
    control_plane.kubectl(
        "create",
        "rolebinding",
        "robot-reads",
        "-n",
        namespace,
        "--role=read-configmaps",
        f"--serviceaccount={namespace}:robot",
    )
    control_plane.kubectl("get", "configmaps", kubeconfig=kubeconfig)
    assert control_plane.kubectl("get", "secrets", kubeconfig=kubeconfig, check=False).returncode != 0


def test_delete_namespace_removes_everything_even_with_finalizers(
    control_plane: ControlPlane, widget_crd: str
) -> None:
    name = control_plane.create_namespace("t-finalized")
    hold = "localenv.test.example.com/hold"
    held_config_map = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "held", "finalizers": [hold]},
        "data": {"k": "v"},
    }
    held_widget = yaml.safe_load(widget("held", replicas=1, min_replicas=0))
    held_widget["metadata"]["finalizers"] = [hold]
    for manifest in (held_config_map, held_widget):
        control_plane.kubectl("apply", "-n", name, "-f", "-", input=json.dumps(manifest))
    control_plane.kubectl("create", "serviceaccount", "robot", "-n", name)
    control_plane.kubectl(
        "patch", "namespace", name, "--type=merge", "-p", json.dumps({"metadata": {"finalizers": [hold]}})
    )

    control_plane.delete_namespace(name)

    assert control_plane.kubectl("get", "namespace", name, check=False).returncode != 0
    leftovers = control_plane.kubectl(
        "get", "configmaps,serviceaccounts,widgets", "-A", "-o", "name",
        "--field-selector", f"metadata.namespace={name}",
    )  # fmt: skip
    assert leftovers.stdout.strip() == ""
    control_plane.delete_namespace(name)  # deleting what is gone is fine


def test_env_points_subprocesses_at_the_control_plane(control_plane: ControlPlane) -> None:
    env = control_plane.env({"PATH": os.environ["PATH"], "KUBERNETES_SERVICE_HOST": "10.0.0.1"})
    assert env["KUBECONFIG"] == str(control_plane.kubeconfig)
    assert "KUBERNETES_SERVICE_HOST" not in env
    output = subprocess.run(
        [str(paths.kubectl_bin()), "get", "namespace", "default", "-o", "name"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert output.strip() == "namespace/default"
    assert control_plane.admin_token not in repr(control_plane)


@pytest.mark.slow
def test_stop_leaves_no_process_and_no_files_behind() -> None:
    control_plane = ControlPlane().start()
    try:
        assert control_plane.start_seconds is not None
        print(f"control plane ready in {control_plane.start_seconds:.2f}s")
        assert control_plane.start_seconds < 60
        pids = set().union(*(process_tree(p.pid) for p in control_plane.processes if p.pid is not None))
        assert len(pids) >= 2
        work_dir = control_plane.work_dir
        control_plane.kubectl("get", "namespaces")
    finally:
        control_plane.stop()
    assert_gone(pids)
    assert not work_dir.exists()
    control_plane.stop()  # idempotent


@pytest.mark.slow
def test_start_failure_reports_the_logs_and_cleans_up(tmp_path: Path) -> None:
    control_plane = ControlPlane(tmp_path, start_timeout=0.0)
    with pytest.raises(ControlPlaneError, match="not ready after") as failed:
        control_plane.start()
    assert "--- kube-apiserver ---" in str(failed.value)
    assert control_plane.processes == ()
    assert not (tmp_path / "etcd-data").exists()
    assert (tmp_path / "kube-apiserver.log").exists(), "logs stay in a caller's work dir"


def test_missing_apiserver_binary_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(paths, "kube_apiserver_bin", lambda: tmp_path / "kube-apiserver")
    with pytest.raises(ControlPlaneError, match=r"hack/bootstrap\.sh"):
        ControlPlane(tmp_path).start()


@pytest.mark.slow
def test_command_line_runs_until_interrupted(tmp_path: Path) -> None:
    command = subprocess.Popen(
        [sys.executable, "-m", "cvm_prelaunch_localenv.kube", "--work-dir", str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert command.stdout is not None
        lines = []
        for line in command.stdout:  # bounded: the command exits if the start fails
            lines.append(line)
            if line.startswith("export KUBECONFIG="):
                break
        assert lines, command.stderr.read() if command.stderr else ""
        assert lines[-1].startswith("export KUBECONFIG="), "".join(lines)
        kubeconfig = lines[-1].strip().removeprefix("export KUBECONFIG=")
        assert kubeconfig == str(tmp_path / "kubeconfig")
        listed = subprocess.run(
            [
                str(paths.kubectl_bin()),
                "--kubeconfig",
                kubeconfig,
                "get",
                "namespace",
                "default",
                "-o",
                "name",
            ],
            env={**os.environ, "KUBECACHEDIR": str(tmp_path / "kubectl-cache")},
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        assert listed.stdout.strip() == "namespace/default"
        pids = process_tree(command.pid) - {command.pid}
        assert len(pids) == 2
    finally:
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=30) == 0
    assert_gone(pids)
