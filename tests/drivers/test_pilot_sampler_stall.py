"""A pilot sampler that hangs (an SPI transfer that never returns) reads as F once
``stale_after_s`` passes without a finished burst, instead of leaving the last C standing:
the controller then opens the contactor as for any pilot it cannot see."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers.protocols import CpState, PilotReading
from drivers.rpi import PilotWiring, SysfsAdcPilot
from tests.drivers.rpi_fakes import EmulatedMcp3008, cp_to_adc_volts, make_pwm_tree


def test_a_hung_sampler_reads_as_f_and_recovers(tmp_path: Path, gpio_factory: MockFactory) -> None:
    wiring = PilotWiring(
        samples_per_burst=20, burst_interval_s=0.001, settle_s=0.001, stale_after_s=0.3
    )
    flowing = threading.Event()
    flowing.set()
    conversions = 0

    def source(_channel: int) -> float:
        nonlocal conversions
        flowing.wait()  # cleared: the transfer hangs
        conversions += 1
        return cp_to_adc_volts(6.0 if conversions % 3 == 0 else -12.0, wiring)  # C, PWM

    make_pwm_tree(tmp_path, exported={0: {}})
    adc = EmulatedMcp3008(gpio_factory, source)
    pilot = SysfsAdcPilot(wiring, pin_factory=gpio_factory, sysfs_root=tmp_path)
    try:
        pilot.set_pwm(33.0)
        deadline = time.monotonic() + 10.0
        while pilot.read() != PilotReading(CpState.C):
            assert time.monotonic() < deadline, "never read C"
            time.sleep(0.01)
        flowing.clear()
        hung_at = time.monotonic()
        while pilot.read() != PilotReading(CpState.F):
            assert time.monotonic() < hung_at + 10.0, "the last C stood for good"
            time.sleep(0.01)
        # Not before stale_after_s: a slow burst is not a hung one (a lower bound only).
        assert time.monotonic() - hung_at >= wiring.stale_after_s
        flowing.set()
        deadline = time.monotonic() + 10.0
        while pilot.read() != PilotReading(CpState.C):
            assert time.monotonic() < deadline, "did not recover"
            time.sleep(0.01)
    finally:
        flowing.set()
        pilot.shutdown()
        adc.close()
