"""Idle: nothing under way. Either the desired script is applied (status says so) and only a periodic
drift check may call Phala Cloud, or a new sync starts.

Drift: every ``spec.driftCheckInterval`` (0s: never, else at least 30s) the CVM's script is read. The
same script: ``Synced``. Another one: ``driftPolicy: Correct`` uploads the desired one again,
``Report`` sets ``Ready=False`` with reason ``Drifted``. A check that fails (a 500, a 429, a timeout)
changes nothing but ``status.lastDriftCheckError``, cleared by the next good check: only a real
difference changes Ready.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import SyncError
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import script_sha256
from cvm_prelaunch_operator.domain.states import SyncTarget, Uploading
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.domain.text import cut
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import short


def synced_verdict(ctx: StepContext, *, drifted: bool) -> Verdict:
    if drifted:
        return Verdict(
            "Synced",
            Reason.DRIFTED,
            f"CVM {ctx.spec.cvm_id} runs a script that differs from the ConfigMap (driftPolicy Report)",
        )
    return Verdict(
        "Synced", Reason.SYNCED, f"Script sha256 {short(ctx.desired_sha256)} applied to CVM {ctx.spec.cvm_id}"
    )


def new_sync(ctx: StepContext, *, look_first: bool, why: str | None = None) -> Transition:
    target = SyncTarget(
        cvm_id=ctx.spec.cvm_id,
        script_sha256=ctx.desired_sha256,
        started_at=ctx.now,
        config_map_version=ctx.source.resource_version,
    )
    # No Event here: a sync posts one when it ends (Applied), and one per on-chain milestone; status
    # shows the step meanwhile. Every Event is a request to the API server like any other.
    message = f"Uploading script sha256 {short(ctx.desired_sha256)} to CVM {ctx.spec.cvm_id}"
    return Transition(
        state=Uploading(target, look_first=look_first),
        verdict=Verdict("Uploading", Reason.UPLOADING, why or message),
        then="continue",
    )


async def step(ctx: StepContext) -> Transition:
    """The desired script is applied already: confirm it, and check for drift when due."""
    interval = ctx.spec.drift_check_interval
    last = ctx.status.last_drift_check_at or 0.0
    was_drifted = ctx.status.ready_reason == Reason.DRIFTED
    # After anything but Synced (a failure whose inputs changed since), look at the CVM instead of
    # trusting status; a spec edit makes the next drift check due at once.
    recheck = ctx.status.phase != "Synced"
    edited = ctx.status.observed_generation != ctx.res.generation
    due = interval > 0 and (ctx.now >= last + interval or edited)
    if not due and not recheck:
        return Transition(
            state=None,
            verdict=synced_verdict(ctx, drifted=was_drifted),
            requeue_after=max(1.0, last + interval - ctx.now) if interval > 0 else None,
        )
    cloud = await ctx.cloud()
    try:
        remote = await cloud.get_pre_launch_script(ctx.spec.cvm_id)
    except SyncError as exc:
        if recheck:
            raise  # part of a sync, not a periodic check: a failure like any other
        return Transition(
            state=None,
            verdict=synced_verdict(ctx, drifted=was_drifted),
            status=StatusPatch(last_drift_check_at=ctx.now, last_drift_check_error=cut(str(exc))),
            requeue_after=min(interval, ctx.policy.drift_retry) if interval > 0 else None,
        )
    drifted = script_sha256(remote.encode("utf-8")) != ctx.desired_sha256
    checked = StatusPatch(last_drift_check_at=ctx.now, last_drift_check_error=None)
    if drifted:
        ctx.ports.observer.drift()
        if ctx.spec.drift_policy == "Correct":
            upload = new_sync(
                ctx, look_first=False, why="The CVM runs another script; re-applying the desired one"
            )
            return Transition(
                state=upload.state,
                verdict=upload.verdict,
                status=checked,
                events=(
                    Event(
                        "Warning",
                        str(Reason.DRIFTED),
                        f"CVM {ctx.spec.cvm_id} runs another script; re-applying the desired one",
                    ),
                ),
                then="continue",
            )
        return Transition(
            state=None,
            verdict=synced_verdict(ctx, drifted=True),
            status=checked,
            events=()
            if was_drifted
            else (
                Event(
                    "Warning",
                    str(Reason.DRIFTED),
                    f"CVM {ctx.spec.cvm_id} runs a script that differs from the ConfigMap",
                ),
            ),
            requeue_after=interval if interval > 0 else None,
        )
    return Transition(
        state=None,
        verdict=synced_verdict(ctx, drifted=False),
        status=checked,
        requeue_after=interval if interval > 0 else None,
    )
