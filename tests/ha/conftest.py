"""Two operator replicas electing a leader on a Lease in the test's namespace, each reaching the Phala
Cloud simulator through a TCP proxy of its own, so the traffic of each replica is told apart (and can
be cut) without anything in the operator knowing it is observed."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from replicas_support import Replica, ReplicaFactory
from tcp_proxy import TcpProxy

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_localenv.fixtures.operator import OperatorFactory
from cvm_prelaunch_localenv.fixtures.simulator import SimCvmFactory, SimTarget
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_localenv.scenario import Workbench
from cvm_prelaunch_localenv.simulator import SimulatorServer


@pytest.fixture
def replicas(
    operator_factory: OperatorFactory, namespace: str, sim: SimulatorServer
) -> Iterator[ReplicaFactory]:
    """Starts replicas with leader election on the Lease ``cvm-prelaunch-operator`` in the test's
    namespace; their proxies stop after the test (the operators are killed by operator_factory)."""
    proxies: list[TcpProxy] = []
    parts = urlsplit(sim.base_url)

    def start(**kwargs: Any) -> Replica:
        proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 80).__enter__()
        proxies.append(proxy)
        kwargs.setdefault("lease_namespace", namespace)
        kwargs.setdefault("phala_api_url", f"http://127.0.0.1:{proxy.port}{parts.path}")
        return Replica(operator_factory(**kwargs), proxy)

    yield start
    for proxy in proxies:
        proxy.stop()


@pytest.fixture
def setup(control_plane: ControlPlane, namespace: str, anvil: Anvil, crd: Path) -> Workbench:
    return Workbench(control_plane, namespace, anvil)


@pytest.fixture
def offchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=False, pre_launch_script="#!/bin/sh\necho v0\n")


@pytest.fixture
def onchain_cvm(sim_cvm_factory: SimCvmFactory) -> SimTarget:
    return sim_cvm_factory(onchain=True, allow_any_device=True, pre_launch_script="#!/bin/sh\necho v0\n")
