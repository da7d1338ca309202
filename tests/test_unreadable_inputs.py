"""Polled inputs that fail to read (an SPI error on the temperature or PP channel): the
charger fails safe and the daemon goes on, instead of the error ending the safety loop."""

from __future__ import annotations

from pathlib import Path

from tests.harness import bench


class BrokenAdcChannel:
    """A temperature sensor and a proximity input whose ADC reads fail, as an SPI transfer
    that errors does."""

    def __init__(self) -> None:
        self.reads = 0

    def read_c(self) -> float:
        self.reads += 1
        raise OSError(5, "spi_xfer failed")

    def read_cable_rating_a(self) -> float | None:
        self.reads += 1
        raise OSError(5, "spi_xfer failed")

    def shutdown(self) -> None:
        pass


async def test_an_unreadable_temperature_sensor_faults_the_connector(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        broken = BrokenAdcChannel()
        b.hardware.connectors[1].temperature = broken
        faulted = await b.wait_status(1, "Faulted")
        assert faulted.payload["errorCode"] == "HighTemperature"
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        reads = broken.reads
        await b.wait_until(lambda: broken.reads > reads + 1, what="the safety loop reads on")
        assert not b.task.done()


async def test_an_unreadable_proximity_pilot_offers_nothing(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.hardware.connectors[1].proximity = BrokenAdcChannel()
        b.ev(1).plug()
        b.swipe("TAG-OK")
        await b.wait_until(lambda: b.app.charger.transaction_on(1) is not None, what="started")
        await b.wait_until(lambda: 1 in b.app.limit_decisions, what="limits")
        decision = b.app.limit_decisions[1]
        assert (decision.limit_a, decision.binding) == (0.0, "cable")
        assert b.ev(1).snapshot()["pilot_output"] != "pwm"
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        assert not b.task.done()
