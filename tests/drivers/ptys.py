"""Linked pseudo-terminals for the serial drivers' tests: a real serial line on this machine."""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class PtyPair:
    """Two linked pseudo-terminals from socat: a client on ``a`` talks to a server on ``b``."""

    a: Path
    b: Path


@contextlib.contextmanager
def socat_pair(directory: Path) -> Iterator[PtyPair]:
    socat = shutil.which("socat")
    if socat is None:  # pragma: no cover - socat is part of the test environment
        raise RuntimeError("socat is needed for the RTU tests")
    a, b = directory / "ttyA", directory / "ttyB"
    proc = subprocess.Popen(
        [socat, "-d", "-d", f"pty,raw,echo=0,link={a}", f"pty,raw,echo=0,link={b}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 5.0
        while not (a.exists() and b.exists()):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"socat did not create {a} and {b}")
            time.sleep(0.005)
        yield PtyPair(a, b)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover
            proc.kill()
            proc.wait()
