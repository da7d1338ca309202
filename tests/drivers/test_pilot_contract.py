"""PilotDriver contract, run on the mock and on SysfsAdcPilot.

The real driver runs on a fake sysfs PWM tree (tmp_path) and an MCP3008 emulated on gpiozero's
mock SPI, fed by the electrical model of a CP wire with an EV on it (``fakes.CpWire``): the
generator level is what the driver wrote to sysfs, the EV's load what the test presents.
"""

from __future__ import annotations

import contextlib
import errno
import math
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers import sysfs_pwm
from drivers.mock import MockConnectorHardware
from drivers.pilot_uart import uart_pilot_from_options
from drivers.protocols import CpState, PilotDriver, PilotOutput, PilotReading
from drivers.rpi import Debouncer, PilotWiring, SysfsAdcPilot, classify_cp
from tests.drivers.pilot_mcu_emulator import McuEmulator, socat_pty_pair
from tests.drivers.rpi_fakes import (
    CpWire,
    EmulatedMcp3008,
    FakePwmKernel,
    cp_to_adc_volts,
    make_pwm_tree,
    read_attr,
)

DEADLINE_S = 3.0

# Small bursts: the mock SPI bit-bangs in Python (~0.1 ms per conversion).
TEST_WIRING = PilotWiring(samples_per_burst=20, burst_interval_s=0.002, settle_s=0.001)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class PilotWorld(Protocol):
    pilot: PilotDriver

    def present(self, state: CpState) -> None:
        """The EV presents A (no EV), B, C or D."""

    def remove_diode(self) -> None: ...

    def short(self) -> None:
        """CP shorted to PE."""

    def wire_duty_percent(self) -> float:
        """The share of the period the generator drives +12 V, as the hardware has it."""

    def close(self) -> None: ...


class MockPilotWorld:
    def __init__(self) -> None:
        self.hw = MockConnectorHardware(1, state_dir=None, phases=3, has_lock=True)
        self.pilot: PilotDriver = self.hw.pilot

    def present(self, state: CpState) -> None:
        if state is CpState.A:
            self.hw.unplug()
        else:
            self.hw.plug()
            self.hw.set_ev_state(state)

    def remove_diode(self) -> None:
        self.hw.inject_fault("diode")

    def short(self) -> None:
        self.hw.inject_fault("pilot-short")

    def wire_duty_percent(self) -> float:
        output = self.pilot.output
        if output is PilotOutput.PWM:
            return self.pilot.duty_percent
        return 100.0 if output is PilotOutput.STEADY else 0.0

    def close(self) -> None:
        self.pilot.shutdown()


class RpiPilotWorld:
    def __init__(self, root: Path, factory: MockFactory, wiring: PilotWiring = TEST_WIRING) -> None:
        self.wiring = wiring
        chip_dir = make_pwm_tree(root, exported={0: {}})
        self.channel_dir = chip_dir / "pwm0"
        self.wire = CpWire(self.channel_dir, inverted=wiring.pwm_inverted)
        self.adc_fails = False
        self.adc = EmulatedMcp3008(factory, self._source, vref_v=wiring.adc_vref_v)
        self.driver = SysfsAdcPilot(wiring, pin_factory=factory, sysfs_root=root)
        self.pilot: PilotDriver = self.driver

    def _source(self, channel: int) -> float:
        if self.adc_fails:
            raise OSError("SPI transfer failed")
        if channel != self.wiring.adc_channel:
            return 0.0
        return cp_to_adc_volts(self.wire.sample(), self.wiring)

    def present(self, state: CpState) -> None:
        self.wire.ev = state

    def remove_diode(self) -> None:
        self.wire.diode = False

    def short(self) -> None:
        self.wire.shorted = True

    def wire_duty_percent(self) -> float:
        return self.wire.high_fraction() * 100.0

    def close(self) -> None:
        self.driver.shutdown()
        self.adc.close()


class UartPilotWorld:
    """The UART pilot with a co-processor emulator (hardware/pilot-uart-protocol.md) on the
    other end of a socat pty pair, itself wired to the simulated EV."""

    def __init__(self, directory: Path) -> None:
        self._pair = socat_pty_pair(directory)
        host, mcu = self._pair.__enter__()
        self.mcu = McuEmulator(mcu)
        self.pilot: PilotDriver = uart_pilot_from_options({"device": str(host)})
        self._state = CpState.A

    def present(self, state: CpState) -> None:
        self._state = state
        self.mcu.set_ev(state)

    def remove_diode(self) -> None:
        self.mcu.set_ev(self._state, diode_missing=True)

    def short(self) -> None:
        self.mcu.set_ev(CpState.E)

    def wire_duty_percent(self) -> float:
        # The command travels over the line: wait until the co-processor drives what the
        # driver last commanded (or give up and report what it drives).
        commanded = self.pilot.output
        expected = {PilotOutput.STEADY: "X1", PilotOutput.STATE_F: "F"}.get(
            commanded, f"PWM {round(self.pilot.duty_percent * 100)}"
        )
        with contextlib.suppress(AssertionError):
            wait_for(lambda: self.mcu.output == expected, "the co-processor to apply it")
        output = self.mcu.output
        if output.startswith("PWM "):
            return int(output.split()[1]) / 100.0
        return 100.0 if output == "X1" else 0.0

    def close(self) -> None:
        self.pilot.shutdown()
        self.mcu.close()
        self._pair.__exit__(None, None, None)


@pytest.fixture(params=["mock", "rpi", "uart"])
def world(
    request: pytest.FixtureRequest, tmp_path: Path, gpio_factory: MockFactory
) -> Iterator[PilotWorld]:
    w: PilotWorld
    if request.param == "mock":
        w = MockPilotWorld()
    elif request.param == "rpi":
        w = RpiPilotWorld(tmp_path, gpio_factory)
    else:
        w = UartPilotWorld(tmp_path)
    yield w
    w.close()


@pytest.fixture
def rpi(tmp_path: Path, gpio_factory: MockFactory) -> Iterator[RpiPilotWorld]:
    w = RpiPilotWorld(tmp_path, gpio_factory)
    yield w
    w.close()


def wait_reading(world: PilotWorld, expected: PilotReading) -> None:
    wait_for(lambda: world.pilot.read() == expected, f"reading {expected}")


# ------------------------------------------------------------------------ contract


def test_implements_protocol(world: PilotWorld) -> None:
    assert isinstance(world.pilot, PilotDriver)


def test_set_pwm_drives_the_duty(world: PilotWorld) -> None:
    world.pilot.set_pwm(53.33)
    assert world.pilot.output is PilotOutput.PWM
    resolution = world.pilot.duty_resolution_percent
    assert abs(world.pilot.duty_percent - 53.33) <= resolution
    assert abs(world.wire_duty_percent() - 53.33) <= resolution


def test_duty_resolution_is_fine(world: PilotWorld) -> None:
    # Offered currents are never truncated to whole percent: the sysfs pilot has 1 ns of a
    # 1 ms period (0.0001 %), the co-processor protocol 0.01 % (6 mA of offered current).
    assert 0.0 < world.pilot.duty_resolution_percent <= 0.01


def test_set_steady_is_full_duty(world: PilotWorld) -> None:
    world.pilot.set_pwm(30.0)
    world.pilot.set_steady()
    assert world.pilot.output is PilotOutput.STEADY
    assert world.pilot.duty_percent == 0.0
    assert world.wire_duty_percent() == 100.0


def test_state_f_is_zero_duty_and_reads_f_at_once(world: PilotWorld) -> None:
    world.pilot.set_steady()
    world.present(CpState.B)
    wait_reading(world, PilotReading(CpState.B))
    world.pilot.set_state_f()
    assert world.pilot.output is PilotOutput.STATE_F
    assert world.pilot.duty_percent == 0.0
    assert world.wire_duty_percent() == 0.0
    assert world.pilot.read().state is CpState.F


@pytest.mark.parametrize("bad", [0.0, 100.0, -5.0, 120.0, math.nan])
def test_set_pwm_rejects_out_of_range(world: PilotWorld, bad: float) -> None:
    with pytest.raises(ValueError):
        world.pilot.set_pwm(bad)


def test_no_ev_reads_a(world: PilotWorld) -> None:
    world.pilot.set_steady()
    wait_reading(world, PilotReading(CpState.A))


@pytest.mark.parametrize("state", [CpState.B, CpState.C, CpState.D])
def test_ev_state_is_read_and_listener_called(world: PilotWorld, state: CpState) -> None:
    calls: list[int] = []
    called = threading.Event()

    def listener() -> None:  # may run in any thread: only records
        calls.append(threading.get_ident())
        called.set()

    world.pilot.set_listener(listener)
    world.pilot.set_pwm(26.67)  # 16 A
    world.present(state)
    wait_reading(world, PilotReading(state, diode_ok=True))
    assert called.wait(DEADLINE_S)
    world.pilot.set_listener(None)


def test_unplug_goes_back_to_a(world: PilotWorld) -> None:
    world.pilot.set_pwm(26.67)
    world.present(CpState.C)
    wait_reading(world, PilotReading(CpState.C))
    world.present(CpState.A)
    wait_reading(world, PilotReading(CpState.A))


def test_steady_state_b_then_pwm_state_c(world: PilotWorld) -> None:
    world.pilot.set_steady()
    world.present(CpState.B)
    wait_reading(world, PilotReading(CpState.B))
    world.pilot.set_pwm(10.0)  # 6 A: the shortest positive plateau a session uses
    world.present(CpState.C)
    wait_reading(world, PilotReading(CpState.C))


def test_missing_diode_is_reported_while_pwm_runs(world: PilotWorld) -> None:
    world.pilot.set_pwm(26.67)
    world.present(CpState.C)
    wait_reading(world, PilotReading(CpState.C))
    world.remove_diode()
    wait_reading(world, PilotReading(CpState.C, diode_ok=False))


def test_shorted_pilot_reads_e(world: PilotWorld) -> None:
    world.pilot.set_pwm(26.67)
    world.present(CpState.B)
    wait_reading(world, PilotReading(CpState.B))
    world.short()
    wait_for(lambda: world.pilot.read().state is CpState.E, "state E")
    assert world.pilot.read().diode_ok is False  # no negative plateau either


def test_shutdown_leaves_state_f(world: PilotWorld) -> None:
    world.pilot.set_pwm(50.0)
    world.pilot.shutdown()
    assert world.pilot.output is PilotOutput.STATE_F
    assert world.wire_duty_percent() == 0.0
    assert world.pilot.read().state is CpState.F


# ----------------------------------------------------------------- real driver only


def test_sysfs_attributes_in_nanoseconds(rpi: RpiPilotWorld) -> None:
    d = rpi.channel_dir
    assert read_attr(d, "period") == "1000000"
    assert read_attr(d, "enable") == "1"
    assert read_attr(d, "polarity") == "normal"
    assert read_attr(d, "duty_cycle") == "0"  # constructed in state F
    rpi.pilot.set_pwm(53.33)
    assert read_attr(d, "duty_cycle") == "533300"
    rpi.pilot.set_pwm(26.6667)
    assert read_attr(d, "duty_cycle") == "266667"
    rpi.pilot.set_steady()
    assert read_attr(d, "duty_cycle") == "1000000"
    rpi.pilot.set_state_f()
    assert read_attr(d, "duty_cycle") == "0"
    assert read_attr(d, "period") == "1000000"


def test_duty_near_the_ends_stays_pwm(rpi: RpiPilotWorld) -> None:
    rpi.pilot.set_pwm(99.99999)
    assert read_attr(rpi.channel_dir, "duty_cycle") == "999999"
    rpi.pilot.set_pwm(0.00001)
    assert read_attr(rpi.channel_dir, "duty_cycle") == "1"


def test_exports_the_channel(tmp_path: Path, gpio_factory: MockFactory) -> None:
    chip_dir = make_pwm_tree(tmp_path)  # nothing exported yet
    kernel = FakePwmKernel(chip_dir)
    adc = EmulatedMcp3008(gpio_factory, lambda ch: 0.0)
    try:
        pilot = SysfsAdcPilot(TEST_WIRING, pin_factory=gpio_factory, sysfs_root=tmp_path)
        pilot.shutdown()
    finally:
        kernel.stop()
        adc.close()
    assert kernel.exported == [0]
    assert read_attr(chip_dir / "pwm0", "period") == "1000000"
    assert read_attr(chip_dir / "pwm0", "enable") == "1"


def test_takes_over_an_exported_channel_left_in_any_state(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    stale = {"period": "2000000", "duty_cycle": "1500000", "enable": "1", "polarity": "inversed"}
    chip_dir = make_pwm_tree(tmp_path, exported={0: stale})
    adc = EmulatedMcp3008(gpio_factory, lambda ch: 0.0)
    try:
        pilot = SysfsAdcPilot(TEST_WIRING, pin_factory=gpio_factory, sysfs_root=tmp_path)
        pilot.shutdown()
    finally:
        adc.close()
    d = chip_dir / "pwm0"
    assert read_attr(chip_dir, "export") == ""  # already there: not exported again
    assert [read_attr(d, n) for n in ("period", "duty_cycle", "enable", "polarity")] == [
        "1000000",
        "0",
        "1",
        "normal",
    ]


@pytest.mark.parametrize(
    ("old", "new_duty"),
    [
        ({"period": "0", "duty_cycle": "0"}, 0),  # fresh export
        ({"period": "0", "duty_cycle": "0"}, 1_000_000),  # fresh, inverted stage's state F
        ({"period": "2000000", "duty_cycle": "1500000", "enable": "1"}, 0),  # shrinking
        ({"period": "2000000", "duty_cycle": "1500000", "enable": "1"}, 1_000_000),
        ({"period": "500000", "duty_cycle": "400000", "enable": "1"}, 1_000_000),  # growing
    ],
)
def test_configure_never_breaks_the_kernel_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: dict[str, str], new_duty: int
) -> None:
    """Like the kernel: a write leaving duty_cycle > period fails with EINVAL, polarity
    cannot change while enabled; and no intermediate duty reaches an enabled pin."""
    chip_dir = make_pwm_tree(tmp_path, exported={0: old})
    real_write = sysfs_pwm._write
    seen_while_enabled: list[int] = []

    def kernel_write(path: Path, value: str) -> None:
        attrs = {n: read_attr(path.parent, n) for n in ("period", "duty_cycle", "enable")}
        if path.name == "polarity" and attrs["enable"] == "1":
            raise OSError(errno.EBUSY, "polarity change while enabled")
        attrs[path.name] = value
        if path.name in ("period", "duty_cycle"):
            if int(attrs["duty_cycle"]) > int(attrs["period"]):
                raise OSError(errno.EINVAL, f"duty > period after writing {path.name}")
        real_write(path, value)
        if attrs["enable"] == "1":
            seen_while_enabled.append(int(attrs["duty_cycle"]))

    monkeypatch.setattr(sysfs_pwm, "_write", kernel_write)
    channel = sysfs_pwm.SysfsPwmChannel(0, 0, root=tmp_path)
    channel.configure(1_000_000, new_duty)
    d = chip_dir / "pwm0"
    assert read_attr(d, "period") == "1000000"
    assert read_attr(d, "duty_cycle") == str(new_duty)
    assert read_attr(d, "enable") == "1"
    old_duty = int(old["duty_cycle"]) if old.get("enable") == "1" else new_duty
    assert set(seen_while_enabled) <= {old_duty, new_duty}


def test_missing_pwm_chip_is_a_clear_error(tmp_path: Path, gpio_factory: MockFactory) -> None:
    with pytest.raises(FileNotFoundError, match="dtoverlay=pwm"):
        SysfsAdcPilot(TEST_WIRING, pin_factory=gpio_factory, sysfs_root=tmp_path)


def test_inverted_stage(tmp_path: Path, gpio_factory: MockFactory) -> None:
    wiring = PilotWiring(
        pwm_inverted=True, samples_per_burst=20, burst_interval_s=0.002, settle_s=0.001
    )
    w = RpiPilotWorld(tmp_path, gpio_factory, wiring)
    try:
        assert read_attr(w.channel_dir, "duty_cycle") == "1000000"  # F: pin high = -12 V
        w.pilot.set_pwm(25.0)
        assert read_attr(w.channel_dir, "duty_cycle") == "750000"
        assert w.wire_duty_percent() == pytest.approx(25.0)
        w.present(CpState.B)
        wait_reading(w, PilotReading(CpState.B))
        w.pilot.set_steady()
        assert read_attr(w.channel_dir, "duty_cycle") == "0"
    finally:
        w.close()


def test_listener_runs_in_the_sampler_thread(rpi: RpiPilotWorld) -> None:
    threads: list[str] = []
    rpi.pilot.set_listener(lambda: threads.append(threading.current_thread().name))
    rpi.pilot.set_steady()
    wait_reading(rpi, PilotReading(CpState.A))
    assert threads and all(name == "pilot-sampler" for name in threads)


def test_set_state_f_calls_listener_once(rpi: RpiPilotWorld) -> None:
    rpi.pilot.set_steady()
    wait_reading(rpi, PilotReading(CpState.A))
    calls: list[PilotReading] = []
    rpi.pilot.set_listener(lambda: calls.append(rpi.pilot.read()))
    rpi.pilot.set_state_f()
    rpi.pilot.set_state_f()  # no change: no call
    assert calls == [PilotReading(CpState.F)]


def test_adc_failure_reads_f(rpi: RpiPilotWorld) -> None:
    rpi.pilot.set_steady()
    wait_reading(rpi, PilotReading(CpState.A))
    rpi.adc_fails = True
    wait_reading(rpi, PilotReading(CpState.F))
    rpi.adc_fails = False
    wait_reading(rpi, PilotReading(CpState.A))


def test_no_sampling_while_driving_f(rpi: RpiPilotWorld) -> None:
    rpi.pilot.set_state_f()
    time.sleep(0.05)  # let a burst in flight finish
    before = rpi.adc.conversions
    time.sleep(0.05)
    assert rpi.adc.conversions == before


def test_shutdown_stops_the_sampler(rpi: RpiPilotWorld) -> None:
    rpi.pilot.set_steady()
    wait_reading(rpi, PilotReading(CpState.A))
    rpi.driver.shutdown()
    assert not rpi.driver._thread.is_alive()
    rpi.driver.shutdown()  # idempotent
    rpi.driver.set_state_f()  # still fine: already in F
    with pytest.raises(RuntimeError):
        rpi.driver.set_steady()


# ------------------------------------------------------------------------ pure parts


@pytest.mark.parametrize(
    ("high", "low", "pwm", "expected"),
    [
        (12.0, -12.0, True, PilotReading(CpState.A)),
        (8.8, -12.0, True, PilotReading(CpState.B)),
        (5.6, -12.0, True, PilotReading(CpState.C)),
        (2.4, -12.0, True, PilotReading(CpState.D)),
        (0.2, 0.1, True, PilotReading(CpState.E, diode_ok=False)),
        (0.2, 0.1, False, PilotReading(CpState.E, diode_ok=False)),
        (-12.0, -12.0, False, PilotReading(CpState.F)),
        (8.8, -8.8, True, PilotReading(CpState.B, diode_ok=False)),  # B without diode
        (5.6, -5.6, True, PilotReading(CpState.C, diode_ok=False)),
        (8.8, 8.8, False, PilotReading(CpState.B)),  # steady: no diode check
        (10.5, -12.0, True, PilotReading(CpState.A)),  # thresholds are inclusive lower edges
        (10.49, -12.0, True, PilotReading(CpState.B)),
    ],
)
def test_classify_cp(high: float, low: float, pwm: bool, expected: PilotReading) -> None:
    assert classify_cp(high, low, pwm=pwm, wiring=PilotWiring()) == expected


def test_debounce_needs_two_agreeing_bursts() -> None:
    a, b, c = (PilotReading(s) for s in (CpState.A, CpState.B, CpState.C))
    d = Debouncer(a, 2)
    assert not d.feed(b)  # a single glitch is not reported
    assert not d.feed(a)
    assert not d.feed(b)
    assert not d.feed(c)  # a different candidate starts over
    assert not d.feed(b)
    assert d.feed(b)
    assert d.value == b
    assert not d.feed(b)


def test_default_cp_divider_covers_both_rails() -> None:
    w = PilotWiring()
    assert w.cp_volts(0) == pytest.approx(-13.2)
    assert w.cp_volts(1023) == pytest.approx(13.2 - 26.4 / 1024)
    assert 0.0 < cp_to_adc_volts(-12.0, w) < cp_to_adc_volts(12.0, w) < w.adc_vref_v


@pytest.mark.parametrize(
    "kwargs",
    [
        {"a_min_v": 5.0},  # out of order
        {"adc_channel": 8},
        {"adc_chip": "MCP3004", "adc_channel": 4},
        {"adc_chip": "ADS1115"},
        {"pwm_period_ns": 0},
        {"diode_max_v": 0.0},
        {"samples_per_burst": 1},
        {"debounce_bursts": 0},
        {"burst_interval_s": -1.0},
        {"cp_scale": 0.0},
    ],
)
def test_wiring_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        PilotWiring(**kwargs)  # type: ignore[arg-type]
