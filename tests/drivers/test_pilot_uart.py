"""UartPilot against an emulated pilot co-processor on the far end of a socat pty pair.

The emulator (``pilot_mcu_emulator.McuEmulator``) follows ``hardware/pilot-uart-protocol.md``,
including the safety rules a conforming firmware must follow; the tests of those rules document
what real firmware must do.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import serial  # type: ignore[import-untyped]

from drivers.pilot_uart import (
    ACK_TIMEOUT_S,
    DUTY_RESOLUTION_PERCENT,
    FAULT_READING,
    HEARTBEAT_INTERVAL_S,
    SILENCE_TIMEOUT_S,
    LineDecoder,
    UartPilot,
    crc8,
    encode_line,
    open_port,
    uart_pilot_from_options,
)
from drivers.protocols import CpState, PilotDriver, PilotOutput, PilotReading
from evse_daemon.iec61851 import current_for_duty, duty_percent_for_current
from tests.drivers.pilot_mcu_emulator import (
    MCU_WATCHDOG_S,
    McuEmulator,
    socat_pty_pair,
    spec_crc8,
    wait_until,
)

# socat is installed by `scripts/bootstrap --test`: without it these tests fail, not skip.

REPO = Path(__file__).resolve().parents[2]
# Bounds waits for what must happen: only a hang, not a slow machine, reaches it.
WAIT_S = 10.0


# ------------------------------------------------------------------------ fixtures


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    with socat_pty_pair(tmp_path) as pair:
        yield pair


@pytest.fixture
def mcu(pty_pair: tuple[Path, Path]) -> Iterator[McuEmulator]:
    emulator = McuEmulator(pty_pair[1])
    yield emulator
    emulator.close()


@pytest.fixture
def pilot(pty_pair: tuple[Path, Path], mcu: McuEmulator) -> Iterator[UartPilot]:
    driver = uart_pilot_from_options({"device": str(pty_pair[0])})
    # Up: it commanded F at once, and the co-processor acknowledged it.
    wait_until(lambda: driver.output_confirmed and mcu.received != [])
    yield driver
    driver.shutdown()


def healthy(pilot: UartPilot) -> bool:
    return pilot.fault is None


# ------------------------------------------------------------------------ framing


def test_crc_is_crc8_smbus_in_both_implementations() -> None:
    assert crc8(b"123456789") == spec_crc8(b"123456789") == 0xF4
    assert encode_line("2A PWM 2666") == b"$2A PWM 2666*A1\n"  # the spec's example


def test_decoder_keeps_valid_lines_only() -> None:
    decoder = LineDecoder()
    good = encode_line("00 ST C 1 X1")
    stream = (
        b"\x00\xffnoise"
        + good.replace(b"C", b"D")  # one flipped field: CRC fails
        + b"$00 ST C 1 X1"  # truncated: the next "$" restarts
        + good
        + b"$00 ST B - X1*zz\n"  # not hex
        + good.replace(b"\n", b"\r\n")  # CRLF is fine
        + good.lower()  # lower-case hex digits are not the spec's
        + b"$"
        + b"A" * 60
        + b"\n"  # overlong
        + b"$00 ST \x01C*00\n"  # non-printable
    )
    assert list(decoder.feed(stream)) == ["00 ST C 1 X1", "00 ST C 1 X1"]
    assert decoder.discarded == 6


# ------------------------------------------------------------------------ outputs


def test_is_a_pilot_driver_and_starts_in_state_f(pilot: UartPilot, mcu: McuEmulator) -> None:
    assert isinstance(pilot, PilotDriver)
    assert pilot.output is PilotOutput.STATE_F
    assert pilot.duty_percent == 0.0
    assert pilot.duty_resolution_percent == DUTY_RESOLUTION_PERCENT == 0.01
    assert mcu.received[0].endswith(" F")  # the very first line it sent
    assert mcu.output == "F"
    assert pilot.read() == PilotReading(CpState.F)


@pytest.mark.parametrize(
    ("duty", "units"),
    [(26.66, 2666), (10.0, 1000), (8.0, 800), (96.0, 9600), (53.33, 5333), (26.669, 2666)],
)
def test_set_pwm_applies_the_exact_duty(
    pilot: UartPilot, mcu: McuEmulator, duty: float, units: int
) -> None:
    pilot.set_pwm(duty)
    assert pilot.output is PilotOutput.PWM
    assert pilot.duty_percent == units / 100  # what is driven: rounded down, never up
    wait_until(lambda: pilot.output_confirmed)
    assert mcu.output == f"PWM {units}"
    assert healthy(pilot)


def test_controller_duties_reach_the_line_unrounded(pilot: UartPilot, mcu: McuEmulator) -> None:
    """The controller rounds down to ``duty_resolution_percent``; the line carries exactly that."""
    for current_a in (6.0, 13.0, 16.0, 20.0, 32.0, 51.0, 63.0, 80.0):
        duty = duty_percent_for_current(current_a, pilot.duty_resolution_percent)
        pilot.set_pwm(duty)
        units = round(duty * 100)
        assert abs(duty * 100 - units) < 1e-6  # already a whole step
        wait_until(lambda u=units: mcu.output == f"PWM {u}")  # type: ignore[misc]
        assert current_for_duty(units / 100) <= current_a + 1e-9  # never more than the offer
        assert current_for_duty(units / 100) > current_a - 0.01
    assert healthy(pilot)


def test_bad_duty_is_refused_and_nothing_is_sent(pilot: UartPilot, mcu: McuEmulator) -> None:
    pilot.set_steady()
    wait_until(lambda: pilot.output_confirmed)
    for bad in (0.0, 100.0, -5.0, float("nan"), 0.005):
        with pytest.raises(ValueError):
            pilot.set_pwm(bad)
    assert pilot.output is PilotOutput.STEADY
    time.sleep(0.05)
    assert mcu.output == "X1"


def test_steady_and_state_f(pilot: UartPilot, mcu: McuEmulator) -> None:
    mcu.set_ev(CpState.B)
    pilot.set_steady()
    assert pilot.output is PilotOutput.STEADY
    wait_until(lambda: mcu.output == "X1" and pilot.read().state is CpState.B)
    pilot.set_pwm(50.0)
    wait_until(lambda: mcu.output == "PWM 5000")
    wait_until(lambda: pilot.read().state is CpState.B and pilot.output_confirmed)
    calls: list[PilotReading] = []
    pilot.set_listener(lambda: calls.append(pilot.read()))
    pilot.set_state_f()
    # Under -12 V the line can read nothing but F: reported at once, listener called inside.
    assert calls == [PilotReading(CpState.F)]
    assert pilot.read() == PilotReading(CpState.F)
    assert (pilot.output, pilot.duty_percent) == (PilotOutput.STATE_F, 0.0)
    wait_until(lambda: mcu.output == "F" and pilot.output_confirmed)
    time.sleep(2 * HEARTBEAT_INTERVAL_S)
    assert calls == [PilotReading(CpState.F)]  # the co-processor's reports agree
    assert healthy(pilot)


def test_sync_methods_do_not_wait_for_the_coprocessor(pilot: UartPilot, mcu: McuEmulator) -> None:
    # Frozen, the co-processor acknowledges nothing: a call that waited for its
    # acknowledgement would take at least the ack timeout, these calls together longer than
    # the generous wait below. (How fast they are is a benchmark's business, not a test's.)
    calls = 200
    assert calls * ACK_TIMEOUT_S > 2 * WAIT_S
    mcu.frozen = True

    def call_them() -> None:
        for i in range(calls):
            if i % 3 == 0:
                pilot.set_pwm(10.0 + i / 10)
            elif i % 3 == 1:
                pilot.set_steady()
            else:
                pilot.read()

    caller = threading.Thread(target=call_them, daemon=True)
    caller.start()
    caller.join(WAIT_S)
    assert not caller.is_alive(), "the calls wait for the co-processor"
    assert not pilot.output_confirmed  # nothing was acknowledged meanwhile
    mcu.frozen = False
    wait_until(lambda: pilot.output_confirmed and mcu.output == "X1", timeout=WAIT_S)


# ------------------------------------------------------------------------ readings


def test_ev_states_reach_read_and_the_listener_from_the_driver_thread(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    calls: list[tuple[str, PilotReading]] = []
    pilot.set_listener(lambda: calls.append((threading.current_thread().name, pilot.read())))
    pilot.set_pwm(26.66)
    for state in (CpState.B, CpState.C, CpState.D, CpState.B, CpState.A):
        mcu.set_ev(state)
        wait_until(lambda s=state: calls != [] and calls[-1][1] == PilotReading(s))  # type: ignore[misc]
        assert pilot.read() == PilotReading(state)
    assert {name for name, _ in calls} == {pilot._thread.name}  # the worker, not this one
    pilot.set_listener(None)
    mcu.set_ev(CpState.C)
    wait_until(lambda: pilot.read().state is CpState.C)
    time.sleep(0.03)
    assert calls[-1][1].state is CpState.A  # nothing after the listener was removed


async def test_listener_wakes_an_event_loop(pilot: UartPilot, mcu: McuEmulator) -> None:
    loop = asyncio.get_running_loop()
    changed = asyncio.Event()

    def listener() -> None:  # what the app's listener does: schedule, never act
        loop.call_soon_threadsafe(changed.set)

    pilot.set_listener(listener)
    pilot.set_steady()
    mcu.set_ev(CpState.B)
    async with asyncio.timeout(1.0):
        while pilot.read().state is not CpState.B:  # F → A (x1 applied) → B, or F → B
            await changed.wait()
            changed.clear()


def test_missing_diode(pilot: UartPilot, mcu: McuEmulator) -> None:
    mcu.set_ev(CpState.C, diode_missing=True)
    pilot.set_pwm(26.66)
    wait_until(lambda: pilot.read() == PilotReading(CpState.C, diode_ok=False))
    mcu.set_ev(CpState.C)
    wait_until(lambda: pilot.read() == PilotReading(CpState.C, diode_ok=True))
    # Under steady +12 V there is no negative plateau: "not measured" reads as no fault.
    mcu.set_ev(CpState.B, diode_missing=True)
    pilot.set_steady()
    wait_until(lambda: mcu.output == "X1")
    wait_until(lambda: pilot.read() == PilotReading(CpState.B, diode_ok=True))


def test_cp_short_reads_e(pilot: UartPilot, mcu: McuEmulator) -> None:
    pilot.set_pwm(26.66)
    mcu.set_ev(CpState.E)
    wait_until(lambda: pilot.read() == PilotReading(CpState.E, diode_ok=False))
    assert healthy(pilot)  # a real short, reported by a healthy co-processor


def test_corrupted_lines_are_ignored(pilot: UartPilot, mcu: McuEmulator) -> None:
    mcu.set_ev(CpState.B)
    pilot.set_pwm(26.66)
    wait_until(lambda: pilot.read().state is CpState.B and pilot.output_confirmed)
    calls: list[PilotReading] = []
    pilot.set_listener(lambda: calls.append(pilot.read()))
    good_c = encode_line("00 ST C 1 PWM 2666")
    mcu.muted = True  # for a moment (< 300 ms) only what the test injects reaches the driver
    for raw in (
        good_c.replace(b"*", b"*0")[:-4] + b"FF\n",  # wrong CRC
        good_c.replace(b"ST C", b"ST D"),  # a flipped field: CRC fails
        good_c[:-5] + b"\n",  # CRC missing
        good_c[:12],  # truncated (then the next line's "$" restarts)
        b"\x00\xff\xfe garbage ~~~\n",
        b"$$$***\n\n",
        good_c.replace(b"\n", b"")[:-1] + b"$",
        encode_line("00 ST Q 1 PWM 2666"),  # good CRC, no such state
        encode_line("00 ST C 1 PWM 0"),  # good CRC, duty out of range
        encode_line("00 ST C"),  # good CRC, fields missing
        encode_line("00 OK X1"),  # an ack of nothing
    ):
        mcu.inject(raw)
        mcu.inject(encode_line("00 ST B 1 PWM 2666"))  # the truth, right after each
    time.sleep(0.05)
    assert pilot.read() == PilotReading(CpState.B)
    assert calls == []  # the reading never moved
    assert healthy(pilot)  # the good lines in between kept the link alive
    mcu.inject(good_c)  # and a good line is taken at once: muted, nothing else confirms it
    wait_until(lambda: calls[:1] == [PilotReading(CpState.C)], timeout=WAIT_S)
    mcu.muted = False
    wait_until(lambda: pilot.read() == PilotReading(CpState.B))


# ------------------------------------------------------------------------ co-processor faults


def test_silent_coprocessor_is_a_fault_after_the_silence_timeout(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    mcu.set_ev(CpState.C)
    pilot.set_pwm(26.66)
    wait_until(lambda: pilot.read().state is CpState.C)
    faulted_at: list[float] = []
    pilot.set_listener(
        lambda: faulted_at.append(time.monotonic()) if pilot.read() == FAULT_READING else None
    )
    last_line_at = mcu.mute()
    wait_until(lambda: faulted_at != [], timeout=WAIT_S)
    # Not before SILENCE_TIMEOUT_S since the last valid line (the driver heard it after it
    # was sent). How soon after is the spec's 310 ms, not something a shared machine keeps.
    assert faulted_at[0] - last_line_at >= SILENCE_TIMEOUT_S
    assert pilot.read() == FAULT_READING == PilotReading(CpState.E, diode_ok=False)
    assert pilot.fault is not None and "silent" in pilot.fault
    # It still listened all along: no watchdog, the output is what was commanded.
    assert mcu.output == "PWM 2666"
    mcu.muted = False
    wait_until(lambda: pilot.read() == PilotReading(CpState.C), timeout=WAIT_S)
    assert healthy(pilot)


def test_line_noise_is_no_sign_of_life(pilot: UartPilot, mcu: McuEmulator) -> None:
    mcu.muted = True
    start = time.monotonic()
    while time.monotonic() - start < SILENCE_TIMEOUT_S + 0.15:
        mcu.inject(b"$00 ST B 1 X1*00\n\x00garbage\n")
        time.sleep(0.02)
    assert pilot.read() == FAULT_READING


def test_unacknowledged_command_is_a_fault_then_recovers(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    mcu.set_ev(CpState.B)
    mcu.ignore_commands = True  # heartbeats still get through and are answered
    commanded_at = time.monotonic()
    pilot.set_steady()
    wait_until(lambda: pilot.read() == FAULT_READING, timeout=WAIT_S)
    assert time.monotonic() - commanded_at >= ACK_TIMEOUT_S  # not before the ack timeout
    assert pilot.fault is not None and "not acknowledged" in pilot.fault
    assert mcu.watchdog_fired_at is None  # heartbeats kept the co-processor's watchdog quiet
    assert mcu.output == "F"
    mcu.ignore_commands = False  # the command is repeated until it gets through
    wait_until(lambda: pilot.read() == PilotReading(CpState.B), timeout=WAIT_S)
    assert mcu.output == "X1" and healthy(pilot)


def test_a_lost_command_is_repeated_before_it_becomes_a_fault(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    mcu.drop_commands = 2
    pilot.set_pwm(40.0)
    start = time.monotonic()
    while time.monotonic() - start < 0.3:
        assert pilot.read() != FAULT_READING
        time.sleep(0.002)
    assert mcu.output == "PWM 4000" and healthy(pilot)


def test_acknowledged_duty_mismatch_is_a_fault(pilot: UartPilot, mcu: McuEmulator) -> None:
    mcu.set_ev(CpState.C)
    mcu.duty_clamp = 5000
    pilot.set_pwm(60.0)
    wait_until(lambda: pilot.read() == FAULT_READING, timeout=WAIT_S)
    # The acknowledgement itself is the fault (not its absence: "... not acknowledged").
    fault = pilot.fault
    assert fault is not None and fault.startswith("co-processor acknowledged "), fault
    assert "PWM 5000" in fault
    pilot.set_pwm(30.0)  # a command it can carry out clears it
    wait_until(lambda: pilot.read() == PilotReading(CpState.C))
    assert mcu.output == "PWM 3000"


def test_coprocessor_reset_is_a_fault_until_the_next_command(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    mcu.set_ev(CpState.C)
    pilot.set_pwm(26.66)
    wait_until(lambda: pilot.read().state is CpState.C and pilot.output_confirmed)
    mcu.boot()  # a brown-out: it comes back in F (rule 1), not in the commanded PWM
    wait_until(lambda: pilot.read() == FAULT_READING, timeout=WAIT_S)
    assert pilot.fault is not None and "drives 'F'" in pilot.fault
    # The controller's fault cycle: state F, then x1. Each is a new, acknowledged command.
    pilot.set_state_f()
    wait_until(lambda: pilot.read() == PilotReading(CpState.F))
    pilot.set_steady()
    wait_until(lambda: pilot.read() == PilotReading(CpState.C))  # the EV still wants energy
    assert mcu.output == "X1" and healthy(pilot)


# ------------------------------------------------------------------------ the host going away


def test_coprocessor_watchdog_and_noise_rules(
    pty_pair: tuple[Path, Path], mcu: McuEmulator
) -> None:
    """The spec's rules 2–4, driven by hand from the host end."""
    host = serial.Serial(str(pty_pair[0]), 115200, timeout=0.05)
    try:
        decoder = LineDecoder()
        replies: list[str] = []

        def read_replies_until(done: Callable[[list[str]], bool]) -> None:
            deadline = time.monotonic() + WAIT_S
            while not done(replies):
                assert time.monotonic() < deadline, f"not among the replies: {replies}"
                replies.extend(decoder.feed(host.read(max(1, host.in_waiting))))

        host.write(encode_line("01 X1"))
        wait_until(lambda: mcu.output == "X1", timeout=WAIT_S)
        fed_at = mcu.fed_at
        assert fed_at is not None
        # Broken lines neither act nor feed the watchdog: broken heartbeats go on until it
        # fires, which it never would if they fed it.
        host.write(b"$02 PWM 5000*00\n" + encode_line("03 PWM 5000")[:-4] + b"\n")
        deadline = time.monotonic() + WAIT_S
        while mcu.watchdog_fired_at is None:
            assert time.monotonic() < deadline, "the broken heartbeats fed the watchdog"
            host.write(b"$04 HB*FF\n")
            time.sleep(0.05)
        assert mcu.fed_at == fed_at
        assert mcu.watchdog_fired_at - fed_at >= MCU_WATCHDOG_S  # not before its time
        wait_until(lambda: mcu.output == "F", timeout=WAIT_S)
        assert [output for _, output in mcu.applied] == ["F", "X1", "F"]  # no PWM 5000
        read_replies_until(lambda r: r[-2:] == ["00 EVT WDOG", "00 ST F - F"])
        # F is sticky: heartbeats alone do not bring the old output back.
        for seq in range(5, 9):
            host.write(encode_line(f"{seq:02X} HB"))
        wait_until(lambda: "08 HB" in mcu.received, timeout=WAIT_S)
        assert mcu.output == "F"
        # Lines it cannot execute are answered with ER and change nothing.
        host.write(encode_line("09 PWM 0") + encode_line("0A DANCE"))
        read_replies_until(lambda r: "09 ER ARG" in r and "0A ER VERB" in r)
        assert mcu.output == "F"
    finally:
        host.close()


def test_stopped_heartbeats_make_the_coprocessor_drive_f(
    pilot: UartPilot, mcu: McuEmulator
) -> None:
    pilot.set_pwm(26.66)
    wait_until(lambda: mcu.output == "PWM 2666")
    pilot._stop_worker()  # the thread dies; the port stays open, nothing sends F
    wait_until(lambda: mcu.output == "F", timeout=WAIT_S)
    assert mcu.watchdog_fired_at is not None  # its watchdog drove F, not a command
    wait_until(lambda: "00 EVT WDOG" in mcu.sent, timeout=WAIT_S)
    # The host side, if still alive, sees silence: nobody reads the reports any more.
    wait_until(lambda: pilot.read() == FAULT_READING, timeout=WAIT_S)


def test_killed_daemon_makes_the_coprocessor_drive_f(
    pty_pair: tuple[Path, Path], mcu: McuEmulator
) -> None:
    script = (
        "import sys, time\n"
        "from drivers.pilot_uart import uart_pilot_from_options\n"
        f"p = uart_pilot_from_options({{'device': {str(pty_pair[0])!r}}})\n"
        "p.set_pwm(26.66)\n"
        "print('up', flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None and proc.stdout.readline() == "up\n"
        wait_until(lambda: mcu.output == "PWM 2666", timeout=WAIT_S)
        time.sleep(3 * HEARTBEAT_INTERVAL_S)  # heartbeats keep it up meanwhile
        assert mcu.output == "PWM 2666"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)
        wait_until(lambda: mcu.output == "F", timeout=WAIT_S)
        wait_until(lambda: mcu.sent[-2:] == ["00 EVT WDOG", "00 ST F - F"], timeout=WAIT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_shutdown_drives_f_and_releases_the_port(
    pty_pair: tuple[Path, Path], mcu: McuEmulator
) -> None:
    pilot = uart_pilot_from_options({"device": str(pty_pair[0]), "baudrate": 250000})
    pilot.set_pwm(26.66)
    wait_until(lambda: mcu.output == "PWM 2666")
    stopping = threading.Thread(target=pilot.shutdown, daemon=True)
    stopping.start()
    stopping.join(WAIT_S)
    assert not stopping.is_alive(), "shutdown waits forever"
    assert mcu.output == "F"  # acknowledged before shutdown returned, no watchdog needed
    assert mcu.watchdog_fired_at is None
    assert not pilot._thread.is_alive()
    assert pilot.read() == PilotReading(CpState.F) and pilot.fault is None
    pilot.shutdown()  # idempotent
    # The port is free again (it is opened exclusively).
    again = open_port(str(pty_pair[0]))
    again.close()


# ------------------------------------------------------------------------ options


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, "'device'"),
        ({"device": ""}, "'device'"),
        ({"device": 5}, "'device'"),
        ({"device": "/dev/x", "baudrate": 300}, "'baudrate'"),
        ({"device": "/dev/x", "baudrate": 2_000_000}, "'baudrate'"),
        ({"device": "/dev/x", "baudrate": 115200.0}, "'baudrate'"),
        ({"device": "/dev/x", "baudrate": "115200"}, "'baudrate'"),
        ({"device": "/dev/x", "baudrate": True}, "'baudrate'"),
        ({"device": "/dev/x", "baud": 9600}, "unknown option(s) baud"),
    ],
)
def test_bad_options_are_refused(options: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        uart_pilot_from_options(options)


def test_missing_device_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(serial.SerialException, match="nothing-here"):
        uart_pilot_from_options({"device": str(tmp_path / "nothing-here")})
