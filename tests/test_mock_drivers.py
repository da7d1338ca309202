"""The mock drivers behave like the hardware they stand in for (drivers/mock.py)."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path

import pytest

from drivers.mock import (
    CONNECTOR_FAULT_KINDS,
    HISTORY_LENGTH,
    MockCardReader,
    MockConnectorHardware,
    ev_current_for_duty,
)
from drivers.protocols import (
    CardReader,
    ContactorDriver,
    CpState,
    EnergyMeter,
    LockDriver,
    MeterError,
    PilotDriver,
    PilotOutput,
    PilotReading,
    ReaderError,
    ResidualCurrentMonitor,
    TemperatureSensor,
)


class FakeClock:
    """A monotonic clock that only moves when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_hw(
    clock: FakeClock,
    *,
    phases: int = 3,
    state_dir: Path | None = None,
    ev_max_current_a: float = 32.0,
    ev_phases: int | None = None,
    has_lock: bool = True,
    meter_latency_s: float = 0.0,
) -> MockConnectorHardware:
    return MockConnectorHardware(
        1,
        state_dir=state_dir,
        phases=phases,
        ev_max_current_a=ev_max_current_a,
        ev_phases=ev_phases,
        clock=clock,
        has_lock=has_lock,
        meter_latency_s=meter_latency_s,
    )


def leftover_temp_files(directory: Path) -> list[Path]:
    return list(directory.glob("*.tmp")) + list(directory.glob(".*.tmp"))


def start_charging(hw: MockConnectorHardware, duty: float) -> None:
    hw.plug()
    hw.pilot.set_pwm(duty)
    hw.contactor.set_closed(True)


# --------------------------------------------------------------------------- protocols


def test_each_mock_satisfies_its_protocol() -> None:
    hw = make_hw(FakeClock())
    assert isinstance(hw.pilot, PilotDriver)
    assert isinstance(hw.contactor, ContactorDriver)
    assert isinstance(hw.meter, EnergyMeter)
    assert isinstance(hw.lock, LockDriver)
    assert isinstance(hw.rcd, ResidualCurrentMonitor)
    assert isinstance(hw.temperature, TemperatureSensor)
    assert isinstance(MockCardReader(), CardReader)


def test_connector_without_lock_has_none() -> None:
    hw = make_hw(FakeClock(), has_lock=False)
    assert hw.lock is None
    with pytest.raises(ValueError, match="no cable lock"):
        hw.inject_fault("lock")


def test_pilot_idles_at_steady_and_records_commands() -> None:
    clock = FakeClock(5.0)
    hw = make_hw(clock)
    assert (hw.pilot.output, hw.pilot.duty_percent) == (PilotOutput.STEADY, 0.0)
    assert hw.pilot.duty_resolution_percent == 0.0001
    hw.pilot.set_pwm(26.6666)
    clock.advance(1.5)
    hw.pilot.set_state_f()
    assert (hw.pilot.output, hw.pilot.duty_percent) == (PilotOutput.STATE_F, 0.0)
    assert hw.pilot.history == [(5.0, "pwm", 26.6666), (6.5, "F", 0.0)]


@pytest.mark.parametrize("duty", [0.0, 100.0, -1.0, float("nan")])
def test_pwm_duty_out_of_range_is_refused(duty: float) -> None:
    hw = make_hw(FakeClock())
    with pytest.raises(ValueError):
        hw.pilot.set_pwm(duty)
    assert hw.pilot.output is PilotOutput.STEADY


# ------------------------------------------------------------------------ the mock EV


@pytest.mark.parametrize(
    ("duty", "amps"),
    [
        (7.9, 0.0),
        (8.0, 6.0),
        (9.9, 6.0),
        (10.0, 6.0),
        (25.0, 15.0),
        (85.0, 51.0),
        (90.0, 65.0),  # 2.5 x (90 - 64)
        (96.0, 80.0),
        (96.5, 80.0),
        (97.5, 0.0),
        (5.0, 0.0),  # digital communication, no current
    ],
)
def test_ev_reads_duty_as_the_standard_says(duty: float, amps: float) -> None:
    assert ev_current_for_duty(duty) == pytest.approx(amps, abs=1e-9)


def test_ev_follows_the_pilot() -> None:
    hw = make_hw(FakeClock())
    assert hw.pilot.read() == PilotReading(CpState.A)
    hw.plug()
    assert hw.plugged
    assert hw.pilot.read() == PilotReading(CpState.B)
    hw.pilot.set_pwm(5.0)  # offers nothing: the car stays in B
    assert hw.pilot.read().state is CpState.B
    hw.pilot.set_pwm(10.0)  # 6 A
    assert hw.pilot.read().state is CpState.C
    hw.pilot.set_steady()
    assert hw.pilot.read().state is CpState.B
    hw.pilot.set_pwm(50.0)
    assert hw.pilot.read().state is CpState.C
    hw.pilot.set_state_f()
    assert hw.pilot.read().state is CpState.F
    hw.pilot.set_steady()  # the car went back to B while the EVSE drove F
    assert hw.pilot.read().state is CpState.B
    hw.unplug()
    assert not hw.plugged
    assert hw.pilot.read().state is CpState.A


def test_paused_car_stays_in_b() -> None:
    hw = make_hw(FakeClock())
    hw.plug()
    hw.set_ev_state(CpState.B)
    assert hw.ev_mode == "B"
    hw.pilot.set_pwm(50.0)
    assert hw.pilot.read().state is CpState.B
    hw.set_ev_state(None)
    assert hw.ev_mode == "auto"
    assert hw.pilot.read().state is CpState.C


def test_stubborn_car_stays_in_c_without_pwm() -> None:
    hw = make_hw(FakeClock())
    hw.plug()
    hw.set_ev_state("C")  # the bench CLI passes letters
    assert hw.ev_mode == "C"
    assert hw.pilot.read().state is CpState.C
    hw.set_ev_state(CpState.D)
    assert hw.pilot.read().state is CpState.D
    hw.set_ev_state(CpState.E)
    assert hw.pilot.read().state is CpState.E


def test_unplug_returns_the_car_to_auto_and_a_forced_state_survives_until_then() -> None:
    hw = make_hw(FakeClock())
    hw.set_ev_state(CpState.C)  # the next car arrives already asking (A → C directly)
    assert hw.pilot.read().state is CpState.A
    hw.plug()
    assert hw.pilot.read().state is CpState.C
    hw.unplug()
    assert hw.ev_mode == "auto"
    hw.plug()
    assert hw.pilot.read().state is CpState.B


def test_state_f_overrides_the_car() -> None:
    hw = make_hw(FakeClock())
    hw.plug()
    hw.set_ev_state(CpState.C)
    hw.pilot.set_state_f()
    assert hw.pilot.read() == PilotReading(CpState.F)


def test_pilot_short_reads_e_and_diode_fault_keeps_the_state() -> None:
    hw = make_hw(FakeClock())
    hw.plug()
    hw.pilot.set_pwm(50.0)
    hw.inject_fault("pilot-short")
    assert hw.pilot.read() == PilotReading(CpState.E, diode_ok=False)
    hw.pilot.set_state_f()  # a short to PE pulls CP to 0 V whatever the EVSE drives
    assert hw.pilot.read().state is CpState.E
    hw.clear_fault("pilot-short")
    hw.pilot.set_pwm(50.0)
    assert hw.pilot.read() == PilotReading(CpState.C, diode_ok=True)
    hw.inject_fault("diode")
    assert hw.pilot.read() == PilotReading(CpState.C, diode_ok=False)
    assert hw.active_faults == frozenset({"diode"})
    hw.clear_fault("diode")
    assert hw.pilot.read() == PilotReading(CpState.C, diode_ok=True)
    assert hw.active_faults == frozenset()


def test_pilot_short_stops_the_car_drawing() -> None:
    hw = make_hw(FakeClock(), phases=1)
    start_charging(hw, 50.0)
    assert hw.snapshot()["power_w"] == pytest.approx(30.0 * 230.0)
    hw.inject_fault("pilot-short")  # the car no longer sees any PWM
    assert hw.snapshot()["power_w"] == 0.0


# ------------------------------------------------------------------------ drawing power


async def test_car_draws_only_when_asking_closed_and_offered() -> None:
    hw = make_hw(FakeClock(), phases=3)
    hw.plug()
    hw.pilot.set_pwm(25.0)  # 15 A
    assert (await hw.meter.read()).power_w == 0.0  # contactor still open
    hw.contactor.set_closed(True)
    reading = await hw.meter.read()
    assert reading.current_a == pytest.approx((15.0, 15.0, 15.0))
    assert reading.power_w == pytest.approx(15.0 * 230.0 * 3)  # 10350 W
    assert reading.voltage_v == (230.0, 230.0, 230.0)
    hw.set_ev_state(CpState.B)  # paused car
    assert (await hw.meter.read()).power_w == 0.0
    hw.set_ev_state(CpState.C)
    hw.pilot.set_steady()  # a stubborn car without PWM obeys the pilot
    assert hw.pilot.read().state is CpState.C
    assert (await hw.meter.read()).power_w == 0.0
    hw.pilot.set_pwm(25.0)
    hw.set_ev_state(CpState.D)  # ventilation requested: still charges
    assert (await hw.meter.read()).power_w == pytest.approx(10350.0)
    hw.contactor.set_closed(False)
    reading = await hw.meter.read()
    assert reading.power_w == 0.0
    assert reading.current_a == (0.0, 0.0, 0.0)


async def test_current_is_the_smaller_of_offer_and_car_maximum() -> None:
    hw = make_hw(FakeClock(), phases=1, ev_max_current_a=16.0)
    start_charging(hw, 50.0)  # offers 30 A
    assert (await hw.meter.read()).current_a == (16.0,)
    hw.pilot.set_pwm(20.0)  # offers 12 A
    assert (await hw.meter.read()).current_a == pytest.approx((12.0,))


@pytest.mark.parametrize(
    ("phases", "ev_phases", "currents", "power_w"),
    [
        (1, None, (32.0,), 7360.0),
        (1, 3, (32.0,), 7360.0),  # a 3-phase car on a 1-phase point uses one phase
        (3, None, (32.0, 32.0, 32.0), 22080.0),
        (3, 1, (32.0, 0.0, 0.0), 7360.0),
        (3, 2, (32.0, 32.0, 0.0), 14720.0),
    ],
)
async def test_power_on_one_and_three_phases(
    phases: int, ev_phases: int | None, currents: tuple[float, ...], power_w: float
) -> None:
    hw = make_hw(FakeClock(), phases=phases, ev_phases=ev_phases)
    start_charging(hw, 60.0)  # offers 36 A, the car takes its 32 A
    reading = await hw.meter.read()
    assert reading.current_a == currents
    assert reading.power_w == power_w
    assert reading.voltage_v == (230.0,) * phases


# ------------------------------------------------------------------------------ meter


async def test_meter_integrates_power_over_the_clock() -> None:
    clock = FakeClock()
    hw = make_hw(clock, phases=1)
    start_charging(hw, 60.0)  # 32 A x 230 V = 7360 W
    clock.advance(3600.0)
    assert (await hw.meter.read()).energy_import_wh == 7360.0
    hw.pilot.set_pwm(25.0)  # 15 A x 230 V = 3450 W from now on
    clock.advance(1800.0)
    assert (await hw.meter.read()).energy_import_wh == 7360.0 + 1725.0
    hw.contactor.set_closed(False)
    clock.advance(1800.0)
    assert (await hw.meter.read()).energy_import_wh == 9085.0


async def test_register_is_persisted_and_read_on_by_a_new_instance(tmp_path: Path) -> None:
    clock = FakeClock()
    hw = make_hw(clock, phases=1, state_dir=tmp_path)
    register = tmp_path / "mock-meter-1.json"
    assert (await hw.meter.read()).energy_import_wh == 0.0
    assert not register.exists()  # an idle meter writes nothing
    start_charging(hw, 60.0)
    clock.advance(0.5)
    # A value the meter answered is on its register first: a kill cannot take it back.
    answered = (await hw.meter.read()).energy_import_wh
    assert json.loads(register.read_text())["energy_import_wh"] == answered == 7360.0 / 7200
    clock.advance(3599.5)
    assert (await hw.meter.read()).energy_import_wh == 7360.0
    assert json.loads(register.read_text())["energy_import_wh"] == 7360.0
    assert leftover_temp_files(tmp_path) == []  # the temporary file was renamed into place
    clock.advance(36.0)  # +73.6 Wh, not yet read
    await hw.meter.shutdown()
    assert json.loads(register.read_text())["energy_import_wh"] == pytest.approx(7433.6)

    restarted = make_hw(clock, phases=1, state_dir=tmp_path)
    assert (await restarted.meter.read()).energy_import_wh == pytest.approx(7433.6)
    start_charging(restarted, 60.0)
    clock.advance(3600.0)
    assert (await restarted.meter.read()).energy_import_wh == pytest.approx(7433.6 + 7360.0)


async def test_unwritable_state_dir_is_logged_and_the_meter_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    state_dir = tmp_path / "state"  # not there yet: a new meter
    clock = FakeClock()
    hw = make_hw(clock, phases=1, state_dir=state_dir)
    state_dir.write_text("a file where the state directory should be")
    start_charging(hw, 60.0)
    clock.advance(3600.0)
    with caplog.at_level(logging.WARNING, logger="drivers.mock"):
        assert (await hw.meter.read()).energy_import_wh == 7360.0
    assert "cannot save register" in caplog.text


def test_unreadable_register_is_an_error_not_a_new_meter(tmp_path: Path) -> None:
    # Starting from 0 Wh would later overwrite a register that may well be intact.
    not_a_dir = tmp_path / "occupied"
    not_a_dir.write_text("a file where the state directory should be")
    with pytest.raises(OSError):
        make_hw(FakeClock(), state_dir=not_a_dir)


async def test_register_without_state_dir_is_in_memory(tmp_path: Path) -> None:
    clock = FakeClock()
    hw = make_hw(clock, phases=1, state_dir=None)
    start_charging(hw, 60.0)
    clock.advance(3600.0)
    assert (await hw.meter.read()).energy_import_wh == 7360.0
    await hw.meter.shutdown()
    assert (await make_hw(clock, phases=1).meter.read()).energy_import_wh == 0.0


@pytest.mark.parametrize(
    "content",
    [b"not json", b'{"energy_import_wh": -5}', b'{"other": 1}', b"[1, 2]", b"\xff\xfe"],
)
async def test_corrupt_register_starts_from_zero_with_a_warning(
    tmp_path: Path, content: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "mock-meter-1.json").write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="drivers.mock"):
        hw = make_hw(FakeClock(), state_dir=tmp_path)
    assert (await hw.meter.read()).energy_import_wh == 0.0
    assert "corrupt" in caplog.text


async def test_meter_fault_raises_and_the_register_keeps_counting() -> None:
    clock = FakeClock()
    hw = make_hw(clock, phases=1)
    start_charging(hw, 60.0)
    clock.advance(1800.0)
    assert (await hw.meter.read()).energy_import_wh == 3680.0
    hw.inject_fault("meter")
    clock.advance(1800.0)
    with pytest.raises(MeterError):
        await hw.meter.read()
    assert hw.snapshot()["energy_wh"] == 7360.0  # what the meter's own display shows
    hw.clear_fault("meter")
    assert (await hw.meter.read()).energy_import_wh == 7360.0


async def test_meter_latency_models_a_slow_bus() -> None:
    hw = make_hw(FakeClock(), meter_latency_s=0.05)
    started = time.monotonic()
    await hw.meter.read()
    assert time.monotonic() - started >= 0.05


# -------------------------------------------------------------------------- contactor


async def test_weld_keeps_the_contacts_closed_after_open() -> None:
    hw = make_hw(FakeClock(), phases=1)
    start_charging(hw, 60.0)
    hw.inject_fault("weld")
    hw.contactor.set_closed(False)
    assert hw.contactor.commanded_closed is False
    assert hw.contactor.feedback_closed() is True
    assert (await hw.meter.read()).power_w == 7360.0  # the car still draws through the weld
    hw.clear_fault("weld")
    assert hw.contactor.feedback_closed() is False
    assert (await hw.meter.read()).power_w == 0.0


def test_weld_while_open_welds_on_the_next_close() -> None:
    hw = make_hw(FakeClock())
    hw.inject_fault("weld")
    assert hw.contactor.feedback_closed() is False
    hw.contactor.set_closed(True)
    hw.contactor.set_closed(False)
    assert hw.contactor.feedback_closed() is True


def test_contactor_history_is_bounded() -> None:
    clock = FakeClock(0.0)
    hw = make_hw(clock)
    for i in range(HISTORY_LENGTH + 5):
        clock.now = float(i)
        hw.contactor.set_closed(i % 2 == 0)
    history = hw.contactor.history
    assert len(history) == HISTORY_LENGTH == 1000
    assert history[0] == (5.0, False)
    assert history[-1] == (1004.0, True)


def test_shutdown_leaves_pilot_in_f_and_contactor_open() -> None:
    hw = make_hw(FakeClock())
    start_charging(hw, 50.0)
    hw.pilot.shutdown()
    hw.contactor.shutdown()
    assert hw.pilot.output is PilotOutput.STATE_F
    assert hw.contactor.commanded_closed is False
    assert hw.contactor.feedback_closed() is False


# -------------------------------------------------------------------------- listeners


def test_pilot_listener_is_called_after_each_change_outside_the_lock() -> None:
    hw = make_hw(FakeClock())
    seen: list[CpState] = []
    # Reading back from inside the listener would deadlock if it ran under the lock.
    hw.pilot.set_listener(lambda: seen.append(hw.pilot.read().state))
    hw.plug()
    hw.pilot.set_pwm(50.0)
    hw.set_ev_state(CpState.B)
    hw.inject_fault("pilot-short")
    hw.clear_fault("pilot-short")
    hw.contactor.set_closed(True)  # does not alter the reading: no call
    hw.unplug()
    assert seen == [CpState.B, CpState.C, CpState.B, CpState.E, CpState.B, CpState.A]
    hw.pilot.set_listener(None)
    hw.plug()
    assert len(seen) == 6


def test_listener_called_from_the_thread_that_made_the_change() -> None:
    hw = make_hw(FakeClock())
    threads: list[str] = []
    hw.pilot.set_listener(lambda: threads.append(threading.current_thread().name))
    worker = threading.Thread(target=hw.plug, name="bench")
    worker.start()
    worker.join()
    assert threads == ["bench"]
    assert hw.pilot.read().state is CpState.B


def test_rcd_trip_calls_its_listener() -> None:
    hw = make_hw(FakeClock())
    calls: list[bool] = []
    hw.rcd.set_listener(lambda: calls.append(hw.rcd.tripped()))
    assert hw.rcd.tripped() is False
    hw.inject_fault("rcd")
    hw.inject_fault("overtemp")  # not the RCD's business
    hw.clear_fault("rcd")
    assert calls == [True, False]


# ------------------------------------------------------------- lock, temperature, faults


async def test_lock_follows_commands_unless_faulted() -> None:
    hw = make_hw(FakeClock())
    lock = hw.lock
    assert lock is not None
    assert lock.locked is False
    assert await lock.lock() is True
    assert lock.locked is True
    hw.inject_fault("lock")
    assert await lock.unlock() is False
    assert lock.locked is True  # stuck
    hw.clear_fault("lock")
    assert await lock.unlock() is True
    assert lock.locked is False


def test_temperature_normal_and_overtemp() -> None:
    hw = make_hw(FakeClock())
    assert hw.temperature.read_c() == 35.0
    hw.inject_fault("overtemp")
    assert hw.temperature.read_c() == 95.0
    hw.clear_fault("overtemp")
    assert hw.temperature.read_c() == 35.0


def test_unknown_fault_kind_lists_the_known_ones() -> None:
    hw = make_hw(FakeClock())
    with pytest.raises(ValueError, match=r"unknown fault kind 'fire'.*pilot-short"):
        hw.inject_fault("fire")
    with pytest.raises(ValueError, match="unknown fault kind 'reader'"):
        hw.clear_fault("reader")  # the card reader is not a connector's
    with pytest.raises(ValueError, match="unknown fault kind 'weld'"):
        MockCardReader().inject_fault("weld")
    assert hw.active_faults == frozenset()
    assert (
        frozenset({"rcd", "weld", "pilot-short", "diode", "meter", "lock", "overtemp"})
        == CONNECTOR_FAULT_KINDS
    )


def test_snapshot_describes_the_whole_connector() -> None:
    clock = FakeClock()
    hw = make_hw(clock, phases=3, ev_phases=1)
    start_charging(hw, 60.0)
    hw.inject_fault("diode")
    clock.advance(1800.0)
    snap = hw.snapshot()
    assert snap == {
        "connector_id": 1,
        "plugged": True,
        "ev_mode": "auto",
        "ev_state": "C",
        "cp_state": "C",
        "diode_ok": False,
        "pilot_output": "pwm",
        "duty_percent": 60.0,
        "offered_a": 36.0,
        "contactor_commanded": True,
        "contactor_feedback": True,
        "contactor_welded": False,
        "power_w": 7360.0,
        "current_a": [32.0, 0.0, 0.0],
        "energy_wh": 3680.0,
        "locked": False,
        "rcd_tripped": False,
        "temperature_c": 35.0,
        "faults": ["diode"],
    }
    json.dumps(snap)  # ready for the control socket


def test_concurrent_bench_thread_and_reader() -> None:
    hw = make_hw(FakeClock())
    hw.pilot.set_pwm(50.0)
    errors: list[BaseException] = []

    def bench() -> None:
        try:
            for _ in range(2000):
                hw.plug()
                hw.unplug()
        except BaseException as exc:  # pragma: no cover - only on a bug
            errors.append(exc)

    worker = threading.Thread(target=bench)
    worker.start()
    states: set[CpState] = set()
    while worker.is_alive():
        states.add(hw.pilot.read().state)
    worker.join()
    assert errors == []
    assert states <= {CpState.A, CpState.C}  # never B: the car answers PWM atomically


# ------------------------------------------------------------------------ card reader


async def test_swipe_before_read_is_not_lost() -> None:
    reader = MockCardReader()
    reader.swipe("TAG-1")
    reader.swipe("TAG-2")
    assert await reader.read_card() == "TAG-1"
    assert await reader.read_card() == "TAG-2"


async def test_waiting_reader_gets_a_swipe_from_another_thread() -> None:
    reader = MockCardReader()
    task = asyncio.create_task(reader.read_card())
    await asyncio.sleep(0.01)
    assert not task.done()
    threading.Thread(target=reader.swipe, args=("04A1B2C3",)).start()
    assert await asyncio.wait_for(task, timeout=2.0) == "04A1B2C3"


async def test_cancelled_reader_does_not_swallow_a_card() -> None:
    reader = MockCardReader()
    task = asyncio.create_task(reader.read_card())
    await asyncio.sleep(0)
    reader.swipe("TAG-1")
    task.cancel()  # cancelled before the wake-up ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.wait_for(reader.read_card(), timeout=1.0) == "TAG-1"


async def test_reader_fault_wakes_a_waiting_reader_and_ignores_swipes() -> None:
    reader = MockCardReader()
    task = asyncio.create_task(reader.read_card())
    await asyncio.sleep(0.01)
    reader.inject_fault("reader")
    assert not reader.healthy
    assert reader.active_faults == frozenset({"reader"})
    with pytest.raises(ReaderError):
        await asyncio.wait_for(task, timeout=1.0)
    reader.swipe("IGNORED")
    with pytest.raises(ReaderError):
        await reader.read_card()
    reader.clear_fault("reader")
    assert reader.healthy
    reader.swipe("TAG-OK")
    assert await asyncio.wait_for(reader.read_card(), timeout=1.0) == "TAG-OK"


async def test_reader_fault_drops_buffered_swipes() -> None:
    reader = MockCardReader()
    reader.swipe("STALE")
    reader.inject_fault("reader")
    reader.clear_fault("reader")
    reader.swipe("FRESH")
    assert await asyncio.wait_for(reader.read_card(), timeout=1.0) == "FRESH"


async def test_reader_shutdown_refuses_further_reads() -> None:
    reader = MockCardReader()
    reader.swipe("TAG-1")
    await reader.shutdown()
    with pytest.raises(ReaderError):
        await reader.read_card()
