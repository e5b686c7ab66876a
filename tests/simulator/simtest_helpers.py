"""Plain helpers of the simulator tests (fixtures live in conftest.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx

API_VERSION = "2026-06-23"

SendTx = Callable[..., str]


def api_client(base_url: str, api_key: str | None, version: str = API_VERSION) -> httpx.Client:
    headers = {"X-Phala-Version": version}
    if api_key is not None:
        headers["X-API-Key"] = api_key
    return httpx.Client(base_url=base_url, headers=headers, timeout=30.0)


def hash_bytes(compose_hash: str) -> bytes:
    return bytes.fromhex(compose_hash.removeprefix("0x"))


def wait_for_operation(
    client: httpx.Client, cvm_id: str, correlation_id: str, timeout: float = 10.0
) -> dict[str, Any]:
    """Poll /operations until the operation with that correlation id is no longer in progress."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        items = client.get(f"/cvms/{cvm_id}/operations").json()["items"]
        matching = [op for op in items if op["correlation_id"] == correlation_id]
        if matching and matching[0]["status"] != "in_progress":
            result: dict[str, Any] = matching[0]
            return result
        time.sleep(0.05)
    raise AssertionError(f"operation {correlation_id} did not finish")
