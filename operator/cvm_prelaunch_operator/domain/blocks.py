"""When the next block of a chain is expected, learned from what the operator has seen of it.

The interval comes from block timestamps (the chain's own clock); the lag from when a new block
became visible here relative to its timestamp (a block's timestamp has one-second resolution and the
node needs time to propagate it). Each new block bounds its lag from both sides: from above by the
time it was first seen, from below by the last look that still found its parent at the head. Looks
at the upper bound never teach a lower one, so while the bounds of the last few blocks are far apart
the clock probes their middle, with one look per block (the first asked for; the others wait at the
upper bound, so a probe that comes too early delays one resource, not all that wait for the block):
a look that finds the block lowers the upper bound, one that does not raises the lower bound, and
after a few blocks the looks come just after blocks appear. Everything is bounded, so a chain that
lies about its timestamps gets polled within ``RetryPolicy.block_poll_min`` and ``block_poll_max``
all the same.

Resources waiting for the same chain share what any of them sees: the first pass that finds a new
block announces it (``BlockClocks.announce``), and ``BlockWaiters`` says who was waiting for it, so that
their next looks come now instead of at their own estimates (which differ: each backs off on its own
while a block is overdue). A woken look still respects the policy's floor from the resource's last look.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Final, Generic, TypeVar

from cvm_prelaunch_operator.domain.chain import Head

MAX_CHAINS: Final = 64
_MIN_INTERVAL: Final = 0.1
_MAX_INTERVAL: Final = 120.0
_SAMPLE_DEPTH: Final = 8  # blocks back from the head used to learn the interval
_SAMPLES: Final = 5  # the interval is the median of the last few gaps seen
_HIGHS: Final = 8  # upper bounds of the lag kept (from the last few new blocks)
_LOWS: Final = 32  # lower bounds kept (longer: each one was paid for with a look that came too early)
_PROBE_WIDTH: Final = 0.1  # lag bounds further apart than this (or 5 % of the interval) are probed
_MARGIN: Final = 0.1  # a look comes this long after the block should be visible (a miss costs a second)


@dataclass
class BlockClock:
    """One chain's head as last seen, its block interval and the lag of new blocks."""

    interval: float | None = None
    head_number: int | None = None
    head_timestamp: int | None = None
    head_seen_until: float | None = None  # the last time the head was still the head
    probed_block: int | None = None  # the block whose early look was handed out
    overdue_poll_at: float | None = None  # when the one look for an overdue block is due
    looks_for: int | None = None  # the block the on-time looks were handed out for
    lookers: list[Hashable] = field(default_factory=list)  # who got them (two at most)
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))
    lag_highs: deque[float] = field(default_factory=lambda: deque(maxlen=_HIGHS))
    lag_lows: deque[float] = field(default_factory=lambda: deque(maxlen=_LOWS))

    @property
    def needs_interval_sample(self) -> bool:
        return self.interval is None and self.head_number is not None and self.head_number > 0

    def sample_block(self) -> int:
        """The older block whose timestamp teaches the interval."""
        assert self.head_number is not None
        return max(0, self.head_number - _SAMPLE_DEPTH)

    def observe(self, head: Head, seen_at: float, *, asked_at: float | None = None) -> None:
        """``head`` was the chain's head when it was asked for (``asked_at``) and is known here since
        ``seen_at``: the answer bounds a new block's lag from above, the question its child's from
        below (an answer that took long to come must not make the lag look longer than it is)."""
        asked = seen_at if asked_at is None else min(asked_at, seen_at)
        if (
            self.head_number is not None
            and head.number > self.head_number
            and self.head_timestamp is not None
        ):
            elapsed = head.timestamp - self.head_timestamp
            if elapsed > 0:
                self._learn((elapsed) / (head.number - self.head_number))
        if head.number == self.head_number:
            self.head_seen_until = max(self.head_seen_until or asked, asked)
        elif self.head_number is None or head.number > self.head_number:
            # First sight of this block: seen_at bounds its lag from above; the last look that still
            # found its parent, from below. Older bounds that the new ones contradict (the lag grew or
            # shrank) are dropped, so the bounds kept always leave room for the lag.
            if (
                self.head_number is not None
                and head.number == self.head_number + 1
                and self.head_seen_until is not None
            ):
                low = self.head_seen_until - head.timestamp
                _drop(self.lag_highs, lambda high: high < low)
                self.lag_lows.append(low)
            high = seen_at - head.timestamp
            _drop(self.lag_lows, lambda low: low > high)
            self.lag_highs.append(high)
            self.head_number, self.head_timestamp = head.number, head.timestamp
            self.head_seen_until = asked
            self.overdue_poll_at = None

    @property
    def lag(self) -> float | None:
        """How long after its timestamp a block becomes visible here: the smallest upper bound kept."""
        return min(self.lag_highs) if self.lag_highs else None

    @property
    def probe_lag(self) -> float | None:
        """The middle of the lag bounds while they are too far apart (None: they are close enough)."""
        high = self.lag
        if high is None:
            return None
        low = max(0.0, max(self.lag_lows, default=0.0))
        if high - low > max(_PROBE_WIDTH, 0.05 * (self.interval or 0.0)):
            return (low + high) / 2
        return None

    def learn_from(self, number: int, timestamp: int) -> None:
        """An older block's timestamp, to learn the interval when only one head has been seen."""
        if self.head_number is None or self.head_timestamp is None or number >= self.head_number:
            return
        elapsed = self.head_timestamp - timestamp
        if elapsed > 0:
            self._learn(elapsed / (self.head_number - number))

    def _learn(self, interval: float) -> None:
        # The median of the last few gaps: one odd gap (an empty slot, a burst of blocks on an idle
        # development chain) does not take over, and a changed cadence does within a few blocks.
        self.samples.append(min(_MAX_INTERVAL, max(_MIN_INTERVAL, interval)))
        self.interval = statistics.median(self.samples)

    def seconds_to_next_block(
        self,
        now: float,
        *,
        just_sent: bool = False,
        overdue_poll: float = 1.0,
        who: Hashable | None = None,
    ) -> float:
        """Seconds from ``now`` until the block after the last seen head should be visible here (for
        the first caller per block while the lag bounds are wide: until it might be, a probe).

        ``just_sent``: a transaction went out a moment ago, which may itself make the next block (a
        chain that mines on demand), so an overdue block is looked for at the next slot of the learned
        interval or after ``overdue_poll``, whichever comes first, rather than after a backoff.

        ``who`` asks (a resource), when the caller wakes those waiting on a block one of them sees
        (``BlockWaiters``): then one caller per block looks at the expected time for everyone (two
        while the lag is probed: the probe, and one at the upper bound), and the others are told a
        backstop an interval later (at least ``overdue_poll``), in case no look sees the block.
        While the block is overdue, one caller every ``overdue_poll`` seconds (the policy's floor) is
        told 0: it keeps looking at that pace for everyone, who back off."""
        if self.head_timestamp is None or self.head_number is None:
            return 1.0
        interval = self.interval if self.interval is not None else 1.0
        lag = self.lag if self.lag is not None else 0.5
        awaited = self.head_number + 1
        if self.looks_for != awaited:
            self.looks_for, self.lookers = awaited, []
        probe = self.probe_lag
        backstop = 0.0
        looker = who is not None and who in self.lookers  # asking again: at the bound
        if not looker and probe is not None and self.probed_block != awaited:
            # One look per block probes the middle of the bounds: a look that finds the block or not
            # halves what is unknown. Only one: when it comes too early it costs its resource a second
            # (the policy's floor), and another look for the same block comes at the bound.
            self.probed_block = awaited
            lag = probe
            looker = True
        elif not looker and who is not None:
            looker = len(self.lookers) < (2 if self.probed_block == awaited else 1)
            if not looker:
                backstop = max(overdue_poll, interval)
        if looker and who is not None and who not in self.lookers:
            self.lookers.append(who)
        lag = min(max(lag, 0.0), interval + 1.0)
        expected = self.head_timestamp + interval + lag + _MARGIN
        if expected + backstop > now:
            return expected + backstop - now
        overdue = now - expected
        if just_sent:
            # Never put off past the next slot nor past one poll: on a chain that mines on demand the
            # transaction may have made the block itself (its node can answer the round right after the
            # broadcast before it has), and an interval learned from such a chain says little.
            slot = interval - (overdue % interval) if interval > 0 else overdue_poll
            return min(slot, overdue_poll)
        # Overdue: the block is late (a missed slot), the interval was learned from a burst of blocks,
        # or the chain is idle. One look per ``overdue_poll`` keeps watching for it; everyone else
        # waits as long as it has been overdue (the policy's floor of 1 s, then about 2, 4, 8 s... up
        # to its ceiling), which thins their looks out until a new block is seen, when the look that
        # sees it wakes them.
        if self.overdue_poll_at is None or self.overdue_poll_at <= now:
            self.overdue_poll_at = now + overdue_poll
            return 0.0
        return overdue


NewBlockListener = Callable[[int, int], None]  # (chain id, new head number)


@dataclass
class BlockClocks:
    """A bounded set of block clocks, one per chain id, least recently used dropped first; and whom to
    tell when a pass sees a chain's new head."""

    limit: int = MAX_CHAINS
    _clocks: OrderedDict[int, BlockClock] = field(default_factory=OrderedDict)
    _listeners: list[NewBlockListener] = field(default_factory=list)

    def listen(self, listener: NewBlockListener) -> None:
        self._listeners.append(listener)

    def announce(self, chain_id: int, number: int) -> None:
        """A pass saw ``number`` as the new head of ``chain_id`` (newer than the clock knew)."""
        for listener in self._listeners:
            listener(chain_id, number)

    def for_chain(self, chain_id: int) -> BlockClock:
        clock = self._clocks.pop(chain_id, None) or BlockClock()
        self._clocks[chain_id] = clock
        while len(self._clocks) > self.limit:
            self._clocks.popitem(last=False)
        return clock

    def __len__(self) -> int:
        return len(self._clocks)


K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Waiter:
    chain_id: int
    after: int  # the head the resource saw: any later block is the one it waits for
    looked_at: float  # when its last look began (a woken look keeps the floor from it)


@dataclass
class BlockWaiters(Generic[K]):
    """Which resources wait for a chain's next block (see the module). At most one entry per resource,
    dropped when it is woken, when its next pass begins, or when it is gone."""

    _waiters: dict[K, Waiter] = field(default_factory=dict)
    _by_chain: dict[int, dict[K, None]] = field(default_factory=dict)

    def wait(self, key: K, waiter: Waiter) -> None:
        self.cancel(key)
        self._waiters[key] = waiter
        self._by_chain.setdefault(waiter.chain_id, {})[key] = None

    def cancel(self, key: K) -> None:
        waiter = self._waiters.pop(key, None)
        if waiter is None:
            return
        keys = self._by_chain[waiter.chain_id]
        del keys[key]
        if not keys:
            del self._by_chain[waiter.chain_id]

    def woken_by(self, chain_id: int, number: int) -> list[tuple[K, Waiter]]:
        """The resources block ``number`` of ``chain_id`` is news to, removed from the waiters."""
        woken = [
            (key, self._waiters[key])
            for key in self._by_chain.get(chain_id, {})
            if self._waiters[key].after < number
        ]
        for key, _ in woken:
            self.cancel(key)
        return woken

    def __len__(self) -> int:
        return len(self._waiters)


def _drop(bounds: deque[float], contradicted: Callable[[float], bool]) -> None:
    kept = [bound for bound in bounds if not contradicted(bound)]
    if len(kept) != len(bounds):
        bounds.clear()
        bounds.extend(kept)
