"""LockDriver contract, run on the mock and on GpioLock over gpiozero mock pins.

In the real world the two motor outputs drive an actuator whose position switch follows the
direction driven, unless the lock is jammed (then nothing moves).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Protocol

import pytest
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]

from drivers.mock import MockConnectorHardware
from drivers.protocols import LockDriver
from drivers.rpi import GpioLock, LockWiring
from tests.drivers.rpi_fakes import drive_input, hooked_pin

FAST = {"pulse_s": 0.01, "settle_s": 0.002, "retry_pause_s": 0.005, "attempts": 3}


class LockWorld(Protocol):
    lock: LockDriver

    def jam(self) -> None: ...

    def motor_idle(self) -> bool:
        """Both motor outputs off (trivially true for the mock)."""

    async def close(self) -> None: ...


class MockLockWorld:
    def __init__(self) -> None:
        self.hw = MockConnectorHardware(1, state_dir=None, phases=3, has_lock=True)
        assert self.hw.lock is not None
        self.lock: LockDriver = self.hw.lock

    def jam(self) -> None:
        self.hw.inject_fault("lock")

    def motor_idle(self) -> bool:
        return True

    async def close(self) -> None:
        await self.lock.shutdown()


class RpiLockWorld:
    def __init__(self, factory: MockFactory, wiring: LockWiring) -> None:
        self.factory = factory
        self.wiring = wiring
        self.jammed = False
        self.locked = False
        self.both_on = False  # ever both directions at once (an H-bridge short)
        self.pulses = {"lock": 0, "unlock": 0}
        self.lock_pin = hooked_pin(factory, wiring.lock_gpio, lambda level: self._motor("lock"))
        self.unlock_pin = hooked_pin(
            factory, wiring.unlock_gpio, lambda level: self._motor("unlock")
        )
        self.driver = GpioLock(wiring, pin_factory=factory)
        self.lock: LockDriver = self.driver
        self._switch()

    def _on(self, pin: object) -> bool:
        return bool(pin.state) == self.wiring.motor_active_high  # type: ignore[attr-defined]

    def _motor(self, which: str) -> None:
        lock_on, unlock_on = self._on(self.lock_pin), self._on(self.unlock_pin)
        if lock_on and unlock_on:
            self.both_on = True
        if (which == "lock" and lock_on) or (which == "unlock" and unlock_on):
            self.pulses[which] += 1
            if not self.jammed:
                self.locked = lock_on
                self._switch()

    def _switch(self) -> None:
        high = self.locked == self.wiring.feedback_active_high
        drive_input(self.factory, self.wiring.feedback_gpio, high)

    def jam(self) -> None:
        self.jammed = True

    def motor_idle(self) -> bool:
        return not self._on(self.lock_pin) and not self._on(self.unlock_pin)

    async def close(self) -> None:
        await self.driver.shutdown()


WIRINGS = {
    "rpi": LockWiring(lock_gpio=5, unlock_gpio=6, feedback_gpio=13, **FAST),  # type: ignore[arg-type]
    "rpi-active-low": LockWiring(
        lock_gpio=5,
        unlock_gpio=6,
        feedback_gpio=13,
        motor_active_high=False,
        feedback_active_high=False,
        feedback_pull="up",
        **FAST,  # type: ignore[arg-type]
    ),
}


@pytest.fixture(params=["mock", *WIRINGS])
async def world(
    request: pytest.FixtureRequest, gpio_factory: MockFactory
) -> AsyncIterator[LockWorld]:
    w: LockWorld
    if request.param == "mock":
        w = MockLockWorld()
    else:
        w = RpiLockWorld(gpio_factory, WIRINGS[request.param])
    yield w
    await w.close()


@pytest.fixture
async def rpi(gpio_factory: MockFactory) -> AsyncIterator[RpiLockWorld]:
    w = RpiLockWorld(gpio_factory, WIRINGS["rpi"])
    yield w
    await w.close()


# ------------------------------------------------------------------------ contract


def test_implements_protocol(world: LockWorld) -> None:
    assert isinstance(world.lock, LockDriver)


async def test_starts_unlocked(world: LockWorld) -> None:
    assert world.lock.locked is False


async def test_lock_and_unlock(world: LockWorld) -> None:
    assert await world.lock.lock() is True
    assert world.lock.locked is True
    assert world.motor_idle()
    assert await world.lock.unlock() is True
    assert world.lock.locked is False
    assert world.motor_idle()


async def test_jammed_lock_fails(world: LockWorld) -> None:
    world.jam()
    assert await world.lock.lock() is False
    assert world.lock.locked is False
    assert world.motor_idle()


async def test_jammed_while_locked_cannot_unlock(world: LockWorld) -> None:
    assert await world.lock.lock() is True
    world.jam()
    assert await world.lock.unlock() is False
    assert world.lock.locked is True  # the cable stays held
    assert world.motor_idle()


# ----------------------------------------------------------------- real driver only


async def test_retries_then_gives_up(rpi: RpiLockWorld) -> None:
    rpi.jam()
    assert await rpi.lock.lock() is False
    assert rpi.pulses == {"lock": 3, "unlock": 0}
    assert not rpi.both_on


async def test_succeeds_on_a_retry(rpi: RpiLockWorld) -> None:
    rpi.jam()
    original = rpi._motor

    def unjam_after_first_pulse(which: str) -> None:
        original(which)
        if rpi.pulses["lock"] == 1 and rpi.motor_idle():
            rpi.jammed = False  # the pin is free now; the next pulse moves it

    rpi._motor = unjam_after_first_pulse  # type: ignore[method-assign]
    assert await rpi.lock.lock() is True
    assert rpi.pulses["lock"] == 2


async def test_already_there_does_not_pulse(rpi: RpiLockWorld) -> None:
    assert await rpi.lock.unlock() is True
    assert rpi.pulses == {"lock": 0, "unlock": 0}
    assert await rpi.lock.lock() is True
    assert await rpi.lock.lock() is True
    assert rpi.pulses == {"lock": 1, "unlock": 0}


async def test_does_not_block_the_loop(gpio_factory: MockFactory) -> None:
    slow = LockWiring(lock_gpio=5, unlock_gpio=6, feedback_gpio=13, pulse_s=0.1, settle_s=0.0)
    w = RpiLockWorld(gpio_factory, slow)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    try:
        assert await w.lock.lock() is True
    finally:
        task.cancel()
        await w.close()
    assert ticks >= 5


async def test_cancelled_mid_pulse_stops_the_motor(gpio_factory: MockFactory) -> None:
    slow = LockWiring(lock_gpio=5, unlock_gpio=6, feedback_gpio=13, pulse_s=5.0)
    w = RpiLockWorld(gpio_factory, slow)
    w.jam()
    task = asyncio.create_task(w.lock.lock())
    await asyncio.sleep(0.05)
    assert not w.motor_idle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert w.motor_idle()
    await w.close()


async def test_concurrent_commands_never_drive_both_directions(rpi: RpiLockWorld) -> None:
    results = await asyncio.gather(rpi.lock.lock(), rpi.lock.unlock(), rpi.lock.lock())
    assert tuple(results) == (True, True, True)
    assert rpi.lock.locked is True
    assert not rpi.both_on


async def test_after_shutdown(rpi: RpiLockWorld) -> None:
    await rpi.driver.shutdown()
    await rpi.driver.shutdown()  # idempotent
    with pytest.raises(RuntimeError):
        await rpi.driver.lock()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"lock_gpio": 5, "unlock_gpio": 5, "feedback_gpio": 13},
        {"lock_gpio": 5, "unlock_gpio": 6, "feedback_gpio": 13, "attempts": 0},
        {"lock_gpio": 5, "unlock_gpio": 6, "feedback_gpio": 13, "pulse_s": 0.0},
    ],
)
def test_wiring_is_validated(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        LockWiring(**kwargs)  # type: ignore[arg-type]
