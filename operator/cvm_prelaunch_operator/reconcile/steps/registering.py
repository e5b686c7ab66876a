"""Registering: ``addComposeHash`` on the app contract, exactly once, within the user's fee ceiling.

Without a transaction yet, the step surveys the chain in one round (chain id, head, owner, devices,
whether the hash is allowed already, balance, nonces, gas estimate, fee suggestions) and either reuses
a ``ComposeHashAdded`` of this hash already on the canonical chain (whoever sent it), or signs a new
transaction. The signed transaction becomes a version of the state and is persisted *before* it is
broadcast (the engine writes the state, then runs this step again, which broadcasts it).

With transactions, each pass looks at every version in one round and decides:

- one is mined: AwaitingConfirmations (or, if it reverted or logged no ``ComposeHashAdded``, the record
  is discarded and the resource stalls with the decoded cause: it can never succeed);
- the sender's nonce moved past them and none is mined: another transaction took the nonce; the record
  is discarded (Event ``TransactionReplaced``) and the next pass looks for the hash on chain first;
- the node no longer knows any version: the same bytes are broadcast again (``TransactionRebroadcast``);
- the base fee has stayed above the newest version's fee cap for ``UNDERPRICED_BLOCKS`` blocks (or the
  node refused it as underpriced): a replacement with the same nonce and both fees at least 12.5 %
  higher, never above the ceiling (``TransactionReplaced``);
- otherwise it waits for the next block: the worker is free meanwhile.

A registration the spec no longer names (settle mode: the CVM, script or signer changed after it was
broadcast) is only waited for: when it would need a broadcast again, a replacement or a gap filler, its
versions are set aside in ``status.unsettledTransactions`` instead, so nothing new ever leaves for a target
the spec does not name.

Nonces: one lock per (chain, signer) in the process is held from the survey that reads the nonce to the
broadcast of the transaction signed with it (until the end of that pass).
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.chain import (
    Receipt,
    SendResult,
    Survey,
    Tracking,
    UnsignedTx,
    add_compose_hash_calldata,
    same_address,
)
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import Permanent
from cvm_prelaunch_operator.domain.fees import (
    UNDERPRICED_BLOCKS,
    OverCeiling,
    format_gwei,
    gas_limit,
    priced_out,
    quote,
    replacement,
)
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import (
    AwaitingConfirmations,
    Registering,
    TxVersion,
)
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.ports import ChainClient
from cvm_prelaunch_operator.reconcile.steps import unsettled
from cvm_prelaunch_operator.reconcile.steps.common import (
    check_chain,
    observe_head,
    registration_failed,
    registration_problem,
    revert_reason,
    seconds_to_next_block,
    sign_registration,
)
from cvm_prelaunch_operator.reconcile.steps.outside import Ignored, outside_registration

MAX_VERSIONS = 16  # versions of one registration (the CRD's bound); past it the newest is left to be mined


async def step(ctx: StepContext, state: Registering) -> Transition:
    chain = state.chain
    if not state.versions:
        if ctx.settling:
            return Transition(
                state=None,
                verdict=Verdict(
                    "Pending", Reason.PROGRESSING, "The inputs changed before anything was signed"
                ),
                then="continue",
            )
        return await _begin(ctx, state)
    client = await ctx.chain()
    newest = state.versions[-1]
    refused = False
    if ctx.fresh:
        # Persisted before this pass ran the step: now it may go out.
        ctx.may_act()
        refused = await client.send(newest.raw) is SendResult.UNDERPRICED
    # Looked at right away too: an automining chain has mined it already.
    tracking = await ctx.track(client, [v.tx_hash for v in state.versions], sender=newest.sender)
    check_chain(tracking.chain_id, chain)
    observe_head(ctx, chain.chain_id, tracking)
    return await decide(ctx, state, tracking, refused_as_underpriced=refused, just_sent=ctx.fresh)


async def decide(
    ctx: StepContext,
    state: Registering,
    tracking: Tracking,
    *,
    refused_as_underpriced: bool = False,
    just_sent: bool = False,
) -> Transition:
    """What the chain's answer about every version means."""
    chain = state.chain
    newest = state.versions[-1]
    events: tuple[Event, ...] = ()
    mined = _mined(state.versions, tracking)
    if mined is not None:
        version, receipt = mined
        problem = registration_problem(receipt, chain)
        if problem is not None:
            return await registration_failed(ctx, chain, version.tx_hash, receipt, problem, version.sender)
        return Transition(
            state=state.mined(receipt, state.versions),
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.AWAITING_CONFIRMATIONS,
                f"Transaction {version.tx_hash} mined in block {receipt.block_number}",
            ),
            status=StatusPatch(transaction_hash=version.tx_hash),
            events=events,
            then="continue",
            # A restart that lost it finds the same receipt from the Registering record it replaces.
            lazy=True,
        )
    if tracking.mined_nonce is not None and tracking.mined_nonce > newest.nonce:
        # Two transactions with one nonce are never both mined: ours can never be.
        discarded = ", ".join(v.tx_hash for v in state.versions)
        event = Event(
            "Normal",
            "TransactionReplaced",
            f"Nonce {newest.nonce} of {newest.sender} was used by another transaction; {discarded} "
            "will never be mined and is discarded",
        )
        ctx.ports.observer.transaction("replaced")
        if ctx.settling:
            return Transition(
                state=None,
                verdict=Verdict("Pending", Reason.PROGRESSING, "The earlier registration was replaced"),
                events=(*events, event),
                then="continue",
            )
        return Transition(
            state=Registering(
                state.target, chain, start_block=state.start_block, start_overs=state.start_overs
            ),
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.REGISTERING_ON_CHAIN,
                f"Nonce {newest.nonce} was used by another transaction; looking for the registration on "
                "chain",
            ),
            events=(*events, event),
            then="continue",
        )
    base_fee = tracking.head.base_fee
    lost = not any(tracking.transactions.get(v.tx_hash) is not None for v in state.versions)
    if ctx.settling and (
        refused_as_underpriced or lost or _behind_a_gap(tracking, newest) or priced_out(newest.fees, base_fee)
    ):
        return _set_aside(ctx, state)
    if refused_as_underpriced:
        replaced = await _replace(ctx, state, base_fee=base_fee, why="the node refused it as underpriced")
        if replaced is not None:
            return replaced
    if lost:
        # Dropped by the node (restart, eviction): the same signed bytes are always safe to send again.
        client = await ctx.chain()
        ctx.may_act()
        if await client.send(newest.raw) is SendResult.UNDERPRICED:
            # Evicted because the base fee rose above its fee cap (anvil does, some pools do): the same
            # bytes cannot come back, only a replacement can.
            replaced = await _replace(ctx, state, base_fee=base_fee, why="the node dropped it as underpriced")
            if replaced is not None:
                return replaced
        return Transition(
            state=state,
            verdict=Verdict(
                "RegisteringOnChain",
                Reason.REGISTERING_ON_CHAIN,
                f"Transaction {newest.tx_hash} was unknown to the node; broadcast again",
            ),
            events=(
                *events,
                Event(
                    "Normal",
                    "TransactionRebroadcast",
                    f"Transaction {newest.tx_hash} (nonce {newest.nonce}) was dropped by the node; sent the "
                    "same signed bytes again",
                ),
            ),
            then="wait",
            requeue_after=seconds_to_next_block(ctx, chain.chain_id, first_look=True),
        )
    if _behind_a_gap(tracking, newest):
        filled = await _fill_gap(ctx, state, tracking)
        if filled is not None:
            return filled
    if priced_out(newest.fees, base_fee):
        since = state.underpriced_since if state.underpriced_since is not None else tracking.head.number
        if tracking.head.number - since >= UNDERPRICED_BLOCKS:
            replaced = await _replace(
                ctx,
                state,
                base_fee=base_fee,
                why=f"the base fee {format_gwei(base_fee or 0)} gwei has been above its fee cap "
                f"{format_gwei(newest.fees.max_fee_per_gas)} gwei since block {since}",
            )
            if replaced is not None:
                return replaced
        return _waiting(
            ctx,
            Registering(
                state.target,
                chain,
                start_block=state.start_block,
                versions=state.versions,
                underpriced_since=since,
                start_overs=state.start_overs,
            ),
            f"Transaction {newest.tx_hash} is priced out (base fee {format_gwei(base_fee or 0)} gwei above "
            "its "
            f"fee cap {format_gwei(newest.fees.max_fee_per_gas)} gwei since block {since}); waiting",
            events,
        )
    if state.underpriced_since is not None:
        state = Registering(
            state.target,
            chain,
            start_block=state.start_block,
            versions=state.versions,
            start_overs=state.start_overs,
        )
    return _waiting(
        ctx,
        state,
        f"Transaction {newest.tx_hash} (nonce {newest.nonce}) is pending; head is block "
        f"{tracking.head.number}",
        events,
        just_sent=just_sent,
    )


def _behind_a_gap(tracking: Tracking, newest: TxVersion) -> bool:
    """Our transaction waits behind a nonce no pending transaction uses (one of the sender's went missing:
    dropped, or un-mined by a reorg): it can never be mined until that nonce is used."""
    if tracking.mined_nonce is None or tracking.pending_nonce is None or newest.sent_in_block is None:
        return False
    return (
        tracking.mined_nonce < newest.nonce
        and tracking.pending_nonce <= newest.nonce
        and tracking.head.number - newest.sent_in_block >= UNDERPRICED_BLOCKS
    )


async def _fill_gap(ctx: StepContext, state: Registering, tracking: Tracking) -> Transition | None:
    """Use the missing nonce with a transfer of nothing to the sender itself, so the registration behind
    it can be mined. Not recorded first: a filler registers nothing, so sending another (or a replacement
    of it) after a restart can never register a hash twice."""
    chain = state.chain
    newest = state.versions[-1]
    address = await ctx.signer_address()
    if address is None or not same_address(address, newest.sender) or tracking.mined_nonce is None:
        return None
    ceiling = ctx.chain_policy.ceiling(ctx.spec.on_chain.max_fee_per_gas if ctx.spec.on_chain else None)
    fees = quote(
        base_fee=tracking.head.base_fee,
        suggested_tip=None,
        gas_price=newest.fees.max_fee_per_gas,
        ceiling=ceiling,
    )
    if isinstance(fees, OverCeiling):
        return _fee_wait(
            ctx,
            state,
            f"Nonce {tracking.mined_nonce} is missing before transaction {newest.tx_hash}; {fees.message}",
        )
    gap = tracking.mined_nonce
    await ctx.hold_signer_lock(chain.chain_id, address)
    filler = ctx.ports.signer.sign(
        await ctx.signer_key(),
        UnsignedTx(chain_id=chain.chain_id, nonce=gap, to=address, data="0x", gas=21_000, fees=fees),
    )
    client = await ctx.chain()
    ctx.may_act()
    await client.send(filler.raw)
    message = (
        f"Nonce {gap} of {address} went missing (dropped, or undone by a reorg) and holds back transaction "
        f"{newest.tx_hash} (nonce {newest.nonce}); sent {filler.tx_hash}, a transfer of nothing to itself, "
        "to use it"
    )
    return Transition(
        state=state,
        verdict=Verdict("RegisteringOnChain", Reason.REGISTERING_ON_CHAIN, message),
        events=(Event("Normal", "NonceGapFilled", message),),
        then="wait",
        requeue_after=seconds_to_next_block(ctx, chain.chain_id, first_look=True),
    )


def _set_aside(ctx: StepContext, state: Registering) -> Transition:
    """A registration for inputs the spec no longer names that needs more than waiting (a broadcast
    again, a replacement, a filler): nothing more is sent for it. Its versions join
    ``status.unsettledTransactions``, looked at before this signer signs again on this chain."""
    newest = state.versions[-1]
    return Transition(
        state=None,
        verdict=Verdict(
            "Pending",
            Reason.PROGRESSING,
            f"Transaction {newest.tx_hash} (nonce {newest.nonce}) is for inputs the spec no longer names "
            "and is not being mined; nothing more is sent for it, it is set aside and looked at before the "
            "signer signs again",
        ),
        status=unsettled.set_aside(ctx.status, state, state.versions),
        then="continue",
    )


def _waiting(
    ctx: StepContext,
    state: Registering,
    message: str,
    events: tuple[Event, ...],
    *,
    just_sent: bool = False,
) -> Transition:
    # Right after a broadcast the next look is the only one for the coming block: it may come sooner
    # than the poll floor, at the block's expected time.
    return Transition(
        state=state,
        verdict=Verdict("RegisteringOnChain", Reason.REGISTERING_ON_CHAIN, message),
        events=events,
        then="wait",
        requeue_after=seconds_to_next_block(ctx, state.chain.chain_id, first_look=just_sent),
    )


def _mined(versions: tuple[TxVersion, ...], tracking: Tracking) -> tuple[TxVersion, Receipt] | None:
    found = [(v, r) for v in versions if (r := tracking.receipts.get(v.tx_hash)) is not None]
    if not found:
        return None
    # At most one version can be mined (one nonce); prefer a successful one should a node say otherwise.
    return next(((v, r) for v, r in found if r.succeeded), found[0])


async def _replace(
    ctx: StepContext, state: Registering, *, base_fee: int | None, why: str
) -> Transition | None:
    """A replacement of the newest version (same nonce, higher fees), or None when this process cannot
    sign for its sender (a changed signer: the versions are only followed) or has replaced enough."""
    chain = state.chain
    newest = state.versions[-1]
    address = await ctx.signer_address()
    if address is None or not same_address(address, newest.sender) or len(state.versions) >= MAX_VERSIONS:
        return None
    ceiling = ctx.chain_policy.ceiling(ctx.spec.on_chain.max_fee_per_gas if ctx.spec.on_chain else None)
    fees = replacement(newest.fees, base_fee=base_fee, suggested_tip=None, ceiling=ceiling)
    if isinstance(fees, OverCeiling):
        return _fee_wait(ctx, state, f"{fees.message}; transaction {newest.tx_hash} stays pending")
    await ctx.hold_signer_lock(chain.chain_id, address)
    version = await sign_registration(
        ctx, chain, nonce=newest.nonce, gas=newest.gas, fees=fees, sent_in_block=newest.sent_in_block
    )
    return Transition(
        state=Registering(
            state.target,
            chain,
            start_block=state.start_block,
            versions=(*state.versions, version),
            start_overs=state.start_overs,
        ),
        verdict=Verdict(
            "RegisteringOnChain",
            Reason.REGISTERING_ON_CHAIN,
            f"Replacing transaction {newest.tx_hash} with {version.tx_hash} (same nonce {newest.nonce}): "
            f"{why}",
        ),
        events=(
            Event(
                "Normal",
                "TransactionReplaced",
                f"Transaction {newest.tx_hash} replaced by {version.tx_hash} (nonce {newest.nonce}, "
                "maxFeePerGas "
                f"{format_gwei(fees.max_fee_per_gas)} gwei, maxPriorityFeePerGas "
                f"{format_gwei(fees.max_priority_fee_per_gas or 0)} gwei): {why}",
            ),
        ),
        then="continue",
    )


def _fee_wait(ctx: StepContext, state: Registering, message: str) -> Transition:
    ceiling_note = (
        "raise spec.onChain.maxFeePerGas to go on at once"
        if ctx.spec.on_chain is not None
        else "the ceiling is the operator's MAX_FEE_PER_GAS_GWEI"
    )
    return Transition(
        state=state,
        verdict=Verdict("RegisteringOnChain", Reason.FEE_CEILING_REACHED, f"{message}; {ceiling_note}"),
        then="wait",
        requeue_after=min(ctx.policy.fee_wait, seconds_to_next_block(ctx, state.chain.chain_id)),
    )


async def _begin(ctx: StepContext, state: Registering) -> Transition:
    """No transaction yet: reuse what is on chain, or sign one."""
    chain = state.chain
    outside = await outside_registration(ctx, state)
    if isinstance(outside, Transition):
        return outside
    status = outside.status if isinstance(outside, Ignored) else StatusPatch()
    events: tuple[Event, ...] = (outside.event,) if isinstance(outside, Ignored) else ()
    address = await ctx.signer_address()
    if address is None or not same_address(address, chain.signer):
        # The signer went away or changed under this state (the engine restarts stale states; this is
        # the belt to its braces): nothing is signed for another key than the state was made for.
        return Transition(
            state=None,
            verdict=Verdict("Pending", Reason.PROGRESSING, "The signer changed; starting over"),
            status=status,
            events=events,
            then="continue",
        )
    client = await ctx.chain()
    await ctx.hold_signer_lock(chain.chain_id, address)
    adopted = await unsettled.settle_before_signing(ctx, client, state, address)
    if adopted is not None:
        return adopted
    calldata = add_compose_hash_calldata(chain.compose_hash_hex)
    asked_at = ctx.now
    survey = await client.survey(
        contract=chain.app_contract,
        compose_hash=chain.compose_hash_hex,
        device_id=chain.device_id,
        signer=address,
        call_data=calldata,
    )
    check_chain(survey.chain_id, chain)
    clock = ctx.block_clock(chain.chain_id)
    clock.observe(survey.head, ctx.now, asked_at=asked_at)
    if clock.needs_interval_sample:
        # Once per chain and process: an older block's timestamp teaches the block interval.
        older = clock.sample_block()
        clock.learn_from(older, await client.block_timestamp(older))
    ctx.ports.observer.signer_balance(chain.chain_id, address, survey.signer_balance)
    start_block = state.start_block if state.start_block is not None else survey.head.number
    if survey.hash_allowed:
        reused = await _reuse(ctx, client, state, survey, start_block)
        if reused is not None:
            return reused
    _refuse_problems(chain.app_contract, address, survey, chain.device_id)
    ceiling = ctx.chain_policy.ceiling(ctx.spec.on_chain.max_fee_per_gas if ctx.spec.on_chain else None)
    assert survey.gas_estimate is not None  # _refuse_problems: a reverted estimate stalls
    gas = gas_limit(survey.gas_estimate, margin=ctx.chain_policy.gas_margin, ceiling=ceiling)
    if isinstance(gas, OverCeiling):
        return _fee_wait(
            ctx,
            Registering(state.target, chain, start_block=start_block, start_overs=state.start_overs),
            f"Nothing signed: {gas.message}",
        )
    fees = quote(
        base_fee=survey.head.base_fee,
        suggested_tip=survey.priority_fee,
        gas_price=survey.gas_price,
        ceiling=ceiling,
    )
    if isinstance(fees, OverCeiling):
        return _fee_wait(
            ctx,
            Registering(state.target, chain, start_block=start_block, start_overs=state.start_overs),
            f"Nothing signed: {fees.message}",
        )
    cost = gas * fees.max_fee_per_gas
    if survey.signer_balance < cost:
        raise Permanent(
            f"signer {address} holds {survey.signer_balance / 10**18:.6f} ETH but the transaction may cost "
            "up to "
            f"{cost / 10**18:.6f} ETH (gas {gas} x max fee {format_gwei(fees.max_fee_per_gas)} gwei) on "
            "chain "
            f"{chain.chain_id}: fund the signer",
            reason=Reason.INSUFFICIENT_FUNDS,
        )
    nonce = max(survey.pending_nonce, survey.mined_nonce)
    version = await sign_registration(
        ctx, chain, nonce=nonce, gas=gas, fees=fees, sent_in_block=survey.head.number
    )
    return Transition(
        state=Registering(
            state.target, chain, start_block=start_block, versions=(version,), start_overs=state.start_overs
        ),
        verdict=Verdict(
            "RegisteringOnChain",
            Reason.REGISTERING_ON_CHAIN,
            f"Transaction {version.tx_hash} registers {chain.compose_hash_hex}; waiting for it to be mined",
        ),
        status=status.merged(StatusPatch(transaction_hash=version.tx_hash)),
        events=(
            *events,
            Event(
                "Normal",
                "RegistrationSent",
                f"Sent addComposeHash({chain.compose_hash_hex}) in transaction {version.tx_hash} (nonce "
                f"{nonce})",
            ),
        ),
        then="continue",
    )


def _refuse_problems(contract: str, address: str, survey: Survey, device_id: str | None) -> None:
    if not same_address(survey.owner, address):
        raise Permanent(
            f"signer {address} is not the owner {survey.owner} of app contract {contract}; only the owner "
            "can add "
            "compose hashes (an owner that is a contract, such as a multisig, needs its own approval flow)",
            reason=Reason.NOT_CONTRACT_OWNER,
        )
    if device_id and not survey.any_device_allowed and survey.device_allowed is False:
        raise Permanent(
            f"device {device_id} is not allowed by app contract {contract} and allowAnyDevice() is false, "
            "so the "
            "CVM would not boot after the update. Allowing a device is an explicit decision: the owner calls "
            f"addDevice({device_id}) on the contract (or setAllowAnyDevice(true)); the operator never does "
            "it "
            "on its own",
            reason=Reason.DEVICE_NOT_ALLOWED,
        )
    if survey.gas_estimate is None:
        reason, cause = revert_reason(survey.estimate_revert)
        raise Permanent(f"addComposeHash would revert on app contract {contract}: {cause}", reason=reason)


async def _reuse(
    ctx: StepContext, client: ChainClient, state: Registering, survey: Survey, start_block: int
) -> Transition | None:
    """The hash is allowed already: reuse a ComposeHashAdded of it on the canonical chain."""
    chain = state.chain
    head = survey.head.number
    ranges: list[tuple[int, int]] = []
    known = ctx.status.known_registration(chain.compose_hash_hex, chain.chain_id)
    if known is not None and 0 < known.block_number <= head:
        ranges.append((known.block_number, known.block_number))
    window_start = max(0, head - ctx.chain_policy.log_search_blocks)
    ranges.append((window_start, head))
    for first, last in ranges:
        logs = await client.compose_hash_logs(
            contract=chain.app_contract, compose_hash=chain.compose_hash_hex, from_block=first, to_block=last
        )
        if logs:
            log = max(logs, key=lambda entry: entry.block_number)
            ctx.ports.observer.transaction("reused")
            return Transition(
                state=AwaitingConfirmations(
                    state.target,
                    chain,
                    tx_hash=log.tx_hash,
                    block_number=log.block_number,
                    block_hash=log.block_hash,
                    start_block=start_block,
                    reused=True,
                    start_overs=state.start_overs,
                ),
                verdict=Verdict(
                    "RegisteringOnChain",
                    Reason.AWAITING_CONFIRMATIONS,
                    f"Compose hash {chain.compose_hash_hex} is registered already (transaction "
                    f"{log.tx_hash}, "
                    f"block {log.block_number}); reusing it",
                ),
                status=StatusPatch(transaction_hash=log.tx_hash),
                then="continue",
            )
    return None
