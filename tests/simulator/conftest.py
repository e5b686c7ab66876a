"""Helpers of the simulator tests: an API client for a CVM and on-chain transactions with web3."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest
from simtest_helpers import api_client

from cvm_prelaunch_localenv.fixtures.simulator import SimTarget
from cvm_prelaunch_localenv.simulator import SimulatorServer


@pytest.fixture
def api(sim: SimulatorServer) -> Iterator[Callable[[SimTarget], httpx.Client]]:
    """``api(target)``: an httpx client on the simulator with the target's workspace key."""
    clients: list[httpx.Client] = []

    def make(target: SimTarget) -> httpx.Client:
        client = api_client(sim.base_url, target.api_key)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
