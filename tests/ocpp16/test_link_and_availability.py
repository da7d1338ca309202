"""The CSMS link (reconnect and backoff), ChangeAvailability and the control socket's status."""

from __future__ import annotations

import asyncio
import random
import time
from pathlib import Path

import pytest
from ocpp.v16 import call

from evse_daemon.control import ControlError
from tests.harness import bench, config_value


async def test_reconnect_waits_even_after_an_accepted_connection_drops(tmp_path: Path) -> None:
    # reconnect_min_s = 0.3: a CSMS that accepts and then drops the link at once must not be
    # hammered (websockets alone would reconnect within milliseconds).
    async with bench(tmp_path, extra_ocpp={"reconnect_min_s": 0.3, "reconnect_max_s": 1.0}) as b:
        await b.booted()
        drops = []
        for _ in range(3):
            before = b.csms.connections
            await b.csms.drop_connection()
            dropped_at = time.monotonic()
            await b.csms.wait_connected(timeout_s=5, after=before)
            drops.append(time.monotonic() - dropped_at)
        assert all(d >= 0.29 for d in drops), drops
        # A plain reconnect sends no new BootNotification (OCPP-J §5.4).
        assert len(b.csms.messages("BootNotification")) == 1
        # The link works after the reconnects.
        result = await b.csms.call(call.GetConfiguration(key=["HeartbeatInterval"]))
        assert result.configuration_key[0]["value"] == "300"


def test_backoff_is_capped_jittered_and_grows(tmp_path: Path) -> None:
    from evse_daemon.auth import Authorizer
    from evse_daemon.clock import FakeClock
    from evse_daemon.config import OcppSection, StationConfig
    from evse_daemon.ocpp16.adapter import OcppAdapter16
    from evse_daemon.ocpp_keys import OcppConfiguration

    adapter = OcppAdapter16(
        station=StationConfig(id="CP", vendor="V", model="M"),
        ocpp_section=OcppSection(
            csms_url="ws://127.0.0.1:1/ocpp", reconnect_min_s=1.0, reconnect_max_s=60.0
        ),
        port=None,  # type: ignore[arg-type]
        keys=OcppConfiguration.for_connectors(1),
        authorizer=Authorizer(FakeClock()),
        clock=FakeClock(),
    )
    random.seed(7)
    for attempt in range(12):
        delays = [adapter._backoff_s(attempt) for _ in range(200)]
        cap = min(60.0, 1.0 * 2**attempt)
        assert min(delays) >= 1.0
        assert max(delays) <= max(cap, 1.0)
        if cap >= 4:
            # Jittered: the delays spread over the window instead of all being the cap.
            assert max(delays) - min(delays) > cap / 4
    assert max(adapter._backoff_s(30) for _ in range(200)) <= 60.0


async def test_change_availability_scheduled_during_a_transaction_and_persisted(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-AV")
        result = await b.csms.call(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert result.status == "Scheduled"
        assert b.app.status()["connectors"][0]["status"] == "Charging"
        mark = b.csms.mark()
        await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        await b.csms.wait_for("StopTransaction", after=mark)
        await b.wait_status(1, "Unavailable", after=mark)
        assert b.ev(1).snapshot()["pilot_output"] == "F"

        # Persisted: a restarted daemon comes back Unavailable.
        mark = b.csms.mark()
        await b.restart_app()
        await b.wait_status(1, "Unavailable", after=mark)
        # Already in the requested state: Accepted.
        result = await b.csms.call(call.ChangeAvailability(connector_id=1, type="Inoperative"))
        assert result.status == "Accepted"
        result = await b.csms.call(call.ChangeAvailability(connector_id=0, type="Operative"))
        assert result.status == "Accepted"
        await b.wait_status(1, "Preparing", after=mark)  # the EV is still plugged in
        result = await b.csms.call(call.ChangeAvailability(connector_id=5, type="Operative"))
        assert result.status == "Rejected"


async def test_clear_cache_forgets_cached_tags(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.swipe("TAG-CACHE")
        await b.csms.wait_for("Authorize")
        await b.wait_until(lambda: b.app.authorizer.cached("TAG-CACHE") is not None)
        result = await b.csms.call(call.ClearCache())
        assert result.status == "Accepted"
        assert b.app.authorizer.cached("TAG-CACHE") is None


async def test_status_json_has_the_fields_of_the_design(tmp_path: Path) -> None:
    async with bench(tmp_path, connectors=2) as b:
        await b.booted()
        await b.start_charging(2, "TAG-ST")
        # The StartTransaction leaves the queue once its answer is recorded in the store.
        await b.wait_until(lambda: b.app.status()["ocpp"]["queue_depth"] == 0)
        status = b.app.status()
        assert status["ocpp"]["registration"] == "Accepted"
        assert status["ocpp"]["connected"] is True
        assert status["ocpp"]["queue_depth"] == 0
        second = status["connectors"][1]
        assert second["status"] == "Charging"
        assert second["pilot_state"] == "C"
        assert second["contactor"] == "closed"
        assert second["offered_current_a"] == 32.0
        assert second["transaction"]["id_tag"] == "TAG-ST"
        assert second["transaction"]["id"] == max(b.csms.transaction_ids)
        assert second["energy_wh"] is not None


async def test_bench_verbs_are_refused_on_real_drivers(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        # The same daemon, as if connector 1 ran real drivers: no simulation behind them.
        b.hardware.connectors[1].bench = None
        b.hardware.connectors[1].drivers = {"pilot": "sysfs-pwm", "contactor": "gpio"}
        with pytest.raises(ControlError, match=r"bench command.*real drivers"):
            await b.app.handle_control({"cmd": "plug", "connector": 1})
        with pytest.raises(ControlError, match="no connector 7"):
            await b.app.handle_control({"cmd": "plug", "connector": 7})
        # status still works.
        assert (await b.app.handle_control({"cmd": "status"}))["station"] == "CP-TEST-1"


async def test_websocket_ping_interval_change_is_reboot_required_and_kept(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await b.csms.call(
            call.ChangeConfiguration(key="WebSocketPingInterval", value="30")
        )
        assert result.status == "RebootRequired"
        result = await b.csms.call(
            call.ChangeConfiguration(key="WebSocketPingInterval", value="-5")
        )
        assert result.status == "Rejected"
        await b.restart_app()
        await b.csms.wait_for("BootNotification", after=1)
        result = await b.csms.call(call.GetConfiguration(key=["WebSocketPingInterval"]))
        assert config_value(result, "WebSocketPingInterval") == "30"


async def test_a_crashing_run_leaves_the_contactor_open(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-CRASH")
        assert b.ev(1).snapshot()["contactor_commanded"] is True

        def broken() -> None:
            raise RuntimeError("a bug in the controller")

        # A bug on the safety loop's path: the run ends with the error, the drivers are left
        # in the safe state on the way out.
        b.app.charger.tick = broken  # type: ignore[method-assign,assignment]
        with pytest.raises(BaseExceptionGroup) as failure:
            await asyncio.wait_for(b.task, 5)
        assert failure.group_contains(RuntimeError, match="a bug in the controller")
        snapshot = b.ev(1).snapshot()
        assert snapshot["contactor_commanded"] is False
        assert snapshot["pilot_output"] == "F"
        assert snapshot["power_w"] == 0.0
