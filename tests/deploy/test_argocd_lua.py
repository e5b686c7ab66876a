"""The Argo CD health check and actions of CvmPreLaunchScript, run on a real Lua 5.1.

The test cases are the YAML files next to the Lua (Argo CD's upstream layout); every case runs both
without Lua's standard libraries (Argo CD's default) and with them (``useOpenLibs: true``).
"""

from __future__ import annotations

import datetime as dt
import importlib.util
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml
from argocd_lua_harness import FROZEN_NOW, INVALID_HEALTH_STATUS, ArgoLua, HealthStatus, LuaScriptError

from cvm_prelaunch_localenv.paths import repo_root

ARGOCD = repo_root() / "deploy" / "argocd"
CUSTOMIZATION = ARGOCD / "resource_customizations" / "cloud.phala.com" / "CvmPreLaunchScript"
ACTIONS = CUSTOMIZATION / "actions"
REQUESTED_AT = "cloud.phala.com/requested-at"
LIB_MODES = [pytest.param(False, id="no-libs"), pytest.param(True, id="open-libs")]


def _load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


HEALTH_CASES: list[dict[str, Any]] = _load(CUSTOMIZATION / "health_test.yaml")["tests"]
ACTION_SUITE: dict[str, Any] = _load(ACTIONS / "action_test.yaml")
DISCOVERY_CASES: list[dict[str, Any]] = ACTION_SUITE["discoveryTests"]
ACTION_CASES: list[dict[str, Any]] = ACTION_SUITE["actionTests"]


@pytest.fixture(params=LIB_MODES)
def lua(request: pytest.FixtureRequest) -> ArgoLua:
    return ArgoLua(open_libs=request.param)


@pytest.mark.parametrize("case", HEALTH_CASES, ids=[c["inputPath"] for c in HEALTH_CASES])
def test_health(lua: ArgoLua, case: dict[str, Any]) -> None:
    script = (CUSTOMIZATION / "health.lua").read_text()
    obj = _load(CUSTOMIZATION / case["inputPath"])
    expected = HealthStatus(case["healthStatus"]["status"], case["healthStatus"].get("message", ""))
    assert lua.health(script, obj) == expected


@pytest.mark.parametrize("case", DISCOVERY_CASES, ids=[c["inputPath"] for c in DISCOVERY_CASES])
def test_action_discovery(lua: ArgoLua, case: dict[str, Any]) -> None:
    script = (ACTIONS / "discovery.lua").read_text()
    discovered = lua.discover(script, _load(ACTIONS / case["inputPath"]))
    assert {a.name: a.disabled for a in discovered} == {
        r["name"]: r.get("disabled", False) for r in case["result"]
    }


@pytest.mark.parametrize("case", ACTION_CASES, ids=[f"{c['action']}:{c['inputPath']}" for c in ACTION_CASES])
def test_action(lua: ArgoLua, case: dict[str, Any]) -> None:
    script = (ACTIONS / case["action"] / "action.lua").read_text()
    obj = _load(ACTIONS / case["inputPath"])
    impacted = lua.act(script, obj)
    assert [i.operation for i in impacted] == ["patch"]
    assert impacted[0].resource == _load(ACTIONS / case["expectedOutputPath"])


def test_cases_cover_every_health_state_and_the_generation_mismatch() -> None:
    states = {c["healthStatus"]["status"] for c in HEALTH_CASES}
    assert states == {"Healthy", "Progressing", "Degraded", "Suspended"}

    def mismatched(obj: dict[str, Any]) -> bool:
        status = obj.get("status")
        generation = int(obj["metadata"]["generation"])
        observed = status.get("observedGeneration") if isinstance(status, dict) else None
        return isinstance(observed, int | str) and str(observed).isdigit() and int(observed) != generation

    inputs = {c["inputPath"]: _load(CUSTOMIZATION / c["inputPath"]) for c in HEALTH_CASES}
    mismatch_outcomes = {
        c["healthStatus"]["status"] for c in HEALTH_CASES if mismatched(inputs[c["inputPath"]])
    }
    # A status (even Ready=True or Stalled=True) of an older generation never counts as current.
    assert mismatch_outcomes == {"Progressing"}
    stale_ready = [
        path
        for path, obj in inputs.items()
        if any(
            c.get("type") == "Ready"
            and c.get("status") == "True"
            and c.get("observedGeneration") not in (None, obj["metadata"]["generation"])
            for c in _conditions(obj)
        )
    ]
    assert stale_ready, "no case where the Ready condition is of an older generation"
    verdicts = {c["inputPath"]: c["healthStatus"]["status"] for c in HEALTH_CASES}
    # The cases of issue 13: Drifted (driftPolicy Report) is Degraded; a current Reconciling=True
    # wins over Ready=True; malformed conditions still get a verdict.
    assert verdicts["testdata/drifted.yaml"] == "Degraded"
    assert _load(CUSTOMIZATION / "testdata" / "drifted.yaml")["spec"]["driftPolicy"] == "Report"
    assert verdicts["testdata/reconciling-over-ready.yaml"] == "Progressing"
    assert any(
        c.get("type") == "Ready" and c.get("status") == "True"
        for c in _conditions(inputs["testdata/reconciling-over-ready.yaml"])
    )
    malformed = [path for path in inputs if path.startswith("testdata/malformed-")]
    assert len(malformed) >= 5
    referenced = {c["inputPath"] for c in HEALTH_CASES}
    assert referenced == {f"testdata/{p.name}" for p in (CUSTOMIZATION / "testdata").glob("*.yaml")}


def _conditions(obj: dict[str, Any]) -> list[dict[str, Any]]:
    status = obj.get("status")
    conditions = status.get("conditions") if isinstance(status, dict) else None
    return [c for c in conditions if isinstance(c, dict)] if isinstance(conditions, list) else []


def test_every_action_is_discovered_and_tested() -> None:
    defined = {p.parent.name for p in ACTIONS.glob("*/action.lua")}
    assert defined == {"refresh", "suspend", "resume", "approve"}
    assert {c["action"] for c in ACTION_CASES} == defined
    for case in DISCOVERY_CASES:
        assert {r["name"] for r in case["result"]} == defined


@pytest.mark.parametrize("open_libs", LIB_MODES)
def test_refresh_writes_the_time_of_the_request(open_libs: bool) -> None:
    now = dt.datetime(2031, 7, 9, 13, 14, 15, tzinfo=dt.UTC)
    lua = ArgoLua(open_libs=open_libs, now=int(now.timestamp()))
    script = (ACTIONS / "refresh" / "action.lua").read_text()
    obj = _load(ACTIONS / "testdata" / "running.yaml")

    first = lua.act(script, obj)[0].resource
    assert first["metadata"]["annotations"][REQUESTED_AT] == "2031-07-09T13:14:15Z"
    # A second click within the same second still changes the value, and it stays RFC 3339.
    second = lua.act(script, first)[0].resource["metadata"]["annotations"][REQUESTED_AT]
    third = lua.act(script, lua.act(script, first)[0].resource)[0].resource["metadata"]["annotations"][
        REQUESTED_AT
    ]
    assert second == "2031-07-09T13:14:15.5Z" != first["metadata"]["annotations"][REQUESTED_AT]
    assert third == "2031-07-09T13:14:15Z"
    assert dt.datetime.fromisoformat(second) == now + dt.timedelta(milliseconds=500)


APPROVED = "cloud.phala.com/approved-compose-hash"


@pytest.mark.parametrize(
    "path",
    [
        ACTIONS / "testdata" / "running.yaml",
        ACTIONS / "testdata" / "suspended.yaml",
        ACTIONS / "testdata" / "awaiting-approval-without-pending.yaml",
        CUSTOMIZATION / "testdata" / "no-status.yaml",
        CUSTOMIZATION / "testdata" / "malformed-status-not-a-map.yaml",
    ],
    ids=lambda p: p.name,
)
def test_approve_refuses_when_nothing_is_pending(lua: ArgoLua, path: Path) -> None:
    script = (ACTIONS / "approve" / "action.lua").read_text()
    with pytest.raises(LuaScriptError, match=r"^nothing pending approval \(phase "):
        lua.act(script, _load(path))
    # Discovery agrees: approve is not offered on it.
    discovered = lua.discover((ACTIONS / "discovery.lua").read_text(), _load(path))
    assert {a.name: a.disabled for a in discovered}["approve"] is True


@pytest.mark.parametrize("pending", ["0x1234", 42, {"hash": "0x"}, None], ids=repr)
def test_approve_refuses_a_malformed_pending_hash(lua: ArgoLua, pending: Any) -> None:
    obj = _load(ACTIONS / "testdata" / "awaiting-approval.yaml")
    obj["status"]["pendingApproval"]["composeHash"] = pending
    with pytest.raises(LuaScriptError, match="nothing pending approval"):
        lua.act((ACTIONS / "approve" / "action.lua").read_text(), obj)
    discovered = lua.discover((ACTIONS / "discovery.lua").read_text(), obj)
    assert {a.name: a.disabled for a in discovered}["approve"] is True


def test_approve_writes_the_pending_hash_and_nothing_else(lua: ArgoLua) -> None:
    obj = _load(ACTIONS / "testdata" / "awaiting-approval.yaml")
    (impacted,) = lua.act((ACTIONS / "approve" / "action.lua").read_text(), obj)
    pending = obj["status"]["pendingApproval"]["composeHash"]
    assert impacted.resource["metadata"]["annotations"][APPROVED] == pending
    assert obj["metadata"]["annotations"][APPROVED] != pending  # the input carried an older approval
    # Only that annotation changed.
    expected = _load(ACTIONS / "testdata" / "awaiting-approval.yaml")
    expected["metadata"]["annotations"][APPROVED] = pending
    assert impacted.resource == expected


def test_the_harness_gives_no_standard_library_without_open_libs() -> None:
    bare, full = ArgoLua(open_libs=False), ArgoLua(open_libs=True)
    probe = (
        "return {string = type(string), math = type(math), io = type(io),"
        ' os_exit = type(os.exit), date = os.date("!%Y")}'
    )
    assert bare.run(probe, {}) == {
        "string": "nil",
        "math": "nil",
        "io": "nil",
        "os_exit": "nil",
        "date": "2026",
    }
    assert full.run(probe, {}) == {
        "string": "table",
        "math": "table",
        "io": "table",
        "os_exit": "function",
        "date": "2026",
    }
    with pytest.raises(LuaScriptError, match="attempt to index"):
        bare.run('return ("abc"):upper()', {})
    with pytest.raises(LuaScriptError, match="instruction budget"):
        bare.run("while true do end", {})
    assert bare.health('return {status = "Fine"}', {}) == HealthStatus("Unknown", INVALID_HEALTH_STATUS)
    assert int(dt.datetime(2026, 1, 1, tzinfo=dt.UTC).timestamp()) == FROZEN_NOW


def test_argocd_cm_is_rendered_from_the_lua_files() -> None:
    spec = importlib.util.spec_from_file_location("render_argocd_cm", ARGOCD / "render_argocd_cm.py")
    assert spec is not None and spec.loader is not None
    renderer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(renderer)

    committed = (ARGOCD / "argocd-cm.yaml").read_text()
    assert committed == renderer.render(), (
        "re-run: python deploy/argocd/render_argocd_cm.py > deploy/argocd/argocd-cm.yaml"
    )

    data = yaml.safe_load(committed)["data"]
    key = "cloud.phala.com_CvmPreLaunchScript"
    assert data[f"resource.customizations.health.{key}"] == (CUSTOMIZATION / "health.lua").read_text()
    actions = yaml.safe_load(data[f"resource.customizations.actions.{key}"])
    assert actions["discovery.lua"] == (ACTIONS / "discovery.lua").read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (ACTIONS / name / "action.lua").read_text()
        for name in ("refresh", "suspend", "resume", "approve")
    }
    ignored = yaml.safe_load(data[f"resource.customizations.ignoreResourceUpdates.{key}"])["jsonPointers"]
    assert all(pointer.startswith("/status/") for pointer in ignored)
    assert "/status/conditions" not in ignored and "/status/observedGeneration" not in ignored
    assert not any(k.startswith("resource.customizations.useOpenLibs") for k in data)


def _crd_schema() -> dict[str, Any]:
    crd = _load(repo_root() / "crds" / "cloud.phala.com_cvmprelaunchscripts.yaml")
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


# Argo CD may see an int64 as json.Number, which reaches Lua as a string: not a valid object. The
# malformed-* statuses are what no operator writes and the schema refuses; the health check must
# still give them a verdict.
NOT_API_OBJECTS = {"generation-as-string.yaml"} | {
    p.name for p in (CUSTOMIZATION / "testdata").glob("malformed-*.yaml")
}
ALL_TESTDATA = sorted(
    p
    for p in [*(CUSTOMIZATION / "testdata").glob("*.yaml"), *(ACTIONS / "testdata").glob("*.yaml")]
    if p.name not in NOT_API_OBJECTS
)


@pytest.mark.parametrize("path", ALL_TESTDATA, ids=[f"{p.parent.parent.name}/{p.name}" for p in ALL_TESTDATA])
def test_test_data_is_valid_against_the_crd_schema(path: Path) -> None:
    jsonschema.validate(_load(path), _crd_schema())


NOT_VALID = sorted(CUSTOMIZATION / "testdata" / name for name in NOT_API_OBJECTS)


@pytest.mark.parametrize("path", NOT_VALID, ids=[p.name for p in NOT_VALID])
def test_the_objects_left_out_are_indeed_invalid(path: Path) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(_load(path), _crd_schema())
