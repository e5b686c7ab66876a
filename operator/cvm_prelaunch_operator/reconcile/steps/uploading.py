"""Uploading: Phase 1 of the update, ``PATCH /cvms/{id}/pre-launch-script`` with the script alone.

Before sending, when an earlier attempt may have reached Phala Cloud (the state was read back from
status, or a timed-out operation left it to be checked), the CVM is looked at first: an update running
on it is followed, and a CVM that already runs the script is synced without another update. Then the
script gate: a script that fails its checks is never uploaded.

Outcomes: 202 (off-chain KMS) -> Following; 465 (on-chain KMS) -> the compose hash is verified
against the CVM's running app-compose, then AwaitingApproval (a person, or an outside transaction) or
Registering.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.compose_hash import verify_compose_hash
from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.errors import Permanent, RegistrationRequired
from cvm_prelaunch_operator.domain.models import ComposeHashChallenge, CvmInfo
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import script_sha256
from cvm_prelaunch_operator.domain.rpc_url import rpc_url_problem
from cvm_prelaunch_operator.domain.states import AwaitingApproval, ChainTarget, Registering, Uploading
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.common import accepted, adopt_running, runs_script, synced


async def step(ctx: StepContext, state: Uploading) -> Transition:
    target = state.target
    cloud = await ctx.cloud()
    if state.look_first or not ctx.fresh:
        cvm = await cloud.get_cvm(target.cvm_id)
        if cvm.in_progress and cvm.progress_correlation_id:
            return adopt_running(ctx, target, cvm, None)
        done = runs_script(cvm, target.script_sha256)
        if done is None and not cvm.in_progress:
            remote = await cloud.get_pre_launch_script(target.cvm_id)
            done = script_sha256(remote.encode("utf-8")) == target.script_sha256
        if done and not cvm.in_progress:
            return synced(
                ctx, target, cvm=cvm, correlation_id=ctx.status.correlation_id, how="already runs the script"
            )

    report = await ctx.ports.checker.check(ctx.source.data, shellcheck=ctx.spec.shellcheck)
    if not report.ok:
        problems = "; ".join(report.problems) or "the script failed its checks"
        return Transition(
            state=None,
            verdict=Verdict(
                "Failed",
                Reason.INVALID_SCRIPT,
                f"The script is not uploaded: {report.checker or 'check'} found: {problems}",
                stalled=True,
            ),
        )

    ctx.may_act()
    try:
        update = await cloud.patch_pre_launch_script(target.cvm_id, ctx.source.data)
    except RegistrationRequired as required:
        return await _challenge(ctx, state, required.challenge)
    return accepted(ctx, target, update)


async def _challenge(ctx: StepContext, state: Uploading, challenge: ComposeHashChallenge) -> Transition:
    """The CVM's KMS is contract-owned: Phala Cloud named the compose hash to register."""
    target = state.target
    on_chain = ctx.spec.on_chain
    if on_chain is None:
        return Transition(
            state=None,
            verdict=Verdict(
                "Failed",
                Reason.INVALID_SPEC,
                "The CVM's KMS is contract-owned: Phala Cloud asks for an on-chain registration of compose "
                f"hash {challenge.compose_hash_hex}; set spec.onChain to let the operator register it",
                stalled=True,
            ),
        )
    # Checked before anything touches the chain, so a refused URL never gets a connection.
    problem = rpc_url_problem(
        (await ctx.rpc_url()).reveal(), allow_insecure=ctx.chain_policy.allow_insecure_rpc
    )
    if problem is not None:
        raise Permanent(problem, reason=Reason.INSECURE_RPC_URL)
    cloud = await ctx.cloud()
    cvm = await cloud.get_cvm(target.cvm_id)
    if on_chain.verify_compose_hash:
        await _verify(ctx, target.cvm_id, cvm, challenge)
    chain_id = challenge.chain_id or cvm.chain_id
    if chain_id is None:
        raise Permanent("Phala Cloud named no chain id for this CVM's KMS", reason=Reason.WRONG_CHAIN)
    app_contract = cvm.app_contract or ("0x" + (challenge.app_id or cvm.app_id).lower().removeprefix("0x"))
    signer = await ctx.signer_address()
    chain = ChainTarget(
        compose_hash=challenge.compose_hash,
        chain_id=chain_id,
        app_contract=app_contract,
        signer=signer,
        device_id=challenge.device_id,
    )
    shown = chain.compose_hash_hex
    status = StatusPatch(compose_hash=shown, chain_id=chain_id, app_contract=app_contract)
    if signer is None:
        waiting = AwaitingApproval(
            target, chain, waiting_for="Transaction", since=ctx.now, start_overs=state.start_overs
        )
        message = (
            f"Register compose hash {shown} on {app_contract} (chain {chain_id}) and put the transaction "
            "hash in annotation cloud.phala.com/transaction-hash"
        )
        return Transition(
            state=waiting,
            verdict=Verdict("AwaitingApproval", Reason.AWAITING_TRANSACTION, message),
            status=status,
            events=(Event("Normal", str(Reason.AWAITING_TRANSACTION), message),),
            then="continue",
        )
    if on_chain.approval == "Manual" and not approved(ctx, shown):
        waiting = AwaitingApproval(
            target, chain, waiting_for="Approval", since=ctx.now, start_overs=state.start_overs
        )
        message = (
            f"Approve compose hash {shown} (kubectl cpls approve {ctx.res.name}, or set annotation "
            "cloud.phala.com/approved-compose-hash to it)"
        )
        return Transition(
            state=waiting,
            verdict=Verdict("AwaitingApproval", Reason.AWAITING_APPROVAL, message),
            status=status,
            events=(Event("Normal", str(Reason.AWAITING_APPROVAL), message),),
            then="continue",
        )
    registering = Registering(target, chain, start_overs=state.start_overs)
    return Transition(
        state=registering,
        verdict=Verdict(
            "RegisteringOnChain",
            Reason.REGISTERING_ON_CHAIN,
            f"Compose hash {shown} must be registered on app contract {app_contract} (chain {chain_id})",
        ),
        status=status,
        then="continue",
        # Nothing is sent for it until it has a signed transaction, which is written before broadcast:
        # a restart that lost it sends Phase 1 again, which changes nothing on an on-chain CVM.
        lazy=True,
    )


def approved(ctx: StepContext, compose_hash_hex: str) -> bool:
    annotation = ctx.notes.approved_compose_hash
    if not annotation:
        return False
    return annotation.strip().lower().removeprefix("0x") == compose_hash_hex.removeprefix("0x")


async def _verify(ctx: StepContext, cvm_id: str, cvm: CvmInfo, challenge: ComposeHashChallenge) -> None:
    cloud = await ctx.cloud()
    app_compose = await cloud.get_app_compose(cvm_id)
    result = verify_compose_hash(app_compose, cvm.compose_hash or "", ctx.source.data, challenge.compose_hash)
    if result.outcome != "match":
        raise Permanent(
            f"Refusing to sign compose hash {challenge.compose_hash_hex}: {result.detail}",
            reason=Reason.COMPOSE_HASH_MISMATCH,
        )
