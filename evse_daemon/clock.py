"""The clock the controller is given: monotonic seconds for durations, UTC for timestamps.

A Pi board has no RTC: after a power cut it boots with the time fake-hwclock saved at the
last shutdown, or 1970, until NTP syncs. The wall clock is *trusted* once the kernel says NTP
has synchronized it, or once the CSMS has told the time (BootNotification, Heartbeat). Until
then timestamps are the system's guess; a message stamped meanwhile carries a ``ClockStamp``
so that its timestamps can be corrected when the time becomes known (``correction``).

Nothing that waits uses the wall clock: timers, timeouts and retries run on the monotonic
clock, and the queue is ordered by its own sequence numbers, so a step of the wall clock
(NTP, the CSMS's time) moves timestamps, never a timeout or the order of messages.
"""

from __future__ import annotations

import ctypes
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

log = logging.getLogger(__name__)

# adjtimex(2) returns TIME_ERROR (5) while the kernel's clock is not synchronized.
_TIME_ERROR = 5
# Room for struct timex on every Linux ABI (208 bytes on 64-bit): modes = 0 only reads it.
_TIMEX_BYTES = 512
# systemd-timesyncd creates this file once it has synchronized the clock.
TIMESYNCD_FLAG = "/run/systemd/timesync/synchronized"
# How long a "synchronized?" answer is reused: utc_now() is called often, the syscall is cheap
# but not free, and NTP's verdict does not flip by the millisecond.
SYNC_PROBE_CACHE_S = 10.0
# A CSMS time this close to ours does not move the clock: its own latency is about that, and
# stepping back and forth by milliseconds would only jitter the timestamps.
CSMS_TIME_TOLERANCE_S = 1.0


def current_boot_id() -> str:
    """The kernel's id of this boot: it changes when the board restarts, not the daemon (and
    monotonic times compare only within one boot)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def kernel_clock_synchronized() -> bool:
    """True if NTP (timesyncd, chrony, ntpd) has synchronized the system clock."""
    if os.path.exists(TIMESYNCD_FLAG):
        return True
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        timex = ctypes.create_string_buffer(_TIMEX_BYTES)
        state = int(libc.adjtimex(timex))
    except (OSError, AttributeError):
        return False
    return 0 <= state != _TIME_ERROR


class Clock(Protocol):
    def monotonic(self) -> float:
        """Seconds from an arbitrary origin (the same for every process of one boot); never
        jumps."""

    def utc_now(self) -> datetime:
        """Wall-clock time, timezone-aware UTC."""

    @property
    def trusted(self) -> bool:
        """True once the wall-clock time is known (NTP, or the CSMS's time)."""


@dataclass(frozen=True)
class ClockStamp:
    """When a message was made, for correcting its timestamps once the time is known: the
    wall time it was given, the monotonic time, and the boot (monotonic times compare only
    within one boot)."""

    wall: datetime
    monotonic: float
    boot_id: str

    def to_json(self) -> dict[str, Any]:
        return {"wall": self.wall.isoformat(), "monotonic": self.monotonic, "boot": self.boot_id}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClockStamp:
        return cls(datetime.fromisoformat(data["wall"]), float(data["monotonic"]), data["boot"])


def stamp(clock: Clock, boot_id: str) -> ClockStamp | None:
    """A stamp for a message made now, or None if the clock is trusted (nothing to correct)."""
    if clock.trusted:
        return None
    return ClockStamp(clock.utc_now(), clock.monotonic(), boot_id)


def correction(clock: Clock, made: ClockStamp, boot_id: str) -> timedelta | None:
    """How far the timestamps of a message stamped ``made`` are off, now that the clock is
    trusted: its true time is now minus the monotonic time elapsed since. None while the
    clock is still untrusted, or for a message from another boot (its monotonic time means
    nothing now), or when the error is within the CSMS's own tolerance."""
    if not clock.trusted or made.boot_id != boot_id:
        return None
    elapsed_s = clock.monotonic() - made.monotonic
    error = clock.utc_now() - timedelta(seconds=elapsed_s) - made.wall
    if abs(error.total_seconds()) < CSMS_TIME_TOLERANCE_S:
        return None
    return error


class SystemClock:
    """The machine's clocks, and the time learned from the CSMS while NTP has not synced.

    Once the CSMS has told the time, the wall clock runs from that instant on the monotonic
    clock: a step of the unsynchronized system clock does not move it. Once NTP has
    synchronized the system clock, the system clock is the time.
    """

    def __init__(
        self,
        *,
        synchronized: Callable[[], bool] = kernel_clock_synchronized,
        system_utc: Callable[[], datetime] = lambda: datetime.now(UTC),
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._synchronized = synchronized
        self._system_utc = system_utc
        self._monotonic = monotonic
        self._anchor: tuple[datetime, float] | None = None  # (CSMS time, monotonic then)
        self._probed_at = -float("inf")
        self._synced = False

    def monotonic(self) -> float:
        return self._monotonic()

    def _ntp_synced(self) -> bool:
        now = self._monotonic()
        if now - self._probed_at >= SYNC_PROBE_CACHE_S:
            self._probed_at = now
            synced = self._synchronized()
            if synced and not self._synced:
                log.info("system clock synchronized (NTP): it is the time from now on")
            self._synced = synced
        return self._synced

    @property
    def trusted(self) -> bool:
        return self._ntp_synced() or self._anchor is not None

    def utc_now(self) -> datetime:
        if self._ntp_synced() or self._anchor is None:
            return self._system_utc()
        csms_utc, at = self._anchor
        return csms_utc + timedelta(seconds=self._monotonic() - at)

    def adjust_to(self, reference_utc: datetime) -> bool:
        """Take ``reference_utc`` (a BootNotification's or Heartbeat's currentTime) as the
        time, unless NTP has synchronized the system clock (then it only logs a large
        disagreement). True if the time moved."""
        difference_s = (reference_utc - self.utc_now()).total_seconds()
        if self._ntp_synced():
            if abs(difference_s) >= 60.0:
                log.warning(
                    "the CSMS's time is %.0f s off this charger's NTP time; keeping NTP's",
                    difference_s,
                )
            return False
        first = self._anchor is None
        if not first and abs(difference_s) < CSMS_TIME_TOLERANCE_S:
            return False
        if first or abs(difference_s) >= 60.0:
            log.info("clock set from the CSMS's time (%+.3f s)", difference_s)
        self._anchor = (reference_utc, self._monotonic())
        return abs(difference_s) >= CSMS_TIME_TOLERANCE_S


class FakeClock:
    """A clock that only moves when told to: for deterministic tests of the controller."""

    def __init__(self, start_utc: datetime | None = None, *, trusted: bool = True) -> None:
        self._mono = 1000.0
        self._utc = start_utc or datetime(2026, 1, 1, tzinfo=UTC)
        self.trusted = trusted

    def monotonic(self) -> float:
        return self._mono

    def utc_now(self) -> datetime:
        return self._utc

    def advance(self, seconds: float) -> None:
        self._mono += seconds
        self._utc += timedelta(seconds=seconds)

    def step_wall(self, seconds: float) -> None:
        """The wall clock jumps (NTP, the CSMS's time); the monotonic clock does not."""
        self._utc += timedelta(seconds=seconds)


def iso_utc(moment: datetime) -> str:
    """OCPP dateTime: ISO 8601 in UTC with a 'Z' and millisecond precision."""
    return (
        moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"
    )
