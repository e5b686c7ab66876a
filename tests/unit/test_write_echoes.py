"""A status write's echo that the watch delivers before the write's answer is not new work, while any
other change seen meanwhile still is, and a ConfigMap listing that repeats what the passes read is not
work either (the runtime's bookkeeping; the API server is played by a client whose answer the test
releases)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast

from cvm_prelaunch_operator.handlers.runtime import Runtime
from cvm_prelaunch_operator.kube.client import KubeClient
from cvm_prelaunch_operator.kube.cluster import Cluster
from cvm_prelaunch_operator.reconcile.engine import Reconciler

KEY = ("ns", "res")


class HeldClient:
    """Answers a status PATCH with resourceVersion ``answer`` once ``release`` is set."""

    def __init__(self, answer: str) -> None:
        self.answer = answer
        self.release = asyncio.Event()

    async def request(self, method: str, path: str, **_: Any) -> SimpleNamespace:
        await self.release.wait()
        return SimpleNamespace(body={"metadata": {"resourceVersion": self.answer}})


def idle_reconciler() -> Reconciler:
    """Never asked to reconcile here: the tests look at the runtime's bookkeeping only."""
    return Reconciler(cast(Any, None), cast(Any, None), cast(Any, None))


def body(version: str) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ns", "name": "res", "generation": 1, "resourceVersion": version},
        "spec": {"cvmId": "c", "scriptRef": {"name": "cm", "key": "k"}},
    }


async def write_while_the_watch_delivers(*versions: str) -> Runtime:
    client = HeldClient(answer="7")
    cluster = Cluster(cast(KubeClient, client))
    runtime = Runtime(cluster, reconciler=idle_reconciler(), workers=1)
    runtime.on_resource(KEY, body("5"))
    runtime.queue.forget(KEY)  # the first sighting's pass is not what this test is about
    write = asyncio.create_task(cluster.patch_status("ns", "res", {"phase": "Synced"}, "5"))
    await asyncio.sleep(0)
    assert cluster.writing(KEY)
    for version in versions:
        runtime.on_resource(KEY, body(version))
    assert len(runtime.queue) == 0, "decided before the write's answer came back"
    client.release.set()
    assert await write == "7"
    assert not cluster.writing(KEY)
    return runtime


async def test_the_echo_of_a_write_seen_before_its_answer_is_not_work() -> None:
    runtime = await write_while_the_watch_delivers("7")
    assert len(runtime.queue) == 0


async def test_another_change_seen_while_a_write_is_under_way_is_work() -> None:
    runtime = await write_while_the_watch_delivers("7", "8")
    assert len(runtime.queue) == 1


async def test_without_a_write_under_way_every_change_is_work_at_once() -> None:
    cluster = Cluster(cast(KubeClient, HeldClient(answer="7")))
    runtime = Runtime(cluster, reconciler=idle_reconciler(), workers=1)
    runtime.on_resource(KEY, body("5"))
    assert len(runtime.queue) == 1


def configmap(version: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "cm", "resourceVersion": version}, "data": {"k": "x"}}


async def test_a_configmap_version_the_passes_read_already_is_not_work() -> None:
    cluster = Cluster(cast(KubeClient, HeldClient(answer="7")))
    runtime = Runtime(cluster, reconciler=idle_reconciler(), workers=1)
    runtime.on_resource(KEY, body("5"))
    runtime.queue.forget(KEY)
    cluster.observe_configmap(("ns", "cm"), configmap("11"))  # as a pass's GET caches it
    runtime.on_configmap(("ns", "cm"), configmap("11"))  # the listing, arriving after the pass
    assert len(runtime.queue) == 0
    runtime.on_configmap(("ns", "cm"), configmap("12"))  # an edit
    assert len(runtime.queue) == 1
