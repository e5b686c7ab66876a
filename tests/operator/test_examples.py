"""The examples the README shows are the files in examples/, and the API server accepts them."""

from __future__ import annotations

import re
from typing import Any

from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.paths import repo_root

EXAMPLES = sorted((repo_root() / "examples").glob("*.yaml"))


def test_readme_shows_the_example_files_verbatim() -> None:
    readme = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```yaml\n(.*?)```", readme, flags=re.DOTALL)
    for example in EXAMPLES:
        assert example.read_text() in blocks, f"README does not show {example.name} verbatim"


def test_kubectl_apply_of_the_examples_directory_works_on_a_fresh_cluster(
    control_plane: ControlPlane, crd: Any
) -> None:
    """`kubectl apply -f examples/`, as the README says: the namespace comes with them."""
    control_plane.delete_namespace("apps")
    try:
        result = control_plane.kubectl("apply", "-f", str(repo_root() / "examples"))
        assert "namespace/apps created" in result.stdout
        created = control_plane.kubectl("get", "cpls", "-n", "apps", "-o", "name").stdout.split()
        assert sorted(created) == [
            "cvmprelaunchscript.cloud.phala.com/web",
            "cvmprelaunchscript.cloud.phala.com/worker",
        ]
        # Defaults from the schema were filled in.
        suspend = control_plane.kubectl(
            "get", "cpls", "-n", "apps", "-o", "jsonpath={.items[*].spec.suspend}"
        ).stdout
        assert suspend == "false false"
    finally:
        control_plane.delete_namespace("apps")
