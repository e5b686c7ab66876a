"""The Flux health check of CvmPreLaunchScript (``healthCheckExprs``, CEL) gives the verdicts of the Argo CD
health check (Lua) on the same test data, and on random statuses.

Flux's evaluation is reproduced as fluxcd/pkg ``runtime/cel.StatusEvaluator.Evaluate`` does it: when
``status.observedGeneration`` exists and differs from ``metadata.generation`` the resource is
InProgress; otherwise ``inProgress``, ``failed`` and ``current`` are evaluated in that order and the
first true one wins; none true is InProgress; an evaluation error gives no status at all (kstatus
Unknown), and Flux keeps waiting as for InProgress. The expressions run on cel-python; the top-level
fields of the object are the CEL variables, as in Flux.

Verdict classes: Argo CD Healthy and Flux Current are ``current``; Degraded and Failed are
``failed``; Progressing, InProgress and Unknown are ``inProgress`` (waiting). Argo CD's Suspended is
``current``: a suspension is a person's decision that Git may carry, and a Kustomization must not
time out over it.
"""

from __future__ import annotations

import copy
import functools
import itertools
import re
from pathlib import Path
from typing import Any

import celpy
import pytest
import yaml
from argocd_lua_harness import ArgoLua
from hypothesis import given, settings
from hypothesis import strategies as st

from cvm_prelaunch_localenv.paths import repo_root

ROOT = repo_root()
FLUX_EXAMPLE = ROOT / "deploy" / "flux" / "example-kustomization.yaml"
CUSTOMIZATION = (
    ROOT / "deploy" / "argocd" / "resource_customizations" / "cloud.phala.com" / "CvmPreLaunchScript"
)
HEALTH_LUA = (CUSTOMIZATION / "health.lua").read_text()
TESTDATA = sorted(
    [*(CUSTOMIZATION / "testdata").glob("*.yaml"), *(CUSTOMIZATION / "actions" / "testdata").glob("*.yaml")]
)
LIB_MODES = [pytest.param(False, id="no-libs"), pytest.param(True, id="open-libs")]

ARGO_CLASS = {"Healthy": "current", "Suspended": "current", "Degraded": "failed", "Progressing": "inProgress"}
FLUX_CLASS = {"Current": "current", "Failed": "failed", "InProgress": "inProgress", "Unknown": "inProgress"}

# Argo CD may decode an int64 as json.Number, which reaches Lua as a string; the same JSON reaches
# Flux with numbers (Go's unstructured decoding gives int64). These files carry such strings.
JSON_NUMBER_FILES = {"generation-as-string.yaml"}
# Objects that may get no verdict: Flux's own check of status.observedGeneration fails on a status that
# is not a map, and without a status cel-go reports the variable ``status`` as undeclared (cel-python
# evaluates ``has()`` on it to false, hence InProgress here). Flux keeps waiting on either, as for
# InProgress. Every other file gets a verdict.
MAY_GET_NO_VERDICT = {"no-status.yaml", "malformed-status-not-a-map.yaml"}


class FluxError(Exception):
    """What makes Flux's status reader return an error (kstatus Unknown)."""


def _health_check() -> dict[str, str]:
    kustomization = yaml.safe_load(FLUX_EXAMPLE.read_text())
    (check,) = kustomization["spec"]["healthCheckExprs"]
    assert (check["apiVersion"], check["kind"]) == ("cloud.phala.com/v1alpha1", "CvmPreLaunchScript")
    return {key: check[key] for key in ("inProgress", "failed", "current")}


EXPRESSIONS = _health_check()
_ENV = celpy.Environment()
PROGRAMS = {name: _ENV.program(_ENV.compile(text)) for name, text in EXPRESSIONS.items()}


def _nested_int64(obj: dict[str, Any], *path: str) -> tuple[int | None, bool]:
    """unstructured.NestedInt64: (value, found); an error for a non-map on the way or a non-int value."""
    current: Any = obj
    for index, key in enumerate(path):
        if not isinstance(current, dict):
            raise FluxError(f"{'.'.join(path[:index])} is not a map")
        if key not in current:
            return None, False
        current = current[key]
    if not isinstance(current, int) or isinstance(current, bool):
        raise FluxError(f"{'.'.join(path)} is of type {type(current).__name__}, expected int64")
    return current, True


def flux_status(obj: dict[str, Any]) -> str:
    """Current, Failed, InProgress, or Unknown (an evaluation error), as Flux computes it."""
    try:
        observed, found = _nested_int64(obj, "status", "observedGeneration")
        if found:
            generation, has_generation = _nested_int64(obj, "metadata", "generation")
            if has_generation and observed != generation:
                return "InProgress"
        activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
        for name, verdict in (("inProgress", "InProgress"), ("failed", "Failed"), ("current", "Current")):
            result = PROGRAMS[name].evaluate(activation)
            if isinstance(result, Exception):
                raise FluxError(str(result))
            if not isinstance(result, celpy.celtypes.BoolType):
                raise FluxError(f"{name} is not a boolean: {result!r}")
            if result:
                return verdict
    except (FluxError, celpy.CELEvalError):
        return "Unknown"
    return "InProgress"


def _with_json_numbers(value: Any) -> Any:
    """The object as Flux would get it: decimal strings in generation fields are numbers."""
    if isinstance(value, dict):
        return {
            k: int(v)
            if k in {"generation", "observedGeneration"} and isinstance(v, str) and v.isdigit()
            else _with_json_numbers(v)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_with_json_numbers(v) for v in value]
    return value


def _load(path: Path) -> dict[str, Any]:
    obj: dict[str, Any] = yaml.safe_load(path.read_text())
    return obj


@functools.cache
def flux_status_of(path: Path) -> str:
    """Flux's verdict on a test data file (cel-python is slow: each file is evaluated once)."""
    obj = _load(path)
    return flux_status(_with_json_numbers(obj) if path.name in JSON_NUMBER_FILES else obj)


@pytest.fixture(params=LIB_MODES, scope="module")
def lua(request: pytest.FixtureRequest) -> ArgoLua:
    return ArgoLua(open_libs=request.param)


@pytest.mark.parametrize("path", TESTDATA, ids=[f"{p.parent.parent.name}/{p.name}" for p in TESTDATA])
def test_flux_and_argo_cd_agree_on_the_test_data(lua: ArgoLua, path: Path) -> None:
    argo = lua.health(HEALTH_LUA, _load(path)).status
    flux = flux_status_of(path)

    assert FLUX_CLASS[flux] == ARGO_CLASS[argo], f"Argo CD says {argo}, Flux says {flux}"
    assert flux != "Unknown" or path.name in MAY_GET_NO_VERDICT


def test_the_test_data_covers_every_verdict() -> None:
    verdicts = {flux_status_of(p) for p in TESTDATA}
    assert verdicts == {"Current", "Failed", "InProgress", "Unknown"}
    names = {p.name for p in TESTDATA}
    assert names >= MAY_GET_NO_VERDICT | JSON_NUMBER_FILES


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("healthy.yaml", "Current"),
        ("suspended.yaml", "Current"),
        ("stalled.yaml", "Failed"),
        ("drifted.yaml", "Failed"),
        ("reconciling-over-ready.yaml", "InProgress"),
        ("awaiting-approval.yaml", "InProgress"),
        ("new-generation-not-observed.yaml", "InProgress"),
        ("malformed-condition-entries.yaml", "Current"),
        ("malformed-condition-fields.yaml", "Failed"),
    ],
)
def test_flux_verdicts_of_the_new_cases(name: str, expected: str) -> None:
    assert flux_status_of(CUSTOMIZATION / "testdata" / name) == expected


def test_a_malformed_condition_entry_never_makes_an_expression_fail() -> None:
    obj = _load(CUSTOMIZATION / "testdata" / "malformed-condition-entries.yaml")
    activation = {key: celpy.json_to_cel(value) for key, value in obj.items()}
    for name, program in PROGRAMS.items():
        result = program.evaluate(activation)
        assert isinstance(result, celpy.celtypes.BoolType), (name, result)


def test_the_docs_show_the_expressions_of_the_example() -> None:
    docs = (ROOT / "docs" / "gitops.md").read_text()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", docs, flags=re.DOTALL)]
    shown = [
        check
        for block in blocks
        if isinstance(block, dict) and block.get("kind") == "Kustomization"
        for check in block["spec"].get("healthCheckExprs", [])
    ]
    assert shown, "docs/gitops.md shows no healthCheckExprs"
    for check in shown:
        assert {key: check[key] for key in ("inProgress", "failed", "current")} == EXPRESSIONS


# -- every combination of the conditions an operator writes ------------------------------------

GENERATION = 5


def _condition(kind: str, status: str, reason: str, generation: int | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": f"{reason} for a while",
        "lastTransitionTime": "2026-01-01T00:00:00Z",
    }
    if generation is not None:
        entry["observedGeneration"] = generation
    return entry


CURRENT, STALE, UNSET = GENERATION, GENERATION - 1, None
READY_VARIANTS = [
    None,
    ("True", "Synced", CURRENT),
    ("True", "Synced", STALE),
    ("True", "Synced", UNSET),
    ("False", "Drifted", CURRENT),
    ("False", "Drifted", STALE),
    ("False", "AwaitingApproval", CURRENT),
]
RECONCILING_VARIANTS = [
    None,
    ("True", "Uploading", CURRENT),
    ("True", "Uploading", STALE),
    ("False", "Idle", CURRENT),
]
STALLED_VARIANTS = [None, ("True", "NotContractOwner", CURRENT), ("True", "NotContractOwner", STALE)]


def _object(suspend: bool | None, status: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "cvmId": "cvm_ykL5lbAn",
        "scriptRef": {"name": "s", "key": "k"},
        "apiKeySecretRef": {"name": "a", "key": "k"},
    }
    if suspend is not None:
        spec["suspend"] = suspend
    obj: dict[str, Any] = {
        "apiVersion": "cloud.phala.com/v1alpha1",
        "kind": "CvmPreLaunchScript",
        "metadata": {"name": "web", "namespace": "team-a", "generation": GENERATION},
        "spec": spec,
    }
    if status is not None:
        obj["status"] = status
    return obj


def test_flux_and_argo_cd_agree_on_every_combination_of_conditions() -> None:
    disagreements = []
    combinations = itertools.product(READY_VARIANTS, RECONCILING_VARIANTS, STALLED_VARIANTS, [None, True])
    for ready, reconciling, stalled, suspend in combinations:
        conditions = [
            _condition(kind, *variant)
            for kind, variant in (("Ready", ready), ("Reconciling", reconciling), ("Stalled", stalled))
            if variant is not None
        ]
        obj = _object(
            suspend, {"observedGeneration": GENERATION, "phase": "Synced", "conditions": conditions}
        )
        flux = flux_status(obj)
        for lua in _LUA.values():
            argo = lua.health(HEALTH_LUA, obj).status
            if FLUX_CLASS[flux] != ARGO_CLASS[argo]:
                disagreements.append((ready, reconciling, stalled, suspend, argo, flux))
    assert not disagreements


# -- random malformed statuses: neither check raises, and they still agree ----------------------

junk = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 9),
    st.sampled_from(["", "abc", "True", "Ready"]),
    st.just({}),
    st.just([]),
)
condition_entry = st.one_of(
    junk,
    st.fixed_dictionaries(
        {},
        optional={
            "type": st.one_of(st.sampled_from(["Ready", "Reconciling", "Stalled"]), junk),
            "status": st.one_of(st.sampled_from(["True", "False"]), junk),
            "reason": st.one_of(st.just("Drifted"), junk),
            "message": st.one_of(st.just("a message"), junk),
            # No decimal strings: Flux gets numbers (see JSON_NUMBER_FILES).
            "observedGeneration": st.one_of(st.sampled_from([GENERATION, GENERATION - 1, "abc"]), junk),
        },
    ),
)
statuses = st.fixed_dictionaries(
    {},
    optional={
        "observedGeneration": st.sampled_from([GENERATION, GENERATION, GENERATION - 1, "abc"]),
        "conditions": st.one_of(st.lists(condition_entry, max_size=5), junk),
    },
)
_LUA = {False: ArgoLua(open_libs=False), True: ArgoLua(open_libs=True)}


@settings(max_examples=80, deadline=None)
@given(status=st.one_of(statuses, junk), suspend=st.sampled_from([None, True, False, "true"]))
def test_malformed_statuses_never_raise_and_still_agree(status: Any, suspend: Any) -> None:
    obj = _object(suspend, status)
    flux = flux_status(obj)
    for lua in _LUA.values():
        argo = lua.health(HEALTH_LUA, copy.deepcopy(obj)).status  # raises if the Lua raises
        assert FLUX_CLASS[flux] == ARGO_CLASS[argo], f"Argo CD says {argo}, Flux says {flux}"
    if flux == "Unknown":
        # Only Flux's own check of a status that is not a map, or of a non-integer
        # observedGeneration, keeps it from a verdict; the expressions never fail.
        assert not isinstance(status, dict) or not isinstance(status.get("observedGeneration"), int)
