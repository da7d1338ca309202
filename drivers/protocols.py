"""The hardware abstraction layer: one Protocol per driver family.

Drivers are dumb: each reads or actuates one piece of hardware and knows nothing of IEC 61851
sessions or OCPP. The real and the mock implementation of a family satisfy the same Protocol,
so the controller cannot tell them apart.

Threading contract: listeners registered with ``set_listener`` may be called from any thread
(a real driver samples its hardware in a worker thread) and from inside the driver's own
methods. A listener must therefore only schedule work (``loop.call_soon_threadsafe``), never
act re-entrantly.

Synchronous methods (pilot, contactor, RCD, temperature) must return within a millisecond:
they sit on the safety path and are called from the event loop. Anything slower (Modbus,
serial, a lock motor) is ``async``.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

Listener = Callable[[], None]


class CpState(enum.StrEnum):
    """IEC 61851-1 control pilot state, from the positive plateau seen at the EVSE."""

    A = "A"  # +12 V: no EV
    B = "B"  # +9 V: EV connected, not requesting energy
    C = "C"  # +6 V: EV requests energy
    D = "D"  # +3 V: EV requests energy, ventilation required
    E = "E"  # 0 V: CP shorted to PE, or EVSE supply off
    F = "F"  # -12 V: EVSE not available (driven by the EVSE itself)


class PilotOutput(enum.StrEnum):
    """What the EVSE drives onto the control pilot."""

    STEADY = "steady"  # x1: steady +12 V, no PWM (no current offered)
    PWM = "pwm"  # x2: 1 kHz PWM, duty cycle = offered current
    STATE_F = "F"  # steady -12 V: EVSE not available / fault


@dataclass(frozen=True, slots=True)
class PilotReading:
    """One classified CP measurement.

    ``diode_ok`` is the negative-plateau check: while PWM runs, the low level must sit near
    -12 V; if it does not, the EV's diode is missing or CP is shorted.
    """

    state: CpState
    diode_ok: bool = True


@runtime_checkable
class PilotDriver(Protocol):
    """Control pilot generator and CP level sensor."""

    def set_pwm(self, duty_percent: float) -> None:
        """Drive 1 kHz PWM at this duty cycle (0 < duty < 100)."""

    def set_steady(self) -> None:
        """Drive steady +12 V: state x1, no current offered."""

    def set_state_f(self) -> None:
        """Drive steady -12 V: EVSE not available."""

    @property
    def output(self) -> PilotOutput:
        """What is being driven now."""

    @property
    def duty_percent(self) -> float:
        """The duty cycle being driven (0.0 when not in PWM)."""

    @property
    def duty_resolution_percent(self) -> float:
        """The smallest duty-cycle step the hardware can make."""

    def read(self) -> PilotReading:
        """The latest classified CP level."""

    def set_listener(self, listener: Listener | None) -> None:
        """Call ``listener`` whenever the reading may have changed."""

    def shutdown(self) -> None:
        """Leave the pilot in a safe state (state F) and release the hardware."""


@runtime_checkable
class ContactorDriver(Protocol):
    """The power relay between the grid and the vehicle, with optional feedback."""

    def set_closed(self, closed: bool) -> None:
        """Command the contactor closed (energize) or open."""

    @property
    def commanded_closed(self) -> bool:
        """What was last commanded."""

    def feedback_closed(self) -> bool | None:
        """The auxiliary contact: True if the main contacts are closed, None without feedback."""

    def shutdown(self) -> None:
        """Open the contactor and release the hardware."""


class MeterError(Exception):
    """The meter did not answer, answered with an error, or gave an implausible value."""


@dataclass(frozen=True, slots=True)
class MeterReading:
    """One reading of an energy meter. Per-phase tuples are L1, L2, L3 (fewer if fewer)."""

    energy_import_wh: float
    power_w: float
    current_a: tuple[float, ...]
    voltage_v: tuple[float, ...]


@runtime_checkable
class EnergyMeter(Protocol):
    """An energy meter. ``energy_import_wh`` is the meter's own register: it never resets."""

    async def read(self) -> MeterReading:
        """Read the meter; raises MeterError rather than ever returning a made-up value."""

    async def shutdown(self) -> None:
        """Release the bus or port."""


class ReaderError(Exception):
    """The card reader stopped answering or reports a failure."""


@runtime_checkable
class CardReader(Protocol):
    """An RFID/NFC card reader that yields idTags."""

    async def read_card(self) -> str:
        """Wait for the next card and return its idTag; raises ReaderError if the reader fails."""

    async def shutdown(self) -> None:
        """Release the port."""


@runtime_checkable
class LockDriver(Protocol):
    """The socket's cable lock (absent on a fixed-cable charger)."""

    async def lock(self) -> bool:
        """Lock the cable; True once the lock's feedback confirms it."""

    async def unlock(self) -> bool:
        """Unlock the cable; True once the lock's feedback confirms it."""

    @property
    def locked(self) -> bool:
        """The lock's feedback."""

    async def shutdown(self) -> None:
        """Release the hardware."""


@runtime_checkable
class ResidualCurrentMonitor(Protocol):
    """An RCD / 6 mA DC residual-current device input."""

    def tripped(self) -> bool:
        """True while the device reports a residual-current trip."""

    def set_listener(self, listener: Listener | None) -> None:
        """Call ``listener`` whenever the trip input may have changed."""

    def shutdown(self) -> None:
        """Release the hardware."""


@runtime_checkable
class TemperatureSensor(Protocol):
    """A temperature sensor in the charger (relay, socket or enclosure)."""

    def read_c(self) -> float:
        """The latest temperature in degrees Celsius."""

    def shutdown(self) -> None:
        """Release the hardware."""


@runtime_checkable
class ProximitySensor(Protocol):
    """The proximity pilot (PP) of a socket: the rating coded into the plugged cable."""

    def read_cable_rating_a(self) -> float | None:
        """The cable's current rating in amperes; None when no cable is plugged in; 0.0 for a
        cable whose coding cannot be read as a rating (nothing may be offered through it)."""

    def shutdown(self) -> None:
        """Release the hardware."""


@runtime_checkable
class HardwareWatchdog(Protocol):
    """The input of a hardware watchdog (charge pump, retriggerable monostable) that enables
    the contactor coil only while it keeps being toggled."""

    def toggle(self) -> None:
        """One edge: called by the safety loop on every turn, and only by it."""

    def shutdown(self) -> None:
        """Stop toggling for good (the coil drops) and release the hardware."""
