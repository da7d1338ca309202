"""Running an external command from the event loop: an asyncio subprocess, bounded in time,
never left running behind the daemon's back."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

# Exit statuses for what never got to exit on its own (as shells report them).
CANNOT_RUN = 127
KILLED = -9


@dataclass(frozen=True, slots=True)
class CommandResult:
    status: int
    stdout: str
    stderr: str  # empty when stderr was merged into stdout


async def run_command(
    argv: Sequence[str], timeout_s: float, *, merge_stderr: bool = True
) -> CommandResult:
    """Run ``argv`` with no input. One that cannot start gives status 127 (the reason in
    stderr); one that overruns ``timeout_s`` is killed (status -9)."""
    try:
        process = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT if merge_stderr else asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        return CommandResult(CANNOT_RUN, "", f"cannot run {argv[0]}: {exc}")
    try:
        async with asyncio.timeout(timeout_s):
            out, err = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        return CommandResult(KILLED, "", f"{argv[0]} did not finish within {timeout_s:g} s")
    except asyncio.CancelledError:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        raise
    return CommandResult(
        process.returncode or 0,
        out.decode("utf-8", "replace"),
        (err or b"").decode("utf-8", "replace"),
    )
