"""What ``kubectl cpls status`` prints, computed from a resource's body alone (no I/O, no clock reads).

A status is read defensively: it was written by whichever operator version ran last, and a field of an
unexpected type is shown as absent rather than failing the whole table.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from cvm_prelaunch_operator.domain.chain import hex32
from cvm_prelaunch_operator.domain.text import parse_time

NONE = "-"
MESSAGE_CHARS = 60
SHORT_HASH_HEX = 12

# Ready reasons that describe a wait or work under way, not a failure; any other reason of a
# Ready=False condition is a failure whose message the table shows.
NOT_FAILURES = frozenset(
    {
        "Synced",
        "AwaitingApproval",
        "AwaitingTransaction",
        "Suspended",
        "Drifted",
        "Progressing",
        "Pending",
        "Uploading",
        "RegisteringOnChain",
        "AwaitingConfirmations",
        "FeeCeilingReached",
        "Applying",
    }
)


@dataclass(frozen=True)
class PendingApproval:
    compose_hash: str
    script_sha256: str | None
    cvm_id: str | None
    app_contract: str | None
    chain_id: int | None
    since: str | None


@dataclass(frozen=True)
class Row:
    namespace: str
    name: str
    ready: str
    reason: str
    phase: str
    pending: PendingApproval | None
    last_failure_time: str | None
    failure_message: str | None
    message: str | None


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and value else None


def _mapping(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def condition(body: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    conditions = _mapping(body.get("status")).get("conditions")
    if not isinstance(conditions, Sequence) or isinstance(conditions, str):
        return {}
    for entry in conditions:
        if isinstance(entry, Mapping) and entry.get("type") == kind:
            return entry
    return {}


def pending_approval(body: Mapping[str, Any]) -> PendingApproval | None:
    """The compose hash the resource waits to have approved, if it waits for one.

    Both the phase and ``status.pendingApproval`` must say so (as the Argo CD action checks), and
    the hash must be a 32-byte hex value: anything else is nothing to approve.
    """
    status = _mapping(body.get("status"))
    pending = _mapping(status.get("pendingApproval"))
    compose_hash = _text(pending.get("composeHash"))
    if status.get("phase") != "AwaitingApproval" or compose_hash is None:
        return None
    try:
        hex32(compose_hash)
    except ValueError:
        return None
    chain_id = pending.get("chainId")
    return PendingApproval(
        compose_hash=compose_hash,
        script_sha256=_text(pending.get("scriptSha256")),
        cvm_id=_text(pending.get("cvmId")),
        app_contract=_text(pending.get("appContract")),
        chain_id=chain_id if isinstance(chain_id, int) and not isinstance(chain_id, bool) else None,
        since=_text(pending.get("since")),
    )


def row(body: Mapping[str, Any]) -> Row:
    metadata = _mapping(body.get("metadata"))
    status = _mapping(body.get("status"))
    ready = condition(body, "Ready")
    stalled = condition(body, "Stalled")
    failure_message: str | None = None
    if stalled.get("status") == "True":
        failure_message = _text(stalled.get("message")) or _text(stalled.get("reason"))
    elif ready.get("status") == "False":
        reason = _text(ready.get("reason"))
        if reason is not None and reason not in NOT_FAILURES:
            failure_message = _text(ready.get("message")) or reason
    return Row(
        namespace=str(metadata.get("namespace") or ""),
        name=str(metadata.get("name") or ""),
        ready=_text(ready.get("status")) or NONE,
        reason=_text(ready.get("reason")) or NONE,
        phase=_text(status.get("phase")) or NONE,
        pending=pending_approval(body),
        last_failure_time=_text(status.get("lastFailureTime")),
        failure_message=failure_message,
        message=_text(status.get("message")),
    )


def age(moment: str | None, now: float) -> str | None:
    """kubectl's way of saying how long ago: 45s, 12m, 5h, 3d; None for an absent or bad time."""
    at = parse_time(moment)
    if at is None:
        return None
    seconds = max(0, int(now - at))
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 2 * 3600:
        return f"{seconds // 60}m"
    if seconds < 2 * 86400:
        return f"{seconds // 3600}h"
    return f"{seconds // 86400}d"


def cut(text: str, limit: int = MESSAGE_CHARS) -> str:
    """One line of at most ``limit`` characters."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def short_hash(value: str) -> str:
    return value[: 2 + SHORT_HASH_HEX] if value.startswith("0x") else value[:SHORT_HASH_HEX]


def table(rows: Sequence[Row], *, now: float, with_namespace: bool) -> str:
    header = ["NAME", "READY", "REASON", "PHASE", "PENDING APPROVAL", "LAST FAILURE"]
    if with_namespace:
        header.insert(0, "NAMESPACE")
    lines = [header]
    for r in rows:
        when = age(r.last_failure_time, now)
        parts = [f"{when} ago"] if when else []
        if r.failure_message:
            parts.append(cut(r.failure_message))
        failure = ": ".join(parts) or NONE
        cells = [
            r.name,
            r.ready,
            r.reason,
            r.phase,
            short_hash(r.pending.compose_hash) if r.pending else NONE,
            failure,
        ]
        if with_namespace:
            cells.insert(0, r.namespace)
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip() + "\n"
        for line in lines
    )


def details(r: Row, *, now: float, namespace_flag: str) -> str:
    """The lines ``status NAME`` adds below the table: what waits for approval and what failed, in full."""
    out: list[str] = []

    def when(moment: str | None) -> str:
        ago = age(moment, now)
        return f"{moment} ({ago} ago)" if moment and ago else (moment or NONE)

    if r.pending is not None:
        p = r.pending
        out += [
            "",
            "Pending approval:",
            f"  compose hash:   {p.compose_hash}",
            f"  script sha256:  {p.script_sha256 or NONE}",
            f"  CVM:            {p.cvm_id or NONE}",
            f"  app contract:   {p.app_contract or NONE}"
            + (f" (chain {p.chain_id})" if p.chain_id is not None else ""),
            f"  since:          {when(p.since)}",
            f"  approve with:   kubectl cpls approve {r.name}{namespace_flag} --hash {p.compose_hash}",
        ]
    if r.last_failure_time is not None or r.failure_message is not None:
        out += ["", f"Last failure:     {when(r.last_failure_time)}"]
        if r.failure_message:
            out.append(f"  {r.failure_message}")
    if r.message and r.message != r.failure_message:
        out += ["", f"Message:          {r.message}"]
    return "".join(line + "\n" for line in out)


def unified_diff(running: str, desired: str, *, running_label: str, desired_label: str) -> str:
    """``diff -u RUNNING DESIRED``: lines the CVM runs and the ConfigMap lacks are ``-``, lines the
    ConfigMap adds are ``+`` (kubectl diff's direction: what applying the desired state would do)."""
    lines = []
    for line in difflib.unified_diff(
        _lines(running), _lines(desired), fromfile=running_label, tofile=desired_label
    ):
        lines.append(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n")
    return "".join(lines)


def _lines(text: str) -> list[str]:
    # Split on LF only: a CR is part of a shell script's line, and diff shows it as such.
    parts = text.split("\n")
    lines = [part + "\n" for part in parts[:-1]]
    if parts[-1]:
        lines.append(parts[-1])
    return lines
