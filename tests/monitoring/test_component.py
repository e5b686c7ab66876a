"""The kustomize Component of deploy/monitoring: it renders with each overlay, its Service finds the
operator's pods and port, its ServiceMonitor finds the Service, and the ServiceMonitor and
PrometheusRule are valid against the Prometheus Operator's own CRDs on the real local API server."""

from __future__ import annotations

import json
import os
import subprocess
import time
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from monitoring_kit import DASHBOARD, MONITORING, ROOT, dashboard, dashboard_panels, tools

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.kube import ControlPlane

OVERLAYS = ("overlays/cluster-wide", "overlays/namespaced")


@cache
def render_with_monitoring(overlay: str, work: Path) -> tuple[dict[str, Any], ...]:
    """An overlay with the component, as a user's kustomization would combine them."""
    user = work / overlay.replace("/", "-")
    user.mkdir(parents=True, exist_ok=True)
    (user / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(ROOT / "deploy" / overlay, user)],
                "components": [os.path.relpath(MONITORING, user)],
            }
        )
    )
    completed = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(user)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    return tuple(doc for doc in yaml.safe_load_all(completed.stdout) if doc)


def one(docs: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    return found


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kustomize")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_service_and_service_monitor_reach_the_operators_metrics_port(overlay: str, work: Path) -> None:
    docs = render_with_monitoring(overlay, work)
    deployment = one(docs, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = one(docs, "Service", "cvm-prelaunch-operator-metrics")
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port["targetPort"] in named
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert env.get("METRICS_PORT") == str(named[port["targetPort"]])

    monitor = one(docs, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == port["name"]
    assert endpoint["honorLabels"] is True  # keeps the resources' own namespace label

    # The NetworkPolicy lets the metrics port in (from labelled namespaces).
    policy = one(docs, "NetworkPolicy")
    allowed = [p["port"] for rule in policy["spec"]["ingress"] for p in rule.get("ports", [])]
    assert port["targetPort"] in allowed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_dashboard_ships_as_a_config_map_for_grafanas_sidecar(overlay: str, work: Path) -> None:
    docs = render_with_monitoring(overlay, work)
    config_map = one(docs, "ConfigMap", "cvm-prelaunch-operator-dashboard")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["dashboard.json"]) == dashboard()
    # Without the component, the overlay has none of it.
    bare = subprocess.run(
        [str(paths.kubectl_bin()), "kustomize", str(ROOT / "deploy" / overlay)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert "ServiceMonitor" not in bare and "PrometheusRule" not in bare


def test_the_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        assert panel.get("description"), panel["title"]
    assert DASHBOARD.read_text().endswith("}\n")


def test_service_monitor_and_prometheus_rule_are_valid_for_the_prometheus_operator(
    control_plane: ControlPlane, namespace: str, work: Path
) -> None:
    """Server-side validation against the Prometheus Operator's own CRDs (strict: an unknown or
    misplaced field fails)."""
    crds = sorted((tools() / "crds").glob("*.yaml"))
    assert len(crds) == 2
    for crd in crds:
        control_plane.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(crd))
    for name in ("servicemonitors.monitoring.coreos.com", "prometheusrules.monitoring.coreos.com"):
        _wait_established(control_plane, name)
    docs = render_with_monitoring("overlays/cluster-wide", work)
    objects = [
        one(docs, "ServiceMonitor"),
        one(docs, "PrometheusRule"),
        one(docs, "Service", "cvm-prelaunch-operator-metrics"),
        one(docs, "ConfigMap", "cvm-prelaunch-operator-dashboard"),
    ]
    for obj in objects:
        obj["metadata"]["namespace"] = namespace
    listing = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    control_plane.kubectl("apply", "--dry-run=server", "--validate=strict", "-f", "-", input=listing)
    # A field the schema does not know is refused, so the check above is not vacuous.
    broken = json.loads(listing)
    broken["items"][0]["spec"]["endpoints"][0]["honourLabels"] = True
    refused = control_plane.kubectl(
        "apply", "--dry-run=server", "--validate=strict", "-f", "-", input=json.dumps(broken), check=False
    )
    assert refused.returncode != 0
    assert "honourLabels" in refused.stderr


def _wait_established(control_plane: ControlPlane, crd: str, timeout: float = 30.0) -> None:
    # `kubectl wait` fails instead of waiting while a new CRD has no conditions at all yet.
    deadline = time.monotonic() + timeout
    query = '{.status.conditions[?(@.type=="Established")].status}'
    while control_plane.kubectl("get", "crd", crd, "-o", f"jsonpath={query}", check=False).stdout != "True":
        assert time.monotonic() < deadline, f"CRD {crd} not established in {timeout:.0f}s"
        time.sleep(0.1)
