"""OCA OCPP 1.6 compliance test cases (charge point side): cold boot pending, starting and
stopping sessions locally, EV-side disconnects and an invalid local start.

Each test follows the scenario and the tool validations of its test case in the OCA test case
document; bench-specific deviations are noted in comments.
"""

from __future__ import annotations

from pathlib import Path

from ocpp.v16 import call

from tests.harness import bench, config_value


async def test_TC_002_cold_boot_pending(tmp_path: Path) -> None:
    # With these keys a remote start that slipped through while Pending would go ahead
    # without the CSMS (offline decision) and show as Preparing once Accepted.
    config = {"AuthorizeRemoteTxRequests": True, "AllowOfflineTxForUnknownId": True}
    boots = [("Pending", 2), ("Accepted", 1)]
    async with bench(tmp_path, ocpp_config=config, boot_responses=boots) as b:
        # 1-2. BootNotification answered Pending (interval 2 s).
        first = await b.csms.wait_for("BootNotification")
        await b.wait_until(lambda: b.app.adapter.registration == "Pending", what="Pending")
        # 3-4. While Pending the charger answers GetConfiguration.
        got = await b.csms.call(call.GetConfiguration(key=["MeterValueSampleInterval"]))
        assert config_value(got, "MeterValueSampleInterval") == "0"
        # 5-6. ... and ChangeConfiguration (step 6: Accepted), effective at once.
        changed = await b.csms.call(
            call.ChangeConfiguration(key="MeterValueSampleInterval", value="30")
        )
        assert changed.status == "Accepted"
        got = await b.csms.call(call.GetConfiguration(key=["MeterValueSampleInterval"]))
        assert config_value(got, "MeterValueSampleInterval") == "30"
        # RemoteStartTransaction is not allowed while Pending (§4.2.1).
        remote = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1))
        assert remote.status == "Rejected"

        # 7-8. The next BootNotification comes after the interval of step 2, and the charger
        # sent nothing in between.
        first_index = b.csms.received.index(first)
        second = await b.csms.wait_for("BootNotification", after=first_index + 1)
        assert b.csms.received[first_index + 1 : b.csms.received.index(second)] == []
        assert 1.9 <= second.received_at - first.received_at <= 6.0

        # 9. Accepted: a StatusNotification Available for connector 0 and every connector.
        after_boot = b.csms.received.index(second) + 1
        await b.wait_status(0, "Available", after=after_boot)
        await b.wait_status(1, "Available", after=after_boot)
        # The rejected remote start left no trace: no session was started.
        assert b.statuses(1, after=after_boot) == ["Available"]
        assert b.app.charger.connector(1).auth is None
        assert "StartTransaction" not in b.actions(0)
        assert "Authorize" not in b.actions(0)

        # 11. Heartbeats every interval of step 8 (1 s).
        beat1 = await b.csms.wait_for("Heartbeat", after=after_boot, timeout_s=5)
        beat2 = await b.csms.wait_for(
            "Heartbeat", after=b.csms.received.index(beat1) + 1, timeout_s=5
        )
        assert 0.6 <= beat2.received_at - beat1.received_at <= 2.0


async def test_TC_004_1_regular_charging_session_identification_first(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"MeterValueSampleInterval": 10}) as b:
        await b.booted()
        mark = b.csms.mark()
        # 1. Reusable state Authorized: the driver presents a card, it is authorized and the
        # connector reports Preparing.
        b.swipe("TAG-OK")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-OK"}
        preparing = await b.wait_status(1, "Preparing", after=mark)
        assert "StartTransaction" not in b.actions(mark)  # no cable yet
        # 2. The driver plugs in.
        b.ev(1).plug()
        # 3/5 (in either order). StartTransaction for that card, and Charging.
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["connectorId"] == 1
        assert start.payload["idTag"] == "TAG-OK"
        charging = await b.wait_status(1, "Charging", after=mark)
        assert b.csms.received.index(preparing) < b.csms.received.index(charging)
        assert b.ev(1).snapshot()["power_w"] > 0


async def test_TC_004_2_identification_first_connection_timeout(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"ConnectionTimeOut": 2}) as b:
        await b.booted()
        mark = b.csms.mark()
        # 1. Reusable state Authorized.
        b.swipe("TAG-OK")
        await b.csms.wait_for("Authorize", after=mark)
        preparing = await b.wait_status(1, "Preparing", after=mark)
        # 2. No cable within ConnectionTimeOut: the connector is Available again.
        available = await b.wait_status(1, "Available", after=mark, timeout_s=10)
        assert 1.5 <= available.received_at - preparing.received_at <= 6.0
        assert b.statuses(1, after=mark) == ["Preparing", "Available"]
        # The authorization is gone: a cable plugged in now does not start a transaction.
        plug_mark = b.csms.mark()
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=plug_mark)
        await b.barrier()
        assert "StartTransaction" not in b.actions(mark)
        assert b.ev(1).snapshot()["contactor_commanded"] is False


async def test_TC_005_1_ev_side_disconnected_stop_tx_and_unlock(tmp_path: Path) -> None:
    config = {
        "MinimumStatusDuration": 0,
        "StopTransactionOnEVSideDisconnect": True,
        "UnlockConnectorOnEVSideDisconnect": True,
    }
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        await b.wait_until(lambda: b.ev(1).snapshot()["locked"] is True, what="cable locked")
        mark = b.csms.mark()
        # The driver unplugs the cable on the EV side.
        b.ev(1).unplug()
        # 1. StopTransaction with reason EVDisconnected.
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["reason"] == "EVDisconnected"
        # 3. Finishing (the cable is still in the socket), then 5. Available once the
        # connector has let the cable go. The mock has no proximity sensing: the unlock
        # that UnlockConnectorOnEVSideDisconnect=true commands stands for the driver taking
        # the cable out of the charge point.
        await b.wait_status(1, "Available", after=mark)
        statuses = b.statuses(1, after=mark)
        assert "Finishing" in statuses
        assert statuses.index("Finishing") < statuses.index("Available")
        assert "Charging" not in statuses
        assert b.ev(1).snapshot()["locked"] is False
        assert b.ev(1).snapshot()["contactor_commanded"] is False


async def test_TC_005_3_ev_side_disconnected_tx_continues(tmp_path: Path) -> None:
    config = {
        "MinimumStatusDuration": 0,
        "StopTransactionOnEVSideDisconnect": False,
        "UnlockConnectorOnEVSideDisconnect": False,
    }
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        await b.wait_until(lambda: b.ev(1).snapshot()["locked"] is True, what="cable locked")
        mark = b.csms.mark()
        # The driver unplugs the cable on the EV side.
        b.ev(1).unplug()
        # 1. SuspendedEV: the transaction goes on (and no energy flows).
        suspended = await b.wait_status(1, "SuspendedEV", after=mark)
        assert suspended.payload["errorCode"] == "NoError"
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        # UnlockConnectorOnEVSideDisconnect=false: the cable stays locked.
        assert b.ev(1).snapshot()["locked"] is True
        await b.barrier()
        assert "StopTransaction" not in b.actions(mark)
        # 3-4. RemoteStopTransaction for the transaction that is still running: Accepted.
        stop_mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        assert result.status == "Accepted"
        # 5/7 (either order). StopTransaction reason Remote, and Finishing.
        stop = await b.csms.wait_for("StopTransaction", after=stop_mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["reason"] == "Remote"
        await b.wait_status(1, "Finishing", after=stop_mark)


async def test_TC_068_stop_transaction_with_same_id_tag(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        # 1. A card with a different idTag: no Authorize.req and no StopTransaction.req (the
        # only connector is busy and its transaction has no parent idTag to match).
        mark = b.csms.mark()
        b.swipe("TAG-OTHER")
        await b.barrier()
        assert "Authorize" not in b.actions(mark)
        assert "StopTransaction" not in b.actions(mark)
        assert b.app.charger.connector(1).tx is not None
        # 2-5. The card that started the transaction stops it, without an Authorize.req.
        mark = b.csms.mark()
        b.swipe("TAG-OK")
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["idTag"] == "TAG-OK"
        assert stop.payload.get("reason", "Local") == "Local"
        await b.wait_status(1, "Finishing", after=mark)
        assert "Authorize" not in b.actions(mark)


async def test_TC_023_4_local_start_authorize_invalid(tmp_path: Path) -> None:
    # The test case sets MinimumStatusDuration to 10 s; 1 s keeps its point (only a status
    # that lasts is reported) without making the test slow.
    config = {"MinimumStatusDuration": 1, "LocalPreAuthorize": True}
    async with bench(tmp_path, ocpp_config=config, id_tag_status={"BAD": "Invalid"}) as b:
        await b.booted()
        mark = b.csms.mark()
        # 1-2. The driver presents an invalid card: Authorize.req, answered Invalid.
        b.swipe("BAD")
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "BAD"}
        await b.barrier()
        # 3. The driver plugs in: Preparing.
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=mark)
        # Expected: no transaction is started.
        await b.barrier()
        assert "StartTransaction" not in b.actions(mark)
        assert b.app.charger.connector(1).tx is None
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        assert b.ev(1).snapshot()["power_w"] == 0
