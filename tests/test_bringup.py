"""`evsectl bringup`: each part exercised on the configured drivers (here the bench mocks, which
behave like the hardware), what it reports, and when it refuses."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from evse_daemon import ctl
from evse_daemon.control import ControlError
from tests.harness import Bench, bench


async def _bringup(b: Bench, part: str, connector: int | None = 1, **extra: Any) -> Any:
    request: dict[str, Any] = {"cmd": "bringup", "part": part, **extra}
    if connector is not None:
        request["connector"] = connector
    return await b.app.handle_control(request)


def _status(b: Bench, connector_id: int = 1) -> str:
    return str(b.app.status()["connectors"][connector_id - 1]["status"])


async def test_pilot_with_nothing_plugged_in_reads_f_then_a(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "pilot")
        steps = {s["step"]: s for s in result["steps"]}
        assert set(steps["state F"]["states"]) == {"F"}
        assert set(steps["x1 (+12 V)"]["states"]) == {"A"}
        assert steps["PWM 6 A"]["output"] == "pwm"
        assert steps["PWM 6 A"]["duty_percent"] == pytest.approx(10.0)
        assert steps["PWM 32 A"]["duty_percent"] == pytest.approx(53.3333, abs=0.001)
        assert result["passed"] is True
        # Handed back: outputs driven afresh, the connector serves again.
        await b.wait_until(lambda: _status(b) == "Available", what="available again")
        assert b.ev(1).snapshot()["pilot_output"] == "steady"


async def test_pilot_with_a_vehicle_shows_b_and_its_request_for_energy(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.ev(1).plug()
        await b.wait_until(lambda: _status(b) == "Preparing", what="preparing")
        mark = b.csms.mark()
        result = await _bringup(b, "pilot")
        steps = {s["step"]: s for s in result["steps"]}
        assert set(steps["x1 (+12 V)"]["states"]) == {"B"}
        assert set(steps["PWM 32 A"]["states"]) == {"C"}  # the car asks once PWM is offered
        assert all(s["diode_ok"] for s in result["steps"])
        await b.barrier()
        # The car was never energised, and no session started from the test.
        assert "StartTransaction" not in b.actions(mark)
        assert b.ev(1).snapshot()["contactor_commanded"] is False
        assert "Unavailable" in b.statuses(1, after=mark)  # while under test


async def test_contactor_reports_its_switching_times(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "contactor")
        assert result["verdict"] == "ok"
        assert result["passed"] is True
        assert result["feedback_before"] is False
        assert result["close_ms"] is not None and result["open_ms"] is not None
        assert b.ev(1).snapshot()["contactor_commanded"] is False


async def test_contactor_is_never_switched_with_a_vehicle_connected(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.ev(1).plug()
        with pytest.raises(ControlError, match="pilot reads B"):
            await _bringup(b, "contactor")
        assert all(closed is False for _t, closed in b.ev(1).contactor.history)
        await b.wait_until(lambda: _status(b) == "Preparing", what="handed back")


async def test_a_welded_contactor_is_reported_and_faults_the_connector(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.ev(1).inject_fault("weld")
        result = await _bringup(b, "contactor")
        assert result["verdict"].startswith("WELDED")
        assert result["passed"] is False
        await b.wait_status(1, "Faulted")


async def test_lock_and_its_failure(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "lock")
        assert (result["lock"]["ok"], result["unlock"]["ok"], result["passed"]) == (
            True,
            True,
            True,
        )
        b.ev(1).inject_fault("lock")
        result = await _bringup(b, "lock")
        assert result["passed"] is False


async def test_meter_reads_and_a_meter_that_stopped_answering(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "meter")
        assert result["passed"] is True
        assert len(result["reads"]) == 3
        assert all(r["energy_import_wh"] >= 0 and len(r["voltage_v"]) == 3 for r in result["reads"])
        b.ev(1).inject_fault("meter")
        result = await _bringup(b, "meter")
        assert result["passed"] is False
        assert all("error" in r for r in result["reads"])


async def test_rfid_shows_the_card_without_starting_anything(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        b.ev(1).plug()
        mark = b.csms.mark()
        pending = asyncio.create_task(_bringup(b, "rfid", connector=None, wait_s=5))
        await asyncio.sleep(0.2)
        b.swipe("04A1B2C3")
        result = await pending
        assert (result["id_tag"], result["passed"]) == ("04A1B2C3", True)
        await b.barrier()
        assert "Authorize" not in b.actions(mark)
        assert "StartTransaction" not in b.actions(mark)
        # Afterwards cards work as usual again.
        b.swipe("TAG-OK")
        await b.csms.wait_for("StartTransaction", after=mark)


async def test_rfid_without_a_card_says_so(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "rfid", connector=None, wait_s=0.3)
        assert result["id_tag"] is None
        assert result["passed"] is False


async def test_rcd_input(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await _bringup(b, "rcd")
        assert (result["tripped"], result["passed"]) == (False, True)
        b.ev(1).inject_fault("rcd")
        result = await _bringup(b, "rcd")
        assert (result["tripped"], result["passed"]) == (True, False)


async def test_refused_while_a_session_runs_and_for_unknown_parts(tmp_path: Path) -> None:
    async with bench(tmp_path, connectors=2) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        for part in ("pilot", "meter", "rfid"):
            with pytest.raises(ControlError, match="session is running"):
                await _bringup(b, part, connector=2)
        b.swipe("TAG-OK")
        await b.wait_until(lambda: b.app.charger.transaction_on(1) is None, what="stopped")
        b.ev(1).unplug()
        await b.wait_until(lambda: _status(b) == "Available", what="idle")
        with pytest.raises(ControlError, match="several connectors"):
            await _bringup(b, "meter", connector=None)
        with pytest.raises(ControlError, match="unknown part"):
            await _bringup(b, "fuse")


async def test_evsectl_bringup_prints_json_and_exits_3_on_a_failed_test(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        socket = b.config.control.socket
        code = await asyncio.to_thread(ctl.main, ["--socket", socket, "bringup", "meter", "1"])
        out = capsys.readouterr().out
        assert code == 0
        assert json.loads(out)["passed"] is True
        b.ev(1).inject_fault("meter")
        code = await asyncio.to_thread(ctl.main, ["--socket", socket, "bringup", "meter", "1"])
        assert code == 3
        assert json.loads(capsys.readouterr().out)["verdict"].startswith("FAILED")
        b.ev(1).plug()
        code = await asyncio.to_thread(ctl.main, ["--socket", socket, "bringup", "contactor", "1"])
        assert code == 1  # refused: it could not run
        assert "vehicle or test box" in capsys.readouterr().err
