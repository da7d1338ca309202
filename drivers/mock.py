"""Mock hardware that behaves like the real thing: for the bench, the demo and the tests.

``MockConnectorHardware`` simulates one charging point *and* the car plugged into it. Its driver
objects (``.pilot``, ``.contactor``, ``.meter``, ``.lock``, ``.rcd``, ``.temperature``) satisfy
the Protocols of ``drivers.protocols``, so the controller cannot tell them from real drivers.
The bench controls (``plug``, ``unplug``, ``set_ev_state``, ``inject_fault``...) move the world
the way a person at the charger would.

Physics, not policy: the mock never decides anything the controller is supposed to decide. The
car follows the pilot the way IEC 61851-1 tells an EV to, current flows only where it
physically can (car asking, contacts really closed, PWM offering), and a welded contactor keeps
feeding the car whatever the controller commands.

All the simulation state sits behind one ``threading.Lock``: the event loop, a bench control
connection and a benchmark thread may all poke the same connector. Listeners are called outside
that lock, so a listener that reads the driver back cannot deadlock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

from drivers.protocols import (
    CpState,
    Listener,
    MeterError,
    MeterReading,
    PilotOutput,
    PilotReading,
    ReaderError,
)

logger = logging.getLogger(__name__)

#: Fault kinds a ``MockConnectorHardware`` understands (``evsectl fault N KIND``).
CONNECTOR_FAULT_KINDS: Final = frozenset(
    {"rcd", "weld", "pilot-short", "diode", "meter", "lock", "overtemp"}
)
#: Fault kinds a ``MockCardReader`` understands.
READER_FAULT_KINDS: Final = frozenset({"reader"})
#: Every bench fault kind, as listed in the design's ``evsectl fault`` contract.
FAULT_KINDS: Final = CONNECTOR_FAULT_KINDS | READER_FAULT_KINDS

# Histories are for tests and benchmarks; bounding them keeps a bench daemon that runs for
# weeks from growing without limit.
HISTORY_LENGTH: Final = 1000


_NORMAL_TEMPERATURE_C: Final = 35.0
_OVERTEMP_TEMPERATURE_C: Final = 95.0

# A 1 kHz PWM set in nanoseconds (the Linux PWM sysfs interface): 1 ns of a 1 ms period.
_DUTY_RESOLUTION_PERCENT: Final = 0.0001

# A card reader buffers a few frames at most; a bench script that swipes with no reader task
# running must not grow memory without limit.
_MAX_PENDING_SWIPES: Final = 16

_ENERGY_REQUEST_STATES: Final = frozenset({CpState.C, CpState.D})


def ev_current_for_duty(duty_percent: float) -> float:
    """The current an EV may draw at this PWM duty cycle, as the EV reads it (IEC 61851-1).

    Written here rather than imported from the controller because ``drivers/`` must not import
    ``evse_daemon/``, and because this is the *car's* interpretation: an EVSE bug in its own
    duty table must not be hidden by the mock car sharing the same table.
    """
    d = duty_percent
    if 8.0 <= d < 10.0:
        return 6.0
    if 10.0 <= d <= 85.0:
        return 0.6 * d
    if 85.0 < d <= 96.0:
        return 2.5 * (d - 64.0)
    if 96.0 < d <= 97.0:
        return 80.0
    return 0.0  # < 8 %: no current (5 % means digital communication); > 97 %: none offered


def _check_fault_kind(kind: str, known: frozenset[str]) -> None:
    if kind not in known:
        raise ValueError(f"unknown fault kind {kind!r}; known kinds: {', '.join(sorted(known))}")


def _write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a power cut leaves either the old or the new file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp_name)
        raise
    # The rename lives in the directory: without this fsync a power cut may forget it.
    # Some filesystems refuse to fsync a directory; the data itself is already safe then.
    with contextlib.suppress(OSError):
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


class MockConnectorHardware:
    """One simulated charging point and the car plugged into it.

    ``state_dir`` holds the meter register (``mock-meter-<connector_id>.json``); ``None`` keeps
    it in memory only. ``clock`` is a monotonic clock in seconds: the meter integrates power
    over it, so a test that advances a fake clock gets exact energy. ``meter_latency_s`` makes
    every meter read take that long, to model a slow Modbus bus.
    """

    def __init__(
        self,
        connector_id: int,
        *,
        state_dir: str | os.PathLike[str] | None,
        phases: int,
        nominal_voltage_v: float = 230.0,
        ev_max_current_a: float = 32.0,
        ev_phases: int | None = None,
        clock: Callable[[], float] = time.monotonic,
        has_lock: bool = True,
        meter_latency_s: float = 0.0,
    ) -> None:
        if phases not in (1, 2, 3):
            raise ValueError(f"phases must be 1, 2 or 3, not {phases!r}")
        if ev_phases is not None and ev_phases not in (1, 2, 3):
            raise ValueError(f"ev_phases must be 1, 2, 3 or None, not {ev_phases!r}")
        if not nominal_voltage_v > 0.0 or not math.isfinite(nominal_voltage_v):
            raise ValueError(f"nominal_voltage_v must be positive, not {nominal_voltage_v!r}")
        if not ev_max_current_a > 0.0 or not math.isfinite(ev_max_current_a):
            raise ValueError(f"ev_max_current_a must be positive, not {ev_max_current_a!r}")
        if not meter_latency_s >= 0.0 or not math.isfinite(meter_latency_s):
            raise ValueError(f"meter_latency_s must be >= 0, not {meter_latency_s!r}")

        self.connector_id: Final = connector_id
        self.phases: Final = phases
        self.nominal_voltage_v: Final = nominal_voltage_v
        self.ev_max_current_a: Final = ev_max_current_a
        self.ev_phases: Final = ev_phases
        self.meter_latency_s: Final = meter_latency_s
        self._clock = clock
        self._mutex = threading.Lock()

        # The world outside the charger.
        self._plugged = False
        self._ev_mode: CpState | None = None  # None: the car behaves by itself
        self._faults: set[str] = set()

        # The charger's outputs, as last commanded. A pilot generator idles at +12 V (x1).
        self._output = PilotOutput.STEADY
        self._duty = 0.0
        self._commanded_closed = False
        self._welded = False
        self._locked = False

        self._pilot_listener: Listener | None = None
        self._rcd_listener: Listener | None = None
        self._pilot_history: deque[tuple[float, PilotOutput, float]] = deque(maxlen=HISTORY_LENGTH)
        self._contactor_history: deque[tuple[float, bool]] = deque(maxlen=HISTORY_LENGTH)

        self._register_path = (
            Path(state_dir) / f"mock-meter-{connector_id}.json" if state_dir is not None else None
        )
        self._energy_wh = self._load_register()
        self._saved_wh = self._energy_wh
        self._integrated_until = clock()
        # Serializes file writes so that an older value can never overwrite a newer one.
        self._save_mutex = threading.Lock()

        self.pilot: Final = MockPilot(self)
        self.contactor: Final = MockContactor(self)
        self.meter: Final = MockMeter(self)
        self.lock: Final = MockLock(self) if has_lock else None
        self.rcd: Final = MockResidualCurrentMonitor(self)
        self.temperature: Final = MockTemperatureSensor(self)
        self._temperature_set_c: float | None = None

    # ----------------------------------------------------------------- bench controls

    def plug(self) -> None:
        """An EV is connected: it presents B (or the state it was told to present)."""

        def apply(now: float) -> None:
            self._plugged = True

        self._change(apply)

    def unplug(self) -> None:
        """The EV is removed: the pilot reads A. The next car behaves by itself again."""

        def apply(now: float) -> None:
            self._plugged = False
            # A forced state described the car that just left, not the next one.
            self._ev_mode = None

        self._change(apply)

    def set_ev_state(self, state: CpState | str | None) -> None:
        """Force the state the car presents (``B`` = paused, ``C`` = insists on energy...).

        ``None`` returns the car to auto: B, and C as soon as the pilot offers at least 6 A.
        A state set while unplugged applies to the next car plugged in (so a bench can model a
        car that goes straight from A to C); ``unplug()`` returns the mode to auto.
        """
        mode = None if state is None else CpState(state)  # also accepts "C" from a bench CLI

        def apply(now: float) -> None:
            self._ev_mode = mode

        self._change(apply)

    def inject_fault(self, kind: str) -> None:
        """Raise a hardware fault; see ``CONNECTOR_FAULT_KINDS``. Idempotent."""
        self._set_fault(kind, True)

    def clear_fault(self, kind: str) -> None:
        """Clear a hardware fault. Idempotent."""
        self._set_fault(kind, False)

    @property
    def active_faults(self) -> frozenset[str]:
        with self._mutex:
            return frozenset(self._faults)

    @property
    def plugged(self) -> bool:
        with self._mutex:
            return self._plugged

    @property
    def ev_mode(self) -> str:
        """``"auto"`` or the letter of the state the car is forced to present."""
        with self._mutex:
            return "auto" if self._ev_mode is None else self._ev_mode.value

    def snapshot(self) -> dict[str, Any]:
        """The whole simulation as JSON-ready values, for ``evsectl status`` and debugging."""
        with self._mutex:
            self._integrate_locked()
            reading = self._reading_locked()
            current_a, phases_used = self._draw_locked()
            return {
                "connector_id": self.connector_id,
                "plugged": self._plugged,
                "ev_mode": "auto" if self._ev_mode is None else self._ev_mode.value,
                "ev_state": self._ev_state_locked().value,
                "cp_state": reading.state.value,
                "diode_ok": reading.diode_ok,
                "pilot_output": self._output.value,
                "duty_percent": self._duty,
                "offered_a": self._offered_a_locked(),
                "contactor_commanded": self._commanded_closed,
                "contactor_feedback": self._contacts_closed_locked(),
                "contactor_welded": self._welded,
                "power_w": self._power_w_locked(),
                "current_a": self._phase_currents(current_a, phases_used),
                "energy_wh": self._energy_wh,
                "locked": self._locked if self.lock is not None else None,
                "rcd_tripped": "rcd" in self._faults,
                "temperature_c": self._temperature_locked(),
                "faults": sorted(self._faults),
            }

    # ------------------------------------------------------------------ simulation core
    # Methods ending in _locked must be called with self._mutex held.

    def _ev_state_locked(self) -> CpState:
        """The state the car presents, before EVSE-side effects (state F, a shorted CP)."""
        if not self._plugged:
            return CpState.A
        if self._ev_mode is not None:
            return self._ev_mode
        # An auto car asks for energy only when the pilot allows at least 6 A, and goes back
        # to B when the PWM stops or the EVSE drives state F.
        return CpState.C if self._offered_a_locked() > 0.0 else CpState.B

    def _offered_a_locked(self) -> float:
        """The current the car sees offered: none without PWM or with CP shorted to PE."""
        if self._output is not PilotOutput.PWM or "pilot-short" in self._faults:
            return 0.0
        return ev_current_for_duty(self._duty)

    def _reading_locked(self) -> PilotReading:
        if "pilot-short" in self._faults:
            # CP shorted to PE sits at 0 V whatever the EVSE drives, so no negative plateau.
            return PilotReading(CpState.E, diode_ok=False)
        if self._output is PilotOutput.STATE_F:
            return PilotReading(CpState.F)
        # The diode is the car's: with no car there is nothing to miss.
        diode_ok = not ("diode" in self._faults and self._plugged)
        return PilotReading(self._ev_state_locked(), diode_ok=diode_ok)

    def _contacts_closed_locked(self) -> bool:
        return self._commanded_closed or self._welded

    def _draw_locked(self) -> tuple[float, int]:
        """(current per used phase, number of phases used) the car draws now."""
        offered = self._offered_a_locked()
        if (
            self._ev_state_locked() not in _ENERGY_REQUEST_STATES
            or not self._contacts_closed_locked()
            or offered <= 0.0  # a stubborn car's charger still obeys the pilot
        ):
            return 0.0, 0
        phases_used = min(self.ev_phases or self.phases, self.phases)
        return min(offered, self.ev_max_current_a), phases_used

    def _power_w_locked(self) -> float:
        current_a, phases_used = self._draw_locked()
        return current_a * self.nominal_voltage_v * phases_used

    def _phase_currents(self, current_a: float, phases_used: int) -> list[float]:
        return [current_a if i < phases_used else 0.0 for i in range(self.phases)]

    def _temperature_locked(self) -> float:
        if "overtemp" in self._faults:
            return _OVERTEMP_TEMPERATURE_C
        if self._temperature_set_c is not None:
            return self._temperature_set_c
        return _NORMAL_TEMPERATURE_C

    def set_temperature(self, temperature_c: float | None) -> None:
        """Bench: the sensor reads this (None: back to normal); "overtemp" still wins."""
        if temperature_c is not None and not math.isfinite(temperature_c):
            raise ValueError(f"temperature must be finite, not {temperature_c!r}")
        with self._mutex:
            self._temperature_set_c = temperature_c

    def _integrate_locked(self) -> float:
        """Bring the register up to now. Power is constant between changes, so this is exact."""
        now = self._clock()
        # A clock that steps back (a misused fake clock) must not make the register run back.
        elapsed = max(0.0, now - self._integrated_until)
        self._energy_wh += self._power_w_locked() * elapsed / 3600.0
        self._integrated_until = max(now, self._integrated_until)
        return now

    def _change(self, apply: Callable[[float], None], *, rcd_changed: bool = False) -> None:
        """Apply a change that may alter the pilot reading, then tell the listeners.

        ``apply`` runs under the lock and is given the clock time of the change.
        """
        with self._mutex:
            # Energy up to this instant was drawn under the old state.
            apply(self._integrate_locked())
            pilot_listener = self._pilot_listener
            rcd_listener = self._rcd_listener if rcd_changed else None
        if pilot_listener is not None:
            pilot_listener()
        if rcd_listener is not None:
            rcd_listener()

    def _set_fault(self, kind: str, active: bool) -> None:
        _check_fault_kind(kind, CONNECTOR_FAULT_KINDS)
        if kind == "lock" and self.lock is None:
            raise ValueError(f"connector {self.connector_id} has no cable lock")

        def apply(now: float) -> None:
            if active:
                self._faults.add(kind)
                # Contacts weld when they are closed under load; open ones weld on next close.
                if kind == "weld" and self._commanded_closed:
                    self._welded = True
            else:
                self._faults.discard(kind)
                if kind == "weld":
                    self._welded = False

        # Any fault may matter to a controller that re-reads everything on a pilot event;
        # spurious calls are allowed ("the reading *may* have changed").
        self._change(apply, rcd_changed=kind == "rcd")

    # ------------------------------------------------------------------- pilot backend

    def _set_pilot_output(self, output: PilotOutput, duty: float) -> None:
        def apply(now: float) -> None:
            self._output = output
            self._duty = duty
            self._pilot_history.append((now, output, duty))

        self._change(apply)

    def _pilot_state(self) -> tuple[PilotOutput, float]:
        with self._mutex:
            return self._output, self._duty

    def _pilot_reading(self) -> PilotReading:
        with self._mutex:
            return self._reading_locked()

    def _set_pilot_listener(self, listener: Listener | None) -> None:
        with self._mutex:
            self._pilot_listener = listener

    def _pilot_history_list(self) -> list[tuple[float, PilotOutput, float]]:
        with self._mutex:
            return list(self._pilot_history)

    # --------------------------------------------------------------- contactor backend

    def _set_contactor(self, closed: bool) -> None:
        with self._mutex:
            now = self._integrate_locked()
            self._commanded_closed = closed
            if closed and "weld" in self._faults:
                self._welded = True
            self._contactor_history.append((now, closed))

    def _contactor_state(self) -> tuple[bool, bool, bool]:
        """(commanded, contacts closed, welded)."""
        with self._mutex:
            return self._commanded_closed, self._contacts_closed_locked(), self._welded

    def _contactor_history_list(self) -> list[tuple[float, bool]]:
        with self._mutex:
            return list(self._contactor_history)

    # ------------------------------------------------------------------- meter backend

    async def _meter_read(self) -> MeterReading:
        # A real meter answers after the bus round trip; sleep(0) still yields, so a caller
        # that forgets the await or assumes an instant answer shows up in tests.
        await asyncio.sleep(self.meter_latency_s)
        with self._mutex:
            self._integrate_locked()
            faulted = "meter" in self._faults
            current_a, phases_used = self._draw_locked()
            reading = MeterReading(
                energy_import_wh=self._energy_wh,
                power_w=current_a * self.nominal_voltage_v * phases_used,
                current_a=tuple(self._phase_currents(current_a, phases_used)),
                voltage_v=(self.nominal_voltage_v,) * self.phases,
            )
            # A real meter's register survives the Pi: a value the meter has answered can never
            # be taken back by a kill or a power cut. So the register is on the card before the
            # answer whenever it moved since the last save (only while energy flows: an idle
            # meter writes nothing, a charging one about once per reading of the meter loop).
            save = self._register_path is not None and self._energy_wh != self._saved_wh
        if save:
            # Saved even while faulted: the real meter keeps its register while it is silent.
            await asyncio.to_thread(self._save_register)
        if faulted:
            raise MeterError(f"mock meter of connector {self.connector_id} does not answer")
        return reading

    async def _meter_shutdown(self) -> None:
        with self._mutex:
            self._integrate_locked()
        await asyncio.to_thread(self._save_register)

    def _load_register(self) -> float:
        if self._register_path is None:
            return 0.0
        try:
            raw = self._register_path.read_bytes()
        except FileNotFoundError:
            return 0.0  # a new meter
        try:
            data = json.loads(raw)
            value = data["energy_import_wh"]
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0.0
            ):
                raise ValueError(f"implausible register value {value!r}")
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "mock meter of connector %d: register file %s is corrupt (%s); starting from 0 Wh",
                self.connector_id,
                self._register_path,
                exc,
            )
            return 0.0
        return float(value)

    def _save_register(self) -> None:
        """Write the register to disk (runs in a worker thread: fsync may take tens of ms)."""
        path = self._register_path
        if path is None:
            return
        with self._save_mutex:
            with self._mutex:
                value = self._energy_wh
                if value == self._saved_wh:
                    return
            text = json.dumps({"connector_id": self.connector_id, "energy_import_wh": value})
            try:
                _write_atomically(path, text)
            except OSError:
                # The meter itself still answers; the next read retries the save.
                logger.warning(
                    "mock meter of connector %d: cannot save register to %s",
                    self.connector_id,
                    path,
                    exc_info=True,
                )
                return
            with self._mutex:
                self._saved_wh = value

    # ------------------------------------------------------- lock, RCD, temperature

    async def _lock_set(self, locked: bool) -> bool:
        await asyncio.sleep(0)  # a lock motor takes time; callers must not assume otherwise
        with self._mutex:
            if "lock" in self._faults:
                return False  # the motor is stuck: feedback does not move
            self._locked = locked
            return True

    def _lock_state(self) -> bool:
        with self._mutex:
            return self._locked

    def _rcd_tripped(self) -> bool:
        with self._mutex:
            return "rcd" in self._faults

    def _set_rcd_listener(self, listener: Listener | None) -> None:
        with self._mutex:
            self._rcd_listener = listener

    def _temperature_c(self) -> float:
        with self._mutex:
            return self._temperature_locked()


class MockPilot:
    """PilotDriver of a ``MockConnectorHardware``."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    def set_pwm(self, duty_percent: float) -> None:
        if not 0.0 < duty_percent < 100.0:  # also rejects NaN
            raise ValueError(f"PWM duty must be between 0 and 100 %, not {duty_percent!r}")
        self._hw._set_pilot_output(PilotOutput.PWM, float(duty_percent))

    def set_steady(self) -> None:
        self._hw._set_pilot_output(PilotOutput.STEADY, 0.0)

    def set_state_f(self) -> None:
        self._hw._set_pilot_output(PilotOutput.STATE_F, 0.0)

    @property
    def output(self) -> PilotOutput:
        return self._hw._pilot_state()[0]

    @property
    def duty_percent(self) -> float:
        return self._hw._pilot_state()[1]

    @property
    def duty_resolution_percent(self) -> float:
        return _DUTY_RESOLUTION_PERCENT

    def read(self) -> PilotReading:
        return self._hw._pilot_reading()

    def set_listener(self, listener: Listener | None) -> None:
        self._hw._set_pilot_listener(listener)

    def shutdown(self) -> None:
        self.set_state_f()

    @property
    def history(self) -> list[tuple[float, PilotOutput, float]]:
        """(clock time, output, duty) of every command, oldest first, the last 1000."""
        return self._hw._pilot_history_list()


class MockContactor:
    """ContactorDriver of a ``MockConnectorHardware``, with auxiliary-contact feedback."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    def set_closed(self, closed: bool) -> None:
        self._hw._set_contactor(bool(closed))

    @property
    def commanded_closed(self) -> bool:
        return self._hw._contactor_state()[0]

    def feedback_closed(self) -> bool | None:
        return self._hw._contactor_state()[1]

    @property
    def welded(self) -> bool:
        """True while the main contacts are stuck closed (bench/debug only)."""
        return self._hw._contactor_state()[2]

    def shutdown(self) -> None:
        self.set_closed(False)

    @property
    def history(self) -> list[tuple[float, bool]]:
        """(clock time, commanded closed) of every command, oldest first, the last 1000."""
        return self._hw._contactor_history_list()


class MockMeter:
    """EnergyMeter of a ``MockConnectorHardware``: integrates the car's power over the clock."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    async def read(self) -> MeterReading:
        return await self._hw._meter_read()

    async def shutdown(self) -> None:
        """Save the final register value."""
        await self._hw._meter_shutdown()


class MockLock:
    """LockDriver of a ``MockConnectorHardware``."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    async def lock(self) -> bool:
        return await self._hw._lock_set(True)

    async def unlock(self) -> bool:
        return await self._hw._lock_set(False)

    @property
    def locked(self) -> bool:
        return self._hw._lock_state()

    async def shutdown(self) -> None:
        pass  # a real lock keeps its position when released


class MockResidualCurrentMonitor:
    """ResidualCurrentMonitor of a ``MockConnectorHardware``."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    def tripped(self) -> bool:
        return self._hw._rcd_tripped()

    def set_listener(self, listener: Listener | None) -> None:
        self._hw._set_rcd_listener(listener)

    def shutdown(self) -> None:
        pass


class MockTemperatureSensor:
    """TemperatureSensor of a ``MockConnectorHardware``."""

    def __init__(self, hardware: MockConnectorHardware) -> None:
        self._hw = hardware

    def read_c(self) -> float:
        return self._hw._temperature_c()

    def shutdown(self) -> None:
        pass


class MockCardReader:
    """CardReader fed by ``swipe()``, which any thread may call.

    Swipes wait in a small buffer until a reader takes them, so a swipe made before
    ``read_card`` is awaited is not lost. Waiters are woken through their own loop's
    ``call_soon_threadsafe`` and then take the card under the lock themselves: a waiter that
    is cancelled meanwhile cannot swallow a card.
    """

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._pending: deque[str] = deque(maxlen=_MAX_PENDING_SWIPES)
        self._waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = []
        self._faulted = False
        self._closed = False

    def swipe(self, id_tag: str) -> None:
        """A card with this idTag is presented to the reader (ignored while faulted)."""
        if not id_tag:
            raise ValueError("an idTag must not be empty")
        with self._mutex:
            if self._faulted or self._closed:
                logger.debug("mock card reader: swipe of %r ignored (reader not working)", id_tag)
                return
            self._pending.append(id_tag)
            waiters = self._take_waiters_locked()
        self._wake(waiters)

    async def read_card(self) -> str:
        loop = asyncio.get_running_loop()
        while True:
            with self._mutex:
                if self._faulted:
                    raise ReaderError("mock card reader is faulted")
                if self._closed:
                    raise ReaderError("mock card reader is shut down")
                if self._pending:
                    return self._pending.popleft()
                waiter = (loop, loop.create_future())
                self._waiters.append(waiter)
            try:
                await waiter[1]
            finally:
                with self._mutex, contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)

    def inject_fault(self, kind: str) -> None:
        """``"reader"``: the reader stops answering; waiting readers get ReaderError now."""
        _check_fault_kind(kind, READER_FAULT_KINDS)
        with self._mutex:
            self._faulted = True
            self._pending.clear()  # a failed reader loses what it had buffered
            waiters = self._take_waiters_locked()
        self._wake(waiters)

    def clear_fault(self, kind: str) -> None:
        _check_fault_kind(kind, READER_FAULT_KINDS)
        with self._mutex:
            self._faulted = False

    @property
    def active_faults(self) -> frozenset[str]:
        with self._mutex:
            return frozenset({"reader"}) if self._faulted else frozenset()

    @property
    def healthy(self) -> bool:
        with self._mutex:
            return not self._faulted

    async def shutdown(self) -> None:
        # Tasks waiting in read_card are left to be cancelled by their owner: waking them with
        # ReaderError here would report a reader failure for a clean stop.
        with self._mutex:
            self._closed = True
            self._pending.clear()

    def _take_waiters_locked(
        self,
    ) -> list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]:
        waiters = self._waiters
        self._waiters = []
        return waiters

    @staticmethod
    def _wake(waiters: list[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]]) -> None:
        for loop, future in waiters:
            with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
                loop.call_soon_threadsafe(_resolve, future)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
