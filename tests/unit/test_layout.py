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


def test_the_operator_parses_deep_json_without_crashing() -> None:
    """eth_account (through py_ecc) raises the recursion limit to 100,000, at which the C JSON parser
    overflows the stack on a deeply nested answer; the operator's main sets a limit that raises."""
    code = (
        "import json, sys\n"
        "from cvm_prelaunch_operator import cli\n"
        "import eth_account\n"
        "assert sys.getrecursionlimit() >= 100000\n"
        "sys.setrecursionlimit(cli.RECURSION_LIMIT)\n"
        "try:\n"
        "    json.loads('[' * 200000)\n"
        "except RecursionError:\n"
        "    print('refused')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr[-500:]
    assert result.stdout.strip() == "refused"
    source = (ROOT / "operator" / "cvm_prelaunch_operator" / "cli.py").read_text()
    assert "sys.setrecursionlimit(RECURSION_LIMIT)" in source.split("def main(", 1)[1].split("\n\n", 1)[0]
