"""What the daemon tells systemd: READY=1, STATUS=, WATCHDOG=1 and STOPPING=1.

The sd_notify protocol is one datagram of ``KEY=value`` lines to the AF_UNIX socket named by
``$NOTIFY_SOCKET`` (a path, or an abstract name written ``@name``). It is spoken here with the
standard library so that the daemon needs no systemd library for it; outside systemd, where
the variable is unset, every notification is a no-op.

The watchdog is fed only while the controller's safety loop makes progress: a ping goes out
every half ``$WATCHDOG_USEC`` if, and only if, the safety loop has run since the previous
check. The pings come from a task on the same event loop, so a blocked loop stops them too;
a safety loop stuck on an await (a hung driver call) stops them although the loop still
turns. systemd then kills the daemon and starts it again, and a start opens every contactor
and drives every pilot to state F before anything else.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from .charger import ConnectorView, ErrorCode, Status

log = logging.getLogger(__name__)

#: How often the STATUS= line is recomputed (it is sent only when it changed).
STATUS_INTERVAL_S = 1.0
#: How often the supervisor looks for the first safety-loop run, to send READY=1 promptly.
READY_POLL_S = 0.05

STARTING = "Starting: contactors open, pilots in state F"
STALLED = "Safety loop stalled: watchdog ping withheld"

# Statuses in which the pilot offers current to an EV that may draw it.
_OFFERING = frozenset({Status.CHARGING, Status.SUSPENDED_EV})


def notify_address(environ: Mapping[str, str]) -> str | bytes | None:
    """The socket address of ``$NOTIFY_SOCKET`` (None: not run by systemd with notify)."""
    value = environ.get("NOTIFY_SOCKET", "")
    if not value:
        return None
    if value.startswith("@"):
        # An abstract socket: its name begins with a NUL byte instead of the '@'.
        return b"\0" + os.fsencode(value[1:])
    if value.startswith("/"):
        return value
    return None  # vsock addresses and the like: not for a charger


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """``$WATCHDOG_USEC`` in seconds, or None when no watchdog applies to this process."""
    usec = environ.get("WATCHDOG_USEC", "")
    watchdog_pid = environ.get("WATCHDOG_PID", "")
    if watchdog_pid and watchdog_pid != str(pid):
        return None  # inherited from a parent that systemd watches, not meant for us
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


class Notifier:
    """Sends sd_notify datagrams to one address (or nowhere)."""

    def __init__(self, address: str | bytes | None) -> None:
        self.address = address

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        return cls(notify_address(os.environ if environ is None else environ))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *assignments: str) -> bool:
        """Send ``KEY=value`` lines in one datagram; True if it was handed to the socket.

        Non-blocking: should the service manager not read its socket, a notification is
        dropped rather than stall the event loop that runs the safety path.
        """
        if self.address is None:
            return False
        data = "\n".join(assignments).encode("utf-8", "replace")
        try:
            with socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
            ) as sock:
                sock.sendto(data, self.address)
        except OSError as exc:
            log.debug("sd_notify %r not sent: %s", assignments, exc)
            return False
        return True


class _OcppStatus(Protocol):
    def status_info(self) -> dict[str, Any]: ...


class SupervisedApp(Protocol):
    """What the supervisor reads of one run of the daemon (``evse_daemon.app.App``)."""

    @property
    def safety_ticks(self) -> int: ...

    @property
    def adapter(self) -> _OcppStatus: ...

    def views(self) -> list[ConnectorView]: ...


def status_text(ocpp: Mapping[str, Any], views: Sequence[ConnectorView]) -> str:
    """The one-line STATUS= for ``systemctl status``, e.g.
    ``OCPP Accepted; 1: Charging 16.0 A, 2: Available``."""
    if ocpp.get("connected"):
        registration = str(ocpp.get("registration"))
        link = "OCPP connecting" if registration == "None" else f"OCPP {registration}"
    else:
        link = "OCPP offline"
    queued = ocpp.get("queue_depth") or 0
    if queued:
        link += f" ({queued} queued)"
    parts = []
    for view in views:
        text = f"{view.connector_id}: {view.status.value}"
        if view.status in _OFFERING and view.offered_current_a > 0:
            text += f" {view.offered_current_a:.1f} A"
        if view.error_code is not ErrorCode.NO_ERROR:
            text += f" ({view.error_code.value})"
        parts.append(text)
    return f"{link}; {', '.join(parts)}"


class Supervisor:
    """Runs beside the daemon's runs (a Reset rebuilds the app in-process; this stays):
    READY=1 once the first run's safety loop turns, STATUS= when it changes, WATCHDOG=1 while
    the safety loop makes progress, STOPPING=1 on the way out."""

    def __init__(
        self,
        notifier: Notifier,
        current_app: Callable[[], SupervisedApp | None],
        *,
        watchdog_interval_s: float | None,
    ) -> None:
        self._notifier = notifier
        self._current_app = current_app
        # Ping at half the interval, as sd_watchdog_enabled(3) recommends.
        self._ping_every_s = None if watchdog_interval_s is None else watchdog_interval_s / 2
        self.ready = False
        self._stopping = False
        self._last_status: str | None = None
        # The run and its safety-loop count at the previous watchdog check.
        self._checked: tuple[SupervisedApp | None, int] = (None, 0)
        self._withheld_since: float | None = None

    def stopping(self, why: str) -> None:
        """The daemon is on its way out: contactors opening, transactions stopping."""
        if not self._stopping:
            self._stopping = True
            self._send_status(f"Stopping ({why}): opening contactors, stopping transactions")
            self._notifier.send("STOPPING=1")

    async def run(self) -> None:
        """Until cancelled. Should this ever fail, the watchdog starves and systemd restarts
        the daemon, which is the right outcome; the log says why."""
        if not self._notifier.enabled:
            return
        try:
            await self._run()
        except Exception:
            log.exception("systemd supervisor failed")
            raise

    async def _run(self) -> None:
        self._send_status(STARTING)
        next_status = next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            app = self._current_app()
            if not self.ready and app is not None and app.safety_ticks > 0:
                # The hardware was put in its safe state and the controller started before
                # the safety loop's first turn.
                self.ready = True
                self._last_status = self._status(app)
                self._notifier.send("READY=1", f"STATUS={self._last_status}")
            wake_at = now + (READY_POLL_S if not self.ready else STATUS_INTERVAL_S)
            if self._ping_every_s is not None:
                if now >= next_ping:
                    next_ping = now + self._ping_every_s
                    self._check_watchdog(app, now)
                wake_at = min(wake_at, next_ping)
            if now >= next_status:
                next_status = now + STATUS_INTERVAL_S
                if self.ready and not self._stopping:
                    self._send_status(self._status(app))
            wake_at = min(wake_at, next_status)
            await asyncio.sleep(max(0.0, wake_at - time.monotonic()))

    def _check_watchdog(self, app: SupervisedApp | None, now: float) -> None:
        ticks = app.safety_ticks if app is not None else 0
        previous_app, previous_ticks = self._checked
        self._checked = (app, ticks)
        if ticks == 0:
            # Between two runs (a Reset), or while one starts: no safety loop to vouch for,
            # so no ping, but nothing stalled either: a gap shorter than half the watchdog
            # interval costs no restart.
            return
        # Progress: this run's safety loop turned since the last check.
        if app is not previous_app or ticks != previous_ticks:
            self._notifier.send("WATCHDOG=1")
            if self._withheld_since is not None:
                log.warning(
                    "safety loop runs again after %.1f s: watchdog pings resumed",
                    now - self._withheld_since,
                )
                self._withheld_since = None
                self._last_status = None  # replace the "withheld" status at once
            return
        if self._withheld_since is None and self.ready and not self._stopping:
            self._withheld_since = now
            log.error(
                "the safety loop has not run for %.1f s: watchdog ping withheld",
                self._ping_every_s,
            )
            self._send_status(STALLED)

    def _status(self, app: SupervisedApp | None) -> str:
        if self._withheld_since is not None:
            return STALLED
        if app is None or app.safety_ticks == 0:
            return STARTING
        return status_text(app.adapter.status_info(), app.views())

    def _send_status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            self._notifier.send(f"STATUS={text}")
