"""AwaitingConfirmations: the registration is mined; Phase 2 waits until it has the requested
confirmations on the canonical chain.

Each pass re-reads the receipt (one round for all versions): a receipt that moved to another block
after a reorg is followed there; one that disappeared sends the resource back to Registering (where a
transaction the node lost is broadcast again); the confirmations are counted from the canonical head.
Waiting is progress (Ready=False, Reconciling=True, reason AwaitingConfirmations), never a failure.
"""

from __future__ import annotations

from dataclasses import replace

from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import (
    Applying,
    AwaitingApproval,
    AwaitingConfirmations,
    Registering,
)
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import (
    check_chain,
    observe_head,
    registration_failed,
    registration_problem,
    remembered,
    seconds_to_next_block,
)


async def step(ctx: StepContext, state: AwaitingConfirmations) -> Transition:
    chain = state.chain
    client = await ctx.chain()
    hashes = list(dict.fromkeys([state.tx_hash, *(v.tx_hash for v in state.versions)]))
    sender = state.versions[-1].sender if state.versions else None
    tracking = await ctx.track(client, hashes, sender=sender)
    check_chain(tracking.chain_id, chain)
    observe_head(ctx, chain.chain_id, tracking)
    receipt = tracking.receipts.get(state.tx_hash)
    if receipt is None:
        other = next(
            ((h, r) for h in hashes if (r := tracking.receipts.get(h)) is not None and r.succeeded), None
        )
        if other is not None:
            receipt = other[1]
            state = replace(state, tx_hash=other[0])
    if receipt is None:
        return _gone(ctx, state)
    if receipt.block_number != state.block_number or receipt.block_hash != state.block_hash:
        state = replace(state, block_number=receipt.block_number, block_hash=receipt.block_hash)
    problem = registration_problem(receipt, chain)
    if problem is not None:
        sender = state.versions[-1].sender if state.versions else None
        return await registration_failed(ctx, chain, state.tx_hash, receipt, problem, sender)
    wanted = ctx.spec.on_chain.confirmations if ctx.spec.on_chain is not None else 1
    # A receipt proves its block: a head read in the same round may still be its parent (a node that
    # mines on demand can answer the head before it has switched to the block it just made).
    have = max(tracking.head.number, receipt.block_number) - receipt.block_number + 1
    if have < wanted:
        return Transition(
            state=state,
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.AWAITING_CONFIRMATIONS,
                f"{max(have, 0)} of {wanted} confirmations (mined in block {receipt.block_number})",
            ),
            status=StatusPatch(transaction_hash=state.tx_hash),
            then="wait",
            requeue_after=seconds_to_next_block(ctx, chain.chain_id),
        )
    status = remembered(ctx, chain, state.tx_hash, receipt.block_number).merged(
        StatusPatch(transaction_hash=state.tx_hash)
    )
    if not state.external and not state.reused:
        ctx.ports.observer.transaction("registered")
    elif state.external:
        ctx.ports.observer.transaction("verified")
    event = Event(
        "Normal",
        "RegistrationConfirmed",
        f"Compose hash {chain.compose_hash_hex} registered in block {receipt.block_number} (transaction "
        f"{state.tx_hash}, {have} confirmations)"
        + (" - an existing registration, reused" if state.reused else ""),
    )
    if ctx.settling:
        return Transition(
            state=None,
            verdict=Verdict(
                "Pending", Reason.PROGRESSING, "An earlier registration settled; starting a new sync"
            ),
            status=status,
            events=(event,),
            then="continue",
        )
    return Transition(
        state=Applying(
            state.target,
            chain,
            transaction_hash=state.tx_hash,
            block_number=receipt.block_number,
            start_overs=state.start_overs,
        ),
        verdict=Verdict(
            "Applying",
            Reason.APPLYING,
            f"Compose hash registered in transaction {state.tx_hash} (block {receipt.block_number}); "
            "applying",
        ),
        status=status,
        events=(event,),
        then="continue",
    )


def _gone(ctx: StepContext, state: AwaitingConfirmations) -> Transition:
    """The receipt is no longer on the canonical chain (a reorg)."""
    chain = state.chain
    message = (
        f"Transaction {state.tx_hash} is no longer in block {state.block_number} (chain reorganisation); "
        "waiting for it to be mined again"
    )
    back: Registering | AwaitingApproval
    if state.external and chain.signer is None:
        back = AwaitingApproval(
            state.target, chain, waiting_for="Transaction", since=ctx.now, start_overs=state.start_overs
        )
    else:
        # Ours: the versions are followed again (and broadcast again if the node lost them). Reused or
        # outside ones: the hash is looked for again before anything is signed.
        back = Registering(
            state.target,
            chain,
            start_block=state.start_block,
            versions=state.versions,
            start_overs=state.start_overs,
        )
    return Transition(
        state=back,
        verdict=Verdict("RegisteringOnChain", Reason.REGISTERING_ON_CHAIN, message),
        then="continue",
    )
