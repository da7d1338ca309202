"""ResidualCurrentMonitor contract, run on the mock and on GpioRcd over gpiozero mock pins.

In the real world the device's trip output drives the input pin; its test input (a driver
output) makes a healthy device trip for as long as it is held, a broken one not at all, and a
latching one stay tripped.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers.mock import MockConnectorHardware
from drivers.protocols import ResidualCurrentMonitor
from drivers.rpi import GpioRcd, RcdWiring
from tests.drivers.rpi_fakes import drive_input, hooked_pin

TRIP = 22
TEST = 23
TIMEOUT_S = 0.1


class RcdWorld(Protocol):
    rcd: ResidualCurrentMonitor

    def trip(self) -> None: ...

    def clear(self) -> None: ...

    def close(self) -> None: ...


class MockRcdWorld:
    def __init__(self) -> None:
        self.hw = MockConnectorHardware(1, state_dir=None, phases=3, has_lock=True)
        self.rcd: ResidualCurrentMonitor = self.hw.rcd

    def trip(self) -> None:
        self.hw.inject_fault("rcd")

    def clear(self) -> None:
        self.hw.clear_fault("rcd")

    def close(self) -> None:
        self.rcd.shutdown()


class RpiRcdWorld:
    def __init__(self, factory: MockFactory, wiring: RcdWiring) -> None:
        self.factory = factory
        self.wiring = wiring
        self.fault = False  # a real residual current
        self.test_works = True  # the device trips while its test input is held
        self.latches = False  # once tripped by a test, it stays tripped
        self.test_tripped = False
        self.test_presses = 0
        if wiring.test_gpio is not None:
            self.test_pin = hooked_pin(factory, wiring.test_gpio, self._test_changed)
        self.driver = GpioRcd(wiring, pin_factory=factory)
        self.rcd: ResidualCurrentMonitor = self.driver
        self._apply()

    def _test_changed(self, level: bool) -> None:
        pressed = level == self.wiring.test_active_high
        if pressed:
            self.test_presses += 1
            if self.test_works:
                self.test_tripped = True
        elif not self.latches:
            self.test_tripped = False
        self._apply()

    def _apply(self) -> None:
        tripped = self.fault or self.test_tripped
        drive_input(self.factory, self.wiring.trip_gpio, tripped == self.wiring.trip_active_high)

    def test_output_on(self) -> bool:
        return bool(self.test_pin.state) == self.wiring.test_active_high

    def trip(self) -> None:
        self.fault = True
        self._apply()

    def clear(self) -> None:
        self.fault = False
        self._apply()

    def close(self) -> None:
        self.driver.shutdown()


WIRINGS = {
    "rpi": RcdWiring(
        trip_gpio=TRIP,
        test_gpio=TEST,
        test_trip_timeout_s=TIMEOUT_S,
        test_clear_timeout_s=TIMEOUT_S,
    ),
    # Open-collector trip output (low = tripped) on the Pi's pull-up; active-low test input.
    "rpi-active-low": RcdWiring(
        trip_gpio=TRIP,
        trip_active_high=False,
        trip_pull="up",
        test_gpio=TEST,
        test_active_high=False,
        test_trip_timeout_s=TIMEOUT_S,
        test_clear_timeout_s=TIMEOUT_S,
    ),
}


@pytest.fixture(params=["mock", *WIRINGS])
def world(request: pytest.FixtureRequest, gpio_factory: MockFactory) -> Iterator[RcdWorld]:
    w: RcdWorld
    if request.param == "mock":
        w = MockRcdWorld()
    else:
        w = RpiRcdWorld(gpio_factory, WIRINGS[request.param])
    yield w
    w.close()


@pytest.fixture(params=list(WIRINGS))
async def rpi(
    request: pytest.FixtureRequest, gpio_factory: MockFactory
) -> AsyncIterator[RpiRcdWorld]:
    w = RpiRcdWorld(gpio_factory, WIRINGS[request.param])
    yield w
    w.close()


# ------------------------------------------------------------------------ contract


def test_implements_protocol(world: RcdWorld) -> None:
    assert isinstance(world.rcd, ResidualCurrentMonitor)


def test_not_tripped_at_start(world: RcdWorld) -> None:
    assert world.rcd.tripped() is False


def test_trip_and_clear_call_the_listener(world: RcdWorld) -> None:
    seen: list[bool] = []
    called = threading.Event()

    def listener() -> None:
        seen.append(world.rcd.tripped())
        called.set()

    world.rcd.set_listener(listener)
    world.trip()
    assert called.wait(2.0)
    assert world.rcd.tripped() is True
    assert seen[-1] is True
    world.clear()
    assert world.rcd.tripped() is False
    assert seen[-1] is False


def test_no_listener_no_call(world: RcdWorld) -> None:
    calls: list[None] = []
    world.rcd.set_listener(lambda: calls.append(None))
    world.rcd.set_listener(None)
    world.trip()
    assert world.rcd.tripped() is True
    assert calls == []


# ----------------------------------------------------------------- real driver only


async def test_self_test_passes_on_good_hardware(rpi: RpiRcdWorld) -> None:
    calls: list[None] = []
    rpi.rcd.set_listener(lambda: calls.append(None))
    assert rpi.driver.has_self_test
    assert await rpi.driver.self_test() is True
    assert rpi.test_presses == 1
    assert not rpi.test_output_on()
    assert rpi.rcd.tripped() is False
    assert calls == []  # the provoked trip is expected: the controller is not bothered


async def test_self_test_fails_when_the_trip_never_comes(rpi: RpiRcdWorld) -> None:
    rpi.test_works = False
    assert await rpi.driver.self_test() is False
    assert not rpi.test_output_on()
    assert rpi.rcd.tripped() is False


async def test_self_test_fails_when_the_trip_does_not_clear(rpi: RpiRcdWorld) -> None:
    rpi.latches = True
    calls: list[None] = []
    rpi.rcd.set_listener(lambda: calls.append(None))
    assert await rpi.driver.self_test() is False
    assert not rpi.test_output_on()
    assert rpi.rcd.tripped() is True  # the device is tripped: the controller must know
    assert calls


async def test_self_test_refused_while_tripped(rpi: RpiRcdWorld) -> None:
    rpi.trip()
    assert await rpi.driver.self_test() is False
    assert rpi.test_presses == 0
    assert rpi.rcd.tripped() is True


async def test_no_self_test_without_test_output(gpio_factory: MockFactory) -> None:
    driver = GpioRcd(RcdWiring(trip_gpio=TRIP), pin_factory=gpio_factory)
    try:
        assert not driver.has_self_test
        with pytest.raises(RuntimeError):
            await driver.self_test()
    finally:
        driver.shutdown()


def test_shutdown_is_idempotent_and_silences(gpio_factory: MockFactory) -> None:
    w = RpiRcdWorld(gpio_factory, WIRINGS["rpi"])
    calls: list[None] = []
    w.rcd.set_listener(lambda: calls.append(None))
    w.rcd.shutdown()
    w.rcd.shutdown()
    assert calls == []
    assert w.rcd.tripped() is False


def test_wiring_is_validated() -> None:
    with pytest.raises(ValueError):
        RcdWiring(trip_gpio=TRIP, test_gpio=TRIP)
    with pytest.raises(ValueError):
        RcdWiring(trip_gpio=TRIP, trip_pull="sideways")  # type: ignore[arg-type]
