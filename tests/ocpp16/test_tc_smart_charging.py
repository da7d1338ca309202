"""OCA OCPP 1.6 compliance test cases (charge point side) of the Smart Charging profile
(TC_056, TC_057, TC_058_1, TC_058_2, TC_059, TC_060, TC_066, TC_067, TC_072, TC_082), then the
rules and limits behind them: the SmartCharging keys and the profiles refused, a RemoteStart
profile confined to its transaction, a connector-0 TxDefaultProfile, W to A conversion, a limit
that drops below the IEC 61851 minimum during a session and comes back, two connectors sharing
a ChargePointMaxProfile or a site limit, and profiles across a restart.

Each TC test follows the scenario and the tool validations of its test case in the OCA test
case document as republished by ocpplab.com (tc-0NN-cs). The pages of TC_058_1, TC_059,
TC_060, TC_066, TC_067 and TC_072 were read (those of TC_066, TC_067 and TC_072 only in part:
their first profiles and steps); the CS pages of TC_056, TC_057, TC_058_2 and TC_082 could not
be retrieved. TC_056/TC_057/TC_082 follow their CSMS twins (a profile set, then Charging and
the composite schedule that proves it), TC_058_2 follows TC_058_1 with a transaction running.
Where a page was cut, the remaining profiles and expected composites are worked out from
OCPP 1.6 §3.13 (see the comments). Profiles start on a whole second ("now" rounded down) and
every composite schedule is checked from the scheduleStart the charger reports, so that the
tests never depend on the date or on a second boundary falling between two requests.

Beyond the OCA validations every test checks the effect at the hardware: the PWM duty cycle
the mock EV sees (IEC 61851-1: duty % = amps / 0.6 from 6 to 51 A), so a profile that is
accepted but not applied fails.
"""

from __future__ import annotations

import contextlib
import time
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from tests.harness import (
    RATING_A,
    Bench,
    Periods,
    bench,
    charging_profile,
    config_value,
    set_charging_profile,
)

# The harness's connectors: RATING_A, three phases, 230 V nominal.
VOLTAGE_V = 230.0
# The OCA tool's <Configured max time deviation> between scheduleStart and the request.
MAX_TIME_DEVIATION_S = 5.0


# --- helpers ----------------------------------------------------------------------------------


def _now() -> datetime:
    """Now, rounded down to the whole second (period boundaries then fall on whole seconds)."""
    return datetime.now(UTC).replace(microsecond=0)


def _parse(value: str) -> datetime:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, f"dateTime {value!r} has no time zone"
    return moment.astimezone(UTC)


async def _clear(b: Bench, **fields: Any) -> str:
    result = await b.csms.call(call.ClearChargingProfile(**fields))
    return str(result.status)


def _merged(periods: Periods) -> list[tuple[int, float]]:
    """Adjacent periods with the same limit as one (the limit over time is what counts)."""
    out: list[tuple[int, float]] = []
    for start_period, limit in periods:
        if not out or out[-1][1] != limit:
            out.append((start_period, limit))
    return out


def _seen_from(nominal: Periods, offset_s: int, duration_s: int) -> list[tuple[int, float]]:
    """The composite periods expected over ``duration_s`` from ``offset_s`` seconds after the
    instant that ``nominal`` (startPeriod, limit) counts from."""
    expected: list[tuple[int, float]] = []
    ends: list[int | None] = [s for s, _ in nominal[1:]]
    ends.append(None)
    for (start_period, limit), end in zip(nominal, ends, strict=True):
        if end is not None and end <= offset_s:
            continue  # over before the composite starts
        begin = max(0, start_period - offset_s)
        if begin >= duration_s:
            break
        expected.append((begin, limit))
    return _merged(expected)


async def _composite(
    b: Bench, connector_id: int, duration_s: int, unit: str = "A"
) -> tuple[datetime, list[tuple[int, float]]]:
    """GetCompositeSchedule, with the tool validations of TC_059/TC_066 on the answer:
    Accepted, connectorId, duration, chargingRateUnit, scheduleStart within the max time
    deviation of the request, no startSchedule inside the chargingSchedule (scheduleStart
    carries it). Returns scheduleStart and the (startPeriod, limit) pairs."""
    sent_at = datetime.now(UTC)
    result = await b.csms.call(
        call.GetCompositeSchedule(
            connector_id=connector_id, duration=duration_s, charging_rate_unit=unit
        )
    )
    assert result.status == "Accepted"
    assert result.connector_id == connector_id
    assert result.schedule_start is not None, "an Accepted composite schedule needs its start"
    schedule_start = _parse(result.schedule_start)
    assert abs((schedule_start - sent_at).total_seconds()) <= MAX_TIME_DEVIATION_S
    schedule = result.charging_schedule
    assert schedule is not None
    assert schedule["duration"] == duration_s
    assert schedule["charging_rate_unit"] == unit
    assert "start_schedule" not in schedule, schedule
    periods = [(p["start_period"], float(p["limit"])) for p in schedule["charging_schedule_period"]]
    assert periods and periods[0][0] == 0, periods
    assert all(a[0] < b_[0] for a, b_ in pairwise(periods)), periods
    return schedule_start, _merged(periods)


async def _check_composite(
    b: Bench,
    connector_id: int,
    duration_s: int,
    start: datetime,
    nominal: Periods,
    unit: str = "A",
) -> None:
    """The composite schedule is ``nominal`` (counted from ``start``, a whole second), as seen
    from the scheduleStart the charger reports."""
    schedule_start, periods = await _composite(b, connector_id, duration_s, unit)
    offset_s = round((schedule_start - start).total_seconds())
    assert 0 <= offset_s <= MAX_TIME_DEVIATION_S, (schedule_start, start)
    assert periods == _seen_from(nominal, offset_s, duration_s), (offset_s, periods)


def _duty(amps: float) -> float:
    """IEC 61851-1: the PWM duty cycle that offers ``amps`` (6 to 51 A)."""
    assert 6.0 <= amps <= 51.0
    return amps / 0.6


async def _offered(b: Bench, connector_id: int, amps: float, timeout_s: float = 3.0) -> None:
    """Wait until the EV on the connector sees a PWM that offers ``amps``."""

    def offering() -> bool:
        snap = b.ev(connector_id).snapshot()
        return bool(
            snap["pilot_output"] == "pwm" and abs(snap["duty_percent"] - _duty(amps)) < 0.01
        )

    with contextlib.suppress(TimeoutError):
        await b.wait_until(offering, timeout_s, what=f"{amps} A offered")
    snap = b.ev(connector_id).snapshot()
    assert (snap["pilot_output"], round(snap["duty_percent"], 2)) == (
        "pwm",
        round(_duty(amps), 2),
    ), f"connector {connector_id} should offer {amps} A; the EV sees {snap}"
    assert snap["offered_a"] == pytest.approx(amps, abs=0.01)


async def _charging_at(b: Bench, connector_id: int, amps: float) -> None:
    """The EV is offered ``amps`` and draws them, on every phase, through a closed contactor."""
    await _offered(b, connector_id, amps)
    snap = b.ev(connector_id).snapshot()
    assert snap["contactor_commanded"] is True
    assert snap["current_a"] == pytest.approx([amps] * 3, abs=0.01)
    assert b.app.limit_decisions[connector_id].limit_a == pytest.approx(amps, abs=0.01)


def _pwm_offers_a(b: Bench, connector_id: int, since: int) -> list[float]:
    """The currents the pilot offered with PWM from its ``since``-th command on, rounded to
    0.1 A, repeated offers merged."""
    offers: list[float] = []
    for _, output, duty in b.ev(connector_id).pilot.history[since:]:
        if output == "pwm":
            amps = round(0.6 * duty, 1)
            if not offers or offers[-1] != amps:
                offers.append(amps)
    return offers


def _connector_status(b: Bench, connector_id: int) -> dict[str, Any]:
    for connector in b.app.status()["connectors"]:
        if connector["id"] == connector_id:
            return dict(connector)
    raise AssertionError(f"no connector {connector_id} in the status")


# --- OCA test cases ---------------------------------------------------------------------------


async def test_TC_056_central_smart_charging_tx_default_profile(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        start = _now()
        nominal = [(0, 6.0), (60, 10.0), (120, 8.0), (300, RATING_A)]
        # 1-2. SetChargingProfile: a TxDefaultProfile for the connector, no transaction yet.
        profile = charging_profile(
            1,
            "TxDefaultProfile",
            nominal[:-1],
            start=start,
            duration=300,
            valid_from=start,
            valid_to=start + timedelta(days=3),
        )
        assert await set_charging_profile(b, 1, profile) == "Accepted"
        # Installed, waiting for a transaction: nothing is offered without one.
        assert b.app.limit_decisions[1].limit_a == 6.0
        assert b.app.limit_decisions[1].binding == "ocpp"
        assert b.ev(1).snapshot()["pilot_output"] == "steady"
        # Reusable state Charging: the new transaction follows the default schedule.
        await b.start_charging(1, "TAG-OK")
        await _charging_at(b, 1, 6.0)
        # GetCompositeSchedule: the profile's periods, then the rating once it ends.
        await _check_composite(b, 1, 300, start, nominal)


async def test_TC_057_central_smart_charging_tx_profile(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        await _charging_at(b, 1, RATING_A)  # nothing limits it yet
        start = _now()
        nominal = [(0, 10.0), (60, 16.0), (120, 8.0), (260, RATING_A)]
        # 1-2. SetChargingProfile: a TxProfile for the running transaction: Accepted.
        profile = charging_profile(
            3,
            "TxProfile",
            nominal[:-1],
            transaction_id=tx,
            start=start,
            duration=260,
            valid_from=start,
            valid_to=start + timedelta(days=3),
        )
        assert await set_charging_profile(b, 1, profile) == "Accepted"
        # Applied at once to the running transaction.
        await _charging_at(b, 1, 10.0)
        await _check_composite(b, 1, 300, start, nominal)


async def test_TC_058_1_tx_profile_without_ongoing_transaction(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        start = _now()
        # 1-2. SetChargingProfile: a TxProfile (with a transactionId) while no transaction
        # runs: Rejected, or CALLERROR PropertyConstraintViolation. Its transactionId is the
        # one the CSMS hands out next, so a profile kept anyway would catch that transaction.
        profile = charging_profile(
            3, "TxProfile", [(0, 6.0)], transaction_id=1, start=start, duration=3600
        )
        assert await set_charging_profile(b, 1, profile) in (
            "Rejected",
            "PropertyConstraintViolation",
        )
        # The charge point rejects it: nothing is installed, nothing limits the next session.
        assert await _clear(b) == "Unknown"
        await _check_composite(b, 1, 60, start, [(0, RATING_A)])
        tx = await b.start_charging(1, "TAG-OK")
        assert tx == 1
        await _charging_at(b, 1, RATING_A)


async def test_TC_058_2_tx_profile_with_wrong_transaction_id(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        start = _now()
        mark = b.csms.mark()
        # 1-2. SetChargingProfile: a TxProfile for a transaction that is not the one running:
        # Rejected, or CALLERROR PropertyConstraintViolation.
        profile = charging_profile(
            3, "TxProfile", [(0, 6.0)], transaction_id=tx + 1000, start=start, duration=3600
        )
        assert await set_charging_profile(b, 1, profile) in (
            "Rejected",
            "PropertyConstraintViolation",
        )
        await b.barrier()
        # The running transaction goes on, unlimited.
        assert "StopTransaction" not in b.actions(mark)
        await _charging_at(b, 1, RATING_A)
        await _check_composite(b, 1, 60, start, [(0, RATING_A)])
        assert await _clear(b, id=3) == "Unknown"


@pytest.mark.parametrize("order", ["cable_first", "remote_start_first"])
async def test_TC_059_remote_start_transaction_with_charging_profile(
    tmp_path: Path, order: str
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        # 1. Charging with a ChargingProfile with purpose TxProfile: a RemoteStartTransaction
        # carrying the profile (no transactionId: none exists yet), with the cable plugged in
        # before it (as in TC_010) or after it (as in TC_011_1).
        if order == "cable_first":
            b.ev(1).plug()
            await b.wait_status(1, "Preparing", after=mark)
        pilot_commands = len(b.ev(1).pilot.history)
        start = _now()
        nominal = [(0, 8.0), (120, 13.0), (300, RATING_A)]
        profile = charging_profile(
            1,
            "TxProfile",
            nominal[:-1],
            start=start,
            duration=300,
            valid_from=start,
            valid_to=start + timedelta(days=3),
        )
        result = await b.csms.call(
            call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1, charging_profile=profile)
        )
        assert result.status == "Accepted"
        if order == "remote_start_first":
            await b.wait_status(1, "Preparing", after=mark)
            b.ev(1).plug()
        started = await b.csms.wait_for("StartTransaction", after=mark)
        assert started.payload["connectorId"] == 1
        await b.wait_status(1, "Charging", after=mark)
        # The transaction follows the profile...
        await _charging_at(b, 1, 8.0)
        # 2-3. GetCompositeSchedule for the connector: the profile's periods, calculated.
        await _check_composite(b, 1, 300, start, nominal)
        # ...from the very first PWM offer of the session on.
        assert _pwm_offers_a(b, 1, pilot_commands) == [8.0]


async def test_remote_start_profile_belongs_to_the_transaction_it_starts(tmp_path: Path) -> None:
    """The chargingProfile of a RemoteStartTransaction limits that transaction, ends with it,
    and never reaches a later transaction (of the same idTag) started without one."""
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=mark)
        profile = charging_profile(1, "TxProfile", [(0, 8.0)], kind="Relative")
        result = await b.csms.call(
            call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1, charging_profile=profile)
        )
        assert result.status == "Accepted"
        await b.wait_status(1, "Charging", after=mark)
        tx = max(b.csms.transaction_ids)
        await _charging_at(b, 1, 8.0)
        # The transaction ends: the profile with it.
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        assert result.status == "Accepted"
        await b.wait_status(1, "Finishing", after=mark)
        b.ev(1).unplug()
        await b.wait_status(1, "Available", after=mark)
        assert await _clear(b, id=1) == "Unknown"
        # The next remote start for the same idTag carries no profile: nothing limits it.
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStartTransaction(id_tag="TAG-OK", connector_id=1))
        assert result.status == "Accepted"
        await b.wait_status(1, "Preparing", after=mark)
        b.ev(1).plug()
        await b.wait_status(1, "Charging", after=mark)
        await _charging_at(b, 1, RATING_A)


@pytest.mark.parametrize("purpose", ["TxDefaultProfile", "ChargePointMaxProfile"])
async def test_TC_060_remote_start_transaction_with_charging_profile_rejected(
    tmp_path: Path, purpose: str
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        # The cable is in: a wrongly accepted remote start would start a transaction at once.
        b.ev(1).plug()
        await b.wait_status(1, "Preparing", after=mark)
        start = _now()
        profile = charging_profile(1, purpose, [(0, 6.0)], start=start, duration=3600)
        # 1-2. RemoteStartTransaction whose chargingProfile is not a TxProfile: Rejected, or
        # CALLERROR PropertyConstraintViolation.
        try:
            result = await b.csms.call(
                call.RemoteStartTransaction(
                    id_tag="TAG-OK", connector_id=1, charging_profile=profile
                )
            )
            outcome = str(result.status)
        except OCPPError as exc:
            outcome = str(exc.code)
        assert outcome in ("Rejected", "PropertyConstraintViolation")
        await b.barrier()
        # No transaction, no energy, and the profile was not installed under its purpose.
        assert "StartTransaction" not in b.actions(mark)
        assert "Authorize" not in b.actions(mark)
        assert b.statuses(1, after=mark) == ["Preparing"]
        snap = b.ev(1).snapshot()
        assert (snap["pilot_output"], snap["contactor_commanded"]) == ("steady", False)
        assert await _clear(b) == "Unknown"
        await _check_composite(b, 1, 60, start, [(0, RATING_A)])
        # A session started locally now is not limited by it.
        b.swipe("TAG-OK")
        await b.wait_status(1, "Charging", after=mark)
        await _charging_at(b, 1, RATING_A)


async def test_TC_066_get_composite_schedule(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        # Prerequisites: room for 3 profiles of 5 periods.
        got = await b.csms.call(
            call.GetConfiguration(
                key=["MaxChargingProfilesInstalled", "ChargingScheduleMaxPeriods"]
            )
        )
        assert int(config_value(got, "MaxChargingProfilesInstalled") or 0) >= 3
        assert int(config_value(got, "ChargingScheduleMaxPeriods") or 0) >= 5
        tx = await b.start_charging(1, "TAG-OK")
        start = _now()
        valid_to = start + timedelta(days=3)
        # Memory state: ChargingProfile 1, the charge point's maximum (connector 0), 10 A
        # for a day. (The page's other two profiles were cut off: a TxDefaultProfile and a
        # TxProfile of 5 periods each, stackLevel 0, both Absolute from now, with the values
        # EVerest's OCTT-derived suite uses for this case.)
        cp_max = charging_profile(
            1,
            "ChargePointMaxProfile",
            [(0, 10.0)],
            start=start,
            duration=86400,
            valid_from=start,
            valid_to=valid_to,
        )
        tx_default = charging_profile(
            2,
            "TxDefaultProfile",
            [(0, 6.0), (60, 10.0), (120, 8.0), (180, 25.0), (260, 8.0)],
            start=start,
            duration=300,
            valid_from=start,
            valid_to=valid_to,
        )
        tx_profile = charging_profile(
            3,
            "TxProfile",
            [(0, 8.0), (50, 11.0), (140, 16.0), (200, 6.0), (240, 12.0)],
            transaction_id=tx,
            start=start,
            duration=260,
            valid_from=start,
            valid_to=valid_to,
        )
        assert await set_charging_profile(b, 0, cp_max) == "Accepted"
        assert await set_charging_profile(b, 1, tx_default) == "Accepted"
        assert await set_charging_profile(b, 1, tx_profile) == "Accepted"
        # The TxProfile rules the transaction, under the charge point's 10 A.
        await _charging_at(b, 1, 8.0)
        # 1-2. GetCompositeSchedule, 400 s: the minimum of the ChargePointMaxProfile and of
        # the TxProfile while it lasts (260 s), then of the TxDefaultProfile (until 300 s),
        # then the ChargePointMaxProfile alone.
        await _check_composite(
            b,
            1,
            400,
            start,
            [(0, 8.0), (50, 10.0), (200, 6.0), (240, 10.0), (260, 8.0), (300, 10.0)],
        )
        # An unknown connector: Rejected.
        result = await b.csms.call(call.GetCompositeSchedule(connector_id=9, duration=400))
        assert result.status == "Rejected"


async def test_TC_067_clear_charging_profile(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")
        start = _now()
        # Memory state: ChargingProfile 1, a TxDefaultProfile of stackLevel 1 (from the page);
        # then a ChargePointMaxProfile and a TxProfile, so that each clear has a visible effect.
        tx_default = [(0, 6.0), (60, 8.0), (200, 10.0)]
        assert (
            await set_charging_profile(
                b,
                1,
                charging_profile(
                    1, "TxDefaultProfile", tx_default, stack_level=1, start=start, duration=400
                ),
            )
            == "Accepted"
        )
        assert (
            await set_charging_profile(
                b, 0, charging_profile(2, "ChargePointMaxProfile", [(0, 16.0)], start=start)
            )
            == "Accepted"
        )
        assert (
            await set_charging_profile(
                b, 1, charging_profile(3, "TxProfile", [(0, 12.0)], transaction_id=tx, start=start)
            )
            == "Accepted"
        )
        await _charging_at(b, 1, 12.0)  # the TxProfile, under the 16 A maximum
        # 1-2. ClearChargingProfile by id (the TxProfile): Accepted.
        assert await _clear(b, id=3) == "Accepted"
        # 3-4. GetCompositeSchedule: the TxDefaultProfile rules again, then the maximum.
        await _check_composite(b, 1, 400, start, [*tx_default, (400, 16.0)])
        await _charging_at(b, 1, 6.0)
        # Criteria that match nothing (the maximum is on connector 0): Unknown, none cleared.
        assert await _clear(
            b, connector_id=1, charging_profile_purpose="ChargePointMaxProfile"
        ) == ("Unknown")
        await _charging_at(b, 1, 6.0)
        # 5-6. ClearChargingProfile by criteria (connector, purpose, stackLevel): Accepted.
        assert (
            await _clear(
                b, connector_id=1, charging_profile_purpose="TxDefaultProfile", stack_level=1
            )
            == "Accepted"
        )
        # 7-8. GetCompositeSchedule: the ChargePointMaxProfile alone.
        await _check_composite(b, 1, 400, start, [(0, 16.0)])
        await _charging_at(b, 1, 16.0)
        # 9-10. ClearChargingProfile with no field: every remaining profile: Accepted.
        assert await _clear(b) == "Accepted"
        # 11-12. GetCompositeSchedule: nothing limits the connector but its rating.
        await _check_composite(b, 1, 400, start, [(0, RATING_A)])
        await _charging_at(b, 1, RATING_A)
        # Nothing left to clear.
        assert await _clear(b, id=3) == "Unknown"
        assert await _clear(b) == "Unknown"


async def test_TC_072_stacking_charging_profiles(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        got = await b.csms.call(
            call.GetConfiguration(
                key=["MaxChargingProfilesInstalled", "ChargeProfileMaxStackLevel"]
            )
        )
        assert int(config_value(got, "MaxChargingProfilesInstalled") or 0) >= 3
        assert int(config_value(got, "ChargeProfileMaxStackLevel") or 0) >= 2
        start = _now()
        valid_to = start + timedelta(seconds=MAX_TIME_DEVIATION_S + 401)
        # Memory state: two TxDefaultProfiles of the connector, stackLevel 0 for 400 s and
        # stackLevel 1 for 150 s (the page was cut in profile 2: its limits, 7 A then 9 A
        # from 100 s, are ours).
        low = charging_profile(
            1,
            "TxDefaultProfile",
            [(0, 6.0), (100, 8.0), (200, 10.0)],
            stack_level=0,
            start=start,
            duration=400,
            valid_from=start,
            valid_to=valid_to,
        )
        high = charging_profile(
            2,
            "TxDefaultProfile",
            [(0, 7.0), (100, 9.0)],
            stack_level=1,
            start=start,
            duration=150,
            valid_from=start,
            valid_to=valid_to,
        )
        assert await set_charging_profile(b, 1, low) == "Accepted"
        assert await set_charging_profile(b, 1, high) == "Accepted"
        await b.start_charging(1, "TAG-OK")
        # The higher stack level rules while it lasts...
        await _charging_at(b, 1, 7.0)
        # 1-2. GetCompositeSchedule, 350 s: ...then the lower one applies again.
        await _check_composite(b, 1, 350, start, [(0, 7.0), (100, 9.0), (150, 8.0), (200, 10.0)])
        # A third, higher stack level valid for two seconds only: it rules at once, and the
        # stack falls back to level 1 when its validTo passes.
        brief = charging_profile(
            3,
            "TxDefaultProfile",
            [(0, 12.0)],
            stack_level=2,
            start=start,
            valid_from=start,
            valid_to=datetime.now(UTC) + timedelta(seconds=2),
        )
        assert await set_charging_profile(b, 1, brief) == "Accepted"
        await _charging_at(b, 1, 12.0)
        await _offered(b, 1, 7.0, timeout_s=6.0)
        await _charging_at(b, 1, 7.0)


async def test_TC_082_tx_default_profile_with_ongoing_transaction(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")  # reusable state Charging
        await _charging_at(b, 1, RATING_A)
        start = _now()
        nominal = [(0, 6.0), (60, 10.0), (120, 8.0), (300, RATING_A)]
        # 1-2. SetChargingProfile: a TxDefaultProfile while the transaction runs: Accepted.
        profile = charging_profile(
            3,
            "TxDefaultProfile",
            nominal[:-1],
            start=start,
            duration=300,
            valid_from=start,
            valid_to=start + timedelta(days=3),
        )
        assert await set_charging_profile(b, 1, profile) == "Accepted"
        # It applies at once to the running transaction, which has no profile of its own.
        await _charging_at(b, 1, 6.0)
        # 3-4. GetCompositeSchedule: the new default.
        await _check_composite(b, 1, 300, start, nominal)
        # Deleting it leaves the transaction unconstrained again.
        assert await _clear(b, id=3) == "Accepted"
        await _charging_at(b, 1, RATING_A)
        assert _connector_status(b, 1)["transaction"]["id"] == tx


# --- beyond the OCA cases ---------------------------------------------------------------------


async def test_smart_charging_configuration_and_refusals(tmp_path: Path) -> None:
    """The SmartCharging keys, and the requests the charger refuses without keeping anything."""
    async with bench(tmp_path) as b:
        await b.booted()
        keys = [
            "SupportedFeatureProfiles",
            "ChargeProfileMaxStackLevel",
            "ChargingScheduleAllowedChargingRateUnit",
            "ChargingScheduleMaxPeriods",
            "MaxChargingProfilesInstalled",
        ]
        got = await b.csms.call(call.GetConfiguration(key=keys))
        profiles = (config_value(got, "SupportedFeatureProfiles") or "").split(",")
        assert "SmartCharging" in profiles
        assert config_value(got, "ChargeProfileMaxStackLevel") == "8"
        assert config_value(got, "ChargingScheduleAllowedChargingRateUnit") == "Current,Power"
        assert config_value(got, "ChargingScheduleMaxPeriods") == "24"
        assert config_value(got, "MaxChargingProfilesInstalled") == "32"
        start = _now()
        limit = [(0, 6.0)]
        # An unknown connector: CALLERROR PropertyConstraintViolation.
        unknown = charging_profile(1, "TxDefaultProfile", limit, start=start)
        assert await set_charging_profile(b, 9, unknown) == "PropertyConstraintViolation"
        refused = [
            (0, charging_profile(2, "TxProfile", limit, start=start)),  # TxProfile on connector 0
            (
                1,
                charging_profile(3, "ChargePointMaxProfile", limit, start=start),
            ),  # not connector 0
            (1, charging_profile(4, "TxDefaultProfile", limit, stack_level=9, start=start)),
            (
                1,
                charging_profile(
                    5, "TxDefaultProfile", [(i * 60, 6.0) for i in range(25)], start=start
                ),
            ),
        ]
        for connector_id, profile in refused:
            outcome = await set_charging_profile(b, connector_id, profile)
            assert outcome in ("Rejected", "PropertyConstraintViolation"), profile
        # None of them was kept.
        assert await _clear(b) == "Unknown"
        b.ev(1).plug()
        b.swipe("TAG-OK")
        await b.wait_status(1, "Charging")
        await _charging_at(b, 1, RATING_A)


async def test_power_limit_is_converted_to_amps_per_phase(tmp_path: Path) -> None:
    """A profile in W limits each phase to W / (230 V × numberPhases), numberPhases 3 when
    absent; what exceeds the connector's rating is capped by it."""
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        start = _now()
        # 11040 W over three phases of 230 V: 16 A per phase.
        three_phase = charging_profile(
            1, "TxDefaultProfile", [(0, 11040.0)], kind="Relative", unit="W"
        )
        assert await set_charging_profile(b, 1, three_phase) == "Accepted"
        await _charging_at(b, 1, 16.0)
        await _check_composite(b, 1, 60, start, [(0, 16.0)])
        await _check_composite(b, 1, 60, start, [(0, 11040.0)], unit="W")
        # The same profile (same id: it replaces the first) on one phase: 48 A, more than the
        # connector's 32 A rating, which binds.
        one_phase = charging_profile(
            1, "TxDefaultProfile", [(0, 11040.0)], kind="Relative", unit="W", number_phases=1
        )
        assert await set_charging_profile(b, 1, one_phase) == "Accepted"
        await _charging_at(b, 1, RATING_A)
        status = _connector_status(b, 1)
        assert status["limit_binding"] == "rating"
        assert status["limits_a"]["ocpp"] == pytest.approx(48.0)
        await _check_composite(b, 1, 60, start, [(0, RATING_A)])


async def test_limit_below_minimum_suspends_and_resumes_the_session(tmp_path: Path) -> None:
    """A period under 6 A stops the PWM (x1): SuspendedEVSE, the EV goes to B and the
    contactor opens; the next period brings PWM and Charging back, in the same transaction."""
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")
        mark = b.csms.mark()
        start = datetime.now(UTC)
        started = time.monotonic()
        profile = charging_profile(
            1, "TxProfile", [(0, 10.0), (2, 0.0), (4, 16.0)], transaction_id=tx, start=start
        )
        assert await set_charging_profile(b, 1, profile) == "Accepted"
        await _charging_at(b, 1, 10.0)
        # 2 s: 0 A. SuspendedEVSE, the pilot steady at +12 V with no PWM...
        suspended = await b.wait_status(1, "SuspendedEVSE", after=mark)
        # Not before its period (lower bounds only: a loaded machine only makes it later).
        assert suspended.received_at - started >= 1.5
        await b.wait_until(lambda: b.ev(1).snapshot()["pilot_output"] == "steady", what="PWM off")
        snap = b.ev(1).snapshot()
        assert snap["offered_a"] == 0.0
        # ...so the EV goes back to B and the contactor opens.
        await b.wait_until(
            lambda: b.ev(1).snapshot()["contactor_commanded"] is False, what="contactor open"
        )
        snap = b.ev(1).snapshot()
        assert (snap["ev_state"], snap["power_w"]) == ("B", 0.0)
        assert _connector_status(b, 1)["limit_a"] == 0.0
        # 4 s: 16 A. PWM again, the EV asks for energy, Charging.
        resumed = await b.wait_status(1, "Charging", after=mark)
        assert resumed.received_at - started >= 3.5  # not before its period
        await _charging_at(b, 1, 16.0)
        # (SuspendedEV in between, if at all: PWM is back and the EV has not yet gone to C.)
        assert b.statuses(1, after=mark) in (
            ["SuspendedEVSE", "Charging"],
            ["SuspendedEVSE", "SuspendedEV", "Charging"],
        )
        assert "StopTransaction" not in b.actions(mark)
        assert _connector_status(b, 1)["transaction"]["id"] == tx


async def test_tx_default_profile_of_connector_0_applies_to_every_connector(
    tmp_path: Path,
) -> None:
    """A TxDefaultProfile on connector 0 is every connector's default; one on a connector
    replaces it for that connector only."""
    async with bench(tmp_path, connectors=2) as b:
        await b.booted()
        start = _now()
        assert await set_charging_profile(
            b, 0, charging_profile(1, "TxDefaultProfile", [(0, 10.0)], start=start)
        ) == ("Accepted")
        assert await set_charging_profile(
            b, 2, charging_profile(2, "TxDefaultProfile", [(0, 8.0)], start=start)
        ) == ("Accepted")
        await b.start_charging(1, "TAG-1")
        await b.start_charging(2, "TAG-2")
        await _charging_at(b, 1, 10.0)
        await _charging_at(b, 2, 8.0)
        assert await _clear(b, id=2) == "Accepted"
        await _charging_at(b, 2, 10.0)
        await _charging_at(b, 1, 10.0)


@pytest.mark.parametrize("budget", ["charge_point_max", "site"])
async def test_connectors_share_a_budget_fairly(tmp_path: Path, budget: str) -> None:
    """20 A for the charge point (a ChargePointMaxProfile, or the config's site limit):
    one connector charging gets it all, two get 10 A each, and when one stops the other
    gets it all again."""
    if budget == "site":
        context = bench(tmp_path, site_max_a=20.0, connectors=2)
    else:
        context = bench(tmp_path, connectors=2)
    async with context as b:
        await b.booted()
        if budget == "charge_point_max":
            cp_max = charging_profile(1, "ChargePointMaxProfile", [(0, 20.0)], start=_now())
            assert await set_charging_profile(b, 0, cp_max) == "Accepted"
        await b.start_charging(1, "TAG-1")
        await _charging_at(b, 1, 20.0)
        assert b.app.limit_decisions[1].binding == budget
        commands = len(b.ev(1).pilot.history), len(b.ev(2).pilot.history)
        tx2 = await b.start_charging(2, "TAG-2")
        await _charging_at(b, 1, 10.0)
        await _charging_at(b, 2, 10.0)
        for connector_id in (1, 2):
            status = _connector_status(b, connector_id)
            assert (status["limit_a"], status["limit_binding"]) == (10.0, budget)
        # Connector 2's session ends: connector 1 gets the whole budget back.
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx2))
        assert result.status == "Accepted"
        await b.wait_status(2, "Finishing", after=mark)
        await _charging_at(b, 1, 20.0)
        snap = b.ev(2).snapshot()
        assert (snap["pilot_output"], snap["contactor_commanded"]) == ("steady", False)
        # The budget held at the pilots all along: connector 2's first offer was its share,
        # not the whole budget on top of connector 1's 20 A.
        assert _pwm_offers_a(b, 2, commands[1]) == [10.0]
        assert _pwm_offers_a(b, 1, commands[0]) == [10.0, 20.0]


async def test_profiles_persist_across_a_restart_but_tx_profiles_end_with_their_transaction(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        tx = await b.start_charging(1, "TAG-OK")
        start = _now()
        assert await set_charging_profile(
            b, 0, charging_profile(1, "ChargePointMaxProfile", [(0, 12.0)], start=start)
        ) == ("Accepted")
        assert await set_charging_profile(
            b, 1, charging_profile(2, "TxDefaultProfile", [(0, 16.0)], start=start)
        ) == ("Accepted")
        tx_profile = charging_profile(3, "TxProfile", [(0, 8.0)], transaction_id=tx, start=start)
        assert await set_charging_profile(b, 1, tx_profile) == "Accepted"
        await _charging_at(b, 1, 8.0)
        # The transaction ends: its TxProfile with it.
        mark = b.csms.mark()
        result = await b.csms.call(call.RemoteStopTransaction(transaction_id=tx))
        assert result.status == "Accepted"
        await b.wait_status(1, "Finishing", after=mark)
        b.ev(1).unplug()
        await b.wait_status(1, "Available", after=mark)
        assert await _clear(b, id=3) == "Unknown"
        await _check_composite(b, 1, 60, start, [(0, 12.0)])
        # The daemon restarts: the ChargePointMaxProfile and the TxDefaultProfile are back.
        mark = b.csms.mark()
        await b.restart_app()
        await b.csms.wait_for("BootNotification", after=mark)
        await b.wait_status(1, "Available", after=mark)
        await _check_composite(b, 1, 60, start, [(0, 12.0)])
        await b.start_charging(1, "TAG-OK")
        await _charging_at(b, 1, 12.0)
        assert b.app.limit_decisions[1].binding == "charge_point_max"
        assert await _clear(b, id=1) == "Accepted"
        await _charging_at(b, 1, 16.0)
        assert b.app.limit_decisions[1].binding == "ocpp"
        assert await _clear(b, id=3) == "Unknown"
