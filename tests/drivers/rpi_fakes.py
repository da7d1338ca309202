"""Stand-ins for the hardware behind ``drivers/rpi.py``: gpiozero mock pins that react to the
driver's outputs, an MCP3008 emulated on gpiozero's mock SPI, a fake sysfs PWM tree and the
electrical model of a control pilot with an EV on it.

The test pin factory is ``MockFactory(pin_class=MockPWMPin)`` (every pin PWM-capable, as on a
real Pi). gpiozero's own ``MockSPIDevice`` insists on plain-``MockPin`` clock and select pins,
which such a factory refuses to hand out again ("already in use as a MockSPIClockPin"), so the
emulated chip builds its pins from PWM-compatible subclasses.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from gpiozero.pins.mock import (  # type: ignore[import-untyped]
    MockFactory,
    MockPin,
    MockPWMPin,
    MockSPIClockPin,
    MockSPIDevice,
    MockSPISelectPin,
)

from drivers.protocols import CpState
from drivers.rpi import PilotWiring


class HookedPin(MockPWMPin):  # type: ignore[misc]
    """An output pin that tells the world about every change of its level."""

    hook: Callable[[bool], None] | None = None

    def _change_state(self, value: Any) -> bool:
        changed = bool(super()._change_state(value))
        if changed and self.hook is not None:
            self.hook(bool(value))
        return changed


def hooked_pin(factory: MockFactory, gpio: int, hook: Callable[[bool], None]) -> HookedPin:
    """Create ``gpio`` as a HookedPin before the driver asks the factory for it."""
    pin: HookedPin = factory.pin(gpio, pin_class=HookedPin)
    pin.hook = hook
    return pin


def drive_input(factory: MockFactory, gpio: int, high: bool) -> None:
    """Drive an input pin the driver has configured (no-op before it is an input)."""
    pin = factory.pin(gpio)
    if pin.function != "input":
        return
    if high:
        pin.drive_high()
    else:
        pin.drive_low()


class _PwmSpiClockPin(MockSPIClockPin, MockPWMPin):  # type: ignore[misc]
    def _set_state(self, value: Any) -> None:
        MockPin._set_state(self, value)  # a boolean level, not a PWM float
        for dev in self.spi_devices:
            dev.on_clock()


class _PwmSpiSelectPin(MockSPISelectPin, MockPWMPin):  # type: ignore[misc]
    def _set_state(self, value: Any) -> None:
        MockPin._set_state(self, value)
        if self.spi_device:
            self.spi_device.on_select()


class EmulatedMcp3008(MockSPIDevice):  # type: ignore[misc]
    """The slave side of an MCP3008 on SPI port 0 (GPIO11/10/9, CE0 = GPIO8, CE1 = GPIO7).

    Every conversion asks ``source(channel)`` for the input voltage (V), so a source may
    return a different value on each sample (a PWM waveform). Code = 1024 × V / Vref, clamped.
    """

    def __init__(
        self,
        factory: MockFactory,
        source: Callable[[int], float],
        *,
        vref_v: float = 3.3,
        device: int = 0,
    ) -> None:
        pwm = issubclass(factory.pin_class, MockPWMPin)
        self.clock_pin = factory.pin(11, pin_class=_PwmSpiClockPin if pwm else MockSPIClockPin)
        self.mosi_pin = factory.pin(10)
        self.miso_pin = factory.pin(9)
        select = 8 if device == 0 else 7
        self.select_pin = factory.pin(
            select, pin_class=_PwmSpiSelectPin if pwm else MockSPISelectPin
        )
        self.clock_polarity = False
        self.clock_phase = False
        self.lsb_first = False
        self.bits_per_word = 8
        self.select_high = False
        self.rx_bit = 0
        self.rx_buf: list[Any] = []
        self.tx_buf: list[Any] = []
        self.clock_pin.spi_devices.append(self)
        self.select_pin.spi_device = self
        self.source = source
        self.vref_v = vref_v
        self.conversions = 0
        self._state = "idle"
        self._cmd_from = 0

    def on_start(self) -> None:
        super().on_start()
        self._state = "idle"

    def on_bit(self) -> None:
        if self._state == "idle" and self.rx_buf and self.rx_buf[-1]:
            self._state, self._cmd_from = "cmd", len(self.rx_buf)  # start bit
        elif self._state == "cmd" and len(self.rx_buf) - self._cmd_from == 4:
            bits = [int(b) for b in self.rx_buf[self._cmd_from :]]  # M, then 3 channel bits
            channel = bits[1] << 2 | bits[2] << 1 | bits[3]
            volts = self.source(channel)
            code = min(1023, max(0, round(volts / self.vref_v * 1024)))
            self.conversions += 1
            self.tx_word(code, 12)  # a don't-care bit, a null bit, 10 bits
            self._state = "tx"


# ------------------------------------------------------------------- sysfs PWM


def make_pwm_tree(
    root: Path,
    *,
    chip: int = 0,
    npwm: int = 2,
    exported: dict[int, dict[str, str]] | None = None,
) -> Path:
    """A fake ``/sys/class/pwm`` with ``pwmchip<chip>``; ``exported`` maps channel →
    initial attribute values (missing ones: period 0, duty 0, disabled, normal)."""
    chip_dir = root / f"pwmchip{chip}"
    chip_dir.mkdir(parents=True)
    (chip_dir / "export").write_text("")
    (chip_dir / "unexport").write_text("")
    (chip_dir / "npwm").write_text(f"{npwm}\n")
    for channel, values in (exported or {}).items():
        create_pwm_channel(chip_dir, channel, values)
    return chip_dir


def create_pwm_channel(chip_dir: Path, channel: int, values: dict[str, str] | None = None) -> Path:
    defaults = {"period": "0", "duty_cycle": "0", "enable": "0", "polarity": "normal"}
    defaults.update(values or {})
    channel_dir = chip_dir / f"pwm{channel}"
    channel_dir.mkdir()
    for name, value in defaults.items():
        (channel_dir / name).write_text(f"{value}\n")
    return channel_dir


class FakePwmKernel:
    """Plays the kernel for ``export``: creates ``pwmM/`` once M is written (in a thread, a
    little later, as udev does)."""

    def __init__(self, chip_dir: Path) -> None:
        self._chip_dir = chip_dir
        self._stop = threading.Event()
        self.exported: list[int] = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        export = self._chip_dir / "export"
        while not self._stop.wait(0.002):
            text = export.read_text().strip()
            if text:
                export.write_text("")
                channel = int(text)
                self.exported.append(channel)
                create_pwm_channel(self._chip_dir, channel)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(1.0)


def read_attr(channel_dir: Path, name: str) -> str:
    return (channel_dir / name).read_text().strip()


# ------------------------------------------------------------------ CP physics

#: The EV's load from CP to PE behind its diode (IEC 61851-1 Annex A): B 2.74 kΩ, C 882 Ω
#: (2.74 kΩ ∥ 1.3 kΩ), D 246 Ω (2.74 kΩ ∥ 270 Ω); the EVSE's source resistor is 1 kΩ.
EV_LOAD_OHM = {CpState.B: 2740.0, CpState.C: 882.0, CpState.D: 246.0}
SOURCE_OHM = 1000.0
_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


class CpWire:
    """The CP wire with a ±12 V generator (read back from the fake sysfs channel), a 1 kΩ
    source resistor and an EV.

    ``sample()`` is the CP voltage at one sampling instant: the generator is high for the
    duty fraction of the samples (a low-discrepancy sequence, so min and max both show up in
    any burst of a few dozen samples).
    """

    def __init__(self, channel_dir: Path, *, inverted: bool = False) -> None:
        self._dir = channel_dir
        self._inverted = inverted
        self.ev: CpState = CpState.A  # A (no EV), B, C or D
        self.diode = True
        self.shorted = False
        self._k = 0

    def high_fraction(self) -> float:
        """The fraction of time the generator drives +12 V."""
        try:
            enabled = read_attr(self._dir, "enable") == "1"
            period = int(read_attr(self._dir, "period"))
            duty = int(read_attr(self._dir, "duty_cycle"))
        except (OSError, ValueError):
            return 0.0  # mid-write: treat as low
        if not enabled or period <= 0:
            return 0.0  # a disabled PWM pin sits low: -12 V
        fraction = min(1.0, duty / period)
        return 1.0 - fraction if self._inverted else fraction

    def sample(self) -> float:
        if self.shorted:
            return 0.0
        self._k += 1
        high = (self._k * _GOLDEN) % 1.0 < self.high_fraction()
        load = EV_LOAD_OHM.get(self.ev)
        if high:
            return 12.0 if load is None else 12.0 * load / (load + SOURCE_OHM)
        if load is None or self.diode:
            return -12.0  # the diode blocks: the EV does not load the negative half
        return -12.0 * load / (load + SOURCE_OHM)


def cp_to_adc_volts(cp_v: float, wiring: PilotWiring) -> float:
    """What the board's divider puts on the ADC input for ``cp_v`` on CP."""
    return (cp_v - wiring.cp_offset_v) / wiring.cp_scale
