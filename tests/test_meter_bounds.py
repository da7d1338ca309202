"""meterStart and meterStop are the meter's register while no energy flows: read after the
contactor opened and before it closed again, whatever the meter loop's timing or a busy event
forwarder (back-to-back sessions here once billed one session's energy to the next)."""

from __future__ import annotations

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
