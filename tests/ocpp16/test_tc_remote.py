"""OCA OCPP 1.6 compliance test cases (charge point side): remote start and stop, and the
requests the charger must reject.

Each test follows the scenario and the tool validations of its test case in the OCA test case
document; bench-specific deviations are noted in comments.
"""

from __future__ import annotations

from pathlib import Path

from ocpp.v16 import call

from tests.harness import bench, config_value


async def test_TC_010_remote_start_cable_plugged_in_first(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"AuthorizeRemoteTxRequests": True}) as b:
        await b.booted()
        # 1-2. GetConfiguration for AuthorizeRemoteTxRequests.
        got = await b.csms.call(call.GetConfiguration(key=["AuthorizeRemoteTxRequests"]))
        assert config_value(got, "AuthorizeRemoteTxRequests") == "true"
        mark = b.csms.mark()
        # Cable plugged in on both sides. 3. Preparing on the configured connector.
        b.ev(1).plug()
        preparing = await b.wait_status(1, "Preparing", after=mark)
        assert preparing.payload["connectorId"] == 1
        # 5-6. RemoteStartTransaction: Accepted.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1))
        assert result.status == "Accepted"
        # 7. AuthorizeRemoteTxRequests is true: Authorize.req for that idTag first.
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-OK"}
        # 9/11 (either order). StartTransaction and Charging.
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["connectorId"] == 1
        assert start.payload["idTag"] == "TAG-OK"
        assert b.csms.received.index(authorize) < b.csms.received.index(start)
        await b.wait_status(1, "Charging", after=mark)
        assert b.ev(1).snapshot()["power_w"] > 0


async def test_TC_011_1_remote_start_first(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"AuthorizeRemoteTxRequests": False}) as b:
        await b.booted()
        # 1-2. GetConfiguration for AuthorizeRemoteTxRequests.
        got = await b.csms.call(call.GetConfiguration(key=["AuthorizeRemoteTxRequests"]))
        assert config_value(got, "AuthorizeRemoteTxRequests") == "false"
        mark = b.csms.mark()
        # 3-4. RemoteStartTransaction before any cable: Accepted.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1))
        assert result.status == "Accepted"
        # 7. Preparing (5. no Authorize.req: AuthorizeRemoteTxRequests is false).
        await b.wait_status(1, "Preparing", after=mark)
        assert "StartTransaction" not in b.actions(mark)  # no cable yet
        # 9. The driver plugs in: StartTransaction; 11. Charging.
        b.ev(1).plug()
        start = await b.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["connectorId"] == 1
        assert start.payload["idTag"] == "TAG-OK"
        await b.wait_status(1, "Charging", after=mark)
        assert "Authorize" not in b.actions(mark)
        statuses = b.statuses(1, after=mark)
        assert statuses.index("Preparing") < statuses.index("Charging")


async def test_TC_011_2_remote_start_time_out(tmp_path: Path) -> None:
    config = {"AuthorizeRemoteTxRequests": True, "ConnectionTimeOut": 2}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        # 1-2. GetConfiguration for AuthorizeRemoteTxRequests.
        got = await b.csms.call(call.GetConfiguration(key=["AuthorizeRemoteTxRequests"]))
        assert config_value(got, "AuthorizeRemoteTxRequests") == "true"
        mark = b.csms.mark()
        # 3-4. RemoteStartTransaction: Accepted. 5-6. Authorize.req.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1))
        assert result.status == "Accepted"
        authorize = await b.csms.wait_for("Authorize", after=mark)
        assert authorize.payload == {"idTag": "TAG-OK"}
        # 7. Preparing; 9. after ConnectionTimeOut with no cable, Available again.
        preparing = await b.wait_status(1, "Preparing", after=mark)
        available = await b.wait_status(1, "Available", after=mark, timeout_s=10)
        assert 1.5 <= available.received_at - preparing.received_at <= 6.0
        assert b.statuses(1, after=mark) == ["Preparing", "Available"]
        # The remote authorization has lapsed: a cable plugged in now starts nothing.
        plug_mark = b.csms.mark()
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=plug_mark)
        await b.barrier()
        assert "StartTransaction" not in b.actions(mark)
        assert b.ev(1).snapshot()["contactor_commanded"] is False


async def test_TC_012_remote_stop_charging_session(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        mark = b.csms.mark()
        # 1-2. RemoteStopTransaction for the running transaction: Accepted.
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        assert result.status == "Accepted"
        # 3/5 (either order). StopTransaction reason Remote, and Finishing.
        stop = await b.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["transactionId"] == tx
        assert stop.payload["reason"] == "Remote"
        await b.wait_status(1, "Finishing", after=mark)
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        # The driver unplugs: Available.
        b.ev(1).unplug()
        await b.wait_status(1, "Available", after=mark)
        assert b.statuses(1, after=mark) == ["Finishing", "Available"]


async def test_TC_026_remote_start_rejected(tmp_path: Path) -> None:
    # AuthorizeRemoteTxRequests=true makes a wrongly accepted start visible as an Authorize.
    config = {"LocalPreAuthorize": False, "AuthorizeRemoteTxRequests": True}
    async with bench(tmp_path, ocpp_config=config) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        mark = b.csms.mark()
        # 1-2. RemoteStartTransaction on the connector that is charging: Rejected.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OTHER", connector_id=1))
        assert result.status == "Rejected"
        await b.barrier()
        # Nothing follows from a rejected request, and the running transaction goes on.
        assert b.actions(mark) == ["Heartbeat"]
        assert b.app.status()["connectors"][0]["transaction"]["id"] == tx
        assert b.app.charger.connector(1).status.value == "Charging"


async def test_TC_027_remote_start_connector_id_0(tmp_path: Path) -> None:
    async with bench(tmp_path, ocpp_config={"AuthorizeRemoteTxRequests": True}) as b:
        await b.booted()
        mark = b.csms.mark()
        # 1-2. RemoteStartTransaction with connectorId 0: Rejected.
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=0))
        assert result.status == "Rejected"
        await b.barrier()
        assert b.actions(mark) == ["Heartbeat"]
        assert b.app.charger.connector(1).auth is None
        # Still free: a cable plugged in now is Preparing and starts no transaction.
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=mark)
        await b.barrier()
        assert "StartTransaction" not in b.actions(mark)


async def test_TC_028_remote_stop_unknown_transaction_rejected(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        mark = b.csms.mark()
        # 1-2. RemoteStopTransaction with an unknown transactionId: Rejected.
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx + 1000))
        assert result.status == "Rejected"
        await b.barrier()
        assert "StopTransaction" not in b.actions(mark)
        assert b.app.status()["connectors"][0]["transaction"]["id"] == tx
        assert b.ev(1).snapshot()["power_w"] > 0
