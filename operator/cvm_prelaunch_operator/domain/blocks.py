"""When the next block of a chain is expected, learned from what the operator has seen of it.

The interval comes from block timestamps (the chain's own clock); the lag from how long after its
timestamp a new block was first seen here (a block's timestamp has one-second resolution and the
node needs time to propagate it). Both are bounded, so a chain that lies about its timestamps gets
polled within ``RetryPolicy.block_poll_min`` and ``block_poll_max`` all the same.
"""

from __future__ import annotations

import statistics
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Final

from cvm_prelaunch_operator.domain.chain import Head

MAX_CHAINS: Final = 64
_MIN_INTERVAL: Final = 0.1
_MAX_INTERVAL: Final = 120.0
_SAMPLE_DEPTH: Final = 8  # blocks back from the head used to learn the interval
_SAMPLES: Final = 5  # the interval is the median of the last few gaps seen


@dataclass
class BlockClock:
    """One chain's head as last seen, its block interval and the lag of new blocks."""

    interval: float | None = None
    head_number: int | None = None
    head_timestamp: int | None = None
    lag: float | None = None
    samples: deque[float] = field(default_factory=lambda: deque(maxlen=_SAMPLES))

    @property
    def needs_interval_sample(self) -> bool:
        return self.interval is None and self.head_number is not None and self.head_number > 0

    def sample_block(self) -> int:
        """The older block whose timestamp teaches the interval."""
        assert self.head_number is not None
        return max(0, self.head_number - _SAMPLE_DEPTH)

    def observe(self, head: Head, seen_at: float) -> None:
        if (
            self.head_number is not None
            and head.number > self.head_number
            and self.head_timestamp is not None
        ):
            elapsed = head.timestamp - self.head_timestamp
            if elapsed > 0:
                self._learn((elapsed) / (head.number - self.head_number))
        if self.head_number is None or head.number > self.head_number:
            # First sight of this block: seen_at bounds from above when it was produced.
            lag = seen_at - head.timestamp
            self.lag = lag if self.lag is None else min(self.lag, lag)
            self.head_number, self.head_timestamp = head.number, head.timestamp

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

    def seconds_to_next_block(self, now: float, *, just_sent: bool = False) -> float:
        """Seconds from ``now`` until the block after the last seen head should be visible here.

        ``just_sent``: a transaction went out a moment ago, which may itself make the next block (a
        chain that mines on demand), so an overdue block is looked for at the next slot of the learned
        interval rather than after a backoff."""
        if self.head_timestamp is None:
            return 1.0
        interval = self.interval if self.interval is not None else 1.0
        lag = min(max(self.lag if self.lag is not None else 0.5, 0.0), interval + 1.0)
        expected = self.head_timestamp + interval + lag + 0.05
        if expected <= now:
            overdue = now - expected
            if just_sent:
                return interval - (overdue % interval) if interval > 0 else 1.0
            # Overdue: the block is late, the interval was learned from a burst of blocks, or the chain
            # is idle. Waiting as long as it has been overdue thins the looks out (the policy's floor
            # of 1 s, then about 2, 4, 8 s... up to its ceiling) until a new block is seen, and costs a
            # block that is only a little late a second, not a whole interval.
            return overdue
        return expected - now


@dataclass
class BlockClocks:
    """A bounded set of block clocks, one per chain id, least recently used dropped first."""

    limit: int = MAX_CHAINS
    _clocks: OrderedDict[int, BlockClock] = field(default_factory=OrderedDict)

    def for_chain(self, chain_id: int) -> BlockClock:
        clock = self._clocks.pop(chain_id, None) or BlockClock()
        self._clocks[chain_id] = clock
        while len(self._clocks) > self.limit:
            self._clocks.popitem(last=False)
        return clock

    def __len__(self) -> int:
        return len(self._clocks)
