"""The security log (OCPP 1.6 security whitepaper A04.FR.04, N01.FR.05): one line per security
event, critical or not, uploaded on a GetLog.req for the SecurityLog.

A line is ``<OCPP dateTime> <event type>[ <techInfo>]``. The log rolls (as the whitepaper
recommends): past ``max_bytes`` the file becomes ``<name>.1``, replacing the previous one, so
it never fills the card. Methods are synchronous file I/O: run them in a worker thread.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from .clock import iso_utc

__all__ = ("SecurityLog",)

DEFAULT_MAX_BYTES = 256 * 1024


def _one_line(text: str) -> str:
    """techInfo may come from a peer (a certificate subject, an error message): one line,
    printable, so that the log stays one event per line."""
    return "".join(c if c.isprintable() else " " for c in text)


def _line_time(line: str) -> datetime | None:
    stamp = line.split(" ", 1)[0]
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class SecurityLog:
    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    @property
    def _previous(self) -> Path:
        return self.path.with_name(self.path.name + ".1")

    def append(self, when: datetime, event_type: str, tech_info: str | None = None) -> None:
        line = f"{iso_utc(when)} {_one_line(event_type)}"
        if tech_info:
            line += f" {_one_line(tech_info)}"
        data = (line + "\n").encode("utf-8", errors="replace")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            size = 0
        if size and size + len(data) > self.max_bytes:
            os.replace(self.path, self._previous)
        # 0600: techInfo can name certificates and hosts; nobody else on the board needs it.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            # Security events are rare, and one lost to a power cut is one the CSMS will
            # never see: each is on the card before append returns.
            os.fsync(fd)
        finally:
            os.close(fd)

    def export(self, oldest: datetime | None = None, latest: datetime | None = None) -> bytes:
        """The log's lines from ``oldest`` to ``latest`` (both inclusive, either open),
        oldest first, for an upload."""
        lines: list[str] = []
        for path in (self._previous, self.path):
            try:
                text = path.read_text("utf-8", errors="replace")
            except FileNotFoundError:
                continue
            for line in text.splitlines():
                moment = _line_time(line)
                if moment is None:
                    continue
                if oldest is not None and moment < oldest:
                    continue
                if latest is not None and moment > latest:
                    continue
                lines.append(line)
        return "".join(line + "\n" for line in lines).encode("utf-8")
