"""Pieces several steps share: how a sync ends, how an accepted update is followed, how long to wait
for a block, how a registration is signed, and what the chain says about one."""

from __future__ import annotations

from cvm_prelaunch_operator.domain.chain import (
    OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR,
    Fees,
    Receipt,
    Tracking,
    UnsignedTx,
    add_compose_hash_calldata,
    hex32,
    revert_selector,
    same_address,
)
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import Permanent
from cvm_prelaunch_operator.domain.models import CvmInfo, UpdateAccepted
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import normalise_hash
from cvm_prelaunch_operator.domain.states import ChainTarget, Following, SyncTarget, TxVersion
from cvm_prelaunch_operator.domain.status import Applied, KnownRegistration, SourceRef, StatusPatch, remember
from cvm_prelaunch_operator.domain.text import NODE_TEXT_LIMIT, cut
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition


def short(sha256: str) -> str:
    return sha256[:12]


def synced(
    ctx: StepContext,
    target: SyncTarget,
    *,
    cvm: CvmInfo | None,
    correlation_id: str | None,
    chain: ChainTarget | None = None,
    transaction_hash: str | None = None,
    how: str = "runs the new script",
) -> Transition:
    """The CVM runs the target script: the sync is over."""
    compose_hash = (cvm.compose_hash if cvm is not None else None) or (chain.compose_hash if chain else None)
    compose_text = normalise_hash(compose_hash) if compose_hash else None
    now = ctx.now
    applied = Applied(
        script_sha256=target.script_sha256,
        cvm_id=target.cvm_id,
        source=SourceRef(
            config_map_name=ctx.source.config_map_name,
            uid=ctx.source.uid,
            resource_version=target.config_map_version or ctx.source.resource_version,
        ),
        compose_hash=compose_text,
        transaction_hash=transaction_hash,
        correlation_id=correlation_id,
        chain_id=chain.chain_id if chain else (cvm.chain_id if cvm is not None else None),
        app_contract=chain.app_contract if chain else None,
        at=now,
    )
    message = f"Script sha256 {short(target.script_sha256)} applied to CVM {target.cvm_id}"
    interval = ctx.spec.drift_check_interval
    stale = target.script_sha256 != ctx.desired_sha256
    return Transition(
        state=None,
        verdict=Verdict("Synced", Reason.SYNCED, message),
        status=StatusPatch(applied=applied, last_drift_check_at=now, last_drift_check_error=None),
        events=(Event("Normal", "Applied", _applied_message(target, how, compose_text, correlation_id)),),
        then="continue" if stale else "wait",
        requeue_after=None if stale else (interval if interval > 0 else None),
    )


def _applied_message(
    target: SyncTarget, how: str, compose_hash: str | None, correlation_id: str | None
) -> str:
    details = [f"script sha256 {short(target.script_sha256)}"]
    if compose_hash:
        details.append(f"compose hash {compose_hash}")
    if correlation_id:
        details.append(f"update {correlation_id}")
    return f"CVM {target.cvm_id} {how} ({', '.join(details)})"


def accepted(
    ctx: StepContext,
    target: SyncTarget,
    update: UpdateAccepted,
    *,
    chain: ChainTarget | None = None,
    transaction_hash: str | None = None,
) -> Transition:
    """Phala Cloud accepted the update: follow it. Lazy: a restart that lost this state finds the
    operation running (the Uploading/Applying steps look before they send), so the first poll of the
    operation, in the same pass, may write the outcome instead."""
    following = Following(
        target,
        correlation_id=update.correlation_id,
        accepted_at=ctx.now,
        chain=chain,
        transaction_hash=transaction_hash,
    )
    return Transition(
        state=following,
        verdict=Verdict(
            "Applying", Reason.APPLYING, f"Phala Cloud accepted the update ({update.correlation_id})"
        ),
        status=StatusPatch(correlation_id=update.correlation_id),
        then="continue",
        lazy=True,
    )


def adopt_running(
    ctx: StepContext, target: SyncTarget, cvm: CvmInfo, chain: ChainTarget | None
) -> Transition:
    """An update found running on the CVM after a restart: follow it instead of sending another."""
    assert cvm.progress_correlation_id is not None
    following = Following(
        target,
        correlation_id=cvm.progress_correlation_id,
        accepted_at=ctx.now,
        adopted=True,
        chain=chain,
    )
    return Transition(
        state=following,
        verdict=Verdict(
            "Applying", Reason.APPLYING, f"Following update {cvm.progress_correlation_id} found running"
        ),
        status=StatusPatch(correlation_id=cvm.progress_correlation_id),
        then="continue",
    )


def runs_script(cvm: CvmInfo, script_sha256: str) -> bool | None:
    """Whether the CVM's reported script hash is this script's (None when it reports none)."""
    reported = cvm.pre_launch_script_hash
    if not reported:
        return None
    return reported.strip().lower().removeprefix("0x") == script_sha256.lower()


def seconds_to_next_block(ctx: StepContext, chain_id: int, *, first_look: bool = False) -> float:
    """When to look for the chain's next block; the pass is also woken when another sees it first."""
    clock = ctx.block_clock(chain_id)
    seen = ctx.seen_heads.get(chain_id, clock.head_number)
    if seen is not None:
        ctx.awaited_block = (chain_id, seen)
        if clock.head_number is not None and seen < clock.head_number:
            # Another pass saw a newer block after this pass's round (and announced it before this
            # pass waited for it): look again as soon as the policy allows.
            return ctx.policy.block_wait(0.0, first_look=first_look)
    seconds = clock.seconds_to_next_block(
        ctx.now,
        just_sent=first_look,
        overdue_poll=ctx.policy.block_poll_min,
        who=(ctx.res.namespace, ctx.res.name),
    )
    return ctx.policy.block_wait(seconds, first_look=first_look)


def observe_head(ctx: StepContext, chain_id: int, tracking_or_head: Tracking) -> None:
    clock = ctx.block_clock(chain_id)
    known = clock.head_number
    clock.observe(tracking_or_head.head, ctx.now, asked_at=tracking_or_head.asked_at)
    ctx.seen_heads[chain_id] = tracking_or_head.head.number
    if clock.head_number is not None and clock.head_number != known:
        ctx.ports.clocks.announce(chain_id, clock.head_number)


def check_chain(observed: int, chain: ChainTarget, endpoint_note: str = "") -> None:
    """The RPC must serve the chain the state was made for."""
    if observed != chain.chain_id:
        raise Permanent(
            f"the chain RPC serves chain {observed}, but this registration belongs to chain {chain.chain_id} "
            f"(app contract {chain.app_contract}){endpoint_note}: point spec.onChain at the CVM's chain",
            reason=Reason.WRONG_CHAIN,
        )


def registration_problem(receipt: Receipt, chain: ChainTarget) -> str | None:
    """Why a mined receipt does not register the chain target's hash (None: it does)."""
    if not receipt.succeeded:
        return "reverted"
    if not same_address(receipt.to, chain.app_contract):
        return f"was sent to {receipt.to}, not to app contract {chain.app_contract}"
    if not receipt.logs_compose_hash(chain.app_contract, chain.compose_hash_hex):
        return (
            f"carries no ComposeHashAdded({chain.compose_hash_hex}) log from app contract "
            f"{chain.app_contract}"
        )
    return None


def revert_reason(revert_data: str | None) -> tuple[Reason, str]:
    """The cause of a revert, from its data."""
    if revert_selector(revert_data) == OWNABLE_UNAUTHORIZED_ACCOUNT_SELECTOR:
        return (
            Reason.NOT_CONTRACT_OWNER,
            "the signer is not the contract's owner (OwnableUnauthorizedAccount)",
        )
    data = cut(revert_data or "0x", NODE_TEXT_LIMIT)
    return Reason.TRANSACTION_REVERTED, f"revert data {data}"


def remembered(ctx: StepContext, chain: ChainTarget, tx_hash: str, block_number: int) -> StatusPatch:
    """``status.registrations`` with this registration first."""
    return StatusPatch(
        registrations=remember(
            ctx.status.registrations,
            KnownRegistration(
                compose_hash=chain.compose_hash_hex,
                transaction_hash=tx_hash,
                block_number=block_number,
                chain_id=chain.chain_id,
                app_contract=chain.app_contract,
            ),
        )
    )


def same_hash(a: str, b: str) -> bool:
    try:
        return hex32(a) == hex32(b)
    except ValueError:
        return False


async def registration_failed(
    ctx: StepContext, chain: ChainTarget, tx_hash: str, receipt: Receipt, problem: str, sender: str | None
) -> Transition:
    """A mined transaction that does not register the hash: its record can never succeed and is
    discarded. A revert is replayed to decode its cause (``NotContractOwner``, else the revert data);
    a stale state being settled goes on to the new sync, anything else stalls until an input changes."""
    ctx.ports.observer.transaction("failed")
    if problem == "reverted":
        reason, cause = Reason.TRANSACTION_REVERTED, "no revert data (the sender is not known)"
        if sender is not None:
            client = await ctx.chain()
            data = add_compose_hash_calldata(chain.compose_hash_hex)
            revert = await client.replay(
                sender=sender, to=chain.app_contract, data=data, block_number=receipt.block_number
            )
            reason, cause = revert_reason(revert)
        what = f"reverted in block {receipt.block_number}: {cause}"
    else:
        reason, what = Reason.TRANSACTION_FAILED, problem
    message = (
        f"Transaction {tx_hash} {what}. The record is discarded; the operator tries again when the spec, "
        "a referenced Secret or requested-at changes"
    )
    if ctx.settling:
        return Transition(
            state=None,
            verdict=Verdict("Pending", Reason.PROGRESSING, message),
            events=(Event("Warning", str(reason), message),),
            then="continue",
        )
    return Transition(state=None, verdict=Verdict("Failed", reason, message, stalled=True))


async def sign_registration(
    ctx: StepContext, chain: ChainTarget, *, nonce: int, gas: int, fees: Fees, sent_in_block: int | None
) -> TxVersion:
    """``addComposeHash(chain's hash)`` signed with this resource's key: a version to persist before
    it is broadcast. ``sent_in_block`` is the head the first version of this nonce went out at."""
    signed = ctx.ports.signer.sign(
        await ctx.signer_key(),
        UnsignedTx(
            chain_id=chain.chain_id,
            nonce=nonce,
            to=chain.app_contract,
            data=add_compose_hash_calldata(chain.compose_hash_hex),
            gas=gas,
            fees=fees,
        ),
    )
    return TxVersion(
        tx_hash=signed.tx_hash,
        raw=signed.raw,
        sender=signed.sender,
        nonce=signed.nonce,
        gas=gas,
        fees=fees,
        sent_in_block=sent_in_block,
    )
