"""A registration made outside the operator, named by the ``cloud.phala.com/transaction-hash`` annotation.

It is used only when its transaction registers the compose hash asked for now (its calldata is
``addComposeHash(hash)`` to the app contract, or its receipt logs ``ComposeHashAdded(hash)``). Any other
transaction - an older hash left in the annotation, a typo - is ignored with one Event, and a configured
signer signs as usual; without a signer the resource keeps waiting for the right one.
"""

from __future__ import annotations

from dataclasses import dataclass

from cvm_prelaunch_operator.domain.chain import compose_hash_of_calldata, hex32, same_address
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import (
    AwaitingApproval,
    AwaitingConfirmations,
    ChainTarget,
    Registering,
)
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import (
    check_chain,
    observe_head,
    registration_problem,
    seconds_to_next_block,
)


@dataclass(frozen=True)
class Ignored:
    """The annotation names a transaction that does not register the hash asked for now."""

    status: StatusPatch
    event: Event


async def outside_registration(
    ctx: StepContext, state: AwaitingApproval | Registering
) -> Transition | Ignored | None:
    """A transition to follow the annotated transaction, ``Ignored`` (once per annotation value), or
    None when there is nothing to use."""
    annotation = (ctx.notes.transaction_hash or "").strip()
    if not annotation:
        return None
    chain = state.chain
    try:
        tx_hash = hex32(annotation)
    except ValueError:
        return _ignored(ctx, annotation[:80], chain, "it is not a transaction hash (0x and 64 hex digits)")
    if ctx.status.ignored_transaction_hash == tx_hash:
        return None  # said once already
    client = await ctx.chain()
    tracking = await ctx.track(client, [tx_hash], sender=None)
    check_chain(tracking.chain_id, chain)
    observe_head(ctx, chain.chain_id, tracking)
    view = tracking.transactions.get(tx_hash)
    receipt = tracking.receipts.get(tx_hash)
    carries = view is not None and (
        same_address(view.to, chain.app_contract)
        and compose_hash_of_calldata(view.input) == chain.compose_hash_hex
    )
    if receipt is not None:
        carries = carries or receipt.logs_compose_hash(chain.app_contract, chain.compose_hash_hex)
    if view is None and receipt is None:
        return _ignored(ctx, tx_hash, chain, f"chain {chain.chain_id} does not know the transaction")
    if receipt is not None and (problem := registration_problem(receipt, chain)) is not None:
        return _ignored(ctx, tx_hash, chain, f"it {problem} in block {receipt.block_number}")
    if not carries:
        return _ignored(
            ctx,
            tx_hash,
            chain,
            f"it does not call addComposeHash({chain.compose_hash_hex}) on {chain.app_contract}",
        )
    if receipt is None:
        return Transition(
            state=state,
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.AWAITING_CONFIRMATIONS,
                f"Transaction {tx_hash} (from annotation cloud.phala.com/transaction-hash) registers "
                f"{chain.compose_hash_hex}; waiting for it to be mined",
            ),
            then="wait",
            requeue_after=seconds_to_next_block(ctx, chain.chain_id),
        )
    confirming = AwaitingConfirmations(
        state.target,
        chain,
        tx_hash=tx_hash,
        block_number=receipt.block_number,
        block_hash=receipt.block_hash,
        start_block=receipt.block_number,
        external=True,
        start_overs=state.start_overs,
    )
    return Transition(
        state=confirming,
        verdict=Verdict(
            "RegisteringOnChain",
            Reason.AWAITING_CONFIRMATIONS,
            f"Transaction {tx_hash} from annotation cloud.phala.com/transaction-hash was mined in block "
            f"{receipt.block_number}",
        ),
        status=StatusPatch(transaction_hash=tx_hash, ignored_transaction_hash=None),
        then="continue",
    )


def _ignored(ctx: StepContext, shown: str, chain: ChainTarget, why: str) -> Ignored | None:
    if ctx.status.ignored_transaction_hash == shown:
        return None
    signer_note = (
        "the configured signer signs instead" if chain.signer else "waiting for the right transaction"
    )
    return Ignored(
        status=StatusPatch(ignored_transaction_hash=shown),
        event=Event(
            "Normal",
            "TransactionHashIgnored",
            f"Annotation cloud.phala.com/transaction-hash {shown} is ignored: {why}; {signer_note}",
        ),
    )
