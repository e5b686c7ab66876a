"""The examples the README shows are the files in examples/, and the API server accepts them."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.paths import repo_root

EXAMPLES = sorted((repo_root() / "examples").glob("*.yaml"))


def test_readme_shows_the_example_files_verbatim() -> None:
    readme = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    for example in EXAMPLES:
        assert example.read_text() in blocks, f"README does not show {example.name} verbatim"


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.name for e in EXAMPLES])
def test_examples_are_accepted_by_the_api_server(
    control_plane: ControlPlane, crd: Any, example: Path
) -> None:
    control_plane.create_namespace("apps", exist_ok=True)
    try:
        result = control_plane.kubectl("apply", "-f", str(example))
        assert "created" in result.stdout or "configured" in result.stdout
        created = control_plane.kubectl("get", "cpls", "-n", "apps", "-o", "name").stdout
        assert "cvmprelaunchscript" in created
        # Defaults from the schema were filled in.
        spec = control_plane.kubectl(
            "get", "cpls", "-n", "apps", "-o", "jsonpath={.items[0].spec.suspend}"
        ).stdout
        assert spec == "false"
    finally:
        control_plane.delete_namespace("apps")
