"""Following: the update operation runs on Phala Cloud; the step polls it to its end.

Polling backs off (``OPERATION_POLL_SECONDS`` doubling to ``OPERATION_POLL_CAP_SECONDS``) and is bounded:
an operation not completed within ``OPERATION_TIMEOUT`` stalls the resource with ``OperationTimedOut``,
naming the correlation id. A status the operator does not know is reported verbatim and followed until
that deadline. An operation found running after a restart (``adopted``) is checked at the end: if the
CVM does not run our script, it was not ours, and the sync uploads.
"""

from __future__ import annotations

from dataclasses import replace

from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import script_sha256
from cvm_prelaunch_operator.domain.states import Following, Uploading
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT, cut
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import synced


async def step(ctx: StepContext, state: Following) -> Transition:
    target = state.target
    elapsed = ctx.now - state.accepted_at
    if elapsed > ctx.policy.operation_timeout:
        return Transition(
            # The operation may still end well: the next attempt looks at the CVM before uploading.
            state=Uploading(target, look_first=True),
            verdict=Verdict(
                "Failed",
                Reason.OPERATION_TIMED_OUT,
                f"Update operation {state.correlation_id} did not complete within "
                f"{ctx.policy.operation_timeout:.0f}s; the operator looks at the CVM again when the spec, "
                "the "
                "ConfigMap, a referenced Secret or requested-at changes",
                stalled=True,
            ),
        )
    cloud = await ctx.cloud()
    operation = await cloud.find_operation(target.cvm_id, state.correlation_id)
    status = operation.status if operation is not None else None
    if status == "failed":
        reason = (operation.error_message if operation is not None else None) or "no reason given"
        return Transition(
            state=None,
            verdict=Verdict(
                "Failed",
                Reason.APPLY_FAILED,
                f"Phala Cloud could not apply the update ({state.correlation_id}): "
                f"{cut(reason, NODE_TEXT_LIMIT)}",
                stalled=True,
            ),
        )
    if status == "completed":
        cvm = await cloud.get_cvm(target.cvm_id)
        if state.adopted:
            remote = await cloud.get_pre_launch_script(target.cvm_id)
            if script_sha256(remote.encode("utf-8")) != target.script_sha256:
                return Transition(
                    state=Uploading(target),
                    verdict=Verdict(
                        "Uploading", Reason.UPLOADING, "The update found running was not ours; uploading"
                    ),
                    then="continue",
                )
        return synced(
            ctx,
            target,
            cvm=cvm,
            correlation_id=state.correlation_id,
            chain=state.chain,
            transaction_hash=state.transaction_hash,
        )
    if operation is None:
        seen = "is not listed among the CVM's operations yet"
    elif operation.status_is_known:
        seen = "is in progress"
    else:
        word = cut(operation.reported_status or "", NODE_TEXT_LIMIT)
        seen = f"is reported as {word!r}, a status the operator does not know; followed until it ends"
    deadline = state.accepted_at + ctx.policy.operation_timeout
    # The first time the operation is still running, the wait gets written: say once it was accepted.
    first = state.polls == 0 and not state.adopted
    return Transition(
        state=replace(state, polls=state.polls + 1),
        events=(Event("Normal", "UpdateAccepted", f"Update accepted, correlation id {state.correlation_id}"),)
        if first
        else (),
        verdict=Verdict(
            "Applying",
            Reason.APPLYING,
            f"Update {state.correlation_id} {seen} ({elapsed:.0f}s of at most "
            f"{ctx.policy.operation_timeout:.0f}s)",
        ),
        then="wait",
        # Backing off, but never sleeping past the deadline: the timeout is noticed when it falls.
        requeue_after=min(ctx.policy.operation_poll(state.polls), max(0.0, deadline - ctx.now) + 0.01),
    )
