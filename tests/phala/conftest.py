"""Fixtures of the Phala Cloud client tests: a real client on a mock server whose every byte a test
controls, and a real client on the simulator (``sim``, reset per test) with a way to send
transactions to the session's anvil."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from phala_test_support import MockCloud, Observed

from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSettings


@pytest.fixture
async def cloud() -> AsyncIterator[MockCloud]:
    """A client on a mock server on 127.0.0.1; set ``cloud.handler`` or call ``cloud.answer(...)``."""
    mock = await MockCloud().start()
    yield mock
    await mock.close()
    assert not mock.errors, f"a handler of the mock server failed: {mock.errors!r}"


@pytest.fixture
def observed() -> Observed:
    """What the ``sim_client`` observer saw: (endpoint template, status, seconds) per request."""
    return []


@pytest.fixture
async def sim_client(sim: SimulatorServer, observed: Observed) -> AsyncIterator[PhalaCloudClient]:
    """The real client over real HTTP on the simulator (reset for this test)."""
    settings = PhalaCloudSettings(
        base_url=sim.base_url, connect_timeout=2.0, read_timeout=10.0, max_concurrency=4
    )
    client = PhalaCloudClient(settings, observer=lambda *event: observed.append(event))
    yield client
    await client.aclose()
