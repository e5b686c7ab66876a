"""``kubectl cpls status``: one line per resource with ready, reason, phase, the pending approval and the
last failure; with a NAME, the pending approval and the failure in full."""

from __future__ import annotations

import datetime as dt

from plugin_kit import HASH_A, SCRIPT_SHA, Cluster, Cpls, awaiting_status, conditions, synced_status

from cvm_prelaunch_localenv.kube import ControlPlane

LONG_FAILURE = (
    "signer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 is not the owner "
    "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266 of app contract 0x700b6A60ce7EaaEA56F065753d8dcB9653dbAD35"
)


def ago(**delta: float) -> str:
    moment = dt.datetime.now(dt.UTC) - dt.timedelta(**delta)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def stalled_status() -> dict[str, object]:
    return {
        "observedGeneration": 1,
        "phase": "Failed",
        "message": LONG_FAILURE,
        "lastFailureTime": ago(minutes=5, seconds=3),
        "conditions": conditions(
            ("False", "NotContractOwner", LONG_FAILURE),
            stalled=("True", "NotContractOwner", LONG_FAILURE),
        ),
    }


def retrying_status() -> dict[str, object]:
    message = "GET /cvms/{id}: Phala Cloud answered 503 (retry 3 in 8s)"
    return {
        "observedGeneration": 1,
        "phase": "Uploading",
        "message": message,
        "lastFailureTime": ago(hours=3),
        "conditions": conditions(
            ("False", "RemoteUnavailable", message), reconciling=("True", "RemoteUnavailable", message)
        ),
    }


def lines_of(text: str) -> dict[str, str]:
    """Table lines by their first cell."""
    return {line.split()[0]: line for line in text.splitlines() if line.strip()}


def test_the_table_shows_every_resource_of_the_namespace(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("approval", status=awaiting_status(HASH_A, since=ago(hours=2)))
    cluster.create("fine", status=synced_status())
    cluster.create("broken", status=stalled_status())
    cluster.create("flaky", status=retrying_status())
    cluster.create("new")  # no status yet

    run = cpls("status")

    assert run.code == 0, run.err
    rows = lines_of(run.out)
    assert rows["NAME"].split() == [
        "NAME",
        "READY",
        "REASON",
        "PHASE",
        "PENDING",
        "APPROVAL",
        "LAST",
        "FAILURE",
    ]
    assert list(rows)[1:] == ["approval", "broken", "fine", "flaky", "new"]  # sorted by name
    assert rows["approval"].split()[:5] == [
        "approval",
        "False",
        "AwaitingApproval",
        "AwaitingApproval",
        HASH_A[:14],
    ]
    assert HASH_A not in run.out  # the short form only
    assert rows["fine"].split() == ["fine", "True", "Synced", "Synced", "-", "-"]
    broken = rows["broken"]
    assert broken.split()[:6] == ["broken", "False", "NotContractOwner", "Failed", "-", "5m"]
    assert "ago: signer 0x70997970C51812dc3A010C7d01b50e0d17dc79C8 is not" in broken
    assert broken.endswith("...") and LONG_FAILURE not in broken  # cut
    # A transient failure while retrying is a failure too (reason, not Reconciling, decides).
    assert "3h ago: GET /cvms/{id}: Phala Cloud answered 503" in rows["flaky"]
    assert rows["new"].split() == ["new", "-", "-", "-", "-", "-"]


def test_status_of_one_resource_shows_the_pending_approval_in_full(
    cluster: Cluster, cpls: Cpls, namespace: str
) -> None:
    cluster.create("web", status=awaiting_status(HASH_A, since=ago(hours=2, minutes=30)))

    run = cpls("status", "web")

    assert run.code == 0, run.err
    assert f"compose hash:   {HASH_A}" in run.out
    assert f"script sha256:  {SCRIPT_SHA}" in run.out
    assert "(chain 8453)" in run.out
    assert "(2h ago)" in run.out
    assert f"kubectl cpls approve web -n {namespace} --hash {HASH_A}" in run.out


def test_status_of_one_failed_resource_shows_the_whole_message(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("broken", status=stalled_status())

    run = cpls("status", "broken")

    assert run.code == 0, run.err
    assert LONG_FAILURE in run.out
    assert "Last failure:" in run.out and "(5m ago)" in run.out
    assert "Pending approval" not in run.out


def test_all_namespaces_adds_the_namespace_column(
    cluster: Cluster, cpls: Cpls, control_plane: ControlPlane, namespace: str
) -> None:
    other = control_plane.create_namespace(f"{namespace}-b")
    try:
        cluster.create("web", status=synced_status())
        cluster.create("web", status=awaiting_status(HASH_A), namespace=other)

        run = cpls("status", "-A", namespace_flag=None)

        assert run.code == 0, run.err
        assert run.out.splitlines()[0].split()[:2] == ["NAMESPACE", "NAME"]
        ours = [line.split() for line in run.out.splitlines() if line.split()[0] in (namespace, other)]
        assert [row[:3] for row in ours] == [[namespace, "web", "True"], [other, "web", "False"]]
    finally:
        control_plane.delete_namespace(other)


def test_an_empty_namespace_says_so(cluster: Cluster, cpls: Cpls, namespace: str) -> None:
    run = cpls("status")
    assert run.code == 0
    assert run.out == ""
    assert f"No resources found in {namespace} namespace." in run.err


def test_status_of_a_missing_resource_fails(cluster: Cluster, cpls: Cpls) -> None:
    run = cpls("status", "nope")
    assert run.code == 1
    assert "not found" in run.err


def test_a_name_with_all_namespaces_is_a_usage_error(cluster: Cluster, cpls: Cpls) -> None:
    run = cpls("status", "web", "-A")
    assert run.code == 2
    assert "cannot be combined" in run.err


def test_a_malformed_status_does_not_break_the_table(cluster: Cluster, cpls: Cpls) -> None:
    # Types the schema allows but no operator writes: a pendingApproval without a hash, a phase
    # with no conditions.
    cluster.create("odd", status={"phase": "AwaitingApproval", "pendingApproval": {"cvmId": "x"}})

    run = cpls("status", "odd")

    assert run.code == 0, run.err
    assert lines_of(run.out)["odd"].split() == ["odd", "-", "-", "AwaitingApproval", "-", "-"]
