"""The keyed work queue: one worker per key at a time, coalesced adds, earliest delay wins, shutdown."""

from __future__ import annotations

import asyncio
from collections import Counter

from cvm_prelaunch_operator.reconcile.workqueue import WorkQueue


async def test_a_key_is_never_processed_twice_at_once_and_adds_coalesce() -> None:
    running: set[str] = set()
    overlaps = 0
    runs: Counter[str] = Counter()
    release = asyncio.Event()

    async def handler(key: str) -> float | None:
        nonlocal overlaps
        if key in running:
            overlaps += 1
        running.add(key)
        runs[key] += 1
        if runs[key] == 1:
            await release.wait()
        running.discard(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=4)
    queue.start()
    queue.add("a")
    await asyncio.sleep(0.01)
    for _ in range(5):
        queue.add("a")  # while "a" runs: coalesced into one more run
    queue.add("b")
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.sleep(0.05)
    await queue.shutdown(grace=1)
    assert overlaps == 0
    assert runs == Counter({"a": 2, "b": 1})


async def test_adds_for_a_key_waiting_for_a_worker_join_the_run_it_waits_for() -> None:
    """A first sync: every key is handed to the workers at once; a watch event for a key still
    waiting behind them (its ConfigMap listed, say) must not cost a second pass."""
    runs: Counter[str] = Counter()
    release = asyncio.Event()

    async def handler(key: str) -> float | None:
        runs[key] += 1
        if key == "first":
            await release.wait()
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("first")
    queue.add("second")
    await asyncio.sleep(0.02)  # "first" runs, "second" waits for the only worker
    queue.add("second")
    queue.add("first")  # "first" is running: one more run
    release.set()
    await asyncio.sleep(0.05)
    assert runs == Counter({"first": 2, "second": 1})
    release.clear()
    queue.add("first")
    queue.add("second")
    await asyncio.sleep(0.02)
    queue.add("second", delay=0.05)  # later than the run it waits for: kept
    release.set()
    await asyncio.sleep(0.15)
    await queue.shutdown(grace=1)
    assert runs == Counter({"first": 3, "second": 3})


async def test_timed_runs_take_a_quarter_of_the_workers_at_most() -> None:
    """Looks a handler asked for (requeues) take at most a quarter of the workers: an edit that
    arrives while many registrations look at their block at once starts without waiting for them."""
    running: set[str] = set()
    runs: Counter[str] = Counter()
    release = asyncio.Event()

    async def handler(key: str) -> float | None:
        running.add(key)
        runs[key] += 1
        if key.startswith("look"):
            await release.wait()
        running.discard(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=12)
    queue.start()
    for key in ("look-1", "look-2", "look-3", "look-4", "look-5"):
        queue.add(key, timed=True)
    await asyncio.sleep(0.02)
    assert running == {"look-1", "look-2", "look-3"}  # 3 of 12 workers; looks 4 and 5 wait in order
    queue.add("edit")
    await asyncio.sleep(0.02)
    assert runs["edit"] == 1
    queue.add("look-5")  # a change of a waiting look: it goes now
    await asyncio.sleep(0.02)
    assert running == {"look-1", "look-2", "look-3", "look-5"}
    release.set()
    await asyncio.sleep(0.05)
    await queue.shutdown(grace=1)
    assert runs == Counter({"look-1": 1, "look-2": 1, "look-3": 1, "look-4": 1, "look-5": 1, "edit": 1})


async def test_requeue_delay_and_earliest_add_wins() -> None:
    seen: list[tuple[str, float]] = []
    loop = asyncio.get_running_loop()
    start = loop.time()

    async def handler(key: str) -> float | None:
        seen.append((key, loop.time() - start))
        return 0.05 if len([k for k, _ in seen if k == key]) == 1 else None

    queue: WorkQueue[str] = WorkQueue(handler, workers=2)
    queue.start()
    queue.add("late", delay=10)
    queue.add("late", delay=0.02)  # the earlier due time replaces the later one
    await asyncio.sleep(0.2)
    await queue.shutdown(grace=1)
    times = [t for k, t in seen if k == "late"]
    assert len(times) == 2
    assert 0.015 <= times[0] < 0.15
    assert times[1] - times[0] >= 0.045


async def test_a_failing_handler_keeps_the_worker_alive() -> None:
    calls: Counter[str] = Counter()

    async def handler(key: str) -> float | None:
        calls[key] += 1
        if key == "bad":
            raise RuntimeError("bug")
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue.start()
    queue.add("bad")
    queue.add("good")
    await asyncio.sleep(0.05)
    await queue.shutdown(grace=1)
    assert calls["good"] == 1


async def test_shutdown_lets_a_pass_finish_within_grace_then_cancels() -> None:
    finished: list[str] = []

    async def handler(key: str) -> float | None:
        await asyncio.sleep(0.1 if key == "short" else 10)
        finished.append(key)
        return None

    queue: WorkQueue[str] = WorkQueue(handler, workers=2)
    queue.start()
    queue.add("short")
    await asyncio.sleep(0.01)
    await queue.shutdown(grace=1)
    assert finished == ["short"]

    queue2: WorkQueue[str] = WorkQueue(handler, workers=1)
    queue2.start()
    queue2.add("long")
    await asyncio.sleep(0.01)
    started = asyncio.get_running_loop().time()
    await queue2.shutdown(grace=0.1)
    assert asyncio.get_running_loop().time() - started < 1
    assert "long" not in finished
