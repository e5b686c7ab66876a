"""``kubectl cpls approve``: approves only the hash that is pending, refuses everything else without a
write, and never lands an approval on a resource that changed after it was checked."""

from __future__ import annotations

import io
from typing import Any

import pytest
import yaml
from plugin_kit import (
    APPROVED,
    CONTRACT,
    HASH_A,
    HASH_B,
    Cluster,
    Cpls,
    awaiting_status,
    synced_status,
)

from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_operator.plugin import commands
from cvm_prelaunch_operator.plugin.cluster import KubeTarget, PluginError, Resources


def version(cluster: Cluster, name: str) -> str:
    return str(cluster.get(name)["metadata"]["resourceVersion"])


def test_approve_sets_the_annotation_to_the_pending_hash(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))

    run = cpls("approve", "web")

    assert run.code == 0, run.err
    assert cluster.annotations("web")[APPROVED] == HASH_A
    assert HASH_A in run.out and "approved" in run.out
    assert "cvm_ykL5lbAn" in run.out and CONTRACT in run.out and "8453" in run.out
    # Who approved is on record: the write's field manager.
    managers = {m["manager"] for m in cluster.get("web")["metadata"]["managedFields"]}
    assert "kubectl-cpls" in managers


def test_approve_with_the_pending_hash_in_any_spelling(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))

    run = cpls("approve", "web", "--hash", HASH_A.upper().replace("0X", "0x"))

    assert run.code == 0, run.err
    # The annotation carries the hash exactly as the status gave it.
    assert cluster.annotations("web")[APPROVED] == HASH_A


def test_a_wrong_hash_is_refused_and_nothing_changes(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))
    before = version(cluster, "web")

    run = cpls("approve", "web", "--hash", HASH_B)

    assert run.code == 1
    assert f"pending hash is {HASH_A}, not {HASH_B}" in run.err
    assert run.out == ""
    assert version(cluster, "web") == before
    assert APPROVED not in cluster.annotations("web")


@pytest.mark.parametrize(
    "status",
    [
        pytest.param(None, id="no-status"),
        pytest.param(synced_status(), id="synced"),
        # pendingApproval left behind while the phase says otherwise: not waiting, nothing to approve.
        pytest.param({**awaiting_status(HASH_A), "phase": "Synced"}, id="phase-not-awaiting"),
        pytest.param(
            {**awaiting_status(HASH_A), "pendingApproval": {"composeHash": "0x1234"}}, id="malformed-hash"
        ),
    ],
)
def test_nothing_pending_is_refused_and_nothing_changes(
    cluster: Cluster, cpls: Cpls, status: dict[str, Any] | None
) -> None:
    cluster.create("web", status=status)
    before = version(cluster, "web")

    run = cpls("approve", "web")

    assert run.code == 1
    assert "nothing pending approval" in run.err
    assert version(cluster, "web") == before


def test_an_approved_hash_is_not_written_again(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=awaiting_status(HASH_A), annotations={APPROVED: HASH_A})
    before = version(cluster, "web")

    run = cpls("approve", "web", "--hash", HASH_A)

    assert run.code == 0, run.err
    assert "approved already" in run.out
    assert version(cluster, "web") == before


def test_an_older_approval_is_replaced_by_the_pending_hash(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=awaiting_status(HASH_B), annotations={APPROVED: HASH_A})

    assert cpls("approve", "web").code == 0
    assert cluster.annotations("web")[APPROVED] == HASH_B


@pytest.mark.parametrize(
    ("args", "message"),
    [
        pytest.param((), "the following arguments are required: NAME", id="no-name"),
        pytest.param(("web", "--hash", "0x1234"), "must be 0x followed by 64 hex digits", id="short-hash"),
        pytest.param(("Web_1",), "is not a resource name", id="bad-name"),
        pytest.param(("web", "--frobnicate"), "unrecognized arguments", id="unknown-flag"),
    ],
)
def test_usage_errors_exit_2_and_change_nothing(
    cluster: Cluster, cpls: Cpls, args: tuple[str, ...], message: str
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))
    before = version(cluster, "web")

    run = cpls("approve", *args)

    assert run.code == 2
    assert message in run.err
    assert version(cluster, "web") == before


def test_a_missing_resource_is_an_error(cluster: Cluster, cpls: Cpls, namespace: str) -> None:
    run = cpls("approve", "nope")
    assert run.code == 1
    assert f"cvmprelaunchscript {namespace}/nope not found" in run.err


def test_forbidden_is_reported_with_the_servers_reason(
    cluster: Cluster, cpls: Cpls, control_plane: ControlPlane, tmp_path: Any
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))
    kubeconfig = control_plane.kubeconfig_for_token(
        control_plane.unprivileged_token, tmp_path / "kubeconfig", user="unprivileged"
    )

    run = cpls("approve", "web", "--kubeconfig", str(kubeconfig))

    assert run.code == 1
    assert "HTTP 403" in run.err and "forbidden" in run.err
    assert control_plane.unprivileged_token not in run.err + run.out
    assert APPROVED not in cluster.annotations("web")


def test_namespace_and_context_are_taken_like_kubectl(
    cluster: Cluster, cpls: Cpls, control_plane: ControlPlane, namespace: str, tmp_path: Any
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))
    # A kubeconfig whose current context points at another namespace, and a second context ("team")
    # that points at the test's namespace.
    config = yaml.safe_load(control_plane.kubeconfig.read_text())
    (base,) = config["contexts"]
    config["contexts"] = [
        {"name": "elsewhere", "context": {**base["context"], "namespace": "default"}},
        {"name": "team", "context": {**base["context"], "namespace": namespace}},
    ]
    config["current-context"] = "elsewhere"
    path = tmp_path / "kubeconfig"
    path.write_text(yaml.safe_dump(config))
    env = {"KUBECONFIG": str(path)}

    # The current context's namespace (default) has no such resource.
    missing = cpls("approve", "web", namespace_flag=None, env=env)
    assert missing.code == 1 and "cvmprelaunchscript default/web not found" in missing.err
    # --context picks the other context, and with it its namespace.
    assert cpls("status", "web", "--context", "team", namespace_flag=None, env=env).code == 0
    # -n before the verb works as after it (kubectl passes the plugin's flags through in order).
    before_verb = cpls("-n", namespace, "approve", "web", namespace_flag=None, env=env)
    assert before_verb.code == 0, before_verb.err
    assert cluster.annotations("web")[APPROVED] == HASH_A
    # An unknown context is an error, not a silent fallback.
    unknown = cpls("status", "--context", "nope", namespace_flag=None, env=env)
    assert unknown.code == 1 and "nope" in unknown.err


# -- races: the write carries the resourceVersion that was checked ------------------------------


class ChangesAfterEachRead(Resources):
    """The real API, with another writer that changes the resource right after each of our reads."""

    def __init__(self, target: KubeTarget, change: Any) -> None:
        super().__init__(target)
        self._change = change
        self.reads = 0

    def get(self, name: str) -> dict[str, Any]:
        body = super().get(name)
        self.reads += 1
        self._change(self.reads)
        return body


def _target(control_plane: ControlPlane, namespace: str) -> KubeTarget:
    return KubeTarget(api=control_plane.api_client(), namespace=namespace, timeout=10.0)


def test_an_approval_never_lands_on_a_hash_that_changed_after_the_check(
    cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))

    def new_challenge(reads: int) -> None:
        # Between our read and our write, the operator moves on to another compose hash.
        if reads == 1:
            cluster.set_status("web", awaiting_status(HASH_B))

    resources = ChangesAfterEachRead(_target(control_plane, namespace), new_challenge)
    with pytest.raises(commands.Refused, match=f"changed from {HASH_A} to {HASH_B}"):
        commands.approve(resources, "web", None, io.StringIO())

    assert resources.reads == 2
    assert APPROVED not in cluster.annotations("web")


def test_an_unrelated_change_meanwhile_is_checked_again_and_approved(
    cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))

    def status_write(reads: int) -> None:
        if reads == 1:  # e.g. the operator refreshing its message: same pending hash
            cluster.set_status("web", {**awaiting_status(HASH_A), "message": "still waiting"})

    resources = ChangesAfterEachRead(_target(control_plane, namespace), status_write)
    out = io.StringIO()
    assert commands.approve(resources, "web", HASH_A, out) == 0

    assert resources.reads == 2
    assert cluster.annotations("web")[APPROVED] == HASH_A
    assert HASH_A in out.getvalue()


def test_a_resource_that_never_stops_changing_is_not_approved(
    cluster: Cluster, control_plane: ControlPlane, namespace: str
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A))

    def churn(reads: int) -> None:
        cluster.set_status("web", {**awaiting_status(HASH_A), "message": f"write {reads}"})

    resources = ChangesAfterEachRead(_target(control_plane, namespace), churn)
    with pytest.raises(PluginError, match="kept changing"):
        commands.approve(resources, "web", HASH_A, io.StringIO())

    assert resources.reads == commands.APPROVE_ATTEMPTS
    assert APPROVED not in cluster.annotations("web")
