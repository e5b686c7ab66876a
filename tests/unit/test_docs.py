"""The docs cannot drift from the code: the CRD reference is generated from the schema, the README's
Ready-reason table covers every reason the operator can set."""

from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

from cvm_prelaunch_operator.domain.reasons import Reason

ROOT = Path(__file__).resolve().parents[2]


def test_crd_reference_is_generated_from_the_schema() -> None:
    generated = subprocess.run(
        [sys.executable, str(ROOT / "hack" / "gen_crd_reference.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    committed = (ROOT / "docs" / "crd-reference.md").read_text()
    assert committed == generated, "run: python hack/gen_crd_reference.py > docs/crd-reference.md"


def test_readme_troubleshooting_covers_every_failure_reason() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme.split("## Troubleshooting", 1)[1].split("\n## ", 1)[0]
    missing = [r.value for r in Reason if f"`{r.value}`" not in table]
    assert missing == []


def test_generator_is_importable_without_side_effects() -> None:
    namespace = runpy.run_path(str(ROOT / "hack" / "gen_crd_reference.py"), run_name="not_main")
    assert "render" in namespace
