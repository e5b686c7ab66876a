"""The deliberate bugs of ``python -m benchmarks.model mutants`` still apply to the code: each one's
text occurs exactly once in its file (a refactor that moves the code must move the mutant too)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import pytest

from cvm_prelaunch_localenv.paths import repo_root


def _model_tool() -> ModuleType:
    path = repo_root() / "benchmarks" / "model.py"
    spec = importlib.util.spec_from_file_location("benchmarks_model_under_test", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


MODEL_TOOL = _model_tool()


@pytest.mark.parametrize("mutant", MODEL_TOOL.MUTANTS, ids=lambda m: m.name.split(" (")[0])
def test_each_mutant_changes_one_place_of_the_package(mutant: object) -> None:
    text = (MODEL_TOOL.PACKAGE / mutant.file).read_text()  # type: ignore[attr-defined]
    assert text.count(mutant.old) == 1  # type: ignore[attr-defined]
    assert mutant.old != mutant.new  # type: ignore[attr-defined]
