"""Fixtures shared by the tests of the real drivers."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from gpiozero import Device  # type: ignore[import-untyped]
from gpiozero.pins.mock import MockFactory, MockPWMPin  # type: ignore[import-untyped]


@pytest.fixture
def gpio_factory(monkeypatch: pytest.MonkeyPatch) -> Iterator[MockFactory]:
    """A fresh gpiozero mock pin factory with PWM-capable pins (as on a real Pi), closed at
    the end.

    The drivers get it through ``pin_factory=``. It is also made the global default for the
    test's duration only, because gpiozero 2.0.1's software SPI bus (the one mock SPI always
    uses) builds itself without passing its factory on (``SPISoftwareBus.__init__`` calls
    ``Device.__init__()`` bare) and would otherwise go looking for real hardware.

    First the garbage of the tests before is collected. gpiozero 2.0.1 shares one SPI bus
    object per set of pins across all factories (``SharedMixin``), and a closed bus left in
    a reference cycle, when a later collection finalizes it, deletes the cache entry of
    whatever bus on the same pins is live then: that test's next MCP3008 channel builds a
    second bus and fails with "GPIO11 is already in use".
    """
    gc.collect()
    factory = MockFactory(pin_class=MockPWMPin)
    monkeypatch.setattr(Device, "pin_factory", factory)
    yield factory
    factory.close()
