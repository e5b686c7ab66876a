"""AwaitingApproval: a person decides, or an outside transaction is awaited. No remote call is made
while waiting, except to look at a transaction named by the ``cloud.phala.com/transaction-hash``
annotation.

- ``waiting_for="Approval"`` (``approval: Manual``): signing waits until the annotation
  ``cloud.phala.com/approved-compose-hash`` names this compose hash (``kubectl cpls approve``). The
  engine shows the hash in ``status.pendingApproval`` meanwhile.
- ``waiting_for="Transaction"`` (no signer key): the owner registers the hash elsewhere and names the
  transaction in ``cloud.phala.com/transaction-hash``.
"""

from __future__ import annotations

from cvm_prelaunch_operator.domain.conditions import Verdict
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.states import AwaitingApproval, Registering
from cvm_prelaunch_operator.domain.status import StatusPatch
from cvm_prelaunch_operator.reconcile.context import Event, StepContext, Transition
from cvm_prelaunch_operator.reconcile.steps.outside import Ignored, outside_registration
from cvm_prelaunch_operator.reconcile.steps.uploading import approved


async def step(ctx: StepContext, state: AwaitingApproval) -> Transition:
    outside = await outside_registration(ctx, state)
    if isinstance(outside, Transition):
        return outside
    status = outside.status if isinstance(outside, Ignored) else StatusPatch()
    events: tuple[Event, ...] = (outside.event,) if isinstance(outside, Ignored) else ()
    chain = state.chain
    shown = chain.compose_hash_hex
    if state.waiting_for == "Approval":
        if approved(ctx, shown):
            return Transition(
                state=Registering(state.target, chain, start_overs=state.start_overs),
                verdict=Verdict(
                    "RegisteringOnChain",
                    Reason.REGISTERING_ON_CHAIN,
                    f"Compose hash {shown} approved; registering",
                ),
                status=status,
                events=events,
                then="continue",
            )
        return Transition(
            state=state,
            verdict=Verdict(
                "AwaitingApproval",
                Reason.AWAITING_APPROVAL,
                f"Approve compose hash {shown} (kubectl cpls approve {ctx.res.name}, or set annotation "
                "cloud.phala.com/approved-compose-hash to it)",
            ),
            status=status,
            events=events,
        )
    return Transition(
        state=state,
        verdict=Verdict(
            "AwaitingApproval",
            Reason.AWAITING_TRANSACTION,
            f"Register compose hash {shown} on {chain.app_contract} (chain {chain.chain_id}) and put the "
            "transaction hash in annotation cloud.phala.com/transaction-hash",
        ),
        status=status,
        events=events,
    )
