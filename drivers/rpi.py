"""Real drivers for a Raspberry Pi charger board: pilot, proximity pilot, contactor, lock, RCD,
temperature.

Each class implements the same Protocol of ``drivers.protocols`` as its mock in
``drivers.mock``, so the controller cannot tell them apart. All hardware parameters arrive as
plain frozen dataclasses (``*Wiring``) that the app fills from the board profile; every
gpiozero object is created with the ``pin_factory`` given to the constructor (``None``: the
gpiozero default, lgpio on a current Pi OS; tests pass a ``MockFactory``).

Hardware in one picture::

    GPIO18 (kernel PWM, sysfs) ─► ±12 V op-amp stage ─► 1 kΩ ─► CP ─┬─ EV (diode + R to PE)
    MCP3008 ch N (SPI) ◄── divider + offset ◄───────────────────────┘
    MCP3008 ch N ◄── PP node (pull-up to a supply, cable's coding resistor to PE)
    GPIO ─► relay driver ─► contactor coil;  aux contact ─► GPIO (optional)
    GPIO ×2 ─► H-bridge ─► lock motor;  lock switch ─► GPIO
    GPIO ◄── RCD / 6 mA DC monitor trip output;  GPIO ─► its test input (optional)

The pilot stage is not inverting by default: PWM pin high = CP +12 V, low = CP -12 V. So
x1 (``set_steady``, +12 V) is 100 % duty, state F (-12 V) is 0 % duty and PWM x % is x % of
the period high. A board whose stage inverts sets ``PilotWiring.pwm_inverted``; the driver then
writes ``period - duty`` (the sysfs ``polarity`` attribute is left "normal": not every PWM chip
supports "inversed").

Safety does not live here: a real charger latches residual-current trips in hardware and
drops the contactor coil through a hardware watchdog (see ``hardware/README.md``). These
drivers report, they do not protect.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

from gpiozero import (  # type: ignore[import-untyped]
    MCP3004,
    MCP3008,
    DigitalInputDevice,
    OutputDevice,
)

from drivers.protocols import CpState, Listener, PilotOutput, PilotReading
from drivers.sysfs_pwm import DEFAULT_SYSFS_PWM_ROOT, SysfsPwmChannel

logger = logging.getLogger(__name__)

AdcChip = Literal["MCP3008", "MCP3004"]
Pull = Literal["up", "down", "none"]

_ADC_CHANNELS: Final = {"MCP3008": 8, "MCP3004": 4}
#: MCP3004/3008: 10-bit, code = 1024 × Vin / Vref (datasheet), so Vin = code × Vref / 1024.
_ADC_CODES: Final = 1024
_PULLS: Final = ("up", "down", "none")

#: PP–PE resistor windows (Ω, lower bound inclusive, upper exclusive) → cable rating (A).
#: The windows are the Tinkerforge decision windows quoted in reference/standards.md §6; their
#: edges lie between the nominal values (100 / 220 / 680 / 1500 Ω), within 10-30 % of the
#: geometric means (148 / 387 / 1010 Ω). 63 A is the three-phase rating of a 100 Ω cable
#: (70 A single-phase); the driver reports 63.
PP_BANDS: Final[tuple[tuple[float, float, float], ...]] = (
    (75.0, 150.0, 63.0),
    (150.0, 330.0, 32.0),
    (330.0, 1000.0, 20.0),
    (1000.0, 2200.0, 13.0),
)

# Above this the PP–PE path is open: no cable in the socket. (With the usual 1 kΩ pull-up one
# ADC step below the supply is about 1 MΩ; ADC noise stays well above this.)
PP_OPEN_MIN_OHM: Final = 100_000.0
# The rating of a cable whose coding is invalid: nothing may be offered through it.
PP_INVALID_A: Final = 0.0

# How often an async self-test or lock check looks at an input.
_POLL_S: Final = 0.005
# Join timeout for the sampler thread at shutdown: one burst is a few ms.
_JOIN_TIMEOUT_S: Final = 1.0
# Errors of the sampler are logged at most this often.
_ERROR_LOG_INTERVAL_S: Final = 60.0


# --------------------------------------------------------------------------- wiring


def _check_adc(chip: str, channel: int, vref_v: float, what: str) -> None:
    if chip not in _ADC_CHANNELS:
        raise ValueError(f"{what}: adc_chip must be one of {sorted(_ADC_CHANNELS)}, not {chip!r}")
    if not 0 <= channel < _ADC_CHANNELS[chip]:
        raise ValueError(f"{what}: adc_channel {channel} does not exist on an {chip}")
    _check_positive(vref_v, f"{what}: adc_vref_v")


def _check_positive(value: float, name: str) -> None:
    if not (math.isfinite(value) and value > 0.0):
        raise ValueError(f"{name} must be a positive number, not {value!r}")


def _check_non_negative(value: float, name: str) -> None:
    if not (math.isfinite(value) and value >= 0.0):
        raise ValueError(f"{name} must be >= 0, not {value!r}")


def _check_pull(pull: str, name: str) -> None:
    if pull not in _PULLS:
        raise ValueError(f"{name} must be one of {', '.join(_PULLS)}, not {pull!r}")


@dataclass(frozen=True, slots=True)
class PilotWiring:
    """Control pilot generator (kernel PWM) and CP level sensing (MCP3004/3008).

    PWM generator:

    - ``pwm_chip``: N of ``pwmchipN`` (0 for ``dtoverlay=pwm`` on every Pi).
    - ``pwm_channel``: M of ``pwmchipN/pwmM`` (0 for GPIO18 on a Pi 0-4; 2 on a Pi 5).
    - ``pwm_period_ns``: the PWM period in ns; 1 000 000 = 1 kHz (IEC 61851-1).
    - ``pwm_resolution_ns``: the smallest duty step the PWM hardware makes, ns. 1 by default
      (the sysfs unit); set the PWM clock period if known (e.g. 10 ns at 100 MHz) so that
      ``duty_resolution_percent`` is honest.
    - ``pwm_inverted``: True if the ±12 V stage inverts (PWM pin high → CP -12 V).
    - ``export_timeout_s``: s to wait for the exported channel's files to become writable.

    CP sense, through an ADC:

    - ``adc_chip``: "MCP3008" or "MCP3004"; ``adc_spi_port`` / ``adc_spi_device``: SPI bus
      and chip select (0/0 = ``/dev/spidev0.0``); ``adc_channel``: the ADC input.
    - ``adc_vref_v``: V, the ADC's reference (= full scale) voltage.
    - ``cp_scale``: CP volts per ADC-input volt; ``cp_offset_v``: V, the CP voltage at 0 V on
      the ADC input. CP = ADC volts × scale + offset. The defaults map 0…3.3 V onto
      -13.2…+13.2 V (a divider with an offset to 3.3 V); take the board's values.

    Classification of the positive plateau (the maximum of a burst), V: ≥ ``a_min_v`` → A,
    ≥ ``b_min_v`` → B, ≥ ``c_min_v`` → C, ≥ ``d_min_v`` → D, ≥ ``e_min_v`` → E (CP near 0 V:
    shorted to PE), below → F. The defaults are the midpoints between the nominal 12/9/6/3/0 V
    levels (±1.5 V windows; IEC tolerance is about ±1 V).

    - ``diode_max_v``: V; while PWM runs the negative plateau (the minimum of a burst) must be
      at or below this, else the EV's diode is missing (``diode_ok`` False). A missing diode
      lets the EV's resistor load the low phase too: -8.8 V in B, -5.6 V in C.

    Sampling (see ``SysfsAdcPilot``):

    - ``samples_per_burst``: ADC samples per burst, at least.
    - ``burst_min_s``: s; a burst goes on sampling until it has lasted this long, so that it
      always spans a whole PWM period whatever the SPI speed (1.1 ms > 1 ms).
    - ``burst_interval_s``: s of pause between bursts (lets the event loop have the CPU).
    - ``debounce_bursts``: consecutive bursts that must agree before a new reading is reported.
    - ``settle_s``: s after an output change before the next burst starts (one PWM period for
      the new duty to reach the pin, plus the stage's slew).
    - ``stale_after_s``: s without a finished burst (while the EVSE drives x1 or PWM) after
      which the reading is F: a sampler thread that hung in an SPI call or died must not
      leave its last reading (C) standing.
    """

    pwm_chip: int = 0
    pwm_channel: int = 0
    pwm_period_ns: int = 1_000_000
    pwm_resolution_ns: int = 1
    pwm_inverted: bool = False
    export_timeout_s: float = 2.0
    adc_chip: AdcChip = "MCP3008"
    adc_spi_port: int = 0
    adc_spi_device: int = 0
    adc_channel: int = 0
    adc_vref_v: float = 3.3
    cp_scale: float = 8.0
    cp_offset_v: float = -13.2
    a_min_v: float = 10.5
    b_min_v: float = 7.5
    c_min_v: float = 4.5
    d_min_v: float = 1.5
    e_min_v: float = -1.5
    diode_max_v: float = -10.0
    samples_per_burst: int = 100
    burst_min_s: float = 0.0011
    burst_interval_s: float = 0.005
    debounce_bursts: int = 2
    settle_s: float = 0.002
    stale_after_s: float = 1.0

    def __post_init__(self) -> None:
        if self.pwm_chip < 0 or self.pwm_channel < 0:
            raise ValueError("pilot: pwm_chip and pwm_channel must be >= 0")
        if self.pwm_period_ns <= 0:
            raise ValueError(f"pilot: pwm_period_ns must be > 0, not {self.pwm_period_ns}")
        if not 0 < self.pwm_resolution_ns * 2 < self.pwm_period_ns:
            raise ValueError("pilot: pwm_resolution_ns must be > 0 and well below the period")
        _check_adc(self.adc_chip, self.adc_channel, self.adc_vref_v, "pilot")
        # A higher ADC code must mean a higher CP voltage: the burst's maximum code is taken
        # as the positive plateau.
        if not (math.isfinite(self.cp_scale) and self.cp_scale > 0.0):
            raise ValueError(f"pilot: cp_scale must be a positive number, not {self.cp_scale}")
        thresholds = [self.a_min_v, self.b_min_v, self.c_min_v, self.d_min_v, self.e_min_v]
        if not all(math.isfinite(t) for t in thresholds) or thresholds != sorted(
            thresholds, reverse=True
        ):
            raise ValueError(
                "pilot: thresholds must decrease: a_min_v > b_min_v > c_min_v > d_min_v > e_min_v"
            )
        if not (math.isfinite(self.diode_max_v) and self.diode_max_v < self.e_min_v):
            raise ValueError("pilot: diode_max_v must be below e_min_v (a negative level)")
        if self.samples_per_burst < 2:
            raise ValueError("pilot: samples_per_burst must be >= 2")
        if self.debounce_bursts < 1:
            raise ValueError("pilot: debounce_bursts must be >= 1")
        for name in ("export_timeout_s", "burst_min_s", "burst_interval_s", "settle_s"):
            _check_non_negative(getattr(self, name), f"pilot: {name}")
        _check_positive(self.stale_after_s, "pilot: stale_after_s")

    def cp_volts(self, code: int) -> float:
        """The CP voltage an ADC code stands for."""
        return code * self.adc_vref_v / _ADC_CODES * self.cp_scale + self.cp_offset_v


@dataclass(frozen=True, slots=True)
class ProximityWiring:
    """Proximity pilot (PP) sensing, on a socket-type connector.

    The PP node is pulled up to ``pullup_supply_v`` (V) through ``pullup_ohm`` (Ω); the cable's
    coding resistor goes from PP to PE. The node's voltage, times ``adc_scale`` (PP volts per
    ADC-input volt; 1.0 if wired straight to the ADC), is read on ``adc_channel`` of an
    ``adc_chip`` on ``adc_spi_port`` / ``adc_spi_device`` with reference ``adc_vref_v`` (V).
    ``samples``: ADC conversions per read; their median is used.
    """

    adc_chip: AdcChip = "MCP3008"
    adc_spi_port: int = 0
    adc_spi_device: int = 0
    adc_channel: int = 1
    adc_vref_v: float = 3.3
    adc_scale: float = 1.0
    pullup_ohm: float = 1000.0
    pullup_supply_v: float = 3.3
    samples: int = 3

    def __post_init__(self) -> None:
        _check_adc(self.adc_chip, self.adc_channel, self.adc_vref_v, "proximity")
        _check_positive(self.adc_scale, "proximity: adc_scale")
        _check_positive(self.pullup_ohm, "proximity: pullup_ohm")
        _check_positive(self.pullup_supply_v, "proximity: pullup_supply_v")
        if self.samples < 1:
            raise ValueError("proximity: samples must be >= 1")


@dataclass(frozen=True, slots=True)
class TemperatureWiring:
    """An analog temperature sensor with a linear output (LM35, TMP36...).

    °C = ADC-input volts × ``c_per_v`` + ``offset_c``. LM35 (10 mV/°C): 100.0 and 0.0; TMP36
    (10 mV/°C, 500 mV at 0 °C): 100.0 and -50.0; fold any divider into ``c_per_v``. The ADC is
    ``adc_chip`` on ``adc_spi_port`` / ``adc_spi_device``, input ``adc_channel``, reference
    ``adc_vref_v`` (V). ``samples``: conversions per read; their median is used.
    """

    adc_chip: AdcChip = "MCP3008"
    adc_spi_port: int = 0
    adc_spi_device: int = 0
    adc_channel: int = 2
    adc_vref_v: float = 3.3
    c_per_v: float = 100.0
    offset_c: float = 0.0
    samples: int = 3

    def __post_init__(self) -> None:
        _check_adc(self.adc_chip, self.adc_channel, self.adc_vref_v, "temperature")
        if not (math.isfinite(self.c_per_v) and math.isfinite(self.offset_c)):
            raise ValueError("temperature: c_per_v and offset_c must be numbers")
        if self.samples < 1:
            raise ValueError("temperature: samples must be >= 1")


@dataclass(frozen=True, slots=True)
class ContactorWiring:
    """The contactor's relay output and its optional auxiliary (mirror) contact input.

    - ``relay_gpio``: BCM number of the output that energizes the contactor coil's driver.
    - ``relay_active_high``: True if the output high energizes the coil.
    - ``feedback_gpio``: BCM number of the auxiliary-contact input; None: no feedback.
    - ``feedback_active_high``: True if the input reads high while the main contacts are
      closed (a normally-open aux contact to 3.3 V, or a normally-closed one to GND with a
      pull-up); False for a normally-open aux contact to GND with a pull-up.
    - ``feedback_pull``: the Pi's internal pull on that input: "up", "down" or "none"
      (an external resistor).

    Any combination of pull and active level is allowed.
    """

    relay_gpio: int
    relay_active_high: bool = True
    feedback_gpio: int | None = None
    feedback_active_high: bool = True
    feedback_pull: Pull = "none"

    def __post_init__(self) -> None:
        _check_pull(self.feedback_pull, "contactor: feedback_pull")
        if self.feedback_gpio is not None and self.feedback_gpio == self.relay_gpio:
            raise ValueError("contactor: feedback_gpio and relay_gpio must differ")


@dataclass(frozen=True, slots=True)
class WatchdogWiring:
    """The GPIO that keeps a hardware watchdog on the contactor coil alive (a charge pump or a
    retriggerable monostable: the coil driver is enabled only while this output toggles).

    - ``gpio``: BCM number of the output. The safety loop toggles it on every turn (every
      50 ms: a 10 Hz square wave); the hardware must drop the coil within a few hundred ms of
      the toggling stopping, whatever level the output is left at.
    """

    gpio: int


@dataclass(frozen=True, slots=True)
class LockWiring:
    """A socket's cable-lock motor on an H-bridge, with a position switch.

    - ``lock_gpio`` / ``unlock_gpio``: BCM numbers of the two H-bridge inputs (motor turns
      towards locked / unlocked while its output is active; never both at once).
    - ``motor_active_high``: True if an output high drives the motor.
    - ``feedback_gpio``: BCM number of the lock's position switch.
    - ``feedback_active_high``: True if that input reads high while locked.
    - ``feedback_pull``: the Pi's internal pull on it: "up", "down" or "none".
    - ``pulse_s``: s the motor is driven per attempt (actuator datasheet, typically 0.1-0.6 s).
    - ``settle_s``: s after the pulse before the switch is read.
    - ``attempts``: pulses before giving up (1 = no retry).
    - ``retry_pause_s``: s between attempts (lets the motor and its PTC cool down).
    """

    lock_gpio: int
    unlock_gpio: int
    feedback_gpio: int
    motor_active_high: bool = True
    feedback_active_high: bool = True
    feedback_pull: Pull = "none"
    pulse_s: float = 0.3
    settle_s: float = 0.05
    attempts: int = 3
    retry_pause_s: float = 0.5

    def __post_init__(self) -> None:
        if len({self.lock_gpio, self.unlock_gpio, self.feedback_gpio}) != 3:
            raise ValueError("lock: lock_gpio, unlock_gpio and feedback_gpio must differ")
        _check_pull(self.feedback_pull, "lock: feedback_pull")
        _check_positive(self.pulse_s, "lock: pulse_s")
        _check_non_negative(self.settle_s, "lock: settle_s")
        _check_non_negative(self.retry_pause_s, "lock: retry_pause_s")
        if self.attempts < 1:
            raise ValueError(f"lock: attempts must be >= 1, not {self.attempts}")


@dataclass(frozen=True, slots=True)
class RcdWiring:
    """A residual-current device's trip output, and optionally its test input.

    - ``trip_gpio``: BCM number of the input wired to the device's trip (fault) output.
    - ``trip_active_high``: True if that input reads high while tripped.
    - ``trip_pull``: the Pi's internal pull on it: "up", "down" or "none".
    - ``test_gpio``: BCM number of the output wired to the device's test input; None: no
      self-test.
    - ``test_active_high``: True if an output high starts the device's test.
    - ``test_trip_timeout_s``: s the trip may take to show once the test output is on.
    - ``test_clear_timeout_s``: s the trip may take to clear once the test output is off.
    """

    trip_gpio: int
    trip_active_high: bool = True
    trip_pull: Pull = "none"
    test_gpio: int | None = None
    test_active_high: bool = True
    test_trip_timeout_s: float = 0.5
    test_clear_timeout_s: float = 1.0

    def __post_init__(self) -> None:
        _check_pull(self.trip_pull, "rcd: trip_pull")
        if self.test_gpio is not None and self.test_gpio == self.trip_gpio:
            raise ValueError("rcd: test_gpio and trip_gpio must differ")
        _check_positive(self.test_trip_timeout_s, "rcd: test_trip_timeout_s")
        _check_positive(self.test_clear_timeout_s, "rcd: test_clear_timeout_s")


# --------------------------------------------------------------------- pure helpers


def classify_cp(high_v: float, low_v: float, *, pwm: bool, wiring: PilotWiring) -> PilotReading:
    """The reading of one burst: its maximum (``high_v``) and minimum (``low_v``), in CP volts.

    The maximum is the positive plateau and gives the state. The minimum is the negative
    plateau: while PWM runs (``pwm``) it must sit near -12 V, else ``diode_ok`` is False.
    Without PWM there is no negative plateau to judge, except that a CP at 0 V (E) has none
    by definition (as the mock reports it).
    """
    if high_v >= wiring.a_min_v:
        state = CpState.A
    elif high_v >= wiring.b_min_v:
        state = CpState.B
    elif high_v >= wiring.c_min_v:
        state = CpState.C
    elif high_v >= wiring.d_min_v:
        state = CpState.D
    elif high_v >= wiring.e_min_v:
        state = CpState.E
    else:
        state = CpState.F
    if pwm:
        diode_ok = low_v <= wiring.diode_max_v
    else:
        diode_ok = state is not CpState.E
    return PilotReading(state, diode_ok=diode_ok)


def cable_rating_for_resistance(ohm: float) -> float | None:
    """The cable rating (A) a PP–PE resistance codes (``PP_BANDS``); None when the path is
    open (no cable); ``PP_INVALID_A`` (0 A) for a value in no window: a short, a broken
    cable, a resistor between two bands. Reading an invalid cable as "no cable" would let the
    connector's full rating through a cable that may carry 13 A."""
    if ohm >= PP_OPEN_MIN_OHM:
        return None
    for low, high, rating in PP_BANDS:
        if low <= ohm < high:
            return rating
    return PP_INVALID_A


_ENERGY_STATES: Final = frozenset({CpState.C, CpState.D})
_FAULT_STATES: Final = frozenset({CpState.E, CpState.F})


def toward_safety(old: PilotReading, new: PilotReading) -> bool:
    """True for a change after which the contactor must open: the EV stops asking for energy
    (C/D → A/B/E/F), the CP shorts or drops (→ E/F), the diode goes missing."""
    if old.state in _ENERGY_STATES and new.state not in _ENERGY_STATES:
        return True
    if new.state in _FAULT_STATES and old.state not in _FAULT_STATES:
        return True
    return old.diode_ok and not new.diode_ok


class Debouncer:
    """Reports a new value once it has been seen ``count`` times in a row, except a change
    toward safety, which is reported at the first burst: a glitch then costs a needless
    contactor opening (the EV asks again and gets it after the debounce), whereas waiting
    would keep the contactor closed for a whole sampling cycle longer than the EV asked.
    """

    def __init__(self, initial: PilotReading, count: int) -> None:
        self.value = initial
        self._count = count
        self._candidate: PilotReading | None = None
        self._seen = 0

    def reset(self, value: PilotReading | None = None) -> None:
        """Forget the candidate (and, if given, report ``value`` from now on)."""
        if value is not None:
            self.value = value
        self._candidate = None
        self._seen = 0

    def feed(self, sample: PilotReading) -> bool:
        """Take one sample; True if the reported value changed."""
        if sample == self.value:
            self.reset()
            return False
        if toward_safety(self.value, sample):
            self.reset(sample)
            return True
        if sample == self._candidate:
            self._seen += 1
        else:
            self._candidate = sample
            self._seen = 1
        if self._seen >= self._count:
            self.reset(sample)
            return True
        return False


def _open_adc(chip: str, port: int, device: int, channel: int, pin_factory: Any) -> Any:
    cls = MCP3008 if chip == "MCP3008" else MCP3004
    return cls(channel=channel, port=port, device=device, pin_factory=pin_factory)


def _median_volts(adc: Any, wiring: ProximityWiring | TemperatureWiring) -> float:
    """The median of ``wiring.samples`` conversions, in volts at the ADC input."""
    codes = sorted(int(adc.raw_value) for _ in range(wiring.samples))
    return codes[len(codes) // 2] * wiring.adc_vref_v / _ADC_CODES


def _call_listener(listener: Listener | None, what: str) -> None:
    if listener is None:
        return
    try:
        listener()
    except Exception:  # a listener bug must not kill a sampler or a GPIO callback thread
        logger.exception("%s listener failed", what)


class _Input:
    """A digital input with any combination of internal pull and active level.

    gpiozero ties the two together (a pulled-up input is active-low); this keeps gpiozero's
    notion and inverts on top when the wiring says otherwise.
    """

    def __init__(self, gpio: int, *, active_high: bool, pull: str, pin_factory: Any) -> None:
        pull_up = {"up": True, "down": False, "none": None}[pull]
        if pull_up is None:
            self._device = DigitalInputDevice(
                gpio, pull_up=None, active_state=active_high, pin_factory=pin_factory
            )
            self._invert = False
        else:
            self._device = DigitalInputDevice(gpio, pull_up=pull_up, pin_factory=pin_factory)
            self._invert = (not pull_up) != active_high

    @property
    def active(self) -> bool:
        return bool(self._device.is_active) != self._invert

    def on_edge(self, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (no arguments) on every edge, from gpiozero's callback thread."""
        self._device.when_activated = callback
        self._device.when_deactivated = callback

    def close(self) -> None:
        self._device.close()


def _output(gpio: int, *, active_high: bool, pin_factory: Any) -> Any:
    return OutputDevice(gpio, active_high=active_high, initial_value=False, pin_factory=pin_factory)


# ---------------------------------------------------------------------------- pilot


class SysfsAdcPilot:
    """PilotDriver: 1 kHz PWM from the kernel PWM driver, CP level from an MCP3004/3008.

    **Output.** Duty cycle in ns of a 1 000 000 ns period (resolution 1 ns = 0.0001 %, or
    ``pwm_resolution_ns``): x1 = 100 %, state F = 0 %, PWM x % = x % (see the module notes on
    the stage's polarity). The constructor exports and configures the channel and drives state
    F; ``shutdown`` drives state F and leaves the channel exported and enabled, so the pilot
    stays at -12 V after the daemon has gone (unexporting would leave the pin undefined).

    **Sensing.** A worker thread (started by the constructor, stopped by ``shutdown``) takes
    bursts of ADC samples: at least ``samples_per_burst`` conversions and at least
    ``burst_min_s`` of time, so a burst spans at least one PWM period. The burst maximum
    gives the state (``classify_cp``), the minimum the diode check while PWM runs. A new
    reading is reported once ``debounce_bursts`` consecutive bursts agree; bursts are
    ``burst_interval_s`` apart. Bursts that straddle an output change are discarded, and the
    first burst after a change starts ``settle_s`` after it.

    Latency of a change on the CP wire (burst duration b, pause p, debounce n). The EV
    leaving C/D (to B or A, an unplug included) ends the running burst at the first sample
    that shows it, and a change toward safety needs no debounce: about p + one PWM period
    at worst. A missing diode, a short (E) or a loss (F) needs a whole burst's maximum or
    minimum: at most 2 × b + p. Other changes wait for the debounce: between n × (b + p) and
    (n + 1) × (b + p). With the defaults (100 samples; b ≈ 2-6 ms with hardware SPI on a
    Pi 4, 20-60 µs per conversion through gpiozero; p = 5 ms; n = 2): under 7 ms for C → B,
    well under the 100 ms in which the contactor must open. A burst can miss the positive
    plateau at very low duty (5 %: 50 µs high); the debounce hides a single miss.

    While the EVSE drives state F the reading is F and no sampling is done. A sampling error
    (SPI failure) reads as F, like a pilot the EVSE cannot see: the controller opens the
    contactor at once and raises a fault if it lasts. Leaving F, the reading stays F until
    the new level has been debounced.

    The listener is called from the sampler thread whenever the reported reading changes,
    and from the caller's thread when ``set_state_f`` changes it.
    """

    def __init__(
        self,
        wiring: PilotWiring,
        *,
        pin_factory: Any = None,
        sysfs_root: str | os.PathLike[str] = DEFAULT_SYSFS_PWM_ROOT,
        name: str = "pilot",
    ) -> None:
        self._wiring = wiring
        self._name = name
        self._period_ns = wiring.pwm_period_ns
        self._pwm = SysfsPwmChannel(
            wiring.pwm_chip,
            wiring.pwm_channel,
            root=sysfs_root,
            export_timeout_s=wiring.export_timeout_s,
        )
        self._pwm.configure(self._period_ns, self._wire_ns(0))  # state F

        self._cond = threading.Condition()
        self._output = PilotOutput.STATE_F
        self._duty_ns = 0
        self._generation = 0  # bumped by every output change: bursts across one are void
        self._changed_at = time.monotonic()
        self._burst_done_at = self._changed_at  # the last finished burst (or output change)
        self._debouncer = Debouncer(PilotReading(CpState.F), wiring.debounce_bursts)
        self._listener: Listener | None = None
        self._closed = False
        self._last_error_log = -math.inf

        self._adc = _open_adc(
            wiring.adc_chip,
            wiring.adc_spi_port,
            wiring.adc_spi_device,
            wiring.adc_channel,
            pin_factory,
        )
        self._thread = threading.Thread(target=self._run, name=f"{name}-sampler", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ output

    def _wire_ns(self, duty_ns: int) -> int:
        """The duty_cycle value to write for ``duty_ns`` of CP-high time."""
        return self._period_ns - duty_ns if self._wiring.pwm_inverted else duty_ns

    def _drive(self, output: PilotOutput, duty_ns: int) -> None:
        listener: Listener | None = None
        with self._cond:
            if self._closed:
                if output is PilotOutput.STATE_F:
                    return  # already left in state F
                raise RuntimeError(f"{self._name}: driver is shut down")
            if output is self._output and duty_ns == self._duty_ns:
                return
            self._pwm.set_duty_ns(self._wire_ns(duty_ns))
            self._output = output
            self._duty_ns = duty_ns
            self._generation += 1
            self._changed_at = time.monotonic()
            self._burst_done_at = self._changed_at
            if output is PilotOutput.STATE_F:
                f = PilotReading(CpState.F)
                if self._debouncer.value != f:
                    listener = self._listener
                self._debouncer.reset(f)
            else:
                self._debouncer.reset()
            self._cond.notify_all()
        _call_listener(listener, self._name)

    def set_pwm(self, duty_percent: float) -> None:
        if not 0.0 < duty_percent < 100.0:  # also rejects NaN
            raise ValueError(f"PWM duty must be between 0 and 100 %, not {duty_percent!r}")
        step = self._wiring.pwm_resolution_ns
        duty_ns = round(duty_percent * self._period_ns / 100.0 / step) * step
        # Still PWM after rounding: never a steady level.
        duty_ns = min(max(duty_ns, step), self._period_ns - step)
        self._drive(PilotOutput.PWM, duty_ns)

    def set_steady(self) -> None:
        self._drive(PilotOutput.STEADY, self._period_ns)

    def set_state_f(self) -> None:
        self._drive(PilotOutput.STATE_F, 0)

    @property
    def output(self) -> PilotOutput:
        with self._cond:
            return self._output

    @property
    def duty_percent(self) -> float:
        with self._cond:
            if self._output is not PilotOutput.PWM:
                return 0.0
            return self._duty_ns * 100.0 / self._period_ns

    @property
    def duty_resolution_percent(self) -> float:
        return self._wiring.pwm_resolution_ns * 100.0 / self._period_ns

    # ----------------------------------------------------------------- sensing

    def read(self) -> PilotReading:
        with self._cond:
            stale_s = time.monotonic() - self._burst_done_at
            if self._output is not PilotOutput.STATE_F and stale_s > self._wiring.stale_after_s:
                return PilotReading(CpState.F)  # the sampler has stopped: nothing is known
            return self._debouncer.value

    def set_listener(self, listener: Listener | None) -> None:
        with self._cond:
            self._listener = listener

    def _leave_code(self) -> int | None:
        """The lowest ADC code that proves the EV has left C/D (CP ≥ ``b_min_v``), or None if
        no code reaches it."""
        w = self._wiring
        code = math.ceil((w.b_min_v - w.cp_offset_v) * _ADC_CODES / (w.adc_vref_v * w.cp_scale))
        # Float rounding may put the boundary one code off either way.
        while code > 0 and w.cp_volts(code - 1) >= w.b_min_v:
            code -= 1
        while code < _ADC_CODES and w.cp_volts(code) < w.b_min_v:
            code += 1
        return code if code < _ADC_CODES else None

    def _burst(self, leave_code: int | None) -> tuple[float, float, bool]:
        """(max, min) CP volts over one burst, and whether it ended early.

        With ``leave_code`` set (the reported state is C or D), the burst ends at the first
        sample at or above it: the maximum can only grow, so the state is already known to be
        A or B, and the contactor must open now, not at the end of the burst.
        """
        adc = self._adc
        lo = hi = int(adc.raw_value)
        count = 1
        deadline = time.monotonic() + self._wiring.burst_min_s
        wanted = self._wiring.samples_per_burst
        limit = 50 * wanted  # a stalled clock must not make a burst endless
        stop_at = _ADC_CODES if leave_code is None else leave_code
        while hi < stop_at and (count < wanted or (count < limit and time.monotonic() < deadline)):
            code = int(adc.raw_value)
            if code > hi:
                hi = code
            elif code < lo:
                lo = code
            count += 1
        return self._wiring.cp_volts(hi), self._wiring.cp_volts(lo), hi >= stop_at

    def _run(self) -> None:
        wiring = self._wiring
        leave_code = self._leave_code()
        while True:
            with self._cond:
                while True:
                    if self._closed:
                        return
                    if self._output is PilotOutput.STATE_F:
                        self._cond.wait()
                        continue
                    wait = self._changed_at + wiring.settle_s - time.monotonic()
                    if wait <= 0.0:
                        break
                    self._cond.wait(wait)
                generation = self._generation
                pwm = self._output is PilotOutput.PWM
                reported = self._debouncer.value
            try:
                high_v, low_v, early = self._burst(
                    leave_code if reported.state in _ENERGY_STATES else None
                )
                sample = classify_cp(high_v, low_v, pwm=pwm, wiring=wiring)
                if early:
                    # The burst may have ended before the negative plateau: the diode is
                    # judged again by the next whole burst, not from this partial one.
                    sample = PilotReading(sample.state, diode_ok=reported.diode_ok)
            except Exception:
                self._log_error()
                sample = PilotReading(CpState.F)
            listener: Listener | None = None
            with self._cond:
                if self._closed:
                    return
                self._burst_done_at = time.monotonic()
                if generation == self._generation and self._debouncer.feed(sample):
                    listener = self._listener
            _call_listener(listener, self._name)
            with self._cond:
                if generation == self._generation and not self._closed:
                    self._cond.wait(wiring.burst_interval_s)

    def _log_error(self) -> None:
        now = time.monotonic()
        if now - self._last_error_log >= _ERROR_LOG_INTERVAL_S:
            self._last_error_log = now
            logger.exception("%s: CP sampling failed; reading F", self._name)

    def shutdown(self) -> None:
        """State F, stop the sampler, release the ADC. Idempotent."""
        try:
            self.set_state_f()
        finally:
            with self._cond:
                already = self._closed
                self._closed = True
                self._cond.notify_all()
            if not already:
                if self._thread is not threading.current_thread():
                    self._thread.join(_JOIN_TIMEOUT_S)
                    if self._thread.is_alive():
                        logger.warning("%s: sampler thread did not stop", self._name)
                self._adc.close()


# ----------------------------------------------------------------- proximity pilot


class ProximityPilot:
    """The cable's current rating from its PP–PE coding resistor (socket-type connectors).

    ``read_cable_rating_a()`` takes ``samples`` conversions (the median), works out the
    resistor from the pull-up divider and maps it through ``PP_BANDS``: 13 / 20 / 32 / 63 A,
    or None for no cable (open: the node sits at the pull-up supply) and for a resistance in
    no window. Synchronous: a few conversions, well under a millisecond with hardware SPI.
    """

    def __init__(self, wiring: ProximityWiring, *, pin_factory: Any = None) -> None:
        self._wiring = wiring
        self._adc = _open_adc(
            wiring.adc_chip,
            wiring.adc_spi_port,
            wiring.adc_spi_device,
            wiring.adc_channel,
            pin_factory,
        )

    def read_resistance_ohm(self) -> float:
        """The PP–PE resistance in Ω (``math.inf`` when open)."""
        w = self._wiring
        volts = _median_volts(self._adc, w) * w.adc_scale
        across_pullup = w.pullup_supply_v - volts
        # Within one ADC step of the supply: nothing pulls the node down.
        if across_pullup <= w.adc_vref_v / _ADC_CODES * w.adc_scale:
            return math.inf
        return w.pullup_ohm * volts / across_pullup

    def read_cable_rating_a(self) -> float | None:
        return cable_rating_for_resistance(self.read_resistance_ohm())

    def shutdown(self) -> None:
        self._adc.close()


# ---------------------------------------------------------------------- temperature


class AdcTemperature:
    """TemperatureSensor: a linear analog sensor (LM35, TMP36...) on an MCP3004/3008 input."""

    def __init__(self, wiring: TemperatureWiring, *, pin_factory: Any = None) -> None:
        self._wiring = wiring
        self._adc = _open_adc(
            wiring.adc_chip,
            wiring.adc_spi_port,
            wiring.adc_spi_device,
            wiring.adc_channel,
            pin_factory,
        )

    def read_c(self) -> float:
        w = self._wiring
        return _median_volts(self._adc, w) * w.c_per_v + w.offset_c

    def shutdown(self) -> None:
        self._adc.close()


# ------------------------------------------------------------------------ contactor


class GpioContactor:
    """ContactorDriver: a relay output and an optional auxiliary-contact input.

    ``set_closed`` writes the output and returns (microseconds): weld and failure-to-close
    are judged by the controller from ``feedback_closed()`` against its own timeouts. The
    constructor leaves the contactor open; so does ``shutdown``. When the daemon's GPIOs are
    released the relay driver's input floats: the board must pull it to "open".
    """

    def __init__(self, wiring: ContactorWiring, *, pin_factory: Any = None) -> None:
        self._wiring = wiring
        self._lock = threading.Lock()
        self._commanded = False
        self._closed = False
        self._feedback = (
            _Input(
                wiring.feedback_gpio,
                active_high=wiring.feedback_active_high,
                pull=wiring.feedback_pull,
                pin_factory=pin_factory,
            )
            if wiring.feedback_gpio is not None
            else None
        )
        try:
            self._relay = _output(
                wiring.relay_gpio, active_high=wiring.relay_active_high, pin_factory=pin_factory
            )
        except BaseException:
            if self._feedback is not None:
                self._feedback.close()
            raise

    def set_closed(self, closed: bool) -> None:
        with self._lock:
            if self._closed:
                if not closed:
                    return  # already open and released
                raise RuntimeError("contactor: driver is shut down")
            if closed:
                self._relay.on()
            else:
                self._relay.off()
            self._commanded = bool(closed)

    @property
    def commanded_closed(self) -> bool:
        with self._lock:
            return self._commanded

    def feedback_closed(self) -> bool | None:
        if self._feedback is None:
            return None
        with self._lock:
            if self._closed:
                return None
            return self._feedback.active

    def shutdown(self) -> None:
        """Open the contactor and release the GPIOs. Idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._commanded = False
            try:
                self._relay.off()
            finally:
                self._relay.close()
                if self._feedback is not None:
                    self._feedback.close()


# ----------------------------------------------------------------------------- lock


class GpioLock:
    """LockDriver: a lock motor on an H-bridge (two outputs) and a position switch.

    ``lock()`` / ``unlock()``: if the switch already shows the wanted position, True at once.
    Otherwise up to ``attempts`` times: drive the direction output for ``pulse_s``
    (``asyncio.sleep``: the loop never blocks), switch it off, wait ``settle_s``, read the
    switch; True as soon as it confirms, False after the last attempt. The motor outputs are
    off whenever these return or are cancelled, and never both on. Concurrent calls are
    serialized.
    """

    def __init__(self, wiring: LockWiring, *, pin_factory: Any = None) -> None:
        self._wiring = wiring
        self._motor_lock = asyncio.Lock()
        self._closed = False
        opened: list[Any] = []
        try:
            self._feedback = _Input(
                wiring.feedback_gpio,
                active_high=wiring.feedback_active_high,
                pull=wiring.feedback_pull,
                pin_factory=pin_factory,
            )
            opened.append(self._feedback)
            self._lock_out = _output(
                wiring.lock_gpio, active_high=wiring.motor_active_high, pin_factory=pin_factory
            )
            opened.append(self._lock_out)
            self._unlock_out = _output(
                wiring.unlock_gpio, active_high=wiring.motor_active_high, pin_factory=pin_factory
            )
        except BaseException:
            for part in opened:
                part.close()
            raise

    @property
    def locked(self) -> bool:
        if self._closed:
            return False
        return self._feedback.active

    async def lock(self) -> bool:
        return await self._move(True)

    async def unlock(self) -> bool:
        return await self._move(False)

    def _motor_off(self) -> None:
        self._lock_out.off()
        self._unlock_out.off()

    async def _move(self, to_locked: bool) -> bool:
        w = self._wiring
        async with self._motor_lock:
            if self._closed:
                raise RuntimeError("lock: driver is shut down")
            if self._feedback.active == to_locked:
                return True
            if to_locked:
                drive, other = self._lock_out, self._unlock_out
            else:
                drive, other = self._unlock_out, self._lock_out
            for attempt in range(w.attempts):
                if attempt:
                    await asyncio.sleep(w.retry_pause_s)
                other.off()  # never both directions: that shorts the H-bridge
                try:
                    drive.on()
                    await asyncio.sleep(w.pulse_s)
                finally:
                    self._motor_off()
                await asyncio.sleep(w.settle_s)
                if self._feedback.active == to_locked:
                    return True
            logger.warning(
                "lock: %s not confirmed after %d attempts",
                "locking" if to_locked else "unlocking",
                w.attempts,
            )
            return False

    def close(self) -> None:
        """Motor off, GPIOs released; the lock keeps its position. Idempotent. Synchronous,
        so that a start-up that fails after building the lock can release its pins."""
        if self._closed:
            return
        self._closed = True
        try:
            self._motor_off()
        finally:
            self._lock_out.close()
            self._unlock_out.close()
            self._feedback.close()

    async def shutdown(self) -> None:
        """``close``, as the LockDriver protocol's awaitable shutdown."""
        self.close()


# ------------------------------------------------------------------------- watchdog


class GpioWatchdogToggle:
    """HardwareWatchdog: a GPIO output toggled by the safety loop (see ``WatchdogWiring``).
    Starts low; ``shutdown`` leaves it low and released, so the coil drops."""

    def __init__(self, wiring: WatchdogWiring, *, pin_factory: Any = None) -> None:
        self._output = _output(wiring.gpio, active_high=True, pin_factory=pin_factory)
        self._level = False
        self._closed = False

    def toggle(self) -> None:
        if self._closed:
            return
        self._level = not self._level
        self._output.value = self._level

    def shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self._output.off()
        finally:
            self._output.close()


# ------------------------------------------------------------------------------ RCD


class GpioRcd:
    """ResidualCurrentMonitor: an RCD / 6 mA DC monitor's trip output on a GPIO input.

    ``tripped()`` reads the input. The listener is called on every edge of it, from
    gpiozero's callback thread (on mock pins: from whoever drives the pin).

    ``self_test()`` (only where ``has_self_test``): the app runs it before each session,
    with the contactor open. It refuses (False) if the device is already tripped; turns the
    test output on and expects the trip within ``test_trip_timeout_s``; turns it off and
    expects the trip to clear within ``test_clear_timeout_s``. True only if both happen;
    the test output is off when it returns or is cancelled. While the test runs, the trip it
    provokes is expected: ``tripped()`` keeps answering False and the listener is not called;
    if the trip has not cleared at the end, ``tripped()`` answers True again and the listener
    is called. A device that latches its trip until reset fails this test.
    """

    def __init__(self, wiring: RcdWiring, *, pin_factory: Any = None) -> None:
        self._wiring = wiring
        self._mutex = threading.Lock()
        self._listener: Listener | None = None
        self._testing = False
        self._test_lock = asyncio.Lock()
        self._closed = False
        self._trip = _Input(
            wiring.trip_gpio,
            active_high=wiring.trip_active_high,
            pull=wiring.trip_pull,
            pin_factory=pin_factory,
        )
        try:
            self._test_out = (
                _output(
                    wiring.test_gpio, active_high=wiring.test_active_high, pin_factory=pin_factory
                )
                if wiring.test_gpio is not None
                else None
            )
        except BaseException:
            self._trip.close()
            raise
        self._trip.on_edge(self._on_edge)

    def _on_edge(self) -> None:
        with self._mutex:
            listener = None if self._testing else self._listener
        _call_listener(listener, "rcd")

    def tripped(self) -> bool:
        with self._mutex:
            if self._testing or self._closed:
                return False
        return self._trip.active

    def set_listener(self, listener: Listener | None) -> None:
        with self._mutex:
            self._listener = listener

    @property
    def has_self_test(self) -> bool:
        return self._test_out is not None

    async def _wait_for(self, tripped: bool, timeout_s: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._trip.active != tripped:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(_POLL_S)
        return True

    async def self_test(self) -> bool:
        test_out = self._test_out
        if test_out is None:
            raise RuntimeError("rcd: no test output wired (has_self_test is False)")
        w = self._wiring
        async with self._test_lock:
            with self._mutex:
                if self._closed:
                    raise RuntimeError("rcd: driver is shut down")
                if self._trip.active:
                    logger.warning("rcd self-test: device already tripped")
                    return False
                self._testing = True
            try:
                try:
                    test_out.on()
                    tripped = await self._wait_for(True, w.test_trip_timeout_s)
                finally:
                    test_out.off()
                if not tripped:
                    logger.warning("rcd self-test: no trip within %s s", w.test_trip_timeout_s)
                    return False
                ok = await self._wait_for(False, w.test_clear_timeout_s)
                if not ok:
                    logger.warning(
                        "rcd self-test: trip did not clear within %s s", w.test_clear_timeout_s
                    )
                return ok
            finally:
                with self._mutex:
                    self._testing = False
                    listener = self._listener
                if self._trip.active:
                    _call_listener(listener, "rcd")

    def shutdown(self) -> None:
        """Release the GPIOs. Idempotent."""
        with self._mutex:
            if self._closed:
                return
            self._closed = True
            self._listener = None
        self._trip.on_edge(None)
        self._trip.close()
        if self._test_out is not None:
            self._test_out.off()
            self._test_out.close()
