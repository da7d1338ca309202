"""ContactorDriver contract, run on the mock and on GpioContactor over gpiozero mock pins.

In the real world the relay output pin drives the coil; the auxiliary contact follows the main
contacts, which follow the coil unless welded (then they stay closed).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers.mock import MockConnectorHardware
from drivers.protocols import ContactorDriver
from drivers.rpi import ContactorWiring, GpioContactor
from tests.drivers.rpi_fakes import drive_input, hooked_pin

RELAY = 17
AUX = 27
# Only bounds a wait for what must happen at once (a hang, not a slow machine, fails it).
WAIT_S = 10.0


class ContactorWorld(Protocol):
    contactor: ContactorDriver

    def weld(self) -> None:
        """The main contacts weld (now if closed, else on the next close)."""

    def close(self) -> None: ...


class MockContactorWorld:
    def __init__(self) -> None:
        self.hw = MockConnectorHardware(1, state_dir=None, phases=3, has_lock=True)
        self.contactor: ContactorDriver = self.hw.contactor

    def weld(self) -> None:
        self.hw.inject_fault("weld")

    def close(self) -> None:
        self.contactor.shutdown()


class RpiContactorWorld:
    def __init__(self, factory: MockFactory, wiring: ContactorWiring) -> None:
        self.factory = factory
        self.wiring = wiring
        self.relay_pin = hooked_pin(factory, wiring.relay_gpio, self._relay_changed)
        self.welded = False
        self.contacts_closed = False
        # True: the contacts (and so the aux contact) no longer follow the coil by themselves,
        # only when the test calls ``settle`` (a slow contactor, frozen in time).
        self.lagging = False
        self.driver = GpioContactor(wiring, pin_factory=factory)
        self.contactor: ContactorDriver = self.driver
        self._apply()

    @property
    def energized(self) -> bool:
        return bool(self.relay_pin.state) == self.wiring.relay_active_high

    def _relay_changed(self, level: bool) -> None:
        if not self.lagging:
            self._apply()

    def settle(self) -> None:
        """The contacts catch up with the coil."""
        self._apply()

    def _apply(self) -> None:
        if self.energized:
            self.contacts_closed = True
        elif not self.welded:
            self.contacts_closed = False
        if self.wiring.feedback_gpio is not None:
            high = self.contacts_closed == self.wiring.feedback_active_high
            drive_input(self.factory, self.wiring.feedback_gpio, high)

    def weld(self) -> None:
        self.welded = True
        self._apply()

    def close(self) -> None:
        self.driver.shutdown()


WIRINGS = {
    "rpi": ContactorWiring(relay_gpio=RELAY, feedback_gpio=AUX),
    # Active-low relay board; normally-open aux contact to GND with the Pi's pull-up.
    "rpi-active-low": ContactorWiring(
        relay_gpio=RELAY,
        relay_active_high=False,
        feedback_gpio=AUX,
        feedback_active_high=False,
        feedback_pull="up",
    ),
    # Normally-closed (mirror) aux contact to GND with the pull-up: high = main closed.
    "rpi-mirror-contact": ContactorWiring(
        relay_gpio=RELAY, feedback_gpio=AUX, feedback_active_high=True, feedback_pull="up"
    ),
}


@pytest.fixture(params=["mock", *WIRINGS])
def world(request: pytest.FixtureRequest, gpio_factory: MockFactory) -> Iterator[ContactorWorld]:
    w: ContactorWorld
    if request.param == "mock":
        w = MockContactorWorld()
    else:
        w = RpiContactorWorld(gpio_factory, WIRINGS[request.param])
    yield w
    w.close()


# ------------------------------------------------------------------------ contract


def test_implements_protocol(world: ContactorWorld) -> None:
    assert isinstance(world.contactor, ContactorDriver)


def test_starts_open(world: ContactorWorld) -> None:
    assert world.contactor.commanded_closed is False
    assert world.contactor.feedback_closed() is False


def test_feedback_follows_the_command(world: ContactorWorld) -> None:
    c = world.contactor
    c.set_closed(True)
    assert c.commanded_closed is True
    assert c.feedback_closed() is True
    c.set_closed(False)
    assert c.commanded_closed is False
    assert c.feedback_closed() is False


def test_weld_keeps_feedback_closed(world: ContactorWorld) -> None:
    c = world.contactor
    c.set_closed(True)
    world.weld()
    c.set_closed(False)
    assert c.commanded_closed is False
    assert c.feedback_closed() is True


@pytest.mark.parametrize("name", list(WIRINGS))
def test_set_closed_does_not_wait_for_the_feedback(gpio_factory: MockFactory, name: str) -> None:
    """The controller times weld / failure-to-close itself: the driver must not wait. Here
    the aux contact moves only when the test lets it, after ``set_closed`` returned: a call
    that waited for it would never return. (The mock's contacts follow at once: only the
    real driver is at stake.)"""
    w = RpiContactorWorld(gpio_factory, WIRINGS[name])
    w.lagging = True
    try:
        for closed in (True, False, True):
            caller = threading.Thread(target=w.contactor.set_closed, args=(closed,), daemon=True)
            caller.start()
            caller.join(WAIT_S)
            assert not caller.is_alive(), f"set_closed({closed}) waits for the aux contact"
            assert w.energized is closed  # the coil is commanded...
            assert w.contactor.feedback_closed() is not closed  # ...the contacts lag behind
            w.settle()
            assert w.contactor.feedback_closed() is closed
    finally:
        w.close()


def test_shutdown_opens(world: ContactorWorld) -> None:
    world.contactor.set_closed(True)
    world.contactor.shutdown()
    assert world.contactor.commanded_closed is False


# ----------------------------------------------------------------- real driver only


@pytest.mark.parametrize("name", list(WIRINGS))
def test_relay_pin_level(gpio_factory: MockFactory, name: str) -> None:
    w = RpiContactorWorld(gpio_factory, WIRINGS[name])
    try:
        assert not w.energized  # constructed open
        w.contactor.set_closed(True)
        assert w.energized
        assert bool(w.relay_pin.state) == w.wiring.relay_active_high
        changes = len(w.relay_pin.states)
        w.contactor.shutdown()
        # De-energized first, then released (a released GPIO floats: the board's pull
        # resistor must hold the relay driver off; a mock PWM pin just drops to 0).
        assert bool(w.relay_pin.states[changes].state) != w.wiring.relay_active_high
        assert w.relay_pin.function == "input"
    finally:
        w.close()


def test_without_feedback_reports_none(gpio_factory: MockFactory) -> None:
    driver = GpioContactor(ContactorWiring(relay_gpio=RELAY), pin_factory=gpio_factory)
    try:
        assert driver.feedback_closed() is None
        driver.set_closed(True)
        assert driver.feedback_closed() is None
        assert driver.commanded_closed is True
    finally:
        driver.shutdown()


def test_after_shutdown(gpio_factory: MockFactory) -> None:
    w = RpiContactorWorld(gpio_factory, WIRINGS["rpi"])
    w.driver.shutdown()
    w.driver.shutdown()  # idempotent
    w.driver.set_closed(False)  # the safe state is still accepted
    with pytest.raises(RuntimeError):
        w.driver.set_closed(True)
    assert w.driver.feedback_closed() is None


def test_pins_are_released(gpio_factory: MockFactory) -> None:
    w = RpiContactorWorld(gpio_factory, WIRINGS["rpi"])
    w.close()
    again = GpioContactor(WIRINGS["rpi"], pin_factory=gpio_factory)  # no GPIOPinInUse
    again.shutdown()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"relay_gpio": 17, "feedback_gpio": 17},
        {"relay_gpio": 17, "feedback_gpio": 27, "feedback_pull": "sideways"},
    ],
)
def test_wiring_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        ContactorWiring(**kwargs)  # type: ignore[arg-type]
