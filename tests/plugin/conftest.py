"""Fixtures of the plugin tests (helpers live in ``plugin_kit``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import pytest
from plugin_kit import Cluster, Cpls, Run, plugin_dir, run_cpls

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.scenario import Workbench


@pytest.fixture(scope="session")
def plugin_env(control_plane: ControlPlane) -> dict[str, str]:
    """The environment of a user shell: KUBECONFIG set, the plugin on PATH, no Phala URL."""
    env = control_plane.env()
    env["PATH"] = f"{plugin_dir()}{os.pathsep}{env.get('PATH', '')}"
    env.pop("PHALA_CLOUD_API_URL", None)
    return env


@pytest.fixture
def cpls(plugin_env: dict[str, str], namespace: str) -> Cpls:
    """``cpls("approve", "web")`` runs ``kubectl cpls approve web -n <the test's namespace>``;
    ``namespace_flag=None`` leaves -n out, ``env={...}`` adds variables."""

    def run(*args: str, namespace_flag: str | None = namespace, env: Mapping[str, str] | None = None) -> Run:
        extra = ("-n", namespace_flag) if namespace_flag is not None else ()
        return run_cpls({**plugin_env, **(env or {})}, *args, *extra)

    return run


@pytest.fixture
def cluster(control_plane: ControlPlane, namespace: str, crd: Any) -> Cluster:
    return Cluster(control_plane, namespace)


# -- the operator's world, for the end-to-end tests (as tests/operator/conftest.py has it) -------


@pytest.fixture
def setup(control_plane: ControlPlane, namespace: str, anvil: Anvil, crd: Any) -> Workbench:
    return Workbench(control_plane, namespace, anvil)


@pytest.fixture
def onchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    """An on-chain CVM whose app contract (owned by anvil account 0) allows any device."""
    return sim_cvm_factory(onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n")


@pytest.fixture
def offchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=False, pre_launch_script="#!/bin/sh\necho v0\n")
