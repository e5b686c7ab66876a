"""The benchmark suite's smoke variants, run through the real command (``hack/bench.sh --smoke``) so
the script cannot rot: every scenario completes on the local environment and reports its figures.
Sizes are tiny, so latency targets are not judged here; properties that hold at any size are."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cvm_prelaunch_localenv.paths import repo_root

SCENARIOS = ("first_sync", "reaction", "restart", "noise", "secrets", "fanout", "onchain", "mainnet", "soak")
SMOKE_TIMEOUT_S = 240

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smoke_report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    output = tmp_path_factory.mktemp("bench")
    result = subprocess.run(
        [str(repo_root() / "hack" / "bench.sh"), "--smoke", "--output", str(output)],
        cwd=repo_root(),
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT_S,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    json_files = sorted(output.glob("*-smoke.json"))
    md_files = sorted(output.glob("*-smoke.md"))
    assert len(json_files) == 1 and len(md_files) == 1, list(output.iterdir())
    report: dict[str, Any] = json.loads(json_files[0].read_text())
    report["_markdown"] = md_files[0].read_text()
    return report


def test_report_describes_the_run(smoke_report: dict[str, Any]) -> None:
    assert smoke_report["smoke"] is True
    assert list(smoke_report["scenarios"]) == list(SCENARIOS)
    machine = smoke_report["machine"]
    assert machine["cores"] >= 1 and machine["cpu"] and machine["python"]
    markdown = smoke_report["_markdown"]
    assert "| Scenario | Target | Measured | Met |" in markdown
    for name in SCENARIOS:
        assert f"## {name}: " in markdown


@pytest.mark.parametrize("name", SCENARIOS)
def test_scenario_completes_with_figures(smoke_report: dict[str, Any], name: str) -> None:
    outcome = smoke_report["scenarios"][name]
    assert "error" not in outcome, outcome.get("error")
    assert outcome["targets"], outcome
    for item in outcome["targets"]:
        assert isinstance(item["measured"], int | float), item
        assert isinstance(item["met"], bool)
    for stats in (outcome.get("latency_ms") or {}).values():
        assert stats["count"] >= 1
        assert 0 <= stats["min"] <= stats["median"] <= stats["p90"] <= stats["p99"] <= stats["max"]


def test_properties_that_hold_at_any_size(smoke_report: dict[str, Any]) -> None:
    scenarios = smoke_report["scenarios"]
    restart = scenarios["restart"]["figures"]
    assert restart["remote_writes"] == 0
    assert restart["resources_whose_object_changed"] == 0
    assert restart["reconcile_errors"] == 0
    fanout = scenarios["fanout"]["figures"]
    assert fanout["peak_concurrency_log"] <= fanout["concurrency_limit"]
    assert fanout["peak_concurrency_server"] <= fanout["concurrency_limit"]
    assert fanout["calls_per_resource_min"] >= 1
    soak = scenarios["soak"]["figures"]
    assert soak["log_errors"] == []
    assert soak["edits"] >= 1
    onchain = scenarios["onchain"]["figures"]
    assert onchain["operator_edits"] >= 1
    mainnet = scenarios["mainnet"]["figures"]
    assert mainnet["resources"] >= 1 and mainnet["rpc_http_requests_per_registration"] > 0
    # What a sync costs is reported with its parts (issue 12).
    for figures in (scenarios["first_sync"]["figures"], fanout):
        assert figures["operator_cpu_ms_per_sync"] > 0
        by_kind = figures["kubernetes_requests_per_sync_by_kind"]
        assert by_kind["PATCH cvmprelaunchscripts/status"] >= 1
        assert figures["kubernetes_requests_per_sync"] == pytest.approx(sum(by_kind.values()), abs=0.05)
    # A process's first pass over a resource reads it; after its own status write, a pass starts from
    # the watched body (the fan-out's edit comes after the fresh operator has looked at every resource).
    assert (
        scenarios["first_sync"]["figures"]["kubernetes_requests_per_sync_by_kind"]["GET cvmprelaunchscripts"]
        >= 1
    )
    assert fanout["kubernetes_requests_per_sync_by_kind"].get("GET cvmprelaunchscripts", 0) < 0.5
    # Unreferenced Secrets are never read with their values: only the fleet's one API-key Secret is.
    secrets = scenarios["secrets"]["figures"]
    assert secrets["secrets"] >= 1
    assert secrets["secret_gets_by_the_restarted_operator"] <= scenarios["first_sync"]["figures"]["resources"]


def test_results_directory_is_ignored_by_git() -> None:
    ignore = (repo_root() / ".gitignore").read_text().splitlines()
    assert "/benchmarks/results/" in ignore
    assert Path(repo_root() / "hack" / "bench.sh").stat().st_mode & 0o111
