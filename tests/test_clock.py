"""The wall clock of a board without an RTC: untrusted until NTP or the CSMS tells the time,
then immune to steps of the system clock; and the correction of timestamps made before."""

from __future__ import annotations

import copy
import ctypes
import os
import types
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evse_daemon import clock as clock_module
from evse_daemon.clock import (
    CSMS_TIME_TOLERANCE_S,
    FakeClock,
    SystemClock,
    correction,
    iso_utc,
    kernel_clock_synchronized,
    stamp,
)
from evse_daemon.ocpp16.adapter import shift_timestamps

TRUE_START = datetime(2026, 11, 21, 12, 0, tzinfo=UTC)
# A Pi booted without network: fake-hwclock's time of the last shutdown, 3 years stale.
STALE = timedelta(days=3 * 365)


class Machine:
    """The board's system clock (settable, like an unsynchronized one) and its monotonic
    clock, and whether NTP says it is synchronized."""

    def __init__(self) -> None:
        self.system = TRUE_START - STALE
        self.mono = 500.0
        self.synced = False

    def clock(self) -> SystemClock:
        return SystemClock(
            synchronized=lambda: self.synced,
            system_utc=lambda: self.system,
            monotonic=lambda: self.mono,
        )

    def run(self, seconds: float) -> None:
        self.system += timedelta(seconds=seconds)
        self.mono += seconds


def test_untrusted_until_the_csms_tells_the_time_then_runs_on_the_monotonic_clock() -> None:
    machine = Machine()
    clock = machine.clock()
    assert not clock.trusted
    assert clock.utc_now() == TRUE_START - STALE  # the system's guess meanwhile

    clock.adjust_to(TRUE_START)
    assert clock.trusted
    assert clock.utc_now() == TRUE_START
    machine.run(90)
    assert clock.utc_now() == TRUE_START + timedelta(seconds=90)
    # Something steps the unsynchronized system clock: the time does not move.
    machine.system += timedelta(days=400)
    assert clock.utc_now() == TRUE_START + timedelta(seconds=90)
    machine.system -= timedelta(days=800)
    assert clock.utc_now() == TRUE_START + timedelta(seconds=90)


def test_csms_times_within_its_latency_do_not_jitter_the_clock() -> None:
    machine = Machine()
    clock = machine.clock()
    clock.adjust_to(TRUE_START)
    machine.run(300)
    clock.adjust_to(TRUE_START + timedelta(seconds=300 + CSMS_TIME_TOLERANCE_S / 2))
    assert clock.utc_now() == TRUE_START + timedelta(seconds=300)
    clock.adjust_to(TRUE_START + timedelta(seconds=330))  # a real disagreement: taken
    assert clock.utc_now() == TRUE_START + timedelta(seconds=330)


def test_once_ntp_has_synced_the_system_clock_is_the_time() -> None:
    machine = Machine()
    clock = machine.clock()
    clock.adjust_to(TRUE_START)
    machine.run(20)  # the probe's answer is cached for SYNC_PROBE_CACHE_S
    machine.system = TRUE_START + timedelta(seconds=20.5)
    machine.synced = True
    assert clock.trusted
    assert clock.utc_now() == TRUE_START + timedelta(seconds=20.5)
    clock.adjust_to(TRUE_START + timedelta(hours=5))  # a CSMS with a wrong clock: NTP wins
    assert clock.utc_now() == TRUE_START + timedelta(seconds=20.5)


def test_a_message_made_before_the_time_was_known_is_corrected_exactly() -> None:
    machine = Machine()
    clock = machine.clock()
    machine.run(40)
    made = stamp(clock, "boot-1")
    assert made is not None and made.wall == TRUE_START - STALE + timedelta(seconds=40)
    assert correction(clock, made, "boot-1") is None  # still nothing known
    machine.run(600)
    clock.adjust_to(TRUE_START + timedelta(seconds=640))
    error = correction(clock, made, "boot-1")
    assert error == STALE
    assert made.wall + error == TRUE_START + timedelta(seconds=40)
    # Monotonic times of another boot mean nothing now: no correction.
    assert correction(clock, made, "boot-2") is None
    # Made while the time was known: nothing to correct, no stamp.
    assert stamp(clock, "boot-1") is None


def test_an_error_within_the_tolerance_is_not_corrected() -> None:
    machine = Machine()
    machine.system = TRUE_START
    clock = machine.clock()
    made = stamp(clock, "b")
    assert made is not None
    machine.run(10)
    clock.adjust_to(TRUE_START + timedelta(seconds=10.2))
    assert correction(clock, made, "b") is None


def test_fake_clock_steps_only_the_wall() -> None:
    clock = FakeClock(TRUE_START, trusted=False)
    assert stamp(clock, "b") is not None
    before = clock.monotonic()
    clock.step_wall(-3600)
    assert clock.monotonic() == before
    assert clock.utc_now() == TRUE_START - timedelta(hours=1)


def test_the_kernel_probe_trusts_timesyncd_s_flag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flag = tmp_path / "synchronized"
    flag.touch()
    monkeypatch.setattr(clock_module, "TIMESYNCD_FLAG", str(flag))
    assert kernel_clock_synchronized() is True


def test_without_the_flag_the_kernel_probe_asks_adjtimex_without_privileges(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(clock_module, "TIMESYNCD_FLAG", str(tmp_path / "absent"))
    # What the kernel says, asked here independently: adjtimex(2) with modes = 0 only reads
    # (no privileges needed); its return value is the clock state, TIME_ERROR (5) while
    # unsynchronized. The buffer is larger than any struct timex.
    libc = ctypes.CDLL(None, use_errno=True)
    state = libc.adjtimex(ctypes.create_string_buffer(1024))
    assert state >= 0, os.strerror(ctypes.get_errno())
    assert kernel_clock_synchronized() is (state != 5)


class _FakeLibc:
    def __init__(self, state: int) -> None:
        self.state = state

    def adjtimex(self, _buffer: object) -> int:
        return self.state


@pytest.mark.parametrize(
    ("state", "synchronized"),
    [(0, True), (1, True), (4, True), (5, False), (-1, False), (None, False)],
    ids=["TIME_OK", "TIME_INS", "TIME_WAIT", "TIME_ERROR", "failed", "no libc"],
)
def test_without_the_flag_adjtimex_s_clock_state_decides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: int | None, synchronized: bool
) -> None:
    def cdll(*_args: object, **_kwargs: object) -> _FakeLibc:
        if state is None:
            raise OSError("no C library")
        return _FakeLibc(state)

    fake_ctypes = types.SimpleNamespace(CDLL=cdll, create_string_buffer=ctypes.create_string_buffer)
    monkeypatch.setattr(clock_module, "TIMESYNCD_FLAG", str(tmp_path / "absent"))
    monkeypatch.setattr(clock_module, "ctypes", fake_ctypes)
    assert kernel_clock_synchronized() is synchronized


@pytest.mark.parametrize("action", ["StartTransaction", "StopTransaction", "MeterValues"])
def test_shift_timestamps_moves_every_timestamp_of_a_message(action: str) -> None:
    then = TRUE_START - STALE
    value = {"timestamp": iso_utc(then), "sampledValue": [{"value": "1"}]}
    payload: dict[str, object]
    if action == "StartTransaction":
        payload = {"connector_id": 1, "timestamp": iso_utc(then), "meter_start": 0}
    elif action == "StopTransaction":
        payload = {"timestamp": iso_utc(then), "transaction_data": [value, value]}
    else:
        payload = {"connector_id": 1, "meter_value": [value]}
    before = copy.deepcopy(payload)
    shifted = shift_timestamps(payload, STALE)
    stamps = [shifted["timestamp"]] if "timestamp" in shifted else []
    for key in ("meter_value", "transaction_data"):
        values = shifted.get(key)
        if isinstance(values, list):
            stamps += [v["timestamp"] for v in values]
    assert stamps and set(stamps) == {iso_utc(TRUE_START)}
    assert payload == before  # the original is untouched, nested values too
