"""Transactions broadcast for inputs that changed before they settled, kept in
``status.unsettledTransactions`` when no configured RPC could finish them (``spec.onChain`` removed, or
pointed at another chain), or when finishing them would mean sending something more for inputs the spec
no longer names (a broadcast again, a replacement, a gap filler).

They are never forgotten while they could still be mined: before this signer signs anything new on
that chain, each one is looked at. Mined: remembered as a registration (and reused when it is the hash
asked for now). Its nonce taken by another transaction: dropped. Still pending: adopted when it
registers the hash asked for now, otherwise replaced by the new registration (same nonce, higher fees),
so two transactions of the signer never race for different nonces behind a stuck one.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.chain import same_address
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.fees import OverCeiling, replacement
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import Registering, State, TxVersion
from cvm_prelaunch_operator.domain.status import (
    KnownRegistration,
    StatusPatch,
    StatusView,
    UnsettledTransaction,
    remember,
)
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.ports import ChainClient
from cvm_prelaunch_operator.reconcile.steps.common import (
    check_chain,
    registration_problem,
    same_hash,
    sign_registration,
)


def set_aside(status: StatusView, state: State, versions: tuple[TxVersion, ...]) -> StatusPatch:
    """``status.unsettledTransactions`` with the broadcast versions of a state that is given up."""
    chain = getattr(state, "chain", None)
    if chain is None or not versions:
        return StatusPatch()
    entry = UnsettledTransaction(
        chain_id=chain.chain_id,
        app_contract=chain.app_contract,
        compose_hash=chain.compose_hash_hex,
        versions=versions,
    )
    kept = tuple(u for u in status.unsettled if u.versions[-1].tx_hash != versions[-1].tx_hash)
    return StatusPatch(unsettled=(*kept, entry))


async def settle_before_signing(
    ctx: StepContext, client: ChainClient, state: Registering, address: str
) -> Transition | None:
    """Looks at the signer's unsettled transactions on this chain; a transition when one of them decides
    what happens next (reuse, adopt, replace), else None after dropping the settled ones."""
    chain = state.chain
    mine = [
        u for u in ctx.status.unsettled if u.chain_id == chain.chain_id and same_address(u.sender, address)
    ]
    if not mine:
        return None
    remaining = list(ctx.status.unsettled)
    registrations = ctx.status.registrations
    events: list[Event] = []
    decided: Transition | None = None
    for entry in mine:
        tracking = await client.track([v.tx_hash for v in entry.versions], sender=entry.sender)
        check_chain(tracking.chain_id, chain)
        receipt = next(
            (r for v in entry.versions if (r := tracking.receipts.get(v.tx_hash)) is not None), None
        )
        entry_chain_hash = entry.compose_hash
        if receipt is not None:
            remaining.remove(entry)
            settled_ok = receipt.succeeded and receipt.logs_compose_hash(entry.app_contract, entry_chain_hash)
            if settled_ok:
                registrations = remember(
                    registrations,
                    KnownRegistration(
                        compose_hash=entry_chain_hash,
                        transaction_hash=receipt.tx_hash,
                        block_number=receipt.block_number,
                        chain_id=entry.chain_id,
                        app_contract=entry.app_contract,
                    ),
                )
                if (
                    decided is None
                    and same_hash(entry_chain_hash, chain.compose_hash_hex)
                    and same_address(entry.app_contract, chain.app_contract)
                    and registration_problem(receipt, chain) is None
                ):
                    decided = Transition(
                        state=state.mined(receipt, entry.versions),
                        verdict=Verdict(
                            "RegisteringOnChain",
                            Reason.AWAITING_CONFIRMATIONS,
                            f"An earlier transaction {receipt.tx_hash} registered {chain.compose_hash_hex}; "
                            "reusing it",
                        ),
                        then="continue",
                    )
            continue
        if tracking.mined_nonce is not None and tracking.mined_nonce > entry.nonce:
            remaining.remove(entry)
            events.append(
                Event(
                    "Normal",
                    "TransactionReplaced",
                    f"Nonce {entry.nonce} of {entry.sender} was used by another transaction; earlier "
                    f"transaction {entry.versions[-1].tx_hash} is discarded",
                )
            )
            continue
        if decided is not None:
            continue
        remaining.remove(entry)
        if same_hash(entry_chain_hash, chain.compose_hash_hex) and same_address(
            entry.app_contract, chain.app_contract
        ):
            decided = Transition(
                state=Registering(
                    state.target,
                    chain,
                    start_block=state.start_block,
                    versions=entry.versions,
                    start_overs=state.start_overs,
                ),
                verdict=Verdict(
                    "RegisteringOnChain",
                    Reason.REGISTERING_ON_CHAIN,
                    f"An earlier transaction {entry.versions[-1].tx_hash} registering this hash is pending; "
                    "following it",
                ),
                then="continue",
            )
            continue
        decided = await _replace_with_ours(ctx, state, entry, tracking.head.base_fee)
        if decided is None:
            remaining.append(entry)  # could not replace it (fees): look again next time
    patch = StatusPatch(unsettled=tuple(remaining), registrations=registrations)
    if decided is None and tuple(remaining) == ctx.status.unsettled and not events:
        return None  # all still pending for another hash and not replaceable now: sign behind them
    if decided is None:
        # Everything looked at is settled or dropped: record it and go on signing in the next pass step.
        return Transition(
            state=state,
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.REGISTERING_ON_CHAIN,
                "Earlier transactions of the signer settled",
            ),
            status=patch,
            events=tuple(events),
            then="continue",
        )
    return Transition(
        state=decided.state,
        verdict=decided.verdict,
        status=patch.merged(decided.status),
        events=(*events, *decided.events),
        then=decided.then,
        requeue_after=decided.requeue_after,
    )


async def _replace_with_ours(
    ctx: StepContext, state: Registering, entry: UnsettledTransaction, base_fee: int | None
) -> Transition | None:
    """Our registration with the pending entry's nonce and higher fees: only one of them can be mined."""
    chain = state.chain
    newest = entry.versions[-1]
    ceiling = ctx.chain_policy.ceiling(ctx.spec.on_chain.max_fee_per_gas if ctx.spec.on_chain else None)
    fees = replacement(newest.fees, base_fee=base_fee, suggested_tip=None, ceiling=ceiling)
    if isinstance(fees, OverCeiling):
        return None
    version = await sign_registration(
        ctx,
        chain,
        nonce=newest.nonce,
        gas=max(newest.gas, 21_000),
        fees=fees,
        sent_in_block=newest.sent_in_block,
    )
    return Transition(
        state=Registering(
            state.target,
            chain,
            start_block=state.start_block,
            versions=(version,),
            start_overs=state.start_overs,
        ),
        verdict=Verdict(
            "RegisteringOnChain",
            Reason.REGISTERING_ON_CHAIN,
            f"Transaction {version.tx_hash} registers {chain.compose_hash_hex} in place of earlier pending "
            f"transaction {newest.tx_hash} (nonce {newest.nonce})",
        ),
        events=(
            Event(
                "Normal",
                "TransactionReplaced",
                f"Earlier pending transaction {newest.tx_hash} replaced by {version.tx_hash} (nonce "
                f"{newest.nonce})",
            ),
            Event(
                "Normal",
                "RegistrationSent",
                f"Sent addComposeHash({chain.compose_hash_hex}) in transaction {version.tx_hash}",
            ),
        ),
        then="continue",
    )
