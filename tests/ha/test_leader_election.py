"""The Lease elector against the real API server, in process, on short timings (lease 3 s, renew
deadline 2 s, retry 0.5 s: the same ratios' logic as client-go's 15/10/2, in a fifth of the time).

Each test drives two candidates through one situation and checks the conventions: one holder at a
time, a free Lease taken at the next poll, an expired one only after a full lease duration of
silence, a holder that cannot renew closing its fence at the renew deadline and before anyone else
may take over, a holder that sees another name in the Lease stopping at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml
from tcp_proxy import TcpProxy

from cvm_prelaunch_localenv.kube import ControlPlane
from cvm_prelaunch_operator.domain.errors import NotLeader
from cvm_prelaunch_operator.kube.client import KubeClient, load_credentials
from cvm_prelaunch_operator.kube.leader import LeaderElector, LeaseConfig, lease_namespace

LEASE, RENEW, RETRY = 3.0, 2.0, 0.5
SLACK = 0.6  # scheduling and a round trip on a loaded 2-core machine


@dataclass
class Candidate:
    name: str
    elector: LeaderElector
    client: KubeClient
    started: list[float] = field(default_factory=list)
    stopped: list[tuple[float, str]] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    def run(self) -> Candidate:
        self.task = asyncio.create_task(self.elector.run(), name=f"elector-{self.name}")
        return self

    async def crash(self) -> None:
        """Gone without a word (a SIGKILL): no release."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def fenced(self) -> bool:
        try:
            self.elector.check()
        except NotLeader:
            return True
        return False


def kubeconfig_through(cp: ControlPlane, port: int, path: Path) -> Path:
    """The admin kubeconfig with the server reached through a local port (the proxy)."""
    config = yaml.safe_load(cp.kubeconfig.read_text())
    config["clusters"][0]["cluster"]["server"] = f"https://127.0.0.1:{port}"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path


@pytest.fixture
async def candidates(control_plane: ControlPlane, namespace: str) -> AsyncIterator[Callable[..., Candidate]]:
    made: list[Candidate] = []

    def make(name: str, kubeconfig: Path | None = None) -> Candidate:
        client = KubeClient(
            functools.partial(load_credentials, str(kubeconfig or control_plane.kubeconfig)), identity=name
        )
        candidate: Candidate

        def started() -> None:
            candidate.started.append(time.monotonic())

        def stopped(reason: str) -> None:
            candidate.stopped.append((time.monotonic(), reason))

        elector = LeaderElector(
            client,
            LeaseConfig(namespace, "test-lease", name, LEASE, RENEW, RETRY),
            on_started_leading=started,
            on_stopped_leading=stopped,
        )
        candidate = Candidate(name, elector, client)
        made.append(candidate)
        return candidate

    yield make
    for candidate in made:
        if candidate.task is not None:
            await candidate.crash()
        await candidate.client.aclose()


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"not within {timeout:.1f}s: {what}")
        await asyncio.sleep(0.02)
    return time.monotonic()


def lease_spec(cp: ControlPlane, namespace: str) -> dict[str, Any]:
    out = cp.kubectl("get", "lease", "test-lease", "-n", namespace, "-o", "yaml").stdout
    spec: dict[str, Any] = yaml.safe_load(out)["spec"]
    return spec


async def test_one_candidate_leads_and_a_release_hands_over_at_the_next_poll(
    candidates: Callable[..., Candidate], control_plane: ControlPlane, namespace: str
) -> None:
    a, b = candidates("a").run(), candidates("b").run()
    await until(lambda: a.elector.is_leader or b.elector.is_leader, 2 * RETRY + SLACK, "a leader")
    await asyncio.sleep(3 * RETRY)  # several polls of the standby and renewals of the leader
    leader, standby = (a, b) if a.elector.is_leader else (b, a)
    assert not standby.elector.is_leader and standby.fenced() and not leader.fenced()
    assert len(leader.started) == 1 and not standby.started
    spec = lease_spec(control_plane, namespace)
    assert spec["holderIdentity"] == leader.name
    assert spec["leaseDurationSeconds"] == int(LEASE)
    transitions = spec["leaseTransitions"]

    # A clean stop: the holder gives the Lease up, the standby takes it on its next poll.
    assert leader.task is not None
    await leader.crash()
    released = time.monotonic()
    await leader.elector.release()
    assert leader.fenced()
    took = (
        await until(lambda: standby.elector.is_leader, RETRY * 1.2 + SLACK + 1.0, "the standby leads")
        - released
    )
    assert took < RETRY * 1.2 + SLACK, f"took {took:.2f}s"
    spec = lease_spec(control_plane, namespace)
    assert spec["holderIdentity"] == standby.name
    assert spec["leaseTransitions"] == transitions + 1


async def test_a_vanished_holder_is_replaced_only_after_a_full_lease_duration(
    candidates: Callable[..., Candidate],
) -> None:
    a = candidates("a").run()
    await until(lambda: a.elector.is_leader, RETRY + SLACK, "a leads")
    b = candidates("b").run()
    await asyncio.sleep(2 * RETRY)  # b has observed a's renewals
    await a.crash()
    crashed = time.monotonic()
    acquired = await until(lambda: b.elector.is_leader, LEASE + RETRY + SLACK + 2, "b leads")
    # Never before the lease could have expired (a's last renewal was at most a retry period before
    # the crash), and not much later than when it did.
    assert acquired - crashed >= LEASE - RETRY - 0.05
    assert acquired - crashed <= LEASE + SLACK


async def test_a_holder_cut_off_from_the_api_closes_its_fence_at_the_renew_deadline(
    candidates: Callable[..., Candidate], control_plane: ControlPlane, tmp_path: Path
) -> None:
    host, port = "127.0.0.1", int(control_plane.server.rsplit(":", 1)[1])
    with TcpProxy(host, port) as proxy:
        a = candidates("a", kubeconfig_through(control_plane, proxy.port, tmp_path / "kubeconfig")).run()
        await until(lambda: a.elector.is_leader, RETRY + SLACK, "a leads")
        b = candidates("b").run()
        await asyncio.sleep(2 * RETRY)
        proxy.pause()
        cut = time.monotonic()
        # Until the deadline the holder may still act (its last renewal is at most a retry period old).
        assert not a.fenced()
        fenced_at = await until(a.fenced, RENEW + SLACK, "a's fence closes")
        assert fenced_at - cut <= RENEW + 0.1, "the fence outlived the renew deadline"
        assert fenced_at - cut >= RENEW - RETRY - 0.3, "the fence closed long before the deadline"
        await until(lambda: bool(a.stopped), 0.5, "a's elector reports the loss")
        assert "renew deadline" in a.stopped[0][1]
        acquired = await until(lambda: b.elector.is_leader, LEASE + RETRY + SLACK + 2, "b leads")
        # Another holder only once the cut-off one had stopped: lease - renew deadline apart at least.
        assert acquired - fenced_at >= LEASE - RENEW - RETRY - 0.3


async def test_a_holder_that_sees_another_name_in_the_lease_stops_at_once(
    candidates: Callable[..., Candidate], control_plane: ControlPlane, namespace: str
) -> None:
    a = candidates("a").run()
    await until(lambda: a.elector.is_leader, RETRY + SLACK, "a leads")
    now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    patch = f'{{"spec": {{"holderIdentity": "intruder", "renewTime": "{now}", "acquireTime": "{now}"}}}}'
    control_plane.kubectl("patch", "lease", "test-lease", "-n", namespace, "--type=merge", "-p", patch)
    stolen = time.monotonic()
    stopped = await until(a.fenced, RETRY + SLACK, "a's fence closes")
    assert stopped - stolen <= RETRY + SLACK
    await until(lambda: bool(a.stopped), 0.5, "a's elector reports the loss")
    assert "intruder" in a.stopped[0][1]
    assert lease_spec(control_plane, namespace)["holderIdentity"] == "intruder"  # a wrote nothing back


def test_lease_namespace_comes_from_the_settings_the_pod_or_its_service_account(tmp_path: Path) -> None:
    missing = str(tmp_path / "none")
    assert lease_namespace("ops", "pods-ns", sa_file=missing) == "ops"
    assert lease_namespace("", "pods-ns", sa_file=missing) == "pods-ns"
    sa = tmp_path / "namespace"
    sa.write_text("from-token\n")
    assert lease_namespace(" ", "", sa_file=str(sa)) == "from-token"
    with pytest.raises(ValueError, match="LEADER_ELECTION_NAMESPACE"):
        lease_namespace("", "", sa_file=missing)


def test_timings_must_leave_a_margin_between_the_fence_and_the_expiry() -> None:
    with pytest.raises(ValueError, match="lease duration > renew deadline"):
        LeaseConfig("ns", "lease", "me", lease_duration=10, renew_deadline=10, retry_period=2)
    with pytest.raises(ValueError, match="holder identity"):
        LeaseConfig("ns", "lease", "")


async def test_a_release_after_a_renewal_it_did_not_see_land_still_clears_the_holder(
    candidates: Callable[..., Candidate], control_plane: ControlPlane, namespace: str
) -> None:
    """The Lease changed since the holder last wrote it (a renewal cut short by the shutdown, which
    the server applied): the release's update conflicts, is read again, and still releases."""
    a = candidates("a").run()
    await until(lambda: a.elector.is_leader, RETRY + SLACK, "a leads")
    await a.crash()
    control_plane.kubectl("annotate", "lease", "test-lease", "-n", namespace, "touched=yes")
    await a.elector.release()
    spec = lease_spec(control_plane, namespace)
    assert spec.get("holderIdentity", "") == ""
    assert spec["leaseDurationSeconds"] == 1
