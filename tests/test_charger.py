"""The connector state machine alone: events in, actions out, a FakeClock for time.

No asyncio, no sockets: every test feeds ``Charger`` and asserts exactly what ``drain()`` gives.
Expected duty cycles are worked out by hand from IEC 61851-1 (D = I / 0.6 up to 51 A).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.protocols import CpState, MeterReading, PilotOutput, PilotReading
from evse_daemon.charger import (
    Action,
    AuthorizationExpired,
    AvailabilityChanged,
    CardDecision,
    Charger,
    ChargerSettings,
    ConnectorSpec,
    ErrorCode,
    Fault,
    RunRcdSelfTest,
    SetContactor,
    SetLock,
    SetPilot,
    Status,
    StatusChanged,
    StopReason,
    TransactionStarted,
    TransactionStopped,
)
from evse_daemon.clock import FakeClock
from evse_daemon.iec61851 import current_for_duty

T0 = datetime(2026, 1, 1, tzinfo=UTC)

A = PilotReading(CpState.A)
B = PilotReading(CpState.B)
C = PilotReading(CpState.C)
D = PilotReading(CpState.D)
E = PilotReading(CpState.E, diode_ok=False)
F = PilotReading(CpState.F)

DUTY_32A = 160.0 / 3.0  # 32 / 0.6 = 53.33 %
DUTY_16A = 80.0 / 3.0  # 16 / 0.6 = 26.67 %


def make(*specs: ConnectorSpec, **settings: Any) -> tuple[Charger, FakeClock]:
    clock = FakeClock(T0)
    charger = Charger(
        list(specs) or [ConnectorSpec(1, max_current_a=32, phases=3)],
        clock,
        ChargerSettings(**settings),
    )
    charger.start()
    charger.drain()
    return charger, clock


def status(cid: int, st_: Status, at: datetime = T0, **kw: Any) -> StatusChanged:
    code = kw.pop("error_code", ErrorCode.NO_ERROR)
    return StatusChanged(cid, st_, code, at, **kw)


def pwm(actions: Sequence[Action], cid: int = 1) -> list[float]:
    return [
        a.duty_percent
        for a in actions
        if isinstance(a, SetPilot) and a.connector_id == cid and a.output is PilotOutput.PWM
    ]


def statuses(actions: Sequence[Action], cid: int = 1) -> list[Status]:
    return [a.status for a in actions if isinstance(a, StatusChanged) and a.connector_id == cid]


def start_charging(charger: Charger, cid: int = 1, tag: str = "TAG1") -> int:
    """Plug in, authorize, EV asks for energy; returns the local transaction id."""
    charger.on_pilot(cid, B)
    assert charger.on_card(tag) is CardDecision.AUTHORIZE
    assert charger.on_authorized(tag, True) == cid
    actions = charger.drain()
    if SetLock(cid, True) in actions:
        # A socket: no energy before the lock's feedback confirms the cable is locked.
        assert pwm(actions, cid) == []
        charger.on_locked(cid)
    charger.on_pilot(cid, C)
    actions += charger.drain()
    started = [a for a in actions if isinstance(a, TransactionStarted)]
    assert len(started) == 1
    assert SetContactor(cid, True) in actions
    return started[0].local_id


# ---------------------------------------------------------------------------------------
# start-up


def test_start_drives_every_output_once() -> None:
    clock = FakeClock(T0)
    charger = Charger(
        [ConnectorSpec(1, max_current_a=32, phases=3), ConnectorSpec(2, 16, 1)], clock
    )
    charger.start()
    assert charger.drain() == [
        SetContactor(1, False),
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.AVAILABLE),
        SetContactor(2, False),
        SetPilot(2, PilotOutput.STEADY, 0.0),
        status(2, Status.AVAILABLE),
        status(0, Status.AVAILABLE),
    ]
    charger.tick()
    assert charger.drain() == []


# ---------------------------------------------------------------------------------------
# sessions


def test_plug_in_first_session() -> None:
    charger, clock = make()
    charger.on_pilot(1, B)
    assert charger.drain() == [status(1, Status.PREPARING)]

    assert charger.on_card("04A2B3C4") is CardDecision.AUTHORIZE
    assert charger.drain() == []  # nothing happens until the card is authorized
    clock.advance(2)
    t2 = T0 + timedelta(seconds=2)
    assert charger.on_authorized("04A2B3C4", True) == 1
    actions = charger.drain()
    assert actions[0] == TransactionStarted(1, 1, "04A2B3C4", t2, remote=False)
    assert [type(a) for a in actions[1:]] == [SetPilot, StatusChanged]
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    # PWM offered, the EV still in B: it is the EV that has not asked yet.
    assert actions[2] == status(1, Status.SUSPENDED_EV, t2)

    clock.advance(1)
    charger.on_pilot(1, C)
    t3 = T0 + timedelta(seconds=3)
    assert charger.drain() == [SetContactor(1, True), status(1, Status.CHARGING, t3)]
    view = charger.connector(1).view()
    assert view.contactor_closed and view.pilot_output is PilotOutput.PWM
    assert view.transaction_id_tag == "04A2B3C4"

    # State D (ventilation) is charging as well; nothing changes.
    charger.on_pilot(1, D)
    assert charger.drain() == []


def test_identify_first_session() -> None:
    charger, _ = make()
    assert charger.on_card("TAG") is CardDecision.AUTHORIZE
    assert charger.on_authorized("TAG", True) == 1
    assert charger.drain() == [status(1, Status.PREPARING)]
    assert charger.connector(1).view().authorized_id_tag == "TAG"

    charger.on_pilot(1, B)
    actions = charger.drain()
    assert actions[0] == TransactionStarted(1, 1, "TAG", T0, remote=False)
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    assert statuses(actions) == [Status.SUSPENDED_EV]
    charger.on_pilot(1, C)
    assert charger.drain() == [SetContactor(1, True), status(1, Status.CHARGING)]


def test_rejected_card_starts_nothing() -> None:
    charger, _ = make()
    charger.on_pilot(1, B)
    charger.drain()
    assert charger.on_card("BAD") is CardDecision.AUTHORIZE
    assert charger.on_authorized("BAD", False) is None
    assert charger.drain() == []
    assert charger.transaction_on(1) is None


def test_connection_timeout_expires_the_authorization() -> None:
    charger, clock = make(connection_timeout_s=30.0)
    charger.on_authorized("TAG", True)
    assert statuses(charger.drain()) == [Status.PREPARING]

    clock.advance(29.5)
    charger.tick()
    assert charger.drain() == []
    clock.advance(0.5)
    charger.tick()
    t30 = T0 + timedelta(seconds=30)
    assert charger.drain() == [AuthorizationExpired(1, "TAG"), status(1, Status.AVAILABLE, t30)]

    # Plugging in later starts nothing: the authorization is gone.
    charger.on_pilot(1, B)
    assert charger.drain() == [status(1, Status.PREPARING, t30)]
    assert charger.transaction_on(1) is None


def test_connection_timeout_does_not_apply_once_the_ev_is_plugged() -> None:
    charger, clock = make(connection_timeout_s=30.0)
    charger.on_authorized("TAG", True)
    charger.on_pilot(1, B)
    charger.drain()
    clock.advance(100)
    charger.tick()
    assert charger.drain() == []
    assert charger.transaction_on(1) is not None


def test_stop_by_the_same_card() -> None:
    charger, clock = make()
    local_id = start_charging(charger, tag="04a2b3c4")
    clock.advance(60)
    t60 = T0 + timedelta(seconds=60)
    # idTags are case-insensitive: the same card, read in upper case, stops it.
    assert charger.on_card("04A2B3C4") is CardDecision.STOPPED
    assert charger.drain() == [
        TransactionStopped(1, local_id, StopReason.LOCAL, t60, "04A2B3C4"),
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.FINISHING, t60),
    ]
    # The PWM is off; the EV is still in C, so the contactor waits for it to go to B.
    assert charger.connector(1).contactor_closed
    charger.on_pilot(1, B)
    assert charger.drain() == [SetContactor(1, False)]
    charger.on_pilot(1, A)
    assert charger.drain() == [status(1, Status.AVAILABLE, t60)]


def test_another_card_does_not_stop_the_transaction() -> None:
    charger, _ = make()
    start_charging(charger, tag="OWNER")
    # No connector is free for it: not even worth an Authorize.
    assert charger.on_card("STRANGER") is CardDecision.IGNORED
    assert charger.on_authorized("STRANGER", True) is None
    assert charger.drain() == []
    assert charger.transaction_on(1) is not None


def test_remote_start_then_plug_and_remote_stop() -> None:
    charger, _ = make()
    assert charger.remote_start(1, "REMOTE1")
    assert charger.drain() == [status(1, Status.PREPARING)]
    charger.on_pilot(1, B)
    actions = charger.drain()
    assert actions[0] == TransactionStarted(1, 1, "REMOTE1", T0, remote=True)
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    # Busy: a second remote start is rejected.
    assert not charger.remote_start(1, "REMOTE2")
    charger.on_pilot(1, C)
    charger.drain()

    assert charger.stop(1, StopReason.REMOTE)
    actions = charger.drain()
    assert actions[0] == TransactionStopped(1, 1, StopReason.REMOTE, T0, None)
    assert SetPilot(1, PilotOutput.STEADY, 0.0) in actions
    assert not charger.stop(1, StopReason.REMOTE)  # nothing left to stop
    assert charger.drain() == []


def test_remote_start_with_the_ev_already_plugged() -> None:
    charger, _ = make()
    charger.on_pilot(1, B)
    charger.drain()
    assert charger.remote_start(1, "R")
    actions = charger.drain()
    assert actions[0] == TransactionStarted(1, 1, "R", T0, remote=True)
    assert statuses(actions) == [Status.SUSPENDED_EV]


@pytest.mark.parametrize(
    "reason",
    [StopReason.SOFT_RESET, StopReason.HARD_RESET, StopReason.REBOOT, StopReason.POWER_LOSS],
)
def test_stop_all_with_each_reset_reason(reason: StopReason) -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    first = start_charging(charger, 1, "T1")
    second = start_charging(charger, 2, "T2")
    assert (first, second) == (1, 2)
    assert charger.stop_all(reason) == [1, 2]
    actions = charger.drain()
    stops = [a for a in actions if isinstance(a, TransactionStopped)]
    assert stops == [
        TransactionStopped(1, 1, reason, T0, None),
        TransactionStopped(2, 2, reason, T0, None),
    ]
    assert SetPilot(1, PilotOutput.STEADY, 0.0) in actions
    assert SetPilot(2, PilotOutput.STEADY, 0.0) in actions
    assert charger.stop_all(reason) == []


def test_local_ids_count_up_across_sessions() -> None:
    charger, _ = make()
    assert start_charging(charger, tag="X") == 1
    charger.on_pilot(1, A)
    charger.drain()
    assert start_charging(charger, tag="Y") == 2


# ---------------------------------------------------------------------------------------
# the EV pauses, leaves, comes back


def test_ev_pause_opens_the_contactor_at_once() -> None:
    charger, _ = make()
    start_charging(charger)
    charger.on_pilot(1, B)
    assert charger.drain() == [SetContactor(1, False), status(1, Status.SUSPENDED_EV)]
    assert charger.connector(1).pilot_output is PilotOutput.PWM  # still offered
    charger.on_pilot(1, C)
    assert charger.drain() == [SetContactor(1, True), status(1, Status.CHARGING)]


def test_unplug_stops_the_transaction_and_waits_for_the_lock() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_lock=True))
    charger.on_pilot(1, B)
    charger.on_authorized("TAG", True)
    actions = charger.drain()
    assert SetLock(1, True) in actions
    assert pwm(actions) == []  # nothing offered before the lock confirms
    charger.on_locked(1)
    assert pwm(charger.drain()) == [pytest.approx(DUTY_32A)]
    charger.on_pilot(1, C)
    assert SetContactor(1, True) in charger.drain()

    charger.on_pilot(1, A)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)  # the safety output before anything else
    assert actions[1:] == [
        TransactionStopped(1, 1, StopReason.EV_DISCONNECTED, T0, None),
        SetPilot(1, PilotOutput.STEADY, 0.0),
        SetLock(1, False),
        status(1, Status.FINISHING),
    ]
    # The cable is still in the socket until the lock lets it go.
    charger.on_unlocked(1)
    assert charger.drain() == [status(1, Status.AVAILABLE)]


def test_unplug_without_a_lock_goes_straight_to_available() -> None:
    charger, _ = make()
    start_charging(charger)
    charger.on_pilot(1, A)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert TransactionStopped(1, 1, StopReason.EV_DISCONNECTED, T0, None) in actions
    assert statuses(actions) == [Status.AVAILABLE]


def test_unplug_keeps_the_transaction_when_configured() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_lock=True), stop_tx_on_ev_side_disconnect=False)
    local_id = start_charging(charger)

    charger.on_pilot(1, A)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert not any(isinstance(a, TransactionStopped) for a in actions)
    assert SetLock(1, False) in actions  # UnlockConnectorOnEVSideDisconnect
    assert SetPilot(1, PilotOutput.STEADY, 0.0) in actions
    assert [a for a in actions if isinstance(a, StatusChanged)] == [
        status(1, Status.SUSPENDED_EV, info="EV side disconnected")
    ]
    tx = charger.transaction_on(1)
    assert tx is not None and tx.local_id == local_id

    # Replug: the same transaction goes on; the cable is locked again before PWM.
    charger.on_pilot(1, B)
    actions = charger.drain()
    assert not any(isinstance(a, TransactionStarted | TransactionStopped) for a in actions)
    assert actions[0] == SetLock(1, True)
    assert pwm(actions) == []  # not before the lock confirms
    charger.on_locked(1)
    actions = charger.drain()
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    assert statuses(actions) == [Status.SUSPENDED_EV]
    charger.on_pilot(1, C)
    assert charger.drain() == [SetContactor(1, True), status(1, Status.CHARGING)]
    tx = charger.transaction_on(1)
    assert tx is not None and tx.local_id == local_id


def test_unplug_without_a_transaction_after_stop() -> None:
    charger, _ = make()
    start_charging(charger, tag="T")
    charger.on_card("T")
    charger.on_pilot(1, B)
    charger.drain()
    assert charger.connector(1).status is Status.FINISHING
    charger.on_pilot(1, A)
    assert charger.drain() == [status(1, Status.AVAILABLE)]


# ---------------------------------------------------------------------------------------
# the 6 s rule (IEC 61851-1 seq. 10.2): PWM off, the EV stays in C


def test_pwm_removed_while_the_ev_stays_in_c_opens_after_6_s() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.set_limit(1, 5.0)  # less than 6 A: no offer at all
    assert charger.drain() == [
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.SUSPENDED_EVSE),
    ]
    clock.advance(5.75)
    charger.tick()
    assert charger.drain() == []
    assert charger.connector(1).contactor_closed
    clock.advance(0.25)
    charger.tick()
    assert charger.drain() == [SetContactor(1, False)]

    # The limit comes back: PWM again, and the contactor closes on the next C.
    charger.set_limit(1, 16.0)
    actions = charger.drain()
    assert pwm(actions) == [pytest.approx(DUTY_16A)]
    assert SetContactor(1, True) in actions
    assert actions.index(SetContactor(1, True)) > actions.index(actions[0])


def test_pwm_removed_and_the_ev_goes_to_b_within_6_s() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.stop(1, StopReason.REMOTE)
    charger.drain()
    clock.advance(1.0)
    charger.on_pilot(1, B)
    assert charger.drain() == [SetContactor(1, False)]


def test_limit_change_moves_the_duty() -> None:
    charger, _ = make()
    start_charging(charger)
    charger.set_limit(1, 16.0)
    actions = charger.drain()
    assert pwm(actions) == [pytest.approx(DUTY_16A)]
    assert not any(isinstance(a, SetContactor) for a in actions)
    charger.set_limit(1, 100.0)  # never more than the connector's 32 A
    assert pwm(charger.drain()) == [pytest.approx(DUTY_32A)]


def test_pwm_resolution_rounds_down() -> None:
    charger, _ = make(ConnectorSpec(1, 16, 1, pwm_resolution_percent=1.0))
    start_charging(charger)
    view = charger.connector(1).view()
    assert view.duty_percent == pytest.approx(26.0)  # 26.67 → 26 % = 15.6 A
    assert current_for_duty(view.duty_percent) <= 16.0


# ---------------------------------------------------------------------------------------
# faults


FAULT_CODES = [
    (Fault.RCD, ErrorCode.GROUND_FAILURE),
    (Fault.OVERTEMP, ErrorCode.HIGH_TEMPERATURE),
    (Fault.METER, ErrorCode.POWER_METER_FAILURE),
    (Fault.LOCK, ErrorCode.CONNECTOR_LOCK_FAILURE),
    (Fault.WELD, ErrorCode.POWER_SWITCH_FAILURE),
]


@pytest.mark.parametrize(("fault", "code"), FAULT_CODES)
def test_fault_while_charging_opens_and_recovers(fault: Fault, code: ErrorCode) -> None:
    charger, clock = make()
    start_charging(charger)
    charger.set_fault(1, fault, True)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert actions[1] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    assert [(a.status, a.error_code) for a in actions[2:] if isinstance(a, StatusChanged)] == [
        (Status.FAULTED, code)
    ]
    assert charger.transaction_on(1) is not None  # the session survives a fault
    # State F for 300 ms; readings of F meanwhile are our own -12 V.
    charger.on_pilot(1, F)
    assert charger.drain() == []
    clock.advance(0.299)
    charger.tick()
    assert charger.drain() == []
    # Then x1: no energy offered, but the EV can be seen again (it stopped asking under F).
    clock.advance(10)
    charger.tick()
    assert charger.drain() == [SetPilot(1, PilotOutput.STEADY, 0.0)]
    charger.on_pilot(1, B)
    assert charger.drain() == []
    assert not charger.connector(1).contactor_closed

    charger.set_fault(1, fault, False)
    actions = charger.drain()
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    # Nothing is known of the EV while we drove -12 V: it must ask for energy again.
    assert not any(isinstance(a, SetContactor) for a in actions)
    assert statuses(actions) == [Status.SUSPENDED_EV]
    charger.on_pilot(1, C)
    assert charger.drain() == [
        SetContactor(1, True),
        status(1, Status.CHARGING, T0 + timedelta(seconds=10.299)),
    ]


@pytest.mark.parametrize(("fault", "code"), FAULT_CODES)
def test_ev_leaving_during_a_fault_ends_its_transaction(fault: Fault, code: ErrorCode) -> None:
    """Under x1 after the fault's 300 ms of state F the unplug is seen: the transaction ends
    (StopTransactionOnEVSideDisconnect) while the connector stays Faulted."""
    charger, clock = make()
    start_charging(charger)
    charger.set_fault(1, fault, True)
    charger.drain()
    clock.advance(0.301)
    charger.tick()
    assert charger.drain() == [SetPilot(1, PilotOutput.STEADY, 0.0)]
    charger.on_pilot(1, A)
    actions = charger.drain()
    stops = [a for a in actions if isinstance(a, TransactionStopped)]
    assert [s.reason for s in stops] == [StopReason.EV_DISCONNECTED]
    assert charger.transaction_on(1) is None
    assert not any(isinstance(a, SetContactor) for a in actions)  # it stayed open
    assert charger.connector(1).status is Status.FAULTED
    charger.set_fault(1, fault, False)
    assert statuses(charger.drain()) == [Status.AVAILABLE]


def test_fault_when_idle_and_recovery() -> None:
    charger, _ = make()
    charger.set_fault(1, Fault.OVERTEMP, True)
    assert charger.drain() == [
        SetPilot(1, PilotOutput.STATE_F, 0.0),
        status(1, Status.FAULTED, error_code=ErrorCode.HIGH_TEMPERATURE, info="over temperature"),
    ]
    # A faulted connector takes no card.
    assert charger.on_authorized("TAG", True) is None
    charger.set_fault(1, Fault.OVERTEMP, False)
    assert charger.drain() == [SetPilot(1, PilotOutput.STEADY, 0.0), status(1, Status.AVAILABLE)]


def test_weld_detected_by_feedback_after_the_timeout() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.check_contactor_feedback(1, True)  # follows the command
    charger.on_pilot(1, B)
    assert charger.drain()[0] == SetContactor(1, False)
    charger.check_contactor_feedback(1, True)  # contacts still closed
    clock.advance(0.0625)
    charger.check_contactor_feedback(1, True)
    assert charger.drain() == []  # < 0.1 s: a relay takes time to drop out
    clock.advance(0.0625)
    charger.check_contactor_feedback(1, True)
    actions = charger.drain()
    assert actions[0] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    faulted = actions[1]
    assert isinstance(faulted, StatusChanged)
    assert (faulted.status, faulted.error_code) == (
        Status.FAULTED,
        ErrorCode.POWER_SWITCH_FAILURE,
    )
    assert not charger.connector(1).contactor_closed

    # The contacts let go: the weld clears.
    charger.check_contactor_feedback(1, False)
    actions = charger.drain()
    assert statuses(actions) == [Status.SUSPENDED_EV]


def test_contactor_that_does_not_close_is_a_fault() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.check_contactor_feedback(1, False)
    clock.advance(0.125)
    charger.check_contactor_feedback(1, False)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    faulted = [a for a in actions if isinstance(a, StatusChanged)]
    assert [(a.status, a.error_code, a.vendor_error_code) for a in faulted] == [
        (Status.FAULTED, ErrorCode.POWER_SWITCH_FAILURE, "ContactorNoClose")
    ]


def test_feedback_none_means_no_feedback() -> None:
    charger, clock = make()
    start_charging(charger)
    for _ in range(5):
        clock.advance(1)
        charger.check_contactor_feedback(1, None)
    assert charger.drain() == []


def test_pilot_short_state_e() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.on_pilot(1, E)
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert actions[1] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    assert actions[2:] == [
        status(
            1,
            Status.FAULTED,
            error_code=ErrorCode.OTHER_ERROR,
            info="control pilot shorted (state E)",
            vendor_error_code="PilotShort",
        )
    ]
    # Driving -12 V into a short reads E again: still faulted.
    charger.on_pilot(1, E)
    assert charger.drain() == []
    # After 300 ms of state F the pilot goes back to x1, to see whether the short is gone.
    clock.advance(0.25)
    charger.tick()
    assert charger.drain() == []
    clock.advance(0.25)
    charger.tick()
    assert charger.drain() == [SetPilot(1, PilotOutput.STEADY, 0.0)]
    assert charger.connector(1).status is Status.FAULTED
    charger.on_pilot(1, E)  # still shorted
    assert charger.drain() == []
    charger.on_pilot(1, B)  # the short is gone, the EV is there
    actions = charger.drain()
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    assert statuses(actions) == [Status.SUSPENDED_EV]
    charger.on_pilot(1, C)
    assert charger.drain()[0] == SetContactor(1, True)


def test_unexpected_state_f_opens_at_once_and_faults_if_it_lasts() -> None:
    charger, clock = make()
    start_charging(charger)
    charger.on_pilot(1, F)  # -12 V while we drive PWM
    assert charger.drain() == [SetContactor(1, False)]
    clock.advance(0.25)
    charger.on_pilot(1, F)
    actions = charger.drain()
    assert actions[0] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    assert statuses(actions) == [Status.FAULTED]


def test_diode_missing() -> None:
    charger, clock = make()
    charger.on_pilot(1, B)
    charger.on_authorized("TAG", True)
    charger.drain()
    charger.on_pilot(1, PilotReading(CpState.C, diode_ok=False))
    actions = charger.drain()
    # Never closed: the diode check failed on the very reading that asked for energy.
    assert not any(isinstance(a, SetContactor) for a in actions)
    assert actions[0] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    assert actions[1:] == [
        status(
            1,
            Status.FAULTED,
            error_code=ErrorCode.OTHER_ERROR,
            info="EV diode missing",
            vendor_error_code="DiodeMissing",
        )
    ]
    # After 300 ms of F, x1 again so that the EV can be seen leaving.
    clock.advance(0.5)
    charger.tick()
    assert charger.drain() == [SetPilot(1, PilotOutput.STEADY, 0.0)]
    charger.on_pilot(1, A)
    actions = charger.drain()
    assert (
        TransactionStopped(1, 1, StopReason.EV_DISCONNECTED, T0 + timedelta(seconds=0.5), None)
        in actions
    )
    assert statuses(actions) == [Status.AVAILABLE]


def test_diode_missing_while_charging_opens_the_contactor() -> None:
    charger, _ = make()
    start_charging(charger)
    charger.on_pilot(1, PilotReading(CpState.C, diode_ok=False))
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert statuses(actions) == [Status.FAULTED]


def test_reader_fault_is_reported_on_connector_0() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    charger.set_fault(0, Fault.READER, True)
    assert charger.drain() == [
        StatusChanged(
            0,
            Status.AVAILABLE,
            ErrorCode.READER_FAILURE,
            T0,
            info="card reader not answering",
        )
    ]
    # The connectors themselves are not affected: remote start still works.
    assert charger.remote_start(2, "R")
    assert statuses(charger.drain(), 2) == [Status.PREPARING]
    charger.set_fault(0, Fault.READER, False)
    assert charger.drain() == [status(0, Status.AVAILABLE)]


# ---------------------------------------------------------------------------------------
# availability


def test_change_availability_when_idle() -> None:
    charger, _ = make()
    assert charger.set_operative(1, False)
    assert charger.drain() == [
        AvailabilityChanged(1, False),
        SetPilot(1, PilotOutput.STATE_F, 0.0),
        status(1, Status.UNAVAILABLE),
        status(0, Status.UNAVAILABLE),  # its only connector
    ]
    assert charger.set_operative(1, False)  # already so: Accepted, nothing to do
    assert charger.drain() == []
    assert not charger.remote_start(1, "R")
    charger.on_pilot(1, F)  # our own -12 V
    assert charger.drain() == []

    assert charger.set_operative(1, True)
    assert charger.drain() == [
        AvailabilityChanged(1, True),
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.AVAILABLE),
        status(0, Status.AVAILABLE),
    ]


def test_change_availability_is_scheduled_during_a_transaction() -> None:
    charger, _ = make()
    start_charging(charger, tag="T")
    assert not charger.set_operative(1, False)  # Scheduled
    assert charger.drain() == []
    assert charger.connector(1).pilot_output is PilotOutput.PWM

    charger.on_pilot(1, B)  # the EV stops drawing
    charger.on_card("T")
    actions = charger.drain()
    assert [type(a) for a in actions] == [
        SetContactor,
        StatusChanged,  # SuspendedEV
        TransactionStopped,
        AvailabilityChanged,
        SetPilot,
        StatusChanged,
        StatusChanged,
    ]
    assert actions[3] == AvailabilityChanged(1, False)
    assert actions[4] == SetPilot(1, PilotOutput.STATE_F, 0.0)
    assert actions[5:] == [status(1, Status.UNAVAILABLE), status(0, Status.UNAVAILABLE)]


def test_scheduled_unavailability_waits_for_the_ev_to_stop_drawing() -> None:
    charger, clock = make()
    start_charging(charger, tag="T")
    assert not charger.set_operative(1, False)
    charger.on_card("T")  # stopped while the EV still draws (C)
    actions = charger.drain()
    # x1 first: opening under load is the last resort after 6 s, not the first step.
    assert SetPilot(1, PilotOutput.STEADY, 0.0) in actions
    assert not any(isinstance(a, SetContactor) for a in actions)
    assert statuses(actions) == [Status.UNAVAILABLE]
    charger.on_pilot(1, B)
    assert charger.drain() == [SetContactor(1, False), SetPilot(1, PilotOutput.STATE_F, 0.0)]

    # The same when the EV does not stop: after 6 s, open and then state F.
    charger.set_operative(1, True)
    start_charging(charger, tag="U")
    assert not charger.set_operative(1, False)
    charger.on_card("U")
    charger.drain()
    clock.advance(6)
    charger.tick()
    assert charger.drain() == [SetContactor(1, False), SetPilot(1, PilotOutput.STATE_F, 0.0)]


def test_a_maintenance_hold_lets_a_transaction_finish_and_starts_nothing_new() -> None:
    # A firmware update waits for the sessions to end (errata 3.49): the free connector is
    # Unavailable at once, the busy one finishes its transaction and is Unavailable after.
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    start_charging(charger, 2, "T")
    charger.on_pilot(1, B)  # an EV waits on connector 1, not yet authorized
    charger.drain()
    charger.set_maintenance(True)
    actions = charger.drain()
    assert actions == [SetPilot(1, PilotOutput.STATE_F, 0.0), status(1, Status.UNAVAILABLE)]
    assert charger.connector(2).pilot_output is PilotOutput.PWM  # still charging
    assert charger.on_card("U") is not CardDecision.AUTHORIZE
    assert not charger.remote_start(1, "R")
    # ChangeAvailability meanwhile is kept as it was asked, not overwritten by the hold.
    assert charger.set_operative(1, False)
    charger.drain()

    charger.on_pilot(2, A)  # the session ends
    assert statuses(charger.drain(), 2) == [Status.UNAVAILABLE]
    charger.set_maintenance(False)
    actions = charger.drain()
    assert statuses(actions, 2) == [Status.AVAILABLE]
    assert statuses(actions, 1) == []  # still inoperative, as ChangeAvailability said
    assert not any(isinstance(a, AvailabilityChanged) for a in actions)
    assert charger.views()[0].operative is False and charger.views()[0].maintenance is False


def test_change_availability_of_connector_0_means_all() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    start_charging(charger, 2, "T")
    assert not charger.set_operative(0, False)  # connector 2 is busy: Scheduled
    actions = charger.drain()
    assert actions == [
        AvailabilityChanged(1, False),
        SetPilot(1, PilotOutput.STATE_F, 0.0),
        status(1, Status.UNAVAILABLE),
    ]  # connector 0 stays Available while connector 2 still works
    charger.on_pilot(2, A)
    actions = charger.drain()
    assert AvailabilityChanged(2, False) in actions
    assert statuses(actions, 2) == [Status.UNAVAILABLE]
    assert statuses(actions, 0) == [Status.UNAVAILABLE]
    assert charger.set_operative(0, True)
    actions = charger.drain()
    assert statuses(actions, 1) == statuses(actions, 2) == [Status.AVAILABLE]
    assert statuses(actions, 0) == [Status.AVAILABLE]


# ---------------------------------------------------------------------------------------
# StartTransaction answered with an invalid idTag


def test_transaction_rejected_stops_when_configured() -> None:
    charger, _ = make(stop_tx_on_invalid_id=True)
    charger.on_pilot(1, B)
    charger.on_authorized("T", True)
    charger.drain()
    charger.transaction_rejected(1, local_id=999)  # not this transaction: ignored
    assert charger.drain() == []
    charger.transaction_rejected(1, local_id=1)
    assert charger.drain() == [
        TransactionStopped(1, 1, StopReason.DE_AUTHORIZED, T0, None),
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.FINISHING),
    ]


def test_deauthorized_stop_keeps_the_cable_locked_until_the_owner_returns() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_lock=True), stop_tx_on_invalid_id=True)
    charger.on_pilot(1, B)
    charger.on_authorized("OWNER", True)
    assert SetLock(1, True) in charger.drain()  # locked before the transaction starts
    assert charger.transaction_on(1) is None
    charger.on_locked(1)
    assert charger.transaction_on(1) is not None
    charger.transaction_rejected(1, local_id=1)
    actions = charger.drain()
    assert TransactionStopped(1, 1, StopReason.DE_AUTHORIZED, T0, None) in actions
    assert SetLock(1, False) not in actions  # §3.5.4: locked until the owner comes back
    # Another card is not the owner, and starts nothing on the held connector.
    assert charger.on_card("STRANGER") is CardDecision.IGNORED
    assert charger.remote_start(1, "STRANGER") is False
    assert charger.drain() == []
    # The owner's card lets the cable go, without asking anyone.
    assert charger.on_card("owner") is CardDecision.STOPPED
    assert SetLock(1, False) in charger.drain()
    assert charger.connector(1).held_for is None


def test_deauthorized_hold_is_released_by_a_card_with_the_same_parent() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_lock=True), stop_tx_on_invalid_id=True)
    charger.on_pilot(1, B)
    charger.on_authorized("OWNER", True, "PARENT")
    charger.on_locked(1)
    charger.transaction_rejected(1, local_id=1)
    charger.drain()
    assert charger.on_card("SIBLING") is CardDecision.AUTHORIZE
    assert charger.on_authorized("SIBLING", True, "OTHER-PARENT") is None
    assert charger.drain() == []
    assert charger.on_authorized("SIBLING", True, "parent") == 1
    assert SetLock(1, False) in charger.drain()
    assert charger.transaction_on(1) is None


def test_transaction_rejected_suspends_when_not_stopping() -> None:
    charger, clock = make(stop_tx_on_invalid_id=False)
    start_charging(charger)
    charger.transaction_rejected(1, local_id=1)
    assert charger.drain() == [
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.SUSPENDED_EVSE),
    ]
    assert charger.transaction_on(1) is not None
    # The EV keeps asking: 6 s to stop drawing, then open under load; PWM never returns.
    clock.advance(6)
    charger.tick()
    assert charger.drain() == [SetContactor(1, False)]
    charger.on_pilot(1, B)
    charger.on_pilot(1, C)
    charger.set_limit(1, 32)
    assert charger.drain() == []
    assert charger.connector(1).status is Status.SUSPENDED_EVSE


def energy(wh: float) -> MeterReading:
    return MeterReading(energy_import_wh=wh, power_w=7000.0, current_a=(10.0,), voltage_v=(230.0,))


def test_max_energy_on_invalid_id_lets_the_ev_take_that_much_then_suspends() -> None:
    charger, _ = make(stop_tx_on_invalid_id=False, max_energy_on_invalid_id_wh=500)
    charger.on_meter(1, energy(10_000))
    start_charging(charger)
    charger.on_meter(1, energy(10_200))
    charger.transaction_rejected(1, local_id=1)
    assert charger.drain() == []  # 200 Wh of the 500 used: energy still offered
    charger.on_meter(1, energy(10_499.9))
    assert charger.drain() == []
    charger.on_meter(1, energy(10_500))  # counted from meterStart: the allowance is used up
    assert charger.drain() == [
        SetPilot(1, PilotOutput.STEADY, 0.0),
        status(1, Status.SUSPENDED_EVSE),
    ]
    assert charger.transaction_on(1) is not None  # the transaction itself goes on


def test_max_energy_on_invalid_id_already_used_offline_gives_nothing_more() -> None:
    charger, _ = make(stop_tx_on_invalid_id=False, max_energy_on_invalid_id_wh=500)
    charger.on_meter(1, energy(10_000))
    start_charging(charger)
    charger.on_meter(1, energy(12_000))  # charged 2 kWh offline before the answer came
    charger.transaction_rejected(1, local_id=1)
    assert statuses(charger.drain()) == [Status.SUSPENDED_EVSE]


def test_max_energy_on_invalid_id_is_not_given_without_a_meter_reading() -> None:
    charger, _ = make(stop_tx_on_invalid_id=False, max_energy_on_invalid_id_wh=500)
    start_charging(charger)  # no reading: the allowance could not be kept, so none
    charger.transaction_rejected(1, local_id=1)
    assert statuses(charger.drain()) == [Status.SUSPENDED_EVSE]


def test_max_energy_on_invalid_id_does_not_apply_when_stopping_on_invalid_id() -> None:
    charger, _ = make(stop_tx_on_invalid_id=True, max_energy_on_invalid_id_wh=500)
    charger.on_meter(1, energy(10_000))
    start_charging(charger)
    charger.transaction_rejected(1, local_id=1)
    actions = charger.drain()
    assert TransactionStopped(1, 1, StopReason.DE_AUTHORIZED, T0, None) in actions


# ---------------------------------------------------------------------------------------
# two connectors, one card reader


def test_identify_first_moves_to_the_connector_plugged_in() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    assert charger.on_authorized("TAG", True) == 1  # no EV anywhere: the first free one
    assert statuses(charger.drain(), 1) == [Status.PREPARING]
    charger.on_pilot(2, B)
    actions = charger.drain()
    assert TransactionStarted(2, 1, "TAG", T0, remote=False) in actions
    assert pwm(actions, 2) == [pytest.approx(DUTY_16A)]
    assert statuses(actions, 1) == [Status.AVAILABLE]
    assert charger.connector(1).view().authorized_id_tag is None
    charger.on_pilot(1, B)  # someone else plugs into 1: no transaction for them
    assert charger.transaction_on(1) is None


def test_card_goes_to_the_connector_with_an_ev_waiting() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    charger.on_pilot(2, B)
    charger.drain()
    assert charger.on_authorized("TAG", True) == 2
    actions = charger.drain()
    assert TransactionStarted(2, 1, "TAG", T0, remote=False) in actions


def test_remote_authorization_does_not_move() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3), ConnectorSpec(2, 16, 1))
    assert charger.remote_start(1, "R")
    charger.on_pilot(2, B)
    assert not any(isinstance(a, TransactionStarted) for a in charger.drain())
    assert charger.connector(1).view().authorized_id_tag == "R"


def test_parent_id_tag_stops_the_group_transaction() -> None:
    charger, _ = make()
    charger.on_pilot(1, B)
    charger.on_authorized("CHILD1", True, parent_id_tag="FLEET")
    charger.on_pilot(1, C)
    charger.drain()
    assert charger.on_card("CHILD2") is CardDecision.AUTHORIZE
    assert charger.on_authorized("CHILD2", True, parent_id_tag="fleet") == 1
    actions = charger.drain()
    assert TransactionStopped(1, 1, StopReason.LOCAL, T0, "CHILD2") in actions


# ---------------------------------------------------------------------------------------
# Property-based: random inputs, safety invariants checked after every step against a small
# model of the hardware that replays the drained actions.
#
# (1) SetContactor(closed) only on a last CP reading of C/D with the diode ok, no fault, PWM on;
#     staying closed also allows x1 for < 6 s after the PWM went (never state F). While the
#     EVSE drives state F the CP reads its own -12 V, so the model's last reading becomes F.
# (2) the EV leaving C/D, or a fault raised, opens the contactor in that very drain.
# (3) PWM only with a transaction allowed energy, offering 6 A ≤ I ≤ min(max, limit), both
#     when commanded and after every step.
# (4) local ids unique; each TransactionStarted stopped at most once, by its own id.
# (5) connector 0 is only Available, Unavailable or Faulted.
# (6) no transaction and no fault: Available, Preparing, Finishing or Unavailable.
# (7) with a cable lock: never energized unlocked, never unlocked while energized.

BLOCKING_FAULTS = [Fault.RCD, Fault.OVERTEMP, Fault.METER, Fault.LOCK]
TAGS = ["T1", "T2", "t1", "T3"]
ENERGY = {CpState.C, CpState.D}
IDLE_STATUSES = {Status.AVAILABLE, Status.PREPARING, Status.FINISHING, Status.UNAVAILABLE}
X1_GRACE_S = 6.0  # IEC 61851-1 seq. 10.2, by hand

readings = st.builds(
    PilotReading,
    st.sampled_from(list(CpState)),
    st.booleans() | st.just(True),  # diode ok more often than not
)
cids = st.integers(min_value=1, max_value=2)
steps = st.one_of(
    # A whole session start in one step (plug, card, EV asks), or two: deep states early.
    st.tuples(st.just("charge"), cids, st.sampled_from(TAGS)),
    st.tuples(st.just("charge"), cids, st.sampled_from(TAGS)),
    st.tuples(st.just("pilot"), cids, readings),
    st.tuples(st.just("pilot"), cids, st.sampled_from([B, C, A])),  # plain sessions
    st.tuples(st.just("card"), st.sampled_from(TAGS), st.booleans(), st.sampled_from([None, "P"])),
    st.tuples(st.just("remote_start"), cids, st.sampled_from(TAGS)),
    st.tuples(st.just("remote_stop"), cids),
    # The example's fault kind (drawn once per example), raised or cleared: toggles are
    # frequent enough to reach "fault cleared while the EV was waiting".
    st.tuples(st.just("fault"), cids, st.booleans()),
    st.tuples(st.just("fault"), cids, st.booleans()),
    st.tuples(st.just("reader"), st.booleans()),
    st.tuples(st.just("avail"), st.integers(min_value=0, max_value=2), st.booleans()),
    st.tuples(st.just("time"), st.sampled_from([0.01, 0.05, 0.1, 0.25, 1.0, 3.0, 6.0, 31.0])),
    st.tuples(st.just("feedback"), cids, st.sampled_from(["follow", "follow", "stuck", "none"])),
    st.tuples(st.just("reject"), cids),
    st.tuples(st.just("limit"), cids, st.sampled_from([0.0, 5.0, 6.0, 10.0, 13.5, 40.0])),
    st.tuples(st.just("unlocked"), cids),
    st.tuples(st.just("stop_all"), st.sampled_from([StopReason.SOFT_RESET, StopReason.HARD_RESET])),
)


@dataclass
class HwModel:
    """One connector's hardware as the drained actions leave it, plus what we fed in."""

    max_current_a: float
    has_lock: bool
    pilot: PilotOutput | None = None
    duty: float = 0.0
    pwm_off_at: float | None = None
    contactor: bool | None = None
    lock: bool | None = None
    reading: PilotReading | None = None  # the last one fed
    injected: set[Fault] = field(default_factory=set)
    limit_a: float = 1e9
    tx: int | None = None
    tx_energy: bool = True
    status: Status | None = None


class Bench:
    def __init__(
        self,
        n: int,
        has_lock: bool,
        resolution: float,
        charger_settings: ChargerSettings,
        fault_kind: Fault = Fault.RCD,
    ) -> None:
        self.fault_kind = fault_kind
        self.clock = FakeClock(T0)
        specs = [ConnectorSpec(1, 32, 3, resolution, has_lock)]
        if n == 2:
            specs.append(ConnectorSpec(2, 16, 1, resolution, has_lock))
        self.charger = Charger(specs, self.clock, charger_settings)
        self.hw = {s.connector_id: HwModel(s.max_current_a, has_lock) for s in specs}
        self.started: set[int] = set()
        self.stopped: set[int] = set()
        self.cp0: list[Status] = []
        self.charger.start()
        self.replay(self.charger.drain())

    def faults_now(self, cid: int) -> set[Fault]:
        return self.hw[cid].injected | self.charger.connector(cid).faults

    def may_carry_current(self, cid: int) -> bool:
        hw = self.hw[cid]
        r = hw.reading
        return r is not None and r.state in ENERGY and r.diode_ok and not self.faults_now(cid)

    def replay(self, actions: list[Action]) -> None:
        now = self.clock.monotonic()
        for a in actions:
            if isinstance(a, StatusChanged) and a.connector_id == 0:
                # (5) connector 0 is only ever Available, Unavailable or Faulted.
                assert a.status in {Status.AVAILABLE, Status.UNAVAILABLE, Status.FAULTED}, a
                self.cp0.append(a.status)
                continue
            hw = self.hw[a.connector_id]
            if isinstance(a, SetContactor):
                if a.closed:
                    # (1) closed only on C/D, diode ok, no fault, PWM offered right now.
                    assert self.may_carry_current(a.connector_id), (a, hw)
                    assert hw.pilot is PilotOutput.PWM, (a, hw)
                    if hw.has_lock:
                        assert hw.lock is True, "energized with the cable unlocked"
                hw.contactor = a.closed
            elif isinstance(a, SetPilot):
                if a.output is PilotOutput.PWM:
                    # (3) PWM only with a transaction allowed energy, 6 A ≤ offer ≤ max.
                    assert hw.tx is not None and hw.tx_energy, (a, hw)
                    offered = current_for_duty(a.duty_percent)
                    assert offered >= 6.0, a
                    assert offered <= min(hw.max_current_a, hw.limit_a) + 1e-9, a
                elif hw.pilot is PilotOutput.PWM or hw.pwm_off_at is None:
                    hw.pwm_off_at = now
                if a.output is PilotOutput.STATE_F:
                    # The CP now reads our own -12 V, whatever the EV does: what it last
                    # presented is no longer known.
                    hw.reading = F
                hw.pilot, hw.duty = a.output, a.duty_percent
            elif isinstance(a, SetLock):
                if not a.locked:
                    assert not hw.contactor, "unlocked while energized"
                hw.lock = a.locked
            elif isinstance(a, StatusChanged):
                hw.status = a.status
            elif isinstance(a, TransactionStarted):
                # (4) local ids are unique; one transaction per connector.
                assert a.local_id not in self.started, a
                assert hw.tx is None, a
                self.started.add(a.local_id)
                hw.tx, hw.tx_energy = a.local_id, True
            elif isinstance(a, TransactionStopped):
                # (4) each start is stopped at most once, with its own id.
                assert a.local_id == hw.tx and a.local_id not in self.stopped, a
                self.stopped.add(a.local_id)
                hw.tx = None

    def check(self) -> None:
        now = self.clock.monotonic()
        for cid, hw in self.hw.items():
            connector = self.charger.connector(cid)
            assert connector.contactor_closed == bool(hw.contactor)
            tx = connector.tx
            assert (tx.local_id if tx else None) == hw.tx
            if hw.contactor:
                # (1) the state the contactor may stay closed in: PWM, or x1 for < 6 s.
                assert self.may_carry_current(cid), hw
                assert hw.pilot is PilotOutput.PWM or (
                    hw.pilot is PilotOutput.STEADY
                    and hw.pwm_off_at is not None
                    and now - hw.pwm_off_at < X1_GRACE_S
                ), (hw, now)
            if hw.injected:
                assert hw.status is Status.FAULTED
            # (6) no transaction, no fault: an idle status.
            if hw.tx is None and not self.faults_now(cid):
                assert hw.status in IDLE_STATUSES, hw
            if hw.pilot is PilotOutput.PWM:
                # (3) also between changes: the offer follows the transaction and the limit.
                assert hw.tx is not None and hw.tx_energy, hw
                assert current_for_duty(hw.duty) <= min(hw.max_current_a, hw.limit_a) + 1e-9


PER_CONNECTOR = {
    "charge",
    "pilot",
    "remote_start",
    "remote_stop",
    "fault",
    "avail",
    "feedback",
    "reject",
    "limit",
    "unlocked",
}


def run_step(bench: Bench, step: tuple[Any, ...]) -> None:
    charger, clock = bench.charger, bench.clock
    kind = step[0]
    cid = step[1] if kind in PER_CONNECTOR else 0
    if kind in PER_CONNECTOR and cid not in bench.hw and not (kind == "avail" and cid == 0):
        return  # connector 2 on a one-connector charger
    if kind == "charge":
        for sub in (("pilot", cid, B), ("card", step[2], True, None), ("pilot", cid, C)):
            run_step(bench, sub)
        return
    was_closed = {c: bool(hw.contactor) for c, hw in bench.hw.items()}
    faults_before = {c: set(charger.connector(c).faults) for c in bench.hw}
    if kind == "pilot":
        bench.hw[cid].reading = step[2]
        charger.on_pilot(cid, step[2])
    elif kind == "card":
        _, tag, accepted, parent = step
        if charger.on_card(tag) is CardDecision.AUTHORIZE:
            charger.on_authorized(tag, accepted, parent if accepted else None)
    elif kind == "remote_start":
        charger.remote_start(cid, step[2])
    elif kind == "remote_stop":
        charger.stop(cid, StopReason.REMOTE)
    elif kind == "fault":
        _, _, active = step
        fault = bench.fault_kind
        (bench.hw[cid].injected.add if active else bench.hw[cid].injected.discard)(fault)
        charger.set_fault(cid, fault, active)
    elif kind == "reader":
        charger.set_fault(0, Fault.READER, step[1])
    elif kind == "avail":
        charger.set_operative(cid, step[2])
    elif kind == "time":
        clock.advance(step[1])
        charger.tick()
    elif kind == "feedback":
        commanded = bool(bench.hw[cid].contactor)
        mode = step[2]
        feedback = None if mode == "none" else commanded if mode == "follow" else not commanded
        charger.check_contactor_feedback(cid, feedback)
    elif kind == "reject":
        charger.transaction_rejected(cid, bench.hw[cid].tx or 999)
        if bench.hw[cid].tx is not None:
            bench.hw[cid].tx_energy = False
    elif kind == "limit":
        bench.hw[cid].limit_a = step[2]
        charger.set_limit(cid, step[2])
    elif kind == "unlocked":
        charger.on_unlocked(cid)
    elif kind == "stop_all":
        charger.stop_all(step[1])
    actions = charger.drain()
    bench.replay(actions)
    # (2) the EV leaving C/D, or a fault raised, opens the contactor in this very drain.
    for c, closed in was_closed.items():
        if not closed:
            continue
        left = kind == "pilot" and c == cid and (step[2].state not in ENERGY)
        raised = bool(charger.connector(c).faults - faults_before[c]) or (
            kind == "fault" and c == cid and step[2]
        )
        if left or raised:
            assert SetContactor(c, False) in actions, (step, actions)
    bench.check()


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    n=st.integers(min_value=1, max_value=2),
    has_lock=st.booleans(),
    resolution=st.sampled_from([0.0, 0.0001, 0.390625, 1.0]),
    stop_on_disconnect=st.booleans(),
    unlock_on_disconnect=st.booleans(),
    stop_on_invalid=st.booleans(),
    fault_kind=st.sampled_from(BLOCKING_FAULTS),
    script=st.lists(steps, min_size=20, max_size=80),
)
def test_safety_invariants_hold_for_any_input_sequence(
    n: int,
    has_lock: bool,
    resolution: float,
    stop_on_disconnect: bool,
    unlock_on_disconnect: bool,
    stop_on_invalid: bool,
    fault_kind: Fault,
    script: list[tuple[Any, ...]],
) -> None:
    bench = Bench(
        n,
        has_lock,
        resolution,
        ChargerSettings(
            connection_timeout_s=30.0,
            stop_tx_on_ev_side_disconnect=stop_on_disconnect,
            unlock_on_ev_side_disconnect=unlock_on_disconnect,
            stop_tx_on_invalid_id=stop_on_invalid,
        ),
        fault_kind,
    )
    for step in script:
        run_step(bench, step)


# ---------------------------------------------------------------------------------------
# RCD self-test before each EV


def test_the_rcd_is_tested_when_an_ev_arrives_before_any_energy() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_rcd_self_test=True))
    charger.on_pilot(1, B)
    assert RunRcdSelfTest(1) in charger.drain()
    assert charger.on_card("T") is CardDecision.AUTHORIZE
    charger.on_authorized("T", True)
    actions = charger.drain()
    assert not any(isinstance(a, TransactionStarted) for a in actions)  # waits for the test
    assert charger.connector(1).status is Status.PREPARING
    charger.rcd_self_tested(1, True)
    actions = charger.drain()
    assert any(isinstance(a, TransactionStarted) for a in actions)
    assert pwm(actions) == [pytest.approx(DUTY_32A)]
    assert statuses(actions) == [Status.SUSPENDED_EV]  # offered; the EV has not asked yet


def test_a_failed_rcd_self_test_faults_the_connector_until_the_ev_leaves() -> None:
    charger, clock = make(ConnectorSpec(1, 32, 3, has_rcd_self_test=True))
    charger.on_pilot(1, B)
    charger.drain()
    charger.rcd_self_tested(1, False)
    actions = charger.drain()
    assert statuses(actions) == [Status.FAULTED]
    faulted = next(a for a in actions if isinstance(a, StatusChanged))
    assert faulted.error_code is ErrorCode.GROUND_FAILURE
    assert charger.on_card("T") is CardDecision.IGNORED  # no session on a failed RCD
    # State F for 300 ms, then x1: only under +12 V can the EV be seen leaving.
    clock.advance(0.31)
    charger.tick()
    assert SetPilot(1, PilotOutput.STEADY, 0.0) in charger.drain()
    charger.on_pilot(1, A)
    assert Fault.RCD_SELF_TEST not in charger.connector(1).faults
    charger.on_pilot(1, B)  # the next EV: tested again
    assert RunRcdSelfTest(1) in charger.drain()


def test_without_a_test_input_nothing_waits_for_a_self_test() -> None:
    charger, _ = make()
    start_charging(charger)  # asserts the contactor closes


def test_the_cable_is_not_unlocked_while_the_contacts_still_read_closed() -> None:
    charger, _ = make(ConnectorSpec(1, 32, 3, has_lock=True))
    start_charging(charger)
    charger.check_contactor_feedback(1, True)  # the aux contact: closed, as commanded
    charger.drain()
    charger.on_pilot(1, A)  # unplugged at the car: the contactor is commanded open
    actions = charger.drain()
    assert actions[0] == SetContactor(1, False)
    assert SetLock(1, False) not in actions  # the contacts have not been seen open yet
    charger.check_contactor_feedback(1, True)  # still closed: maybe welded
    assert SetLock(1, False) not in charger.drain()
    charger.check_contactor_feedback(1, False)  # open: now the socket may let go
    assert SetLock(1, False) in charger.drain()
