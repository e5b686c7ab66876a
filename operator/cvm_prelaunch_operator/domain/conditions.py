"""Conditions are computed in one place from (phase, reason, message), never sprinkled."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.text import cut

Phase = Literal[
    "Pending",
    "Uploading",
    "AwaitingApproval",
    "RegisteringOnChain",
    "Applying",
    "Synced",
    "Failed",
    "Suspended",
]

WORKING_PHASES: frozenset[str] = frozenset({"Pending", "Uploading", "RegisteringOnChain", "Applying"})


@dataclass(frozen=True)
class Verdict:
    """What the status says about the resource after one reconcile step."""

    phase: Phase
    reason: Reason
    message: str
    stalled: bool = False  # a permanent failure: waits for a change of inputs
    retrying: bool = False  # a transient failure: waits for the backoff to pass

    @property
    def ready(self) -> bool:
        return self.phase == "Synced" and self.reason == Reason.SYNCED

    @property
    def reconciling(self) -> bool:
        return self.phase in WORKING_PHASES or self.retrying


def _condition(
    kind: str,
    status: bool,
    reason: str,
    message: str,
    generation: int,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any]:
    value = "True" if status else "False"
    # lastTransitionTime moves only when the status flips, as metav1.Condition requires.
    transition = previous.get("lastTransitionTime") if previous and previous.get("status") == value else None
    return {
        "type": kind,
        "status": value,
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
        "lastTransitionTime": transition or now,
    }


def build_conditions(
    verdict: Verdict, *, generation: int, previous: Sequence[Mapping[str, Any]] | None, now: str
) -> list[dict[str, Any]]:
    by_type = {c.get("type"): c for c in previous or []}
    message = cut(verdict.message)
    ready = _condition("Ready", verdict.ready, verdict.reason, message, generation, by_type.get("Ready"), now)
    reconciling = _condition(
        "Reconciling",
        verdict.reconciling,
        verdict.reason if verdict.reconciling else "Idle",
        message if verdict.reconciling else "No work in progress",
        generation,
        by_type.get("Reconciling"),
        now,
    )
    stalled = _condition(
        "Stalled",
        verdict.stalled,
        verdict.reason if verdict.stalled else "NotStalled",
        message if verdict.stalled else "No permanent failure",
        generation,
        by_type.get("Stalled"),
        now,
    )
    return [ready, reconciling, stalled]
