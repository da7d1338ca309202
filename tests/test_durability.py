"""Nothing lost: transaction messages survive a killed daemon and an absent CSMS, and a
transaction left open by a kill or a power cut is finished after the restart."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from evse_daemon.bench.csms import BenchCsms
from tests.harness import (
    DaemonProcess,
    bench,
    control,
    pretend_the_board_rebooted,
    write_config,
)


def _register_wh(state_dir: Path, connector_id: int) -> float:
    data = json.loads((state_dir / f"mock-meter-{connector_id}.json").read_text())
    return float(data["energy_import_wh"])


async def _charge_then_kill(csms: BenchCsms, tmp_path: Path, tag: str) -> tuple[dict, Path]:
    config = write_config(tmp_path, csms.url)
    socket = tmp_path / "control.sock"
    daemon = DaemonProcess(config)
    try:
        await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
        await control(socket, cmd="plug", connector=1)
        await control(socket, cmd="swipe", tag=tag)
        start = await csms.wait_for("StartTransaction", timeout_s=10)
        await csms.wait_for("StatusNotification", lambda p: p["status"] == "Charging")
        await asyncio.sleep(1.5)  # let the meter count
    finally:
        daemon.kill()  # SIGKILL: no goodbye, no StopTransaction
    return start.payload, config


async def test_TC_032_2_power_loss_stops_the_transaction_after_reboot(tmp_path: Path) -> None:
    async with BenchCsms() as csms:
        start, config = await _charge_then_kill(csms, tmp_path, "TAG-PL")
        assert csms.messages("StopTransaction") == []
        state = tmp_path / "state"
        pretend_the_board_rebooted(state)
        mark = csms.mark()
        daemon = DaemonProcess(config)
        try:
            stop = await csms.wait_for("StopTransaction", after=mark, timeout_s=20)
            boot = csms.messages("BootNotification")[-1]
            assert csms.received.index(boot) < csms.received.index(stop)
            assert stop.payload["reason"] == "PowerLoss"
            assert stop.payload["transactionId"] == max(csms.transaction_ids)
            # The meter kept its register: meterStop is what it reads after the restart.
            assert stop.payload["meterStop"] == int(_register_wh(state, 1))
            assert stop.payload["meterStop"] > start["meterStart"]
            await csms.wait_for(
                "StatusNotification", lambda p: p["connectorId"] == 1, after=mark, timeout_s=10
            )
        finally:
            assert await asyncio.to_thread(daemon.terminate) == 0
        assert len(csms.messages("StopTransaction")) == 1


async def test_a_killed_daemon_restarted_on_the_same_boot_stops_with_reboot(tmp_path: Path) -> None:
    async with BenchCsms() as csms:
        await _charge_then_kill(csms, tmp_path, "TAG-RB")
        mark = csms.mark()
        daemon = DaemonProcess(tmp_path / "evse.toml")
        try:
            stop = await csms.wait_for("StopTransaction", after=mark, timeout_s=20)
            assert stop.payload["reason"] == "Reboot"
        finally:
            daemon.terminate()


async def test_offline_session_is_delivered_in_order_with_the_csms_transaction_id(
    tmp_path: Path,
) -> None:
    async with bench(
        tmp_path, ocpp_config={"MeterValueSampleInterval": 1, "AllowOfflineTxForUnknownId": True}
    ) as b:
        await b.booted()
        b.csms.accepting = False
        await b.csms.drop_connection()
        await b.wait_until(lambda: not b.app.adapter.connected)
        b.ev(1).plug()
        b.swipe("TAG-OFFLINE")
        await b.wait_until(lambda: b.app.status()["connectors"][0]["status"] == "Charging")
        await asyncio.sleep(2.5)  # a few sampled meter values, queued
        b.ev(1).unplug()
        await b.wait_until(lambda: b.app.status()["connectors"][0]["transaction"] is None)
        depth = b.app.status()["ocpp"]["queue_depth"]
        assert depth >= 4  # Start, ≥ 2 MeterValues, Stop
        mark = b.csms.mark()
        b.csms.accepting = True
        stop = await b.csms.wait_for("StopTransaction", after=mark, timeout_s=15)
        sent = [
            m
            for m in b.csms.received[mark:]
            if m.action in ("StartTransaction", "MeterValues", "StopTransaction")
        ]
        assert sent[0].action == "StartTransaction"
        assert sent[-1].action == "StopTransaction"
        assert {m.action for m in sent[1:-1]} == {"MeterValues"}
        assert len(sent) == depth
        transaction_id = max(b.csms.transaction_ids)
        assert all(m.payload["transactionId"] == transaction_id for m in sent[1:])
        assert stop.payload["reason"] == "EVDisconnected"
        # Meter values in order and never above the final reading.
        energies = [
            float(v["value"])
            for m in sent[1:-1]
            for mv in m.payload["meterValue"]
            for v in mv["sampledValue"]
            if v.get("measurand", "Energy.Active.Import.Register")
            == "Energy.Active.Import.Register"
        ]
        assert energies == sorted(energies)
        assert sent[0].payload["meterStart"] <= energies[0] <= stop.payload["meterStop"] + 1


async def test_queue_survives_a_kill_while_offline_and_is_sent_exactly_once(
    tmp_path: Path,
) -> None:
    async with BenchCsms() as csms:
        config = write_config(tmp_path, csms.url, ocpp_config={"AllowOfflineTxForUnknownId": True})
        socket = tmp_path / "control.sock"
        daemon = DaemonProcess(config)
        try:
            await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
            csms.accepting = False
            await csms.drop_connection()
            await control(socket, cmd="plug", connector=1)
            await control(socket, cmd="swipe", tag="TAG-Q")
            await asyncio.sleep(1.0)
            await control(socket, cmd="unplug", connector=1)
            for _ in range(100):
                status = await control(socket, cmd="status")
                assert isinstance(status, dict)
                if status["ocpp"]["queue_depth"] == 2:
                    break
                await asyncio.sleep(0.05)
            assert status["ocpp"]["queue_depth"] == 2
        finally:
            daemon.kill()
        csms.accepting = True
        mark = csms.mark()
        daemon = DaemonProcess(config)
        try:
            stop = await csms.wait_for("StopTransaction", after=mark, timeout_s=20)
            start = csms.messages("StartTransaction")
            assert len(start) == 1 and start[0].payload["idTag"] == "TAG-Q"
            assert csms.received.index(start[0]) < csms.received.index(stop)
            assert stop.payload["transactionId"] == max(csms.transaction_ids)
            assert stop.payload["reason"] == "EVDisconnected"
            # Nothing is sent twice, even after another restart.
            daemon.terminate()
            mark = csms.mark()
            daemon = DaemonProcess(config)
            await csms.wait_for("StatusNotification", after=mark, timeout_s=20)
            await asyncio.sleep(0.5)
            assert len(csms.messages("StartTransaction")) == 1
            assert len(csms.messages("StopTransaction")) == 1
        finally:
            daemon.terminate()
