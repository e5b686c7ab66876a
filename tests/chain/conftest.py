"""Fixtures of the registrar tests (helpers live in ``registrar_kit``)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from registrar_kit import CAPTURED, FAST, Captured, CaptureHandler, RpcProxy

from cvm_prelaunch_localenv.chain import Anvil
from cvm_prelaunch_operator.chain.registrar import Web3Registrar


@pytest_asyncio.fixture(scope="session")
async def rpc_proxy(anvil: Anvil) -> AsyncIterator[RpcProxy]:
    """A keyed RPC URL in front of the session's anvil."""
    proxy = await RpcProxy(anvil.rpc_url).start()
    yield proxy
    await proxy.stop()


@pytest.fixture
def proxy(rpc_proxy: RpcProxy) -> Iterator[RpcProxy]:
    """The session proxy, its faults and its method log cleared for the test."""
    rpc_proxy.reset()
    yield rpc_proxy
    rpc_proxy.reset()


@pytest_asyncio.fixture
async def registrar() -> AsyncIterator[Web3Registrar]:
    registrar = Web3Registrar(FAST)
    yield registrar
    await registrar.aclose()


@pytest.fixture(autouse=True)
def capture_chain_logs() -> Iterator[None]:
    """Keep every log record (DEBUG up, web3's and aiohttp's too) for the final secrets scan."""
    handler = CaptureHandler(level=logging.DEBUG)
    root = logging.getLogger()
    previous = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield
    finally:
        root.removeHandler(handler)
        root.setLevel(previous)


@pytest.fixture
def captured() -> Captured:
    return CAPTURED
