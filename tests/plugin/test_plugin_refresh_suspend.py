"""``kubectl cpls refresh|suspend|resume``."""

from __future__ import annotations

import datetime as dt

import pytest
from plugin_kit import REQUESTED_AT, Cluster, Cpls, synced_status


def test_refresh_writes_the_time_of_the_request(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=synced_status(), annotations={"team": "payments"})
    before = dt.datetime.now(dt.UTC)

    run = cpls("refresh", "web")

    after = dt.datetime.now(dt.UTC)
    assert run.code == 0, run.err
    annotations = cluster.annotations("web")
    assert annotations["team"] == "payments"
    requested = annotations[REQUESTED_AT]
    assert requested.endswith("Z")
    moment = dt.datetime.fromisoformat(requested)
    assert before - dt.timedelta(milliseconds=1) <= moment <= after
    assert requested in run.out

    # A second request is a new value, so the operator sees it as a new request.
    assert cpls("refresh", "web").code == 0
    assert cluster.annotations("web")[REQUESTED_AT] != requested


def test_refresh_of_a_suspended_resource_says_it_waits(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=synced_status(), suspend=True)

    run = cpls("refresh", "web")

    assert run.code == 0, run.err
    assert "suspended" in run.err
    assert REQUESTED_AT in cluster.annotations("web")


def test_suspend_and_resume(cluster: Cluster, cpls: Cpls) -> None:
    cluster.create("web", status=synced_status())
    assert cluster.get("web")["spec"]["suspend"] is False

    run = cpls("suspend", "web")
    assert run.code == 0, run.err
    assert run.out.strip().endswith("suspended")
    assert cluster.get("web")["spec"]["suspend"] is True

    version = cluster.get("web")["metadata"]["resourceVersion"]
    again = cpls("suspend", "web")
    assert again.code == 0 and "suspended already" in again.out
    assert cluster.get("web")["metadata"]["resourceVersion"] == version  # no write

    run = cpls("resume", "web")
    assert run.code == 0, run.err
    assert cluster.get("web")["spec"]["suspend"] is False
    assert "resumed already" in cpls("resume", "web").out


@pytest.mark.parametrize("verb", ["refresh", "suspend", "resume"])
def test_a_missing_resource_fails_and_no_name_is_a_usage_error(
    cluster: Cluster, cpls: Cpls, verb: str
) -> None:
    missing = cpls(verb, "nope")
    assert missing.code == 1 and "not found" in missing.err
    usage = cpls(verb)
    assert usage.code == 2 and "NAME" in usage.err


@pytest.mark.parametrize("verb", ["approve", "status", "diff", "refresh", "suspend", "resume"])
def test_every_verb_has_help(cpls: Cpls, verb: str) -> None:
    run = cpls(verb, "--help", namespace_flag=None)
    assert run.code == 0
    assert run.out.startswith(f"usage: kubectl cpls {verb}")
    assert "--namespace" in run.out and "--context" in run.out and "--kubeconfig" in run.out
