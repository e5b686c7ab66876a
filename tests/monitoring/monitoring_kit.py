"""What the monitoring tests share: the tools of hack/build-promtool.sh, the rule groups of the
PrometheusRule, every PromQL expression of the rules and the dashboard, and the metric names those
expressions select (parsed by Prometheus' own parser)."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from cvm_prelaunch_localenv import paths

ROOT = paths.repo_root()
MONITORING = ROOT / "deploy" / "monitoring"
RULE_FILE = MONITORING / "prometheusrule.yaml"
DASHBOARD = MONITORING / "dashboard.json"
PROMTOOL_TESTS = Path(__file__).with_name("alerts_test.yaml")

# Grafana's variables as a query would see them, so that Prometheus' parser accepts the expressions.
_GRAFANA_VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$namespace": ".*",
}


@cache
def tools() -> Path:
    """promtool, promql-names and the Prometheus Operator CRDs: built on first use (cold, about two
    minutes), then cached outside the clone."""
    completed = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-promtool.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=1200,
    )
    assert completed.returncode == 0, f"hack/build-promtool.sh failed:\n{completed.stderr[-4000:]}"
    return Path(completed.stdout.strip().splitlines()[-1])


def promtool(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(tools() / "promtool"), *args], capture_output=True, text=True, check=False, timeout=120, cwd=cwd
    )


def rule_resource() -> dict[str, Any]:
    return dict(yaml.safe_load(RULE_FILE.read_text()))


def rule_groups() -> dict[str, Any]:
    """The PrometheusRule's spec: a Prometheus rule file as promtool reads it."""
    return dict(rule_resource()["spec"])


def alerts() -> dict[str, dict[str, Any]]:
    return {
        rule["alert"]: rule for group in rule_groups()["groups"] for rule in group["rules"] if "alert" in rule
    }


def dashboard() -> dict[str, Any]:
    return dict(json.loads(DASHBOARD.read_text()))


def dashboard_panels() -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))  # the panels of collapsed rows
    return found


def grafana_to_promql(expr: str) -> str:
    for variable, value in _GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    assert "$" not in expr, f"a Grafana variable the test does not know: {expr}"
    return expr


_LABEL_VALUES = re.compile(r"^label_values\((?:(.+),\s*)?(\w+)\)$")


def dashboard_exprs() -> list[str]:
    """Every query of the dashboard: panel targets and the template variables' label_values()."""
    exprs = [grafana_to_promql(t["expr"]) for p in dashboard_panels() for t in p.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        match = _LABEL_VALUES.match(query)
        assert match and match.group(1), f"variable {variable['name']}: label_values(metric, label) expected"
        exprs.append(grafana_to_promql(match.group(1)))
    return exprs


def rule_exprs() -> list[str]:
    exprs = [str(rule["expr"]) for group in rule_groups()["groups"] for rule in group["rules"]]
    # Annotations may query too ({{ query "..." }}): those metrics must exist as well.
    for rule in alerts().values():
        for text in rule.get("annotations", {}).values():
            exprs.extend(re.findall(r"printf `([^`]*)`", text))
    return [re.sub(r"%s", "x", e) for e in exprs]


def metric_names(exprs: list[str]) -> set[str]:
    completed = subprocess.run(
        [str(tools() / "promql-names")],
        input=json.dumps(exprs),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stderr
    return set(json.loads(completed.stdout))
