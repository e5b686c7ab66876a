"""A keyed work queue in the manner of controller-runtime's: each key is processed by one worker at
a time, adds while it is processed are coalesced into one more run (adds while it waits for a worker,
into the run it waits for), delayed adds keep the earliest.

Runs a handler asked for itself (``timed``: a requeue, such as the next look at a pending transaction)
take at most a quarter of the workers: the rest stay free for runs that a change asked for (a
ConfigMap edit), so that fifty registrations looking at the same block at once do not make an
unrelated edit wait behind them, nor its requests queue behind theirs at the API server. A timed run
over that share waits, in order, for one to end; a change of its key hands it over at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)

logger = logging.getLogger(__name__)

# What a handler returns: seconds until the key should run again, or None for "only on events".
Handler = Callable[[K], Awaitable[float | None]]


class WorkQueue(Generic[K]):
    def __init__(
        self, handler: Handler[K], *, workers: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._handler = handler
        self._workers = workers
        self._clock = clock
        self._heap: list[tuple[float, int, K]] = []
        self._due: dict[K, float] = {}  # key -> earliest due time while scheduled
        self._processing: set[K] = set()  # handed to the workers: waiting for one, or running
        # Handed over but not started: a run that has not read anything yet, so an add due now is
        # already served by it (a burst of events for keys waiting behind the workers costs no pass).
        self._waiting: set[K] = set()
        self._again: dict[K, float] = {}  # added while processing: run again at this time
        self._seq = itertools.count()
        self._wakeup = asyncio.Event()
        self._ready: asyncio.Queue[K] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._idle = asyncio.Event()  # set whenever no key is being processed
        self._timed_limit = max(1, workers // 4)  # timed runs handed over at once, at most
        self._timed: set[K] = set()  # scheduled by a requeue only (no change asked for it since)
        self._timed_runs: set[K] = set()  # handed over as timed runs
        self._held: dict[K, None] = {}  # timed runs due but over the limit, oldest first

    def __len__(self) -> int:
        return len(self._due) + len(self._processing) + len(self._held)

    @property
    def processing(self) -> int:
        return len(self._processing)

    def timed_run(self, key: K) -> bool:
        """Whether ``key``'s run under way was handed over as a timed run (no change asked for it)."""
        return key in self._timed_runs

    def add(self, key: K, delay: float = 0.0, *, timed: bool = False) -> None:
        """Run ``key`` after ``delay`` seconds; ``timed``: the handler asked for it (see the module)."""
        now = self._clock()
        due = now + max(0.0, delay)
        if key in self._held:
            if not timed:
                del self._held[key]  # a change: it goes now, like any run a change asks for
                self._hand_over(key, timed=False)
            return
        if key in self._waiting and due <= now:
            return
        if key in self._processing:
            self._again[key] = min(due, self._again.get(key, due))
            return
        current = self._due.get(key)
        if current is not None and current <= due:
            if not timed:
                self._timed.discard(key)  # the earlier run serves the change as well
            return
        self._due[key] = due
        if timed:
            self._timed.add(key)
        else:
            self._timed.discard(key)
        heapq.heappush(self._heap, (due, next(self._seq), key))
        self._wakeup.set()

    def _hand_over(self, key: K, *, timed: bool) -> None:
        self._processing.add(key)
        self._waiting.add(key)
        if timed:
            self._timed_runs.add(key)
        self._ready.put_nowait(key)

    def forget(self, key: K) -> None:
        """Drop a scheduled run (the object is gone); a run in progress finishes."""
        self._due.pop(key, None)
        self._again.pop(key, None)
        self._held.pop(key, None)

    def start(self) -> None:
        """Start the dispatcher and the workers as tasks of the running loop."""
        if self._tasks:
            raise RuntimeError("the work queue is already started")
        self._tasks = [asyncio.create_task(self._dispatch(), name="reconcile-dispatcher")]
        self._tasks += [
            asyncio.create_task(self._worker(), name=f"reconcile-worker-{i}") for i in range(self._workers)
        ]

    async def shutdown(self, grace: float) -> None:
        """Stop taking work, let passes under way finish for up to ``grace`` seconds, then cancel.

        A pass cut short is no worse than a crash: status records where each sync stands.
        """
        if not self._tasks:
            return
        self._tasks[0].cancel()  # the dispatcher: nothing new starts
        if self._processing:
            self._idle.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), grace)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def run(self) -> None:
        """Work until cancelled (for callers that own the task)."""
        self.start()
        try:
            await asyncio.Event().wait()
        finally:
            await self.shutdown(grace=0)

    async def _dispatch(self) -> None:
        while True:
            now = self._clock()
            while self._heap and self._heap[0][0] <= now:
                due, _, key = heapq.heappop(self._heap)
                if self._due.get(key) != due:
                    continue  # superseded by an earlier add, or forgotten
                del self._due[key]
                timed = key in self._timed
                self._timed.discard(key)
                if timed and len(self._timed_runs) >= self._timed_limit:
                    self._held[key] = None
                else:
                    self._hand_over(key, timed=timed)
            timeout = self._heap[0][0] - now if self._heap else None
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), timeout)

    async def _worker(self) -> None:
        while True:
            key = await self._ready.get()
            self._waiting.discard(key)
            requeue: float | None = None
            try:
                requeue = await self._handler(key)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The handler owns its errors; this is a bug guard that keeps the worker alive.
                logger.exception("unhandled error while reconciling %s", key)
                requeue = 5.0
            finally:
                self._processing.discard(key)
                if not self._processing:
                    self._idle.set()
                self._timed_runs.discard(key)
                while self._held and len(self._timed_runs) < self._timed_limit:
                    held = next(iter(self._held))
                    del self._held[held]
                    self._hand_over(held, timed=True)
            again = self._again.pop(key, None)
            if again is not None:
                self.add(key, max(0.0, again - self._clock()))
            if requeue is not None:
                self.add(key, requeue, timed=True)
