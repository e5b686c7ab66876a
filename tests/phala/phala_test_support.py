"""Shared pieces of the Phala Cloud client tests (a uniquely named module: tests dirs are not packages)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

import httpx

from cvm_prelaunch_localenv.simulator import SimulatorServer
from cvm_prelaunch_operator.domain.secrets import Secret
from cvm_prelaunch_operator.phala import PhalaCloudClient, PhalaCloudSession, PhalaCloudSettings

API_KEY = "phak_unit_test_key_9f8e7d6c5b4a39281706"
BASE_URL = "https://cloud-api.example.test/api/v1"

Handler = Callable[[httpx.Request], httpx.Response | Awaitable[httpx.Response]]

Observed = list[tuple[str, int | None, float]]
"""What an observer saw: (endpoint template, status or None, seconds) per request."""

SendTx = Callable[..., str]
"""``send_tx(contract, function, *args, sender=None, gas=None) -> tx hash`` (the ``send_tx`` fixture)."""


class MockCloud:
    """A MockTransport-backed client: ``handler`` answers, ``requests`` records what was sent."""

    def __init__(self) -> None:
        self.handler: Handler = lambda request: httpx.Response(500)
        self.requests: list[httpx.Request] = []
        self.observed: Observed = []
        self.client = PhalaCloudClient(
            PhalaCloudSettings(base_url=BASE_URL, connect_timeout=1.0, read_timeout=1.0, max_concurrency=4),
            transport=httpx.MockTransport(self._handle),
            observer=lambda endpoint, status, seconds: self.observed.append((endpoint, status, seconds)),
        )
        self.session: PhalaCloudSession = self.client.for_api_key(Secret(API_KEY))

    async def _handle(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.handler(request)
        return await answer if inspect.isawaitable(answer) else answer

    def answer(self, status: int = 200, **kwargs: object) -> None:
        """Answer every request with one response (``json=``, ``content=``, ``headers=``...)."""
        self.handler = lambda request: httpx.Response(status, **kwargs)  # type: ignore[arg-type]


async def wait_until_idle(sim: SimulatorServer, timeout: float = 5.0) -> None:
    """Wait until the simulator finished every request, including ones a client gave up on, so
    no later test sees them in flight."""
    deadline = time.monotonic() + timeout
    while any(request.ended is None for request in sim.admin.requests()):
        assert time.monotonic() < deadline, "the simulator did not finish an abandoned request"
        await asyncio.sleep(0.05)
