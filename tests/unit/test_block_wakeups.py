"""The runtime's side of sharing a chain's new block: resources whose last pass waited for the chain's
next block are queued when another pass sees it first, no sooner than the look floor after their own
last look, and only once."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

from cvm_prelaunch_operator.domain.blocks import BlockClocks, Waiter
from cvm_prelaunch_operator.domain.chain import Head
from cvm_prelaunch_operator.domain.retry import RetryPolicy
from cvm_prelaunch_operator.handlers.runtime import Runtime
from cvm_prelaunch_operator.kube.client import KubeClient
from cvm_prelaunch_operator.kube.cluster import Cluster
from cvm_prelaunch_operator.reconcile.engine import Reconciler
from cvm_prelaunch_operator.reconcile.steps.common import seconds_to_next_block


async def test_a_new_block_queues_the_resources_waiting_for_it_once() -> None:
    reconciler = Reconciler(cast(Any, None), cast(Any, None), cast(Any, None))
    runtime = Runtime(Cluster(cast(KubeClient, None)), reconciler=reconciler, workers=1)
    now = time.monotonic()
    floor = reconciler.policy.block_poll_min
    runtime.block_waiters.wait(("ns", "looked-long-ago"), Waiter(chain_id=1, after=10, looked_at=now - 60))
    runtime.block_waiters.wait(("ns", "looked-just-now"), Waiter(chain_id=1, after=10, looked_at=now))
    runtime.block_waiters.wait(("ns", "other-chain"), Waiter(chain_id=2, after=10, looked_at=now - 60))
    clocks = reconciler._ports.clocks
    clocks.announce(1, 11)
    due = runtime.queue._due
    assert set(due) == {("ns", "looked-long-ago"), ("ns", "looked-just-now")}
    assert due[("ns", "looked-long-ago")] <= time.monotonic()
    assert due[("ns", "looked-just-now")] >= now + floor - 0.001  # the floor from its own last look
    assert runtime.queue._timed == set(due)  # woken looks are timed runs: changes keep their share
    clocks.announce(1, 11)
    assert len(runtime.queue) == 2 and len(runtime.block_waiters) == 1
    runtime.on_resource(("ns", "other-chain"), None)  # deleted: it waits for nothing any more
    clocks.announce(2, 11)
    assert len(runtime.queue) == 2 and len(runtime.block_waiters) == 0


def test_a_pass_whose_round_is_older_than_a_block_another_pass_saw_looks_again_at_the_floor() -> None:
    """Announced while this pass was between its round and its wait, the block would not wake it:
    it looks again at the policy's floor instead of at the estimate for the block after."""
    policy = RetryPolicy()
    clocks = BlockClocks()
    clock = clocks.for_chain(1)
    clock.observe(Head(10, "0x", 1000, None), seen_at=1000.3)
    clock.learn_from(2, 1000 - 96)  # 12 s blocks
    ctx = SimpleNamespace(
        block_clock=clocks.for_chain,
        seen_heads={1: 10},
        policy=policy,
        now=1001.0,
        awaited_block=None,
        res=SimpleNamespace(namespace="ns", name="res"),
    )
    assert seconds_to_next_block(cast(Any, ctx), 1) > 10.0  # block 11 is expected at about 1012
    clock.observe(Head(11, "0x", 1012, None), seen_at=1012.3)  # another pass saw it
    ctx.now = 1012.4
    assert seconds_to_next_block(cast(Any, ctx), 1) == policy.block_poll_min
    assert ctx.awaited_block == (1, 10)
    ctx.seen_heads[1] = 11  # its own round saw it too: the estimate for block 12 again
    assert seconds_to_next_block(cast(Any, ctx), 1) > 10.0
