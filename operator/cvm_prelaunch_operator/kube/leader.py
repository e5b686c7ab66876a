"""Leader election over a ``coordination.k8s.io/v1`` Lease, with client-go's conventions.

Candidates poll the Lease every ``retry_period``; one that finds it free (no holder, or a record that
has not changed for ``lease_duration`` by the candidate's own clock) writes itself in as the holder,
and the API server's optimistic concurrency (resourceVersion) lets only one writer win. The holder
renews every ``retry_period``. Expiry is judged from when a candidate *observed* a record change, never
from the timestamps in it, so clock skew between nodes does not matter (only clock rate does).

Fencing: the holder may act only while ``now < start of its last successful renew + renew_deadline``
(monotonic clock). ``check()`` is that comparison, cheap enough to call before every side effect. Any
other candidate waits at least ``lease_duration`` after it saw that renew, so ``lease_duration -
renew_deadline`` (5 s) separates the moment this process stops from the moment another may start.
A holder that sees another holder in the Lease stops at once. Leadership, once lost, is not sought
again: the process exits and Kubernetes restarts it (client-go's ``OnStoppedLeading`` convention), so
no state of the lost term survives into a new one.

On a clean stop the holder releases the Lease (client-go's ``ReleaseOnCancel``): the holder is
cleared, and a standby takes over on its next poll instead of waiting for expiry.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from cvm_prelaunch_operator.domain.errors import NotLeader
from cvm_prelaunch_operator.kube.client import KubeApiError, KubeClient

logger = logging.getLogger(__name__)

LEASE_DURATION: Final = 15.0
RENEW_DEADLINE: Final = 10.0
RETRY_PERIOD: Final = 2.0
# Candidates wait retry_period x [1, 1 + JITTER) between polls, so that several do not poll in step.
JITTER: Final = 0.2
# A release is a courtesy that shortens a failover; it must not hold up a shutdown.
RELEASE_TIMEOUT: Final = 2.0
REFUSAL_LOG_SECONDS: Final = 60.0

LEASES: Final = "leases"
SERVICE_ACCOUNT_NAMESPACE: Final = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass(frozen=True)
class LeaseConfig:
    namespace: str
    name: str
    identity: str
    lease_duration: float = LEASE_DURATION
    renew_deadline: float = RENEW_DEADLINE
    retry_period: float = RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.namespace or not self.name or not self.identity:
            raise ValueError("leader election needs a Lease namespace, a Lease name and a holder identity")
        if not self.lease_duration > self.renew_deadline > self.retry_period * (1 + JITTER) > 0:
            raise ValueError(
                "leader election needs lease duration > renew deadline > retry period x "
                f"{1 + JITTER:g} > 0 (got {self.lease_duration:g}, {self.renew_deadline:g}, "
                f"{self.retry_period:g})"
            )

    @property
    def path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases/{self.name}"

    @property
    def collection(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    def describe(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class LeaseRecord:
    """The election fields of a Lease's spec."""

    holder: str
    duration: float
    acquire_time: str | None
    renew_time: str | None
    transitions: int

    @classmethod
    def of(cls, lease: dict[str, Any]) -> LeaseRecord:
        spec = lease.get("spec") or {}
        return cls(
            holder=str(spec.get("holderIdentity") or ""),
            duration=float(spec.get("leaseDurationSeconds") or 0),
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
        )

    def spec(self) -> dict[str, Any]:
        return {
            "holderIdentity": self.holder,
            "leaseDurationSeconds": max(1, round(self.duration)),
            "acquireTime": self.acquire_time,
            "renewTime": self.renew_time,
            "leaseTransitions": self.transitions,
        }


def lease_namespace(configured: str, pod_namespace: str, *, sa_file: str = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """Where the Lease lives: as configured, else the pod's namespace (downward API, else the one its
    ServiceAccount token was issued in). Outside a pod one of the two settings is required."""
    for candidate in (configured, pod_namespace):
        if candidate.strip():
            return candidate.strip()
    try:
        with open(sa_file, encoding="utf-8") as handle:
            found = handle.read().strip()
    except OSError:
        found = ""
    if not found:
        raise ValueError(
            "leader election needs the Lease's namespace: set LEADER_ELECTION_NAMESPACE or POD_NAMESPACE "
            "(or LEADER_ELECTION=false for a single process)"
        )
    return found


def micro_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(MICRO_TIME)


StateObserver = Callable[[bool], None]


class LeaderElector:
    """Implements ``reconcile.ports.Fence``. Run ``run()`` as a task; it returns when leadership,
    once held, is lost (never when it is merely not yet acquired)."""

    def __init__(
        self,
        client: KubeClient,
        config: LeaseConfig,
        *,
        on_started_leading: Callable[[], None],
        on_stopped_leading: Callable[[str], None],
        on_state: StateObserver | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self.config = config
        self._on_started = on_started_leading
        self._on_stopped = on_stopped_leading
        self._on_state = on_state
        self._clock = clock
        self._wall = wall_clock
        self._rng = rng or random.Random()
        self._lease: dict[str, Any] | None = None  # the Lease as last read or written
        self._observed: LeaseRecord | None = None
        self._observed_at = 0.0  # monotonic time the observed record last changed
        self._leading = False
        self._valid_until = 0.0  # monotonic deadline of the fence while leading
        self._reported_holder: str | None = None
        self._released = False
        self._last_attempt = 0.0  # monotonic start of the last try, the renew loop's tick
        self._last_refusal: tuple[str, float] = ("", 0.0)

    # -- the fence ------------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._leading and self._clock() < self._valid_until

    def check(self) -> None:
        """Raise ``NotLeader`` unless this process holds the Lease and renewed it recently enough."""
        if not self._leading:
            raise NotLeader(f"not the holder of Lease {self.config.describe()}")
        if self._clock() >= self._valid_until:
            raise NotLeader(f"Lease {self.config.describe()} not renewed within the renew deadline")

    @property
    def holder(self) -> str:
        """The holder as last observed ("" when free or unknown)."""
        return self._observed.holder if self._observed is not None else ""

    # -- the loops ----------------------------------------------------------------------------------

    async def run(self) -> None:
        logger.info(
            "leader election: %s is a candidate for Lease %s", self.config.identity, self.config.describe()
        )
        self._set_state(False)
        await self._acquire()
        reason = await self._renew()
        self._stop_leading(reason)

    async def _acquire(self) -> None:
        while True:
            if await self._attempt(acquiring=True):
                self._start_leading()
                return
            await asyncio.sleep(self._standby_wait())

    def _standby_wait(self) -> float:
        """The next poll: a jittered retry period, or sooner, when the observed holder's lease ends."""
        wait = self.config.retry_period * (1 + self._rng.uniform(0, JITTER))
        record = self._observed
        if record is not None and record.holder:
            until_expiry = self._observed_at + record.duration - self._clock()
            wait = min(wait, max(0.0, until_expiry) + 0.05)
        return wait

    async def _renew(self) -> str:
        """Renew every retry period until a renewal cannot be made within the renew deadline, or the
        Lease names another holder; returns why leadership ended."""
        while True:
            await asyncio.sleep(self._until(self._last_attempt + self.config.retry_period))
            remaining = self._valid_until - self._clock()
            if remaining <= 0:
                return "the renew deadline passed without a successful renewal"
            try:
                renewed = await asyncio.wait_for(self._attempt(acquiring=False), timeout=remaining)
            except TimeoutError:
                return "the renew deadline passed during a renewal"
            if not self._leading:
                return f"the Lease names another holder ({self.holder or 'none'})"
            if not renewed and self._clock() >= self._valid_until:
                return "the renew deadline passed without a successful renewal"

    def _until(self, moment: float) -> float:
        return max(0.0, moment - self._clock())

    # -- one try ------------------------------------------------------------------------------------

    async def _attempt(self, *, acquiring: bool) -> bool:
        """client-go's tryAcquireOrRenew: True when this process holds the Lease after the call."""
        started = self._clock()
        self._last_attempt = started
        now = micro_time(self._wall())
        # The holder's fast path: update the Lease as last written, without reading it first.
        if self._leading and self._lease is not None and self._observed is not None:
            record = LeaseRecord(
                self.config.identity,
                self.config.lease_duration,
                self._observed.acquire_time,
                now,
                self._observed.transitions,
            )
            if await self._write(record, started):
                return True
        try:
            lease = await self._client.get(self.config.path, resource=LEASES, request_timeout=self._timeout())
        except KubeApiError as exc:
            self._log_failure("read", exc)
            return False
        if lease is None:
            record = LeaseRecord(self.config.identity, self.config.lease_duration, now, now, 0)
            return await self._create(record, started)
        self._lease = lease
        self._observe(LeaseRecord.of(lease))
        observed = self._observed
        assert observed is not None
        mine = observed.holder == self.config.identity
        if observed.holder and not mine and self._observed_valid():
            if self._leading:
                self._leading = False  # someone else holds it now: stop before anything else
            return False
        if mine and self._leading:
            record = LeaseRecord(
                self.config.identity,
                self.config.lease_duration,
                observed.acquire_time,
                now,
                observed.transitions,
            )
        else:
            # Free, expired, or ours from an earlier run of this pod: take it (a new term).
            record = LeaseRecord(
                self.config.identity, self.config.lease_duration, now, now, observed.transitions + 1
            )
        return await self._write(record, started)

    def _timeout(self) -> float:
        if self._leading:
            return max(0.1, min(self.config.renew_deadline, self._valid_until - self._clock()))
        return self.config.renew_deadline

    async def _create(self, record: LeaseRecord, started: float) -> bool:
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": self.config.name, "namespace": self.config.namespace},
            "spec": record.spec(),
        }
        try:
            answer = await self._client.request(
                "POST", self.config.collection, resource=LEASES, body=body, request_timeout=self._timeout()
            )
        except KubeApiError as exc:
            self._log_failure("create", exc)
            return False
        self._wrote(answer.body, record, started)
        return True

    async def _write(self, record: LeaseRecord, started: float) -> bool:
        assert self._lease is not None
        body = dict(self._lease)
        body["spec"] = {**(self._lease.get("spec") or {}), **record.spec()}
        try:
            answer = await self._client.request(
                "PUT", self.config.path, resource=LEASES, body=body, request_timeout=self._timeout()
            )
        except KubeApiError as exc:
            if exc.status != 409:  # a conflict is the normal way to lose a race; no noise for it
                self._log_failure("update", exc)
            return False
        self._wrote(answer.body, record, started)
        return True

    def _wrote(self, lease: dict[str, Any], record: LeaseRecord, started: float) -> None:
        self._lease = lease
        self._observe(record)
        if record.holder == self.config.identity:
            # Others measure expiry from when they see this write, which is after it was sent.
            self._valid_until = started + self.config.renew_deadline

    def _observe(self, record: LeaseRecord) -> None:
        if record != self._observed:
            self._observed = record
            self._observed_at = self._clock()
        if record.holder != self._reported_holder:
            self._reported_holder = record.holder
            if record.holder and record.holder != self.config.identity:
                logger.info("leader election: Lease %s is held by %s", self.config.describe(), record.holder)

    def _observed_valid(self) -> bool:
        record = self._observed
        return record is not None and self._clock() < self._observed_at + record.duration

    def _log_failure(self, what: str, exc: KubeApiError) -> None:
        """A holder's failures always show; a candidate's only when they are refusals (RBAC, a bad
        token), which keep it from ever leading, and then once a minute, not once a poll."""
        if not self._leading and exc.status not in (401, 403):
            logger.debug("leader election: could not %s Lease %s: %s", what, self.config.describe(), exc)
            return
        text = f"could not {what} Lease {self.config.describe()}: {exc}"
        now = self._clock()
        if (
            not self._leading
            and text == self._last_refusal[0]
            and now - self._last_refusal[1] < REFUSAL_LOG_SECONDS
        ):
            return
        self._last_refusal = (text, now)
        logger.warning("leader election: %s", text)

    # -- transitions --------------------------------------------------------------------------------

    def _start_leading(self) -> None:
        self._leading = True
        self._set_state(True)
        logger.info(
            "leader election: %s acquired Lease %s; reconciling",
            self.config.identity,
            self.config.describe(),
        )
        self._on_started()

    def _stop_leading(self, reason: str) -> None:
        self._leading = False
        self._set_state(False)
        logger.warning(
            "leader election: %s lost Lease %s: %s; stopping",
            self.config.identity,
            self.config.describe(),
            reason,
        )
        self._on_stopped(reason)

    def _set_state(self, leading: bool) -> None:
        if self._on_state is not None:
            self._on_state(leading)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def release(self) -> None:
        """Give the Lease up if this process holds it (client-go's ReleaseOnCancel). Call only once
        every side effect has stopped: from here on the fence is closed. Bounded by RELEASE_TIMEOUT."""
        was_leading = self.is_leader
        self._leading = False
        self._set_state(False)
        if not was_leading or self._released or self._lease is None or self._observed is None:
            return
        self._released = True
        try:
            await asyncio.wait_for(self._clear_holder(), timeout=RELEASE_TIMEOUT)
        except TimeoutError:
            logger.warning("leader election: releasing Lease %s timed out", self.config.describe())
        except KubeApiError as exc:
            logger.warning("leader election: could not release Lease %s: %s", self.config.describe(), exc)

    async def _clear_holder(self) -> None:
        assert self._lease is not None and self._observed is not None
        lease, transitions = self._lease, self._observed.transitions
        for attempt in (1, 2):
            now = micro_time(self._wall())
            record = LeaseRecord("", 1, now, now, transitions)
            body = dict(lease)
            body["spec"] = {**(lease.get("spec") or {}), **record.spec()}
            try:
                await self._client.request("PUT", self.config.path, resource=LEASES, body=body)
            except KubeApiError as exc:
                if exc.status == 409 and attempt == 1:
                    # A renewal cut short by the shutdown may have landed: read it, and release it if
                    # it is still ours.
                    fresh = await self._client.get(self.config.path, resource=LEASES)
                    if fresh is None or LeaseRecord.of(fresh).holder != self.config.identity:
                        return
                    lease, transitions = fresh, LeaseRecord.of(fresh).transitions
                    continue
                logger.warning("leader election: could not release Lease %s: %s", self.config.describe(), exc)
                return
            logger.info("leader election: %s released Lease %s", self.config.identity, self.config.describe())
            return


__all__ = [
    "LEASE_DURATION",
    "RENEW_DEADLINE",
    "RETRY_PERIOD",
    "LeaderElector",
    "LeaseConfig",
    "LeaseRecord",
    "lease_namespace",
]
