"""One checker run as a child process, bounded in time and output, never through a shell."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

# A fixed, minimal environment: no BASH_ENV or ENV for the shell to source, English messages, and a
# UTF-8 locale so that shellcheck reads UTF-8 scripts.
CHILD_ENV: Final = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LC_ALL": "C.UTF-8"}
_READ_CHUNK: Final = 64 * 1024
_REAP_SECONDS: Final = 5.0


class ToolMissing(Exception):
    """The checker's binary cannot be started (not installed, not executable)."""


class ToolTimedOut(Exception):
    """The checker did not finish in time and was killed."""


@dataclass(frozen=True)
class Completed:
    returncode: int
    stdout: bytes
    stderr: bytes


async def run(argv: Sequence[str], *, stdin: bytes, time_limit: float, output_limit: int) -> Completed:
    """Run ``argv`` with ``stdin`` as its input. Each output stream keeps at most ``output_limit`` bytes
    (the rest is read and dropped, so the child never blocks on a full pipe). The child runs in its own
    session: on timeout or cancellation the whole group is killed, grandchildren included."""
    # The child's stdin is a plain pipe: some event loops (uvloop, which kopf uses when installed) give
    # children socket pairs, and a shell cannot open /dev/stdin when it is a socket.
    read_end, write_end = os.pipe()
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=read_end,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=CHILD_ENV,
            cwd="/",
            start_new_session=True,
        )
    except OSError as exc:  # FileNotFoundError, PermissionError, ENOEXEC
        os.close(write_end)
        raise ToolMissing(f"{argv[0]}: {exc.strerror or exc}") from None
    finally:
        os.close(read_end)  # the child holds its own copy
    assert process.stdout is not None and process.stderr is not None

    async def feed() -> None:
        # In a thread: a script larger than the pipe's buffer blocks the writer until the child reads,
        # and a killed child ends the wait with EPIPE.
        await asyncio.to_thread(_write_all, write_end, stdin)

    async def drain(stream: asyncio.StreamReader) -> bytes:
        kept = bytearray()
        while chunk := await stream.read(_READ_CHUNK):
            if len(kept) < output_limit:
                kept += chunk[: output_limit - len(kept)]
        return bytes(kept)

    finished = False
    try:
        async with asyncio.timeout(time_limit):
            _, out, err = await asyncio.gather(feed(), drain(process.stdout), drain(process.stderr))
            returncode = await process.wait()
        finished = True
    except TimeoutError:
        raise ToolTimedOut(f"{argv[0]} did not finish within {time_limit:g} s") from None
    finally:
        if not finished:
            # Also when the child itself has exited: a grandchild may still hold the pipes open.
            _kill_group(process.pid)
            with contextlib.suppress(TimeoutError, ProcessLookupError):
                async with asyncio.timeout(_REAP_SECONDS):
                    await process.wait()
    return Completed(returncode, out, err)


def _write_all(fd: int, data: bytes) -> None:
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
    except OSError:
        pass  # the checker stopped reading (it failed early, or was killed): its exit status says why
    finally:
        os.close(fd)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
