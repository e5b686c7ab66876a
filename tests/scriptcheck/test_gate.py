"""The script gate on real bash, dash and shellcheck: what it refuses, what it lets through, and how
it stays bounded (time, output, processes, cache) whatever the script or the tools do."""

from __future__ import annotations

import asyncio
import stat
import time
from pathlib import Path

import pytest

from cvm_prelaunch_operator.domain.errors import RetryLater
from cvm_prelaunch_operator.domain.reasons import Reason
from cvm_prelaunch_operator.scriptcheck import MAX_SCRIPT_BYTES, ShellScriptChecker
from cvm_prelaunch_operator.scriptcheck.process import run

# Valid for bash, a syntax error for dash: tells which shell checked a script.
BASH_ONLY = b"function greet { echo hi; }\ngreet\n"
CLEAN = b'#!/bin/sh\nset -eu\necho "starting"\n'


def fake_tool(tmp_path: Path, name: str, body: str) -> str:
    """A tiny executable standing in for a checker."""
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


# -- shebangs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shebang",
    [
        b"#!/bin/bash\n",
        b"#!/usr/bin/bash\n",
        b"#!/usr/bin/env bash\n",
        b"#! /bin/bash -e\n",
        b"#!/usr/bin/env -S bash -eu\n",
    ],
)
async def test_bash_shebangs_are_checked_with_bash(shebang: bytes) -> None:
    report = await ShellScriptChecker().check(shebang + BASH_ONLY, shellcheck="Off")
    assert report.ok, report
    assert report.checker == "bash -n"


@pytest.mark.parametrize("shebang", [b"#!/bin/sh\n", b"#!/bin/dash\n", b"#!/usr/bin/env sh\n", b""])
async def test_sh_dash_and_no_shebang_are_checked_with_sh_then_bash(shebang: bytes) -> None:
    checker = ShellScriptChecker()
    ok = await checker.check(shebang + b"echo plain POSIX\n", shellcheck="Off")
    assert ok.ok, ok
    assert ok.checker == "sh -n, bash -n"  # dstack sources every script with bash: both must accept it
    refused = await checker.check(shebang + BASH_ONLY, shellcheck="Off")
    assert not refused.ok
    assert refused.checker == "sh -n"
    line = 2 if shebang else 1
    assert refused.problems[0].startswith(f"line {line}: ")


@pytest.mark.parametrize(
    ("shebang", "named"),
    [
        (b"#!/usr/bin/python3\n", "python3"),
        (b"#!/usr/bin/env python3\n", "python3"),
        (b"#!/usr/bin/env node\n", "node"),
        (b"#!/bin/zsh\n", "zsh"),
    ],
)
async def test_other_interpreters_are_refused_by_name(shebang: bytes, named: str) -> None:
    checker = ShellScriptChecker()
    report = await checker.check(shebang + b"print('hello')\n", shellcheck="Error")
    assert not report.ok
    assert report.checker == "shebang"
    assert f"'{named}'" in report.problems[0]
    assert report.problems[0].startswith("line 1: ")
    assert checker.runs == 0  # refused before any process started


# -- syntax -----------------------------------------------------------------------------------------


async def test_a_bash_syntax_error_names_its_line() -> None:
    script = b"#!/bin/bash\necho one\nfi\necho three\n"
    report = await ShellScriptChecker().check(script, shellcheck="Off")
    assert not report.ok
    assert report.checker == "bash -n"
    assert report.problems[0] == "line 3: syntax error near unexpected token `fi'"
    assert all("/dev/stdin" not in p for p in report.problems)


async def test_an_sh_syntax_error_names_its_line() -> None:
    script = b"#!/bin/sh\necho one\necho two\ndone\n"
    report = await ShellScriptChecker().check(script, shellcheck="Off")
    assert not report.ok
    assert report.checker == "sh -n"
    assert report.problems == ('line 4: Syntax error: "done" unexpected',)


async def test_an_unclosed_block_is_refused() -> None:
    report = await ShellScriptChecker().check(b"#!/bin/bash\nif true; then\n  echo x\n", shellcheck="Off")
    assert not report.ok
    assert "unexpected end of file" in report.problems[0]


async def test_control_characters_of_the_script_are_escaped_in_problems() -> None:
    report = await ShellScriptChecker().check(b"#!/bin/bash\nfi \x1b[31mred\n", shellcheck="Off")
    assert not report.ok
    assert any("\\x1b" in p for p in report.problems)
    assert not any("\x1b" in p for p in report.problems)


# -- shellcheck -------------------------------------------------------------------------------------

ERROR_FINDING = b'#!/bin/sh\nname="$1"\nif [ -n $name ]; then\n  echo "set"\nfi\n'  # SC2070, error
WARNING_FINDING = b"#!/bin/bash\nunused=1\necho finished\n"  # SC2034, warning


async def test_shellcheck_at_error_blocks_an_error_level_finding() -> None:
    checker = ShellScriptChecker()
    assert (await checker.check(ERROR_FINDING, shellcheck="Off")).ok  # valid syntax: only shellcheck objects
    report = await checker.check(ERROR_FINDING, shellcheck="Error")
    assert not report.ok
    assert report.checker == "shellcheck"
    assert report.problems[0].startswith("line 3: SC2070 (error) ")


async def test_shellcheck_at_error_passes_a_clean_script_and_warnings() -> None:
    checker = ShellScriptChecker()
    clean = await checker.check(CLEAN, shellcheck="Error")
    assert clean.ok, clean
    assert clean.checker == "sh -n, bash -n, shellcheck"
    assert (await checker.check(WARNING_FINDING, shellcheck="Error")).ok


async def test_shellcheck_at_warning_blocks_warnings_too() -> None:
    checker = ShellScriptChecker()
    report = await checker.check(WARNING_FINDING, shellcheck="Warning")
    assert not report.ok
    assert report.problems == (
        "line 2: SC2034 (warning) unused appears unused. Verify use (or export if used externally).",
    )
    assert (await checker.check(CLEAN, shellcheck="Warning")).ok


async def test_many_findings_are_cut_to_five_problems() -> None:
    script = b"#!/bin/bash\n" + b"".join(b"unused_%d=1\n" % i for i in range(12))
    report = await ShellScriptChecker().check(script, shellcheck="Warning")
    assert not report.ok
    assert len(report.problems) == 5
    assert report.problems[0].startswith("line 2: SC2034")
    assert report.problems[3].startswith("line 5: SC2034")
    assert report.problems[4] == "... and 8 more"


async def test_shellcheck_is_not_run_when_off(tmp_path: Path) -> None:
    checker = ShellScriptChecker(shellcheck=str(tmp_path / "absent"))
    assert (await checker.check(WARNING_FINDING, shellcheck="Off")).ok


# -- size and encoding ------------------------------------------------------------------------------


async def test_a_script_of_exactly_200_kib_is_accepted_and_one_byte_more_is_refused() -> None:
    head = b"#!/bin/sh\n"
    exact = head + b"#" * (MAX_SCRIPT_BYTES - len(head) - 1) + b"\n"
    assert len(exact) == MAX_SCRIPT_BYTES == 204800
    checker = ShellScriptChecker()
    assert (await checker.check(exact, shellcheck="Off")).ok
    runs = checker.runs
    over = await checker.check(exact + b"\n", shellcheck="Off")
    assert not over.ok
    assert over.checker == "size"
    assert "204801 bytes" in over.problems[0] and "204800" in over.problems[0]
    assert checker.runs == runs  # refused without running anything


async def test_an_empty_script_is_refused() -> None:
    report = await ShellScriptChecker().check(b"", shellcheck="Off")
    assert not report.ok and report.checker == "size"


async def test_invalid_utf8_is_refused_with_its_byte_offset_and_line() -> None:
    script = b"#!/bin/sh\necho caf\xc3\xa9\necho \xff\xfe\n"
    report = await ShellScriptChecker().check(script, shellcheck="Off")
    assert not report.ok
    assert report.checker == "utf-8"
    offset = script.index(b"\xff")
    assert report.problems == (f"line 3: invalid UTF-8 at byte offset {offset} (0xff)",)


@pytest.mark.parametrize(
    ("script", "expected"),
    [
        (b"\xef\xbb\xbf#!/bin/sh\necho hi\n", "line 1: the script starts with a byte order mark"),
        (b"#!/bin/sh\necho a\x00b\n", "line 2: NUL byte at byte offset 16"),
        (b"#!/bin/sh\r\necho hi\r\n", "line 1: carriage return"),
    ],
)
async def test_bytes_that_break_bash_at_boot_are_refused(script: bytes, expected: str) -> None:
    report = await ShellScriptChecker().check(script, shellcheck="Off")
    assert not report.ok
    assert report.checker == "utf-8"
    assert report.problems[0].startswith(expected)


async def test_utf8_text_is_accepted() -> None:
    assert (await ShellScriptChecker().check("#!/bin/sh\necho 'héllo ✓'\n".encode(), shellcheck="Error")).ok


# -- bounds -----------------------------------------------------------------------------------------


async def test_a_checker_that_hangs_is_killed_with_its_children(tmp_path: Path) -> None:
    pid_file = tmp_path / "child.pid"
    hanging = fake_tool(tmp_path, "bash", f"sleep 60 &\necho $! > {pid_file}\nwait\n")
    checker = ShellScriptChecker(bash=hanging, timeout=0.5)
    started = time.monotonic()
    report = await checker.check(b"#!/bin/bash\necho hi\n", shellcheck="Off")
    assert time.monotonic() - started < 5
    assert not report.ok
    assert report.checker == "bash -n"
    assert report.problems == ("bash -n did not finish within 0.5 s; the script was not uploaded",)
    child = int(pid_file.read_text())
    assert _gone_or_zombie(child), "the checker's child outlived the timeout"
    # A timeout is not cached: the next pass checks again.
    await checker.check(b"#!/bin/bash\necho hi\n", shellcheck="Off")
    assert checker.runs == 2


def _gone_or_zombie(pid: int) -> bool:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):
            return True
        if state == "Z":
            return True
        time.sleep(0.05)
    return False


async def test_a_flood_of_output_is_capped(tmp_path: Path) -> None:
    # About 6 MB of 300-character lines on stderr, then a failure.
    flooding = fake_tool(tmp_path, "bash", "yes \"$(printf '%0300d' 0)\" | head -n 20000 >&2\nexit 2\n")
    report = await ShellScriptChecker(bash=flooding).check(b"#!/bin/bash\necho hi\n", shellcheck="Off")
    assert not report.ok
    assert len(report.problems) == 5
    assert all(len(p) <= 200 for p in report.problems)


async def test_a_checker_run_keeps_only_the_first_bytes_of_its_output(tmp_path: Path) -> None:
    flooding = fake_tool(
        tmp_path, "flood", "head -c 3000000 /dev/zero\nhead -c 3000000 /dev/zero >&2\nexit 7\n"
    )
    completed = await run([flooding], stdin=b"x" * 300_000, time_limit=10, output_limit=1000)
    assert completed.returncode == 7  # drained to the end: the child was never blocked on a full pipe
    assert completed.stdout == completed.stderr == b"\0" * 1000


async def test_checks_run_a_bounded_number_of_processes_at_once(tmp_path: Path) -> None:
    log = tmp_path / "concurrency.log"
    slow = fake_tool(tmp_path, "bash", f"echo start >> {log}\nsleep 0.3\necho end >> {log}\n")
    checker = ShellScriptChecker(bash=slow, concurrency=2)
    scripts = [b"#!/bin/bash\necho %d\n" % i for i in range(6)]
    await asyncio.gather(*(checker.check(s, shellcheck="Off") for s in scripts))
    running = peak = 0
    for event in log.read_text().split():
        running += 1 if event == "start" else -1
        peak = max(peak, running)
    assert peak == 2


async def test_a_missing_tool_is_the_operators_problem_and_retried(tmp_path: Path) -> None:
    checker = ShellScriptChecker(bash=str(tmp_path / "no-bash"))
    for _ in range(2):  # not cached: once the image is fixed, the next pass passes
        with pytest.raises(RetryLater) as caught:
            await checker.check(b"#!/bin/bash\necho hi\n", shellcheck="Off")
        assert caught.value.reason == Reason.INVALID_SCRIPT
        assert "bash is missing from its image" in caught.value.message
    assert ShellScriptChecker(shellcheck=None, bash=None).missing_tools() == []


async def test_a_broken_shellcheck_is_the_operators_problem(tmp_path: Path) -> None:
    broken = fake_tool(tmp_path, "shellcheck", "echo 'not json'\necho 'it broke' >&2\nexit 3\n")
    with pytest.raises(RetryLater) as caught:
        await ShellScriptChecker(shellcheck=broken).check(CLEAN, shellcheck="Error")
    assert "shellcheck failed (exit status 3: it broke)" in caught.value.message


async def test_the_checkers_see_no_environment_of_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "env.txt"
    spy = fake_tool(tmp_path, "bash", f"env > {out}\n")
    monkeypatch.setenv("PHALA_CLOUD_API_KEY", "phak_must_not_leak")
    assert (await ShellScriptChecker(bash=spy).check(b"#!/bin/bash\necho hi\n", shellcheck="Off")).ok
    seen = out.read_text()
    assert "phak_must_not_leak" not in seen
    assert "BASH_ENV" not in seen


# -- cache ------------------------------------------------------------------------------------------


async def test_an_unchanged_script_is_checked_once_per_level() -> None:
    checker = ShellScriptChecker()
    first = await checker.check(CLEAN, shellcheck="Error")
    runs = checker.runs
    assert runs == 3  # sh -n, bash -n, shellcheck
    assert await checker.check(CLEAN, shellcheck="Error") == first
    assert checker.runs == runs
    await checker.check(CLEAN, shellcheck="Off")  # another level is another entry
    assert checker.runs == runs + 2
    refused = await checker.check(WARNING_FINDING, shellcheck="Warning")
    runs = checker.runs
    assert await checker.check(WARNING_FINDING, shellcheck="Warning") == refused  # refusals too
    assert checker.runs == runs


async def test_the_cache_is_bounded_least_recently_used_first() -> None:
    checker = ShellScriptChecker(cache_size=2)
    a, b, c = (b"#!/bin/bash\necho %s\n" % x for x in (b"a", b"b", b"c"))
    for script in (a, b, a, c):  # c evicts b, the least recently used
        await checker.check(script, shellcheck="Off")
    runs = checker.runs
    await checker.check(a, shellcheck="Off")
    await checker.check(c, shellcheck="Off")
    assert checker.runs == runs
    await checker.check(b, shellcheck="Off")
    assert checker.runs == runs + 1
