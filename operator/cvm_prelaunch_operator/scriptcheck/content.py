"""What can be decided from the bytes alone: size, encoding and which shell the script is for.

dstack runs a CVM's pre-launch script by sourcing it from its bash entry script
(``source <(jq -r .pre_launch_script app-compose.json)``), so the shebang line is a comment at boot:
whatever the script says it is, bash reads it. A script for another interpreter (python, node, ...)
would be read as bash and fail at boot, so only shell scripts are accepted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal

# Phala Cloud accepts at most 200 KiB for the docker compose file and the script together; a script
# above that can never be accepted, whatever the compose file.
MAX_SCRIPT_BYTES: Final = 200 * 1024
PROBLEM_LIMIT: Final = 200  # characters of one problem
MAX_PROBLEMS: Final = 5

Shell = Literal["bash", "sh"]

_SHELLS: Final[dict[str, Shell]] = {"bash": "bash", "sh": "sh", "dash": "sh"}
_BOM: Final = b"\xef\xbb\xbf"
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


@dataclass(frozen=True)
class Refusal:
    """The script cannot be uploaded: ``checker`` found ``problems`` (at most five, each short)."""

    checker: str
    problems: tuple[str, ...]


def clean(text: str, limit: int = PROBLEM_LIMIT) -> str:
    """One problem as status can show it: control characters escaped, at most ``limit`` characters."""
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def first_problems(problems: list[str]) -> tuple[str, ...]:
    """At most ``MAX_PROBLEMS`` entries; when there were more, the last one says how many were left out."""
    cleaned = [clean(p) for p in problems if p.strip()]
    if len(cleaned) <= MAX_PROBLEMS:
        return tuple(cleaned)
    kept = cleaned[: MAX_PROBLEMS - 1]
    return (*kept, f"... and {len(cleaned) - len(kept)} more")


def line_of(script: bytes, offset: int) -> int:
    return script.count(b"\n", 0, offset) + 1


def check_size(script: bytes) -> Refusal | None:
    if not script:
        return Refusal("size", ("the script is empty; Phala Cloud refuses an empty pre-launch script",))
    if len(script) > MAX_SCRIPT_BYTES:
        return Refusal(
            "size",
            (
                f"the script is {len(script)} bytes; Phala Cloud accepts at most {MAX_SCRIPT_BYTES} bytes "
                "(200 KiB) for the compose file and the script together",
            ),
        )
    return None


def check_encoding(script: bytes) -> Refusal | None:
    """UTF-8 without a byte order mark, NUL bytes or carriage returns: each of those is valid in a file
    but breaks the script when bash reads it at boot."""
    try:
        script.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = script[exc.start : exc.start + 1].hex()
        return Refusal(
            "utf-8",
            (f"line {line_of(script, exc.start)}: invalid UTF-8 at byte offset {exc.start} (0x{bad})",),
        )
    if script.startswith(_BOM):
        return Refusal(
            "utf-8", ("line 1: the script starts with a byte order mark, which bash would run as a command",)
        )
    nul = script.find(b"\x00")
    if nul >= 0:
        return Refusal("utf-8", (f"line {line_of(script, nul)}: NUL byte at byte offset {nul}",))
    carriage = script.find(b"\r")
    if carriage >= 0:
        return Refusal(
            "utf-8",
            (
                f"line {line_of(script, carriage)}: carriage return (Windows line ending?); bash would "
                "read it as part of the command",
            ),
        )
    return None


def shell_of(script: bytes) -> Shell | Refusal:
    """The shell the shebang names: bash, or sh (also for dash and without a shebang)."""
    if not script.startswith(b"#!"):
        return "sh"
    first_line = script.split(b"\n", 1)[0][2:].decode("utf-8", errors="replace")
    words = first_line.split()
    if not words:
        return "sh"
    program = words[0].rsplit("/", 1)[-1]
    if program == "env":
        # `#!/usr/bin/env bash`, `#!/usr/bin/env -S bash -e`: the first word that is not an option.
        program = next((w for w in words[1:] if not w.startswith("-") and "=" not in w), "")
        program = program.rsplit("/", 1)[-1]
    shell = _SHELLS.get(program)
    if shell is None:
        return Refusal(
            "shebang",
            (
                f"line 1: the shebang names {clean(program or first_line, 60)!r}; dstack runs the pre-launch "
                "script with bash, so only bash and sh scripts are accepted",
            ),
        )
    return shell
