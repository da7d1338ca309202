"""An emulated pilot co-processor (``hardware/pilot-uart-protocol.md``) for the tests.

``McuEmulator`` is written from the spec, with its own framing and CRC code rather than the
driver's (a bug shared by both ends would hide itself), and follows the safety rules a
conforming firmware must: power-up in F, the 500 ms heartbeat watchdog, sticky F, line noise
doing nothing. ``socat_pty_pair`` gives the two ends of a serial line to put it and the driver on.
"""

from __future__ import annotations

import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import serial  # type: ignore[import-untyped]

from drivers.protocols import CpState
from tests.drivers.ptys import socat_pair

MCU_WATCHDOG_S = 0.5  # the spec's value, restated: the emulator is written from the spec


def wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> float:
    """Poll until ``predicate`` holds; return the time it took."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError("condition not met in time")
        time.sleep(0.002)
    return time.monotonic() - start


@contextlib.contextmanager
def socat_pty_pair(directory: Path) -> Iterator[tuple[Path, Path]]:
    """Two linked ptys, ``(host, mcu)``: what one end writes, the other reads."""
    with socat_pair(directory) as pair:
        yield pair.a, pair.b


def _crc8_table() -> list[int]:
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = ((c << 1) ^ 0x07) & 0xFF if c & 0x80 else (c << 1) & 0xFF
        table.append(c)
    return table


_CRC8_TABLE = _crc8_table()


def spec_crc8(data: bytes) -> int:
    """CRC-8/SMBUS, table-driven (the driver computes it bit by bit)."""
    crc = 0
    for b in data:
        crc = _CRC8_TABLE[crc ^ b]
    return crc


_LINE = re.compile(rb"([0-9A-F]{2}) ([\x20-\x23\x25-\x29\x2B-\x7E]+)\*([0-9A-F]{2})\r?")


class McuEmulator:
    """A pilot co-processor per the spec, plus the EV it sees and knobs to misbehave."""

    def __init__(self, device: Path) -> None:
        self._port = serial.Serial(str(device), 115200, timeout=0.005, write_timeout=1.0)
        self._lock = threading.RLock()
        # The world: what the EV presents.
        self.ev_state = CpState.A
        self.diode_missing = False
        # Misbehaviour knobs.
        self.muted = False  # sends nothing (TX broken / firmware stuck in a loop that reads)
        self.frozen = False  # neither reads nor sends nor runs its watchdog
        self.ignore_commands = False  # output commands never arrive (line noise on host TX)
        self.drop_commands = 0  # the next N output commands never arrive
        self.duty_clamp: int | None = None  # a buggy timer that saturates at this duty
        # Observations.
        self.output = "F"
        self.applied: list[tuple[float, str]] = []
        self.received: list[str] = []
        self.sent: list[str] = []
        self.watchdog_fired_at: float | None = None
        self.fed_at: float | None = None  # the last host line that fed the watchdog
        self.last_sent_at: float | None = None  # the last line sent, just before it went out
        self._last_host_line: float | None = None
        self._buf = bytearray()
        self._in_line = False
        self._last_report: str | None = None
        self._stop = threading.Event()
        self.boot()
        self._thread = threading.Thread(target=self._run, name="mcu-emulator", daemon=True)
        self._thread.start()

    # -- bench controls

    def set_ev(self, state: CpState, *, diode_missing: bool = False) -> None:
        with self._lock:
            self.ev_state = state
            self.diode_missing = diode_missing

    def boot(self) -> None:
        """Power-up or reset: state F, EVT BOOT, then a state report (rule 1)."""
        with self._lock:
            self._apply("F")
            self._last_host_line = None  # the watchdog is armed by the first host line
            self._send("00 EVT BOOT")
            self._report("00")

    def mute(self) -> float:
        """From now on send nothing (``muted``); returns when the last line went out."""
        with self._lock:
            self.muted = True
            return self.last_sent_at if self.last_sent_at is not None else time.monotonic()

    def inject(self, raw: bytes) -> None:
        """Raw bytes onto the line towards the host (noise, broken lines)."""
        with self._lock:
            self._port.write(raw)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self._port.close()

    # -- the firmware

    def _send(self, body: str) -> None:
        if self.muted:
            return
        raw = body.encode()
        self.sent.append(body)
        self.last_sent_at = time.monotonic()
        try:
            self._port.write(b"$" + raw + b"*%02X\n" % spec_crc8(raw))
        except (serial.SerialException, OSError):
            pass  # the host end of the pty pair is gone: the firmware runs on regardless

    def _apply(self, output: str) -> None:
        if output != self.output or not self.applied:
            self.applied.append((time.monotonic(), output))
        self.output = output

    def _state_body(self, seq: str) -> str:
        if self.output == "F":
            state = "E" if self.ev_state is CpState.E else "F"
            diode = "-"
        else:
            state = self.ev_state.value
            if self.output == "X1":
                diode = "-"
            elif state == "E" or (self.diode_missing and state in "BCD"):
                diode = "0"
            else:
                diode = "1"
        return f"{seq} ST {state} {diode} {self.output}"

    def _report(self, seq: str) -> None:
        body = self._state_body(seq)
        self._last_report = body[3:]
        self._send(body)

    def _run(self) -> None:
        while not self._stop.is_set():
            if self.frozen:
                time.sleep(0.005)
                continue
            try:
                data = self._port.read(max(1, self._port.in_waiting))
            except (serial.SerialException, OSError):
                data = b""
                time.sleep(0.005)
            with self._lock:
                for line in self._split(data):
                    self._on_line(line)
                now = time.monotonic()
                if (
                    self._last_host_line is not None
                    and now - self._last_host_line >= MCU_WATCHDOG_S
                ):
                    # Rule 2: no host line for 500 ms: state F, EVT WDOG, a report. Once.
                    self._last_host_line = None
                    self.watchdog_fired_at = now
                    self._apply("F")
                    self._send("00 EVT WDOG")
                    self._report("00")
                if self._state_body("00")[3:] != self._last_report:
                    self._report("00")  # unsolicited report on every change

    def _split(self, data: bytes) -> Iterator[bytes]:
        for b in data:
            if b == ord("$"):
                self._buf.clear()
                self._in_line = True
            elif not self._in_line:
                continue
            elif b == ord("\n"):
                self._in_line = False
                yield bytes(self._buf)
                self._buf.clear()
            elif len(self._buf) >= 46:
                self._in_line = False
                self._buf.clear()
            else:
                self._buf.append(b)

    def _on_line(self, line: bytes) -> None:
        m = _LINE.fullmatch(line)
        if m is None or spec_crc8(line[: line.rindex(b"*")]) != int(m.group(3), 16):
            return  # rule 4: a broken line does nothing, not even feed the watchdog
        seq, text = m.group(1).decode(), m.group(2).decode()
        verb, *args = text.split(" ")
        if verb in ("PWM", "X1", "F"):
            if self.ignore_commands:
                return
            if self.drop_commands > 0:
                self.drop_commands -= 1
                return
        self.received.append(f"{seq} {text}")
        self._last_host_line = self.fed_at = time.monotonic()
        if verb == "HB" and not args:
            self._report(seq)
        elif verb in ("X1", "F") and not args:
            self._apply(verb)
            self._send(f"{seq} OK {verb}")
        elif verb == "PWM" and len(args) == 1 and args[0].isdigit() and 1 <= int(args[0]) <= 9999:
            duty = int(args[0])
            if self.duty_clamp is not None:
                duty = min(duty, self.duty_clamp)
            self._apply(f"PWM {duty}")
            self._send(f"{seq} OK PWM {duty}")
        elif verb in ("PWM", "X1", "F", "HB"):
            self._send(f"{seq} ER ARG")
        else:
            self._send(f"{seq} ER VERB")
