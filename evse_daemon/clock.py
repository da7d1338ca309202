"""The clock the controller is given: monotonic seconds for durations, UTC for timestamps."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Protocol


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin; never jumps."""

    def utc_now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""


class SystemClock:
    """The machine's clocks, with an offset learned from the CSMS.

    Pi boards have no RTC: until NTP has synced, the system clock may be years off. The
    offset corrects wall-clock timestamps from the CSMS's currentTime without ever
    stepping the monotonic clock that timers use.
    """

    def __init__(self) -> None:
        self._offset = timedelta(0)

    def monotonic(self) -> float:
        return time.monotonic()

    def utc_now(self) -> datetime:
        return datetime.now(UTC) + self._offset

    def adjust_to(self, reference_utc: datetime) -> None:
        """Take ``reference_utc`` (e.g. a BootNotification's currentTime) as the true time."""
        self._offset = reference_utc - datetime.now(UTC)


class FakeClock:
    """A clock that only moves when told to: for deterministic tests of the controller."""

    def __init__(self, start_utc: datetime | None = None) -> None:
        self._mono = 1000.0
        self._utc = start_utc or datetime(2026, 1, 1, tzinfo=UTC)

    def monotonic(self) -> float:
        return self._mono

    def utc_now(self) -> datetime:
        return self._utc

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._utc += timedelta(seconds=seconds)


def iso_utc(moment: datetime) -> str:
    """OCPP dateTime: ISO 8601 in UTC with a 'Z' and millisecond precision."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )
