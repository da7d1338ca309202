"""One offered current per connector: own limits, fair shares of the budgets, the binding one."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evse_daemon.limits import ConnectorLimits, offered_currents, thermal_derating_a
from tests.harness import bench


def test_the_lowest_own_limit_binds() -> None:
    decisions = offered_currents(
        {1: ConnectorLimits(32, cable_a=20, ocpp_a=25, derating_a=None, charging=True)}
    )
    assert decisions[1].limit_a == 20
    assert decisions[1].binding == "cable"
    assert decisions[1].limits == {"rating": 32, "cable": 20, "ocpp": 25}


def test_an_unconstrained_ocpp_limit_is_not_listed() -> None:
    decisions = offered_currents({1: ConnectorLimits(16, ocpp_a=math.inf, charging=True)})
    assert decisions[1].limits == {"rating": 16}
    assert decisions[1].binding == "rating"


def test_two_charging_connectors_share_the_site_limit_equally() -> None:
    connectors = {
        1: ConnectorLimits(32, charging=True, started_order=1),
        2: ConnectorLimits(32, charging=True, started_order=2),
    }
    decisions = offered_currents(connectors, site_max_a=40)
    assert decisions[1].limit_a == decisions[2].limit_a == 20
    assert decisions[1].binding == decisions[2].binding == "site"


def test_what_one_connector_cannot_use_goes_to_the_other() -> None:
    connectors = {
        1: ConnectorLimits(10, charging=True, started_order=1),
        2: ConnectorLimits(32, charging=True, started_order=2),
    }
    decisions = offered_currents(connectors, charge_point_max_a=40)
    assert decisions[1].limit_a == 10
    assert decisions[1].binding == "rating"
    assert decisions[2].limit_a == 30
    assert decisions[2].binding == "charge_point_max"


def test_the_tighter_of_the_two_budgets_binds() -> None:
    connectors = {
        1: ConnectorLimits(32, charging=True, started_order=1),
        2: ConnectorLimits(32, charging=True, started_order=2),
    }
    decisions = offered_currents(connectors, charge_point_max_a=50, site_max_a=30)
    assert decisions[1].limit_a == decisions[2].limit_a == 15
    assert decisions[1].limits["charge_point_max"] == 25


def test_a_budget_too_small_for_two_pauses_the_later_one() -> None:
    connectors = {
        1: ConnectorLimits(32, charging=True, started_order=2),
        2: ConnectorLimits(32, charging=True, started_order=1),
    }
    decisions = offered_currents(connectors, site_max_a=10)
    assert decisions[2].limit_a == 10  # started first: keeps charging
    assert decisions[1].limit_a == 0  # started later: paused rather than both at 5 A


def test_a_connector_not_charging_sees_the_whole_budget() -> None:
    connectors = {
        1: ConnectorLimits(32, charging=True, started_order=1),
        2: ConnectorLimits(32, charging=False),
    }
    decisions = offered_currents(connectors, site_max_a=20)
    assert decisions[1].limit_a == 20
    assert decisions[2].limit_a == 20  # when it starts, the shares are recomputed


def test_a_connector_paused_by_its_own_limit_takes_no_share() -> None:
    connectors = {
        1: ConnectorLimits(32, ocpp_a=0, charging=True, started_order=1),
        2: ConnectorLimits(32, charging=True, started_order=2),
    }
    decisions = offered_currents(connectors, site_max_a=20)
    assert decisions[1].limit_a == 0
    assert decisions[2].limit_a == 20


@settings(max_examples=300, deadline=None)
@given(
    ratings=st.lists(st.floats(0, 80), min_size=1, max_size=4),
    charging=st.lists(st.booleans(), min_size=4, max_size=4),
    budget=st.floats(0, 200),
)
def test_shares_never_exceed_the_budget_nor_any_own_limit(
    ratings: list[float], charging: list[bool], budget: float
) -> None:
    connectors = {
        i + 1: ConnectorLimits(r, charging=charging[i], started_order=i)
        for i, r in enumerate(ratings)
    }
    decisions = offered_currents(connectors, site_max_a=budget)
    drawing = [
        d.limit_a for cid, d in decisions.items() if connectors[cid].charging and d.limit_a >= 6
    ]
    assert sum(drawing) <= budget + 1e-9
    for cid, decision in decisions.items():
        assert decision.limit_a <= connectors[cid].rating_a
        assert decision.limit_a == pytest.approx(min(decision.limits.values()))
        assert decision.limits[decision.binding] == decision.limit_a


def test_thermal_derating_is_linear_over_the_last_ten_degrees() -> None:
    assert thermal_derating_a(70.0, 80.0, 32.0) is None  # at the start of the span: none
    assert thermal_derating_a(75.0, 80.0, 32.0) == 19.0  # halfway: 32 - 26/2
    assert thermal_derating_a(80.0, 80.0, 32.0) == 6.0
    assert thermal_derating_a(90.0, 80.0, 32.0) == 6.0  # (the overtemp fault stops it anyway)
    assert thermal_derating_a(71.0, 80.0, 16.0) == 15.0  # 16 - 10 × 0.1 = 15.0


async def test_a_hot_connector_is_derated_and_recovers(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        assert b.ev(1).snapshot()["offered_a"] == pytest.approx(32.0, abs=0.01)
        b.ev(1).set_temperature(75.0)  # max_temperature_c is 80 by default
        await b.wait_until(
            lambda: b.ev(1).snapshot()["offered_a"] == pytest.approx(19.0, abs=0.01),
            what="derated offer",
        )
        status = b.app.status()["connectors"][0]
        assert (status["limit_a"], status["limit_binding"]) == (19.0, "derating")
        assert status["status"] == "Charging"  # derated, not stopped
        b.ev(1).set_temperature(None)
        await b.wait_until(
            lambda: b.ev(1).snapshot()["offered_a"] == pytest.approx(32.0, abs=0.01),
            what="full offer again",
        )
        assert b.app.status()["connectors"][0]["limit_binding"] == "rating"


async def test_the_contactor_opens_before_the_limits_are_worked_out(tmp_path: Path) -> None:
    """C→B changes the status, so the limits are recomputed in the same step: the safety
    output must not wait behind that work (profiles, the proximity input)."""
    async with bench(tmp_path) as b:
        await b.booted()
        await b.start_charging(1, "TAG-OK")
        await b.wait_until(lambda: b.ev(1).snapshot()["contactor_commanded"], what="closed")
        seen_closed: list[bool] = []
        compute = b.app._limit_actions

        def recording() -> list[Any]:
            seen_closed.append(b.ev(1).snapshot()["contactor_commanded"])
            return compute()

        b.app._limit_actions = recording  # type: ignore[method-assign]
        b.ev(1).set_ev_state("B")
        await b.wait_until(lambda: bool(seen_closed), what="limits recomputed")
        assert seen_closed[0] is False
