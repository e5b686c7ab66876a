"""hack/release.sh, run as CI runs it (publishing nothing): every artifact is there and checksummed,
install.yaml applies with a server-side dry run on the local API server, the chart, the wheel and the
image archive carry the release's version."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from cvm_prelaunch_localenv import paths
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_operator import __version__

ROOT = paths.repo_root()
VERSION = __version__
IMAGE = f"ghcr.io/phala-network/cvm-prelaunch-operator:{VERSION}"
OPERATOR_NAMESPACE = "cvm-prelaunch-operator"
ARTIFACTS = {
    "crd.yaml",
    "operator.yaml",
    "install.yaml",
    f"cvm-prelaunch-operator-{VERSION}.tgz",
    f"cvm_prelaunch_operator-{VERSION}-py3-none-any.whl",
    f"cvm-prelaunch-operator-{VERSION}.oci.tar",
}


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    out = tmp_path_factory.mktemp("dist")
    completed = subprocess.run(
        ["bash", str(ROOT / "hack" / "release.sh"), VERSION],
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
        env={**os.environ, "DIST": str(out)},
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    yield out
    for artifact in out.iterdir():  # the image archive alone is ~100 MB
        artifact.unlink()


def docs_of(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]


def test_release_refuses_a_version_that_is_not_the_packages() -> None:
    completed = subprocess.run(
        ["bash", str(ROOT / "hack" / "release.sh"), "9.9.9"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 1 and "not the package's version" in completed.stderr


def test_every_artifact_is_there_and_checksummed(dist: Path) -> None:
    sums = dict(reversed(line.split()) for line in (dist / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == ARTIFACTS
    for name, digest in sums.items():
        assert hashlib.sha256((dist / name).read_bytes()).hexdigest() == digest, name


def test_install_yaml_is_the_crd_then_the_operator_with_the_image_pinned(dist: Path) -> None:
    docs = docs_of(dist / "install.yaml")
    assert docs == docs_of(dist / "crd.yaml") + docs_of(dist / "operator.yaml")
    assert docs[0]["kind"] == "CustomResourceDefinition"
    assert not [d for d in docs_of(dist / "operator.yaml") if d["kind"] == "CustomResourceDefinition"]
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE


def test_install_yaml_applies_with_a_server_side_dry_run(dist: Path, control_plane: ControlPlane) -> None:
    # A dry run creates no Namespace, so the objects in it need the namespace to exist already.
    existed = control_plane.kubectl("get", "namespace", OPERATOR_NAMESPACE, check=False).returncode == 0
    if not existed:
        control_plane.create_namespace(OPERATOR_NAMESPACE)
    try:
        completed = control_plane.kubectl(
            "apply",
            "--server-side",
            "--dry-run=server",
            "-f",
            str(dist / "install.yaml"),
            check=False,
            timeout=120,
        )
    finally:
        if not existed:
            control_plane.delete_namespace(OPERATOR_NAMESPACE)
    assert completed.returncode == 0, completed.stderr
    # "kind.group/name serverside-applied (server dry run)": the kind without its group, and the name.
    applied = set()
    for line in completed.stdout.splitlines():
        kind, _, name = line.split()[0].partition("/")
        applied.add(f"{kind.split('.')[0]}/{name}")
    assert applied == {f"{d['kind'].lower()}/{d['metadata']['name']}" for d in docs_of(dist / "install.yaml")}


def test_chart_package_is_the_release(dist: Path) -> None:
    with tarfile.open(dist / f"cvm-prelaunch-operator-{VERSION}.tgz") as chart:
        names = chart.getnames()
        meta = yaml.safe_load(chart.extractfile("cvm-prelaunch-operator/Chart.yaml").read())  # type: ignore[union-attr]
    assert meta["version"] == meta["appVersion"] == VERSION
    assert {"cvm-prelaunch-operator/values.schema.json", "cvm-prelaunch-operator/files/crd.yaml"} <= set(
        names
    )
    assert not [n for n in names if "/tests/" in n or n.endswith((".orig", ".bak"))]


def test_wheel_is_the_release(dist: Path) -> None:
    with zipfile.ZipFile(dist / f"cvm_prelaunch_operator-{VERSION}-py3-none-any.whl") as wheel:
        names = wheel.namelist()
    dist_info = f"cvm_prelaunch_operator-{VERSION}.dist-info/"
    assert not [n for n in names if not n.startswith(("cvm_prelaunch_operator/", dist_info))]


def test_image_archive_is_the_release(dist: Path) -> None:
    """The OCI layout: its index names the tag, and the config runs the entry point as 65532."""
    with tarfile.open(dist / f"cvm-prelaunch-operator-{VERSION}.oci.tar") as archive:

        def blob(digest: str) -> Any:
            member = archive.extractfile("blobs/" + digest.replace(":", "/"))
            assert member is not None
            return json.loads(member.read())

        index = json.loads(archive.extractfile("index.json").read())  # type: ignore[union-attr]
        (manifest_ref,) = index["manifests"]
        assert manifest_ref["annotations"]["org.opencontainers.image.ref.name"] == IMAGE
        assert manifest_ref["digest"] == (dist / "image-digest.txt").read_text().strip()
        manifest = blob(manifest_ref["digest"])
        config = blob(manifest["config"]["digest"])["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["cvm-prelaunch-operator"]
    assert config["Labels"]["org.opencontainers.image.version"] == VERSION
