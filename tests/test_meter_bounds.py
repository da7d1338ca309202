"""meterStart and meterStop are the meter's register while no energy flows: read after the
contactor opened and before it closed again, whatever the meter loop's timing or a busy event
forwarder (back-to-back sessions here once billed one session's energy to the next)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.harness import bench


async def test_back_to_back_sessions_each_get_their_own_energy(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        register_wh: list[float] = []
        for _session in range(3):
            before = b.ev(1).snapshot()["energy_wh"]
            await b.start_charging(1, "TAG-OK")
            await b.wait_until(
                lambda before=before: b.ev(1).snapshot()["energy_wh"] > before + 1,
                what="energy flowing",
            )
            b.swipe("TAG-OK")
            await b.wait_until(
                lambda: b.ev(1).snapshot()["contactor_commanded"] is False, what="contactor open"
            )
            register_wh.append(b.ev(1).snapshot()["energy_wh"])
            # The next session starts at once, inside the meter loop's interval.
            b.ev(1).unplug()
            b.ev(1).plug()
            b.ev(1).unplug()
        await b.wait_until(
            lambda: len(b.csms.messages("StopTransaction")) == 3, what="three stops", timeout_s=30
        )
        starts = [m.payload["meterStart"] for m in b.csms.messages("StartTransaction")]
        stops = [m.payload["meterStop"] for m in b.csms.messages("StopTransaction")]
        assert len(starts) == 3
        # Each stop is the register when that session's contactor opened, and the next session
        # starts from there: nothing flowed in between, nothing is billed twice or lost.
        assert stops == [int(wh) for wh in register_wh]
        assert starts[1:] == stops[:-1]
        assert all(stop > start for start, stop in zip(starts, stops, strict=True))


async def test_a_session_started_before_the_last_one_opened_the_contactor(tmp_path: Path) -> None:
    """The EV keeps drawing after a stop (x1 leaves it up to 6 s), and a new session starts on
    the same connector meanwhile (a card presented again): the contactor never opens between
    the two, so there is no reading at rest; both fall back to the latest reading when they
    are forwarded. The new meterStart must not be a reading from before the last session (the
    old code took that one: the last session's energy billed twice)."""
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        await b.wait_until(lambda: b.ev(1).snapshot()["energy_wh"] > 2, what="energy flowing")
        b.ev(1).set_ev_state("C")  # insists on energy after the stop
        mark = b.csms.mark()
        b.swipe("TAG-OK")  # stop
        await b.wait_until(lambda: b.app.charger.transaction_on(1) is None, what="stopped")
        await asyncio.sleep(0.6)  # a person presents the card again; beyond the reader's repeat
        assert b.ev(1).snapshot()["contactor_commanded"] is True  # x1: still closed
        b.swipe("TAG-OK")  # a new session, with the contactor still closed
        await b.wait_until(lambda: b.app.charger.transaction_on(1) is not None, what="started")
        assert b.ev(1).snapshot()["contactor_commanded"] is True
        start = await b.csms.wait_for("StartTransaction", after=mark, timeout_s=20)
        stop = b.csms.messages("StopTransaction")[-1]
        assert start.payload["meterStart"] >= stop.payload["meterStop"]
        assert (
            stop.payload["meterStop"] > b.csms.messages("StartTransaction")[0].payload["meterStart"]
        )
