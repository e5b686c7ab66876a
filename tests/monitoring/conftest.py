"""Set-up of the scrape tests: a Workbench on the test's namespace and simulator CVMs."""

from __future__ import annotations

from typing import Any

import pytest

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.scenario import Workbench


@pytest.fixture
def setup(control_plane: ControlPlane, namespace: str, anvil: Anvil, crd: Any) -> Workbench:
    return Workbench(control_plane, namespace, anvil)


@pytest.fixture
def onchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n")


@pytest.fixture
def gated_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    """A second on-chain CVM, for a resource with approval: Manual."""
    return sim_cvm_factory(onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n")


@pytest.fixture
def offchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=False, pre_launch_script="#!/bin/sh\necho v0\n")
