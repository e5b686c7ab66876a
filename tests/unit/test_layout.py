"""The project's fixed layout keeps working as Python sees it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cvm_prelaunch_operator import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_source_root_does_not_shadow_the_standard_library_operator_module() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.__file__)"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    printed = Path(result.stdout.strip())
    assert printed.name == "operator.py"
    assert ROOT not in printed.parents


def test_console_script_prints_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "cvm_prelaunch_operator", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert version.stdout.strip() == f"cvm-prelaunch-operator {__version__}"
    usage = subprocess.run(
        [sys.executable, "-m", "cvm_prelaunch_operator", "--help"], capture_output=True, text=True, check=True
    )
    assert "PHALA_CLOUD_API_URL" in usage.stdout and "WATCH_NAMESPACES" in usage.stdout
