"""Requests of passes that asked for themselves (requeued looks) go to the API server one at a time;
those of passes a change asked for never wait for them, and a timed run is known as such to the
runtime (the API server is played by a client whose answers the test releases)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from cvm_prelaunch_operator.kube.client import KubeClient
from cvm_prelaunch_operator.kube.cluster import BACKGROUND_REQUESTS, Cluster
from cvm_prelaunch_operator.reconcile.workqueue import WorkQueue


class GatedClient:
    """Holds every request until released; counts those under way."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.in_flight: list[str] = []
        self.peak_background = 0

    async def request(self, method: str, path: str, **_: Any) -> SimpleNamespace:
        name = path.split("/")[-2]
        self.in_flight.append(name)
        self.peak_background = max(self.peak_background, sum(n.startswith("look") for n in self.in_flight))
        try:
            await self.release.wait()
        finally:
            self.in_flight.remove(name)
        return SimpleNamespace(body={"metadata": {"resourceVersion": "2"}})


async def test_requeued_looks_write_one_at_a_time_and_an_edit_does_not_wait_for_them() -> None:
    assert BACKGROUND_REQUESTS == 1
    client = GatedClient()
    cluster = Cluster(cast(KubeClient, client))
    looks = [
        asyncio.create_task(cluster.patch_status("ns", f"look-{i}", {"phase": "x"}, "1", background=True))
        for i in range(4)
    ]
    await asyncio.sleep(0.01)
    assert client.in_flight == ["look-0"], "the other looks wait for their turn"
    edit = asyncio.create_task(cluster.patch_status("ns", "edit", {"phase": "x"}, "1"))
    await asyncio.sleep(0.01)
    assert sorted(client.in_flight) == ["edit", "look-0"], "an edit's write goes at once"
    client.release.set()
    await asyncio.gather(edit, *looks)
    assert client.peak_background == 1 and client.in_flight == []


async def test_a_run_a_requeue_asked_for_is_a_timed_run_and_a_change_is_not() -> None:
    seen: dict[str, bool] = {}
    queue: WorkQueue[str]

    async def handler(key: str) -> float | None:
        seen[key] = queue.timed_run(key)
        return None

    queue = WorkQueue(handler, workers=4)
    queue.start()
    try:
        queue.add("look", timed=True)
        queue.add("edit")
        for _ in range(100):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.01)
        assert seen == {"look": True, "edit": False}
        assert not queue.timed_run("look"), "only while its run is under way"
    finally:
        await queue.shutdown(grace=1.0)
