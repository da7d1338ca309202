"""OCA OCPP 1.6 compliance test cases: cold boot and regular sessions (charge point side)."""

from __future__ import annotations

from pathlib import Path

from ocpp.v16 import call

from tests.harness import bench


async def test_TC_001_cold_boot(tmp_path: Path) -> None:
    async with bench(tmp_path, boot_responses=[("Rejected", 1), ("Accepted", 2)]) as b:
        first = await b.csms.wait_for("BootNotification")
        second = await b.csms.wait_for("BootNotification", after=b.csms.received.index(first) + 1)
        # Rejected: nothing else is sent, and the retry waits for the interval.
        between = b.csms.received[b.csms.received.index(first) + 1 : b.csms.received.index(second)]
        assert between == []
        assert second.received_at - first.received_at >= 0.95
        await b.wait_status(0, "Available")
        await b.wait_status(1, "Available")
        # Heartbeats follow the interval the CSMS gave (2 s).
        beat1 = await b.csms.wait_for("Heartbeat", timeout_s=5)
        beat2 = await b.csms.wait_for(
            "Heartbeat", after=b.csms.received.index(beat1) + 1, timeout_s=5
        )
        assert 1.5 <= beat2.received_at - beat1.received_at <= 3.0


async def test_TC_003_regular_charging_session_plugin_first(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=mark)
        b.swipe("TAG-OK")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-OK"}
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["connectorId"] == 1
        assert start.payload["idTag"] == "TAG-OK"
        await b.wait_status(1, "Charging", after=mark)
        assert b.ev(1).snapshot()["power_w"] > 0
        # A remote stop ends it (the end of a regular session for the tool).
        tx = max(b.csms.transaction_ids)
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        assert result.status == "Accepted"
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["reason"] == "Remote"
        assert stop.payload["meterStop"] >= start.payload["meterStart"]
        await b.wait_status(1, "Finishing", after=mark)
        b.ev(1).unplug()
        await b.wait_status(1, "Available", after=mark)
