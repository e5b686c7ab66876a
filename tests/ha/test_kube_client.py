"""The operator's own Kubernetes client and its metadata-only watch, against the real API server.

- The Secret watch never carries a value: the server answers with PartialObjectMetadata, and a
  Secret's ``data`` (or a ``last-applied-configuration`` that would repeat it) is not what the sink
  receives beyond metadata.
- A new listing tells the sink which objects it no longer contains; a 410 Gone makes the watcher
  list again (a scripted server plays the 410, which the real one cannot be made to send on demand).
- A 401 makes the client load its credentials again (a rotated token) and repeat the request.
- A pass starts from the watched body once our own write (or a GET) has shown it to be the newest.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import secrets
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from kubernetes import client as k8s_client

from cvm_prelaunch_localenv import scenario
from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_operator.kube.client import Credentials, KubeApiError, KubeClient, load_credentials
from cvm_prelaunch_operator.kube.cluster import SECRET_VALUES_MAX_AGE, Cluster
from cvm_prelaunch_operator.kube.watch import Backoff, Watcher
from cvm_prelaunch_operator.reconcile.ports import StatusConflict


@dataclass
class Recorder:
    """A WatchSink that keeps everything it is told."""

    events: list[tuple[str, Mapping[str, Any]]] = field(default_factory=list)
    listings: int = 0
    listed: list[set[str]] = field(default_factory=list)
    _current: set[str] | None = None

    def relisting(self) -> None:
        self.listings += 1
        self._current = set()

    def event(self, type_: str, obj: Mapping[str, Any]) -> None:
        self.events.append((type_, obj))
        if self._current is not None:
            self._current.add(str(obj["metadata"]["name"]))

    def relisted(self) -> None:
        self.listed.append(self._current or set())
        self._current = None

    def names(self, type_: str) -> list[str]:
        return [str(o["metadata"]["name"]) for t, o in self.events if t == type_]


@pytest.fixture
async def client(control_plane: ControlPlane) -> AsyncIterator[KubeClient]:
    made = KubeClient(functools.partial(load_credentials, str(control_plane.kubeconfig)))
    yield made
    await made.aclose()


@contextlib.asynccontextmanager
async def watching(watcher: Watcher) -> AsyncIterator[None]:
    task = asyncio.create_task(watcher.run())
    try:
        await asyncio.wait_for(watcher.synced.wait(), 10)
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def test_the_secret_watch_carries_metadata_never_values(
    client: KubeClient, control_plane: ControlPlane, namespace: str
) -> None:
    value = "value-" + secrets.token_hex(16)
    # Applied with kubectl's client-side apply, which repeats the whole object, values included, in the
    # annotation last-applied-configuration: metadata the API server sends; the watcher drops it.
    scenario.apply(control_plane, scenario.secret("before", namespace, {"key": value}))
    sink = Recorder()
    watcher = Watcher(
        client,
        path=f"/api/v1/namespaces/{namespace}/secrets",
        resource="secrets",
        sink=sink,
        metadata_only=True,
    )
    async with watching(watcher):
        scenario.apply(control_plane, scenario.secret("after", namespace, {"key": value + "2"}))
        control_plane.kubectl("delete", "secret", "before", "-n", namespace)
        await until(lambda: "after" in sink.names("ADDED") and "before" in sink.names("DELETED"))
    assert sink.listed == [{"before"}]
    for _type, obj in sink.events:
        assert obj.get("kind") == "PartialObjectMetadata"  # what the server sent: metadata only
        assert set(obj) == {"kind", "metadata"}
        assert obj["metadata"]["resourceVersion"] and obj["metadata"]["namespace"] == namespace
    encoded = base64.b64encode(value.encode()).decode()
    assert not any(value in repr(obj) or encoded in repr(obj) for _t, obj in sink.events)


async def test_a_new_listing_reports_what_went_while_no_watch_was_open(
    client: KubeClient, control_plane: ControlPlane, namespace: str
) -> None:
    for name in ("stays", "goes"):
        scenario.apply(control_plane, scenario.secret(name, namespace, {"k": name}))
    sink = Recorder()

    def watcher() -> Watcher:
        return Watcher(
            client,
            path=f"/api/v1/namespaces/{namespace}/secrets",
            resource="secrets",
            sink=sink,
            metadata_only=True,
            page_size=1,  # one object per page: the listing's continue tokens are followed
        )

    async with watching(watcher()):
        pass
    control_plane.kubectl("delete", "secret", "goes", "-n", namespace)
    async with watching(watcher()):
        pass
    assert sink.listed == [{"stays", "goes"}, {"stays"}]


async def test_410_gone_makes_the_watcher_list_again() -> None:
    """The real API server keeps a long history in its watch cache, so a test cannot make it answer
    410 on demand; a scripted server plays that one part of the protocol: a listing, a watch that
    ends with an ERROR event of code 410, and a second listing without one of the objects."""
    listings: list[list[str]] = [["stays", "goes"], ["stays"]]
    served: list[str] = []

    async def handle(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch"):
            served.append(f"watch from {request.query['resourceVersion']}")
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "reason": "Expired"}}
            await response.write(json.dumps(gone).encode() + b"\n")
            return response
        names = listings[min(len(served), len(listings) - 1)]
        served.append("list")
        items = [
            {"kind": "PartialObjectMetadata", "metadata": {"name": n, "resourceVersion": "7"}} for n in names
        ]
        return web.json_response({"metadata": {"resourceVersion": "10"}, "items": items})

    app = web.Application()
    app.router.add_get("/api/v1/secrets", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    configuration = k8s_client.Configuration(host=f"http://127.0.0.1:{port}")
    client = KubeClient(lambda: Credentials(configuration, "scripted"))
    sink = Recorder()
    watcher = Watcher(
        client,
        path="/api/v1/secrets",
        resource="secrets",
        sink=sink,
        metadata_only=True,
        backoff=Backoff(initial=0.05, cap=0.1),
    )
    task = asyncio.create_task(watcher.run())
    try:
        await until(lambda: len(sink.listed) >= 2)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await client.aclose()
        await runner.cleanup()
    assert served[:3] == ["list", "watch from 10", "list"]
    assert sink.listed[:2] == [{"stays", "goes"}, {"stays"}]


async def test_a_401_reloads_the_credentials_and_repeats_the_request(
    control_plane: ControlPlane, namespace: str, tmp_path: Path
) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    control_plane.kubeconfig_for_token("not-a-token", kubeconfig, user="rotating")
    client = KubeClient(functools.partial(load_credentials, str(kubeconfig)))
    try:
        with pytest.raises(KubeApiError) as refused:
            await client.get(f"/api/v1/namespaces/{namespace}", resource="namespaces")
        assert refused.value.status == 401
        # The token is rotated on disk (as kubelet rotates a projected token): the next 401 reloads it.
        config = yaml.safe_load(control_plane.kubeconfig.read_text())
        kubeconfig.write_text(yaml.safe_dump(config))
        found = await client.get(f"/api/v1/namespaces/{namespace}", resource="namespaces")
        assert found is not None and found["metadata"]["name"] == namespace
    finally:
        await client.aclose()


async def test_a_referenced_secret_is_read_once_until_the_watch_reports_a_change(
    control_plane: ControlPlane, namespace: str
) -> None:
    """Each pass asks for the API key; the value is read with a GET once, kept while the watch
    reports the same resourceVersion, and read again at once when the watch reports a new one."""
    gets: list[str] = []

    def observe(method: str, resource: str, status: int | None, seconds: float) -> None:
        if method == "GET" and resource == "secrets":
            gets.append(resource)

    now = [0.0]
    client = KubeClient(functools.partial(load_credentials, str(control_plane.kubeconfig)), observer=observe)
    cluster = Cluster(client, clock=lambda: now[0])
    key = (namespace, "api")
    scenario.apply(control_plane, scenario.secret("api", namespace, {"k": "one"}))
    try:
        first = await cluster.secret(*key)
        again = await cluster.secret(*key)
        assert first is not None and again == first and len(gets) == 1
        cluster.observe_secret(key, first[0])  # the watch's event for the same version: still kept
        assert await cluster.secret(*key) == first and len(gets) == 1

        scenario.apply(control_plane, scenario.secret("api", namespace, {"k": "two"}))
        got = control_plane.kubectl("get", "secret", "api", "-n", namespace, "-o", "json")
        rotated = json.loads(got.stdout)
        cluster.observe_secret(key, rotated["metadata"]["resourceVersion"])  # the watch tells
        second = await cluster.secret(*key)
        assert second is not None and base64.b64decode(second[1]["k"]) == b"two" and len(gets) == 2

        now[0] += SECRET_VALUES_MAX_AGE  # a watch that stays silent does not keep a value forever
        assert await cluster.secret(*key) == second and len(gets) == 3

        cluster.forget_secret(key)  # no resource references it any more
        assert await cluster.secret(*key) == second and len(gets) == 4

        control_plane.kubectl("delete", "secret", "api", "-n", namespace)
        cluster.observe_secret(key, None)
        assert await cluster.secret(*key) is None and len(gets) == 5
        assert "two" not in repr(cluster._secret_values) and "dHdv" not in repr(cluster._secret_values)
    finally:
        await client.aclose()


async def test_a_watch_event_during_the_read_wins_over_the_value_read(
    control_plane: ControlPlane, namespace: str
) -> None:
    """The GET's answer may be older than a watch event that arrived while it was under way
    (resourceVersions are opaque): then nothing is kept and the next pass reads again."""
    gets: list[str] = []
    cluster: Cluster

    def observe(method: str, resource: str, status: int | None, seconds: float) -> None:
        if method == "GET" and resource == "secrets":
            gets.append(resource)
            if len(gets) == 1:  # the watch reports a newer version before the first answer is used
                cluster.observe_secret((namespace, "api"), "newer-than-the-read")

    client = KubeClient(functools.partial(load_credentials, str(control_plane.kubeconfig)), observer=observe)
    cluster = Cluster(client)
    scenario.apply(control_plane, scenario.secret("api", namespace, {"k": "one"}))
    try:
        assert await cluster.secret(namespace, "api") is not None
        assert cluster.known_secret_version((namespace, "api")) == "newer-than-the-read"
        assert await cluster.secret(namespace, "api") is not None
        assert len(gets) == 2
    finally:
        await client.aclose()


async def test_a_pass_starts_from_the_watched_body_after_our_own_write(
    control_plane: ControlPlane, namespace: str, crd: Path
) -> None:
    """A GET the first time; after our status write the pass starts from its answer (then from the
    watch's newer events); after a write refused as stale, from a GET again."""
    gets: list[str] = []

    def observe(method: str, resource: str, status: int | None, seconds: float) -> None:
        if method == "GET" and resource == "cvmprelaunchscripts":
            gets.append(resource)

    client = KubeClient(functools.partial(load_credentials, str(control_plane.kubeconfig)), observer=observe)
    cluster = Cluster(client)
    key = (namespace, "app")
    scenario.apply(
        control_plane, scenario.cvm_prelaunch_script("app", namespace, cvm_id="cvm-1", config_map="cm")
    )

    def watched() -> dict[str, Any]:
        """What the watch would deliver now (the test plays the watch, in order)."""
        return dict(scenario.get(control_plane, namespace, "app"))

    try:
        cluster.observe_resource(key, watched())
        first = await cluster.read_resource(*key)
        assert first is not None and len(gets) == 1, "the first pass reads"
        again = await cluster.read_resource(*key)
        assert again == first and len(gets) == 1, "the watch had this very version: no second read"

        await cluster.patch_status(*key, {"phase": "Pending"}, first.resource_version)
        after_write = await cluster.read_resource(*key)
        assert after_write is not None and len(gets) == 1
        assert after_write.status.get("phase") == "Pending", "our write's answer, before its echo"
        assert after_write.resource_version != first.resource_version

        cluster.observe_resource(key, watched())  # the echo
        scenario.annotate(control_plane, namespace, "app", {"example.com/note": "edited"})
        cluster.observe_resource(key, watched())  # someone else's change, after the echo
        edited = await cluster.read_resource(*key)
        assert edited is not None and len(gets) == 1
        assert edited.annotations.get("example.com/note") == "edited"

        with pytest.raises(StatusConflict):
            await cluster.patch_status(*key, {"phase": "Synced"}, first.resource_version)
        fresh = await cluster.read_resource(*key)
        assert fresh is not None and len(gets) == 2, "a refused write: the next pass reads"
        assert fresh.resource_version == edited.resource_version

        cluster.observe_resource(key, None)  # deleted: nothing kept
        assert await cluster.read_resource(*key) is not None and len(gets) == 3
    finally:
        await client.aclose()
