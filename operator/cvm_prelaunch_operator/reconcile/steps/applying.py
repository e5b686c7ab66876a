"""Applying: Phase 2, the byte-identical script again with ``X-Compose-Hash`` (exactly as the 465 gave
it) and ``X-Transaction-Hash``. This file answers "how is Phase 2 retried?":

- Before sending, when the state was read back from status (a restart, a retry), the CVM is looked at:
  an update running on it is followed, a CVM whose compose hash is already this one is synced. Phase 2
  is never sent twice for an update that was accepted.
- 202: Following.
- 467 (Phala Cloud cannot see the transaction yet: RPC lag on its side): Phase 2 again after
  ``RetryPolicy.recheck_delay(n)`` (``PHASE2_RECHECK_SECONDS`` x n), up to ``PHASE2_RECHECKS`` times in a
  row. This is waiting, not failing: no failure count, no backoff. Past the limit, the sync starts over.
- 466 (Phala Cloud forgot or superseded the Phase-1 body): the sync starts over from Phase 1 (the
  registration is remembered in ``status.registrations`` and is reused, never paid twice). One sync
  starts over at most ``START_OVERS`` times at once; past that, each start-over waits
  ``RetryPolicy.backoff(n)`` first.
- 468 (the hash is not allowed on the chain Phala Cloud reads): stalled, ``ComposeHashNotAllowed``.
- Transient failures (bare 409, 429, 5xx): the engine's backoff, honouring ``Retry-After``; the state
  stays Applying, so the retry looks at the CVM first.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import RecheckChain, StartOver
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import Applying, Uploading
from cvm_prelaunch_operator.reconcile.context import StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import accepted, adopt_running, same_hash, synced


async def step(ctx: StepContext, state: Applying) -> Transition:
    target, chain = state.target, state.chain
    cloud = await ctx.cloud()
    if not ctx.fresh:
        cvm = await cloud.get_cvm(target.cvm_id)
        if cvm.in_progress and cvm.progress_correlation_id:
            return adopt_running(ctx, target, cvm, chain)
        if cvm.compose_hash and same_hash(cvm.compose_hash, chain.compose_hash_hex):
            return synced(
                ctx,
                target,
                cvm=cvm,
                correlation_id=ctx.status.correlation_id,
                chain=chain,
                transaction_hash=state.transaction_hash,
                how="already runs the registered compose hash",
            )
    ctx.may_act()
    try:
        update = await cloud.patch_pre_launch_script(
            target.cvm_id,
            ctx.source.data,
            compose_hash=chain.compose_hash,
            transaction_hash=state.transaction_hash,
        )
    except RecheckChain as exc:
        rechecks = state.rechecks + 1
        if rechecks >= ctx.policy.phase2_rechecks:
            return start_over(ctx, state, f"Phala Cloud still cannot see the transaction: {exc.message}")
        return Transition(
            state=Applying(
                target,
                chain,
                transaction_hash=state.transaction_hash,
                block_number=state.block_number,
                rechecks=rechecks,
                start_overs=state.start_overs,
            ),
            verdict=Verdict(
                "Applying",
                Reason.APPLYING,
                f"Phala Cloud cannot see transaction {state.transaction_hash} yet (check {rechecks} of "
                f"{ctx.policy.phase2_rechecks}): {exc.message}",
            ),
            then="wait",
            requeue_after=ctx.policy.recheck_delay(rechecks),
        )
    except StartOver as exc:
        return start_over(ctx, state, f"Phala Cloud asked to start over: {exc.message}")
    return accepted(ctx, target, update, chain=chain, transaction_hash=state.transaction_hash)


def start_over(ctx: StepContext, state: Applying, why: str) -> Transition:
    start_overs = state.start_overs + 1
    uploading = Uploading(state.target, start_overs=start_overs)
    if start_overs <= ctx.policy.start_overs:
        return Transition(
            state=uploading,
            verdict=Verdict("Uploading", Reason.REGISTRATION_REJECTED, f"{why} (start-over {start_overs})"),
            then="continue",
        )
    delay = ctx.policy.backoff(start_overs - ctx.policy.start_overs)
    return Transition(
        state=uploading,
        verdict=Verdict(
            "Uploading",
            Reason.REGISTRATION_REJECTED,
            f"{why} (start-over {start_overs}; the next one in {delay:.0f}s)",
            retrying=True,
        ),
        then="wait",
        requeue_after=delay,
    )
