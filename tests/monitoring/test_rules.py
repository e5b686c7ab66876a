"""The PrometheusRule of deploy/monitoring with the real promtool: the rules load, and each alert is
tested firing and not firing (alerts_test.yaml)."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml
from monitoring_kit import PROMTOOL_TESTS, alerts, metric_names, promtool, rule_exprs, rule_groups

RESOURCE_ALERTS = {
    "CvmPreLaunchScriptStalled",
    "CvmPreLaunchScriptAwaitingApproval",
    "CvmPreLaunchScriptDrifted",
}


def _rule_dir(tmp_path: Path) -> Path:
    (tmp_path / "rules.yaml").write_text(yaml.safe_dump(rule_groups()))
    shutil.copy(PROMTOOL_TESTS, tmp_path / "alerts_test.yaml")
    return tmp_path


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    checked = promtool(
        "check", "rules", "--lint=all", "--lint-fatal", str(_rule_dir(tmp_path) / "rules.yaml")
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(alerts())} rules found" in checked.stdout


def test_promtool_unit_tests_of_every_alert_pass(tmp_path: Path) -> None:
    tested = promtool("test", "rules", "alerts_test.yaml", cwd=_rule_dir(tmp_path))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    firing: set[str] = set()
    silent: set[str] = set()
    labels: dict[str, list[dict[str, str]]] = {}
    for case in yaml.safe_load(PROMTOOL_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            expected = check.get("exp_alerts") or []
            (firing if expected else silent).add(check["alertname"])
            labels.setdefault(check["alertname"], []).extend(a["exp_labels"] for a in expected)
    assert firing == set(alerts()), "an alert without a firing test case"
    assert silent == set(alerts()), "an alert without a test case where it does not fire"
    # Alerts about a resource name it; none of them carries the operator pod's labels.
    for name in RESOURCE_ALERTS:
        for alert_labels in labels[name]:
            assert {"namespace", "name"} <= set(alert_labels)
            assert "pod" not in alert_labels


def test_every_alert_says_what_and_where_to_look() -> None:
    for name, rule in alerts().items():
        annotations = rule.get("annotations", {})
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        assert annotations["runbook_url"].endswith("#troubleshooting"), name
        assert rule.get("labels", {}).get("severity") in {"info", "warning", "critical"}, name


def test_the_rules_use_only_operator_metrics() -> None:
    names = metric_names(rule_exprs())
    assert names and all(n.startswith("cvm_prelaunch_") for n in names), names
