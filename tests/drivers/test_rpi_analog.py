"""Proximity pilot (PP resistor bands) and the analog temperature sensor, on the emulated
MCP3008; and the pilot sharing that ADC with them."""

from __future__ import annotations

import itertools
import math
import time
from pathlib import Path

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers.protocols import CpState, PilotReading, ProximitySensor, TemperatureSensor
from drivers.rpi import (
    PP_BANDS,
    AdcTemperature,
    Debouncer,
    PilotWiring,
    ProximityPilot,
    ProximityWiring,
    SysfsAdcPilot,
    TemperatureWiring,
    cable_rating_for_resistance,
    toward_safety,
)
from tests.drivers.rpi_fakes import (
    CpWire,
    EmulatedMcp3008,
    cp_to_adc_volts,
    make_pwm_tree,
)

# ------------------------------------------------------------------- PP bands


@pytest.mark.parametrize(
    ("ohm", "amps"),
    [(1500.0, 13.0), (680.0, 20.0), (220.0, 32.0), (100.0, 63.0)],
)
def test_nominal_resistors(ohm: float, amps: float) -> None:
    assert cable_rating_for_resistance(ohm) == amps


@pytest.mark.parametrize(
    ("ohm", "amps"),
    [
        # Within ±10 % of nominal (resistor, pull-up and ADC tolerances together).
        (1350.0, 13.0),
        (1650.0, 13.0),
        (612.0, 20.0),
        (748.0, 20.0),
        (198.0, 32.0),
        (242.0, 32.0),
        (90.0, 63.0),
        (110.0, 63.0),
        # Band edges: lower bound inclusive.
        (2199.0, 13.0),
        (1000.0, 13.0),
        (999.0, 20.0),
        (330.0, 20.0),
        (329.0, 32.0),
        (150.0, 32.0),
        (149.0, 63.0),
        (75.0, 63.0),
    ],
)
def test_bands(ohm: float, amps: float) -> None:
    assert cable_rating_for_resistance(ohm) == amps


@pytest.mark.parametrize("ohm", [math.inf, 1e6, 100_000.0])
def test_an_open_pp_is_no_cable(ohm: float) -> None:
    assert cable_rating_for_resistance(ohm) is None


@pytest.mark.parametrize("ohm", [0.0, 50.0, 74.9, 2200.0, 5000.0, 99_999.0])
def test_an_invalid_coding_is_a_cable_that_may_carry_nothing(ohm: float) -> None:
    """A short to PE, a broken cable or a resistor in no band: 0 A, never "no cable" (which
    would leave the connector's full rating unlimited by the cable)."""
    assert cable_rating_for_resistance(ohm) == 0.0


def test_bands_are_contiguous_and_ordered() -> None:
    for (_, high, _), (low, _, _) in itertools.pairwise(PP_BANDS):
        assert high == low
    ratings = [rating for _, _, rating in PP_BANDS]
    assert ratings == sorted(ratings, reverse=True)  # less resistance, thicker cable


# ------------------------------------------------------ PP through the ADC


def pp_volts(ohm: float, wiring: ProximityWiring) -> float:
    if math.isinf(ohm):
        return wiring.pullup_supply_v
    return wiring.pullup_supply_v * ohm / (ohm + wiring.pullup_ohm) / wiring.adc_scale


@pytest.mark.parametrize(
    ("ohm", "amps"),
    [(1500.0, 13.0), (680.0, 20.0), (220.0, 32.0), (100.0, 63.0), (math.inf, None)],
)
def test_proximity_pilot_reads_the_cable(
    gpio_factory: MockFactory, ohm: float, amps: float | None
) -> None:
    wiring = ProximityWiring(adc_channel=1)
    adc = EmulatedMcp3008(gpio_factory, lambda ch: pp_volts(ohm, wiring) if ch == 1 else 0.0)
    pp = ProximityPilot(wiring, pin_factory=gpio_factory)
    try:
        assert isinstance(pp, ProximitySensor)
        assert pp.read_cable_rating_a() == amps
        if not math.isinf(ohm):
            assert pp.read_resistance_ohm() == pytest.approx(ohm, rel=0.05)
    finally:
        pp.shutdown()
        adc.close()


def test_proximity_with_5v_pullup_and_divider(gpio_factory: MockFactory) -> None:
    # PP pulled up to 5 V, a 1:2 divider to the 3.3 V ADC.
    wiring = ProximityWiring(pullup_supply_v=5.0, pullup_ohm=2700.0, adc_scale=2.0)
    adc = EmulatedMcp3008(gpio_factory, lambda ch: pp_volts(220.0, wiring) if ch == 1 else 0.0)
    pp = ProximityPilot(wiring, pin_factory=gpio_factory)
    try:
        assert pp.read_cable_rating_a() == 32.0
    finally:
        pp.shutdown()
        adc.close()


# --------------------------------------------------------------- temperature


def test_lm35(gpio_factory: MockFactory) -> None:
    adc = EmulatedMcp3008(gpio_factory, lambda ch: 0.412 if ch == 2 else 0.0)
    sensor = AdcTemperature(TemperatureWiring(), pin_factory=gpio_factory)
    try:
        assert isinstance(sensor, TemperatureSensor)
        assert sensor.read_c() == pytest.approx(41.2, abs=0.4)  # one LSB = 0.32 °C
    finally:
        sensor.shutdown()
        adc.close()


def test_tmp36(gpio_factory: MockFactory) -> None:
    adc = EmulatedMcp3008(gpio_factory, lambda ch: 0.75 if ch == 3 else 0.0)
    wiring = TemperatureWiring(adc_channel=3, c_per_v=100.0, offset_c=-50.0)
    sensor = AdcTemperature(wiring, pin_factory=gpio_factory)
    try:
        assert sensor.read_c() == pytest.approx(25.0, abs=0.4)
    finally:
        sensor.shutdown()
        adc.close()


# ------------------------------------------------------- one ADC, three users


def test_pilot_pp_and_temperature_share_one_adc(tmp_path: Path, gpio_factory: MockFactory) -> None:
    pilot_wiring = PilotWiring(samples_per_burst=20, burst_interval_s=0.001, settle_s=0.001)
    pp_wiring = ProximityWiring(adc_channel=1)
    wire = CpWire(make_pwm_tree(tmp_path, exported={0: {}}) / "pwm0")
    wire.ev = CpState.C

    def source(channel: int) -> float:
        if channel == 0:
            return cp_to_adc_volts(wire.sample(), pilot_wiring)
        if channel == 1:
            return pp_volts(680.0, pp_wiring)
        return 0.35  # 35 °C on an LM35

    adc = EmulatedMcp3008(gpio_factory, source)
    pilot = SysfsAdcPilot(pilot_wiring, pin_factory=gpio_factory, sysfs_root=tmp_path)
    pp = ProximityPilot(pp_wiring, pin_factory=gpio_factory)
    temperature = AdcTemperature(TemperatureWiring(), pin_factory=gpio_factory)
    try:
        pilot.set_pwm(33.0)
        deadline = time.monotonic() + 3.0
        # The sampler thread hammers the SPI bus meanwhile: every answer must stay right.
        while pilot.read() != PilotReading(CpState.C):
            assert pp.read_cable_rating_a() == 20.0
            assert temperature.read_c() == pytest.approx(35.0, abs=0.4)
            assert time.monotonic() < deadline
        for _ in range(20):
            assert pp.read_cable_rating_a() == 20.0
            assert temperature.read_c() == pytest.approx(35.0, abs=0.4)
        assert pilot.read() == PilotReading(CpState.C)
    finally:
        pilot.shutdown()
        pp.shutdown()
        temperature.shutdown()
        adc.close()


def test_changes_toward_safety_are_reported_at_the_first_burst() -> None:
    c, b = PilotReading(CpState.C), PilotReading(CpState.B)
    debouncer = Debouncer(c, count=2)
    assert debouncer.feed(b) is True  # the EV stopped asking: no second burst awaited
    assert debouncer.value == b
    assert debouncer.feed(c) is False  # asking again needs the full debounce
    assert debouncer.feed(c) is True
    no_diode = PilotReading(CpState.C, diode_ok=False)
    assert debouncer.feed(no_diode) is True
    assert toward_safety(PilotReading(CpState.A), PilotReading(CpState.E))
    assert not toward_safety(PilotReading(CpState.A), PilotReading(CpState.B))


def test_ev_leaving_c_ends_the_burst_at_the_first_sample_that_shows_it(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    """Conversions are scripted by index: bursts are exactly 50 conversions (no minimum
    duration), so C is reported after conversion 100 (two agreeing bursts) and the third
    burst starts at conversion 100. The EV goes to B exactly there. A burst that ran to its
    end would report B after conversion 150; the early exit reports it after conversion 101,
    and keeps the diode verdict, since the partial burst never saw the negative plateau."""
    wiring = PilotWiring(
        samples_per_burst=50, burst_min_s=0.0, burst_interval_s=0.001, settle_s=0.001
    )
    switch_at = 100
    conversions = 0

    def source(channel: int) -> float:
        nonlocal conversions
        assert channel == 0
        index = conversions
        conversions += 1
        if index >= switch_at:
            return cp_to_adc_volts(9.0, wiring)  # B, high plateau (then kept high)
        return cp_to_adc_volts(6.0 if index % 3 == 0 else -12.0, wiring)  # C, PWM, diode

    make_pwm_tree(tmp_path, exported={0: {}})
    adc = EmulatedMcp3008(gpio_factory, source)
    reports: list[tuple[PilotReading, int]] = []
    pilot = SysfsAdcPilot(wiring, pin_factory=gpio_factory, sysfs_root=tmp_path)
    # Called in the sampler thread right after the burst that changed the reading.
    pilot.set_listener(lambda: reports.append((pilot.read(), conversions)))
    try:
        pilot.set_pwm(33.0)
        deadline = time.monotonic() + 10.0
        while len(reports) < 2:
            assert time.monotonic() < deadline, reports
            time.sleep(0.01)
        assert reports[:2] == [
            (PilotReading(CpState.C), 2 * wiring.samples_per_burst),
            (PilotReading(CpState.B, diode_ok=True), switch_at + 1),
        ]
    finally:
        pilot.shutdown()
        adc.close()
