"""PilotDriver for a control pilot generated and measured by a co-processor on a UART.

The line protocol, and the safety rules the co-processor firmware must follow, are specified in
``hardware/pilot-uart-protocol.md``; this module is the host side of it.

Why a worker thread and not ``loop.add_reader``: the driver is built, put in the safe state and
shut down outside the event loop (``build_hardware``, bring-up commands), and its heartbeat must
keep a steady 100 ms rhythm whatever the loop is doing: an event loop busy for a few hundred
milliseconds (a large OCPP message, a slow callback) must not let the co-processor's 500 ms
watchdog fire under a healthy daemon. A loop that hangs for good is the systemd watchdog's
business (it kills the process, the heartbeats stop, the co-processor drives state F). The
thread blocks in ``read`` with a 10 ms timeout, so timeouts are judged within 10 ms.

Threading: one lock guards all state. The synchronous Protocol methods take it only to record
the command and write one short line with a non-blocking write (the kernel's tty buffer takes
it at once), so they return in microseconds. The listener is called from the worker thread
(and from ``set_state_f``, whose reading changes at once), always outside the lock.

Readings: the co-processor's latest state report; ``PilotReading(CpState.F)`` at once while
state F is commanded (the line cannot read anything else, short of E), and after ``shutdown``.
A fault of the co-processor link (silent, a command not acknowledged, an acknowledgement or a
state report that contradicts the command) makes ``read()`` return ``PilotReading(CpState.E,
diode_ok=False)``: the controller treats E as a pilot fault in every pilot state and opens the
contactor at once. ``fault`` names the cause.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final

import serial  # type: ignore[import-untyped]

from drivers.protocols import CpState, Listener, PilotOutput, PilotReading

logger = logging.getLogger(__name__)

#: The protocol's duty unit: 0.01 % (100 ns of the 1 ms period).
DUTY_RESOLUTION_PERCENT: Final = 0.01
_DUTY_UNITS_PER_PERCENT: Final = 100
_MAX_DUTY_UNITS: Final = 9999

HEARTBEAT_INTERVAL_S: Final = 0.1
#: An unacknowledged command is repeated (same sequence number) this often.
RETRY_INTERVAL_S: Final = 0.05
#: The current command not acknowledged for this long is a fault.
ACK_TIMEOUT_S: Final = 0.15
#: No valid line from the co-processor for this long is a fault.
SILENCE_TIMEOUT_S: Final = 0.3
#: How long ``shutdown`` waits for the co-processor to acknowledge state F.
SHUTDOWN_ACK_WAIT_S: Final = 0.1
#: The co-processor's own watchdog (documented here; enforced by its firmware).
MCU_WATCHDOG_S: Final = 0.5

_READ_TIMEOUT_S: Final = 0.01
_REOPEN_INTERVAL_S: Final = 0.5
MAX_LINE_BYTES: Final = 48

DEFAULT_BAUDRATE: Final = 115200
# The range the config schema accepts (evse_daemon/config.py); MCUs run odd rates (250000...).
MIN_BAUDRATE: Final = 1200
MAX_BAUDRATE: Final = 1_000_000

#: What ``read()`` returns while the co-processor link is faulty.
FAULT_READING: Final = PilotReading(CpState.E, diode_ok=False)
# Until the co-processor reports, it is in state F: its firmware powers up there (rule 1).
# And while the host commands F, F is what the line reads (unless CP is held at 0 V: E).
_STATE_F_READING: Final = PilotReading(CpState.F)

_STATES: Final = {s.value: s for s in CpState}
_DIODE: Final = {"1": True, "0": False, "-": True}  # "-": no PWM, nothing to check


# ------------------------------------------------------------------------------ the framing


def crc8(data: bytes) -> int:
    """CRC-8/SMBUS: polynomial 0x07, initial 0, no reflection, no final XOR."""
    crc = 0
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x07) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc


def encode_line(body: str) -> bytes:
    """``$<body>*<CRC>\\n`` for one message body."""
    raw = body.encode("ascii")
    return b"$" + raw + b"*" + f"{crc8(raw):02X}".encode("ascii") + b"\n"


def _body_ok(body: bytes) -> bool:
    return all(0x20 <= b <= 0x7E and b not in (0x24, 0x2A) for b in body)


class LineDecoder:
    """Turns a byte stream into the bodies of valid lines; everything else is dropped.

    ``$`` always starts a new line, so a truncated line cannot swallow the next one. The
    co-processor's parser must follow the same rules (``hardware/pilot-uart-protocol.md`` §2).
    """

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_line = False
        self.discarded = 0

    def feed(self, data: bytes) -> Iterator[str]:
        for byte in data:
            if byte == 0x24:  # "$"
                if self._in_line:
                    self.discarded += 1
                self._buf.clear()
                self._in_line = True
            elif not self._in_line:
                continue  # noise between lines
            elif byte == 0x0A:  # "\n"
                self._in_line = False
                body = self._check(bytes(self._buf))
                self._buf.clear()
                if body is None:
                    self.discarded += 1
                else:
                    yield body
            elif byte == 0x0D:  # "\r"
                continue
            else:
                self._buf.append(byte)
                if len(self._buf) > MAX_LINE_BYTES - 2:  # "$" and "\n" count too
                    self.discarded += 1
                    self._buf.clear()
                    self._in_line = False

    @staticmethod
    def _check(line: bytes) -> str | None:
        body, star, crc = line.rpartition(b"*")
        if not star or len(crc) != 2 or not body or not _body_ok(body):
            return None
        try:
            expected = int(crc.decode("ascii"), 16)
        except ValueError:
            return None
        if crc.upper() != crc or crc8(body) != expected:
            return None
        return body.decode("ascii")


# ------------------------------------------------------------------------------ messages


@dataclass(frozen=True, slots=True)
class Output:
    """An output as the protocol writes it: ``PWM 2666``, ``X1`` or ``F``."""

    kind: PilotOutput
    duty_units: int = 0

    def encode(self) -> str:
        if self.kind is PilotOutput.PWM:
            return f"PWM {self.duty_units}"
        return "X1" if self.kind is PilotOutput.STEADY else "F"

    @classmethod
    def parse(cls, fields: list[str]) -> Output | None:
        """The output in ``fields`` (the whole rest of a message), or None if malformed."""
        if fields == ["X1"]:
            return cls(PilotOutput.STEADY)
        if fields == ["F"]:
            return cls(PilotOutput.STATE_F)
        if len(fields) == 2 and fields[0] == "PWM" and fields[1].isdigit():
            units = int(fields[1])
            if 1 <= units <= _MAX_DUTY_UNITS:
                return cls(PilotOutput.PWM, units)
        return None

    @property
    def duty_percent(self) -> float:
        return self.duty_units / _DUTY_UNITS_PER_PERCENT


def parse_seq(field: str) -> int | None:
    if len(field) != 2 or field.upper() != field:
        return None
    try:
        return int(field, 16)
    except ValueError:
        return None


def duty_units_for(duty_percent: float) -> int:
    """The protocol's duty value for ``duty_percent``, rounded down (never offer more)."""
    if not 0.0 < duty_percent < 100.0:  # also rejects NaN
        raise ValueError(f"PWM duty must be between 0 and 100 %, not {duty_percent!r}")
    # The epsilon keeps exact multiples (26.66 % = 2665.9999… units in binary) on their step.
    units = math.floor(duty_percent * _DUTY_UNITS_PER_PERCENT + 1e-6)
    if not 1 <= units <= _MAX_DUTY_UNITS:
        raise ValueError(
            f"PWM duty {duty_percent!r} % is below the co-processor's "
            f"{DUTY_RESOLUTION_PERCENT} % resolution"
        )
    return units


# ------------------------------------------------------------------------------ the driver


class UartPilot:
    """PilotDriver for a pilot co-processor on a serial port (see the module docstring).

    ``port`` is an open pyserial port (or anything with the same ``read``/``write``/
    ``in_waiting``/``cancel_read``/``close``); ``reopen`` builds a new one after the port
    failed (a USB adapter unplugged and back), or None to stay faulted. ``clock`` is a
    monotonic clock in seconds.
    """

    def __init__(
        self,
        port: Any,
        *,
        reopen: Callable[[], Any] | None = None,
        name: str = "pilot-uart",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._port: Any | None = port
        self._reopen = reopen
        self._name = name
        self._clock = clock
        self._mutex = threading.Lock()
        self._acked = threading.Condition(self._mutex)
        self._stop = threading.Event()
        self._listener: Listener | None = None
        self._closed = False

        now = clock()
        self._seq = 0
        # The command in force: what output/duty report, and what the co-processor must ack.
        self._commanded = Output(PilotOutput.STATE_F)
        self._cmd_seq = 0
        self._cmd_line = b""
        self._cmd_first_sent = now
        self._cmd_last_sent = now
        self._cmd_confirmed = False
        self._cmd_answered = False  # an OK or ER for it came (confirming or not)
        self._mismatch: str | None = None  # latched until a later command is confirmed
        self._reported = _STATE_F_READING
        self._last_rx = now  # silence is counted from the moment the port was opened
        self._next_heartbeat = now
        self._notified = _STATE_F_READING
        self._last_fault: str | None = None
        self._write_failed = False

        with self._mutex:
            self._command_locked(Output(PilotOutput.STATE_F))  # the safe state, at once
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ PilotDriver

    def set_pwm(self, duty_percent: float) -> None:
        self._command(Output(PilotOutput.PWM, duty_units_for(duty_percent)))

    def set_steady(self) -> None:
        self._command(Output(PilotOutput.STEADY))

    def set_state_f(self) -> None:
        self._command(Output(PilotOutput.STATE_F))

    @property
    def output(self) -> PilotOutput:
        with self._mutex:
            return self._commanded.kind

    @property
    def duty_percent(self) -> float:
        with self._mutex:
            return self._commanded.duty_percent

    @property
    def duty_resolution_percent(self) -> float:
        return DUTY_RESOLUTION_PERCENT

    def read(self) -> PilotReading:
        with self._mutex:
            return self._reading_locked(self._clock())

    def set_listener(self, listener: Listener | None) -> None:
        with self._mutex:
            self._listener = listener

    def shutdown(self) -> None:
        """Command state F, wait up to 100 ms for its acknowledgement, stop, close the port."""
        with self._mutex:
            if self._closed:
                return
        self._command(Output(PilotOutput.STATE_F))
        with self._mutex:
            deadline = self._clock() + SHUTDOWN_ACK_WAIT_S
            while not self._cmd_answered and self._thread.is_alive():
                left = deadline - self._clock()
                if left <= 0.0:
                    break
                self._acked.wait(left)
            if not self._cmd_confirmed:
                logger.warning(
                    "%s: state F not acknowledged at shutdown; the co-processor's watchdog "
                    "drives F within %.0f ms",
                    self._name,
                    MCU_WATCHDOG_S * 1000,
                )
        self._stop_worker()
        with self._mutex:
            self._closed = True
            port, self._port = self._port, None
        if port is not None:
            _close_quietly(port)

    # ------------------------------------------------------------------ extras

    @property
    def fault(self) -> str | None:
        """Why ``read()`` reports the fault reading now, or None while the link is healthy."""
        with self._mutex:
            return self._fault_locked(self._clock())

    @property
    def output_confirmed(self) -> bool:
        """True once the co-processor acknowledged the command in force."""
        with self._mutex:
            return self._cmd_confirmed

    def __enter__(self) -> UartPilot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ------------------------------------------------------------------ commands
    # Methods ending in _locked must be called with self._mutex held.

    def _next_seq_locked(self) -> int:
        self._seq = self._seq % 0xFF + 1  # 01..FF; 00 is the co-processor's own
        return self._seq

    def _command(self, output: Output) -> None:
        with self._mutex:
            self._command_locked(output)
            listener = self._changed_listener_locked(self._clock())
        if listener is not None:
            _call_listener(listener, self._name)

    def _command_locked(self, output: Output) -> None:
        now = self._clock()
        seq = self._next_seq_locked()
        self._commanded = output
        self._cmd_seq = seq
        self._cmd_line = encode_line(f"{seq:02X} {output.encode()}")
        self._cmd_first_sent = now
        self._cmd_last_sent = now
        self._cmd_confirmed = False
        self._cmd_answered = False
        self._write_locked(self._cmd_line)

    def _write_locked(self, line: bytes) -> None:
        port = self._port
        if port is None:
            return
        try:
            # write_timeout=0: never blocks. A short write truncates the line; the co-processor
            # drops it (the next "$" restarts its parser) and the repeat brings it through.
            written = port.write(line)
        except (serial.SerialException, OSError) as exc:
            if not self._write_failed:
                logger.warning("%s: write failed: %s", self._name, exc)
            self._write_failed = True
            return
        if written is not None and written < len(line) and not self._write_failed:
            logger.warning("%s: output buffer full, line cut short", self._name)
        self._write_failed = False

    # ------------------------------------------------------------------ state

    def _fault_locked(self, now: float) -> str | None:
        if self._closed:
            return None  # F was commanded last; the link is no longer watched
        if now - self._last_rx >= SILENCE_TIMEOUT_S:
            return f"co-processor silent (no valid line for {SILENCE_TIMEOUT_S * 1000:.0f} ms)"
        if self._mismatch is not None:
            return self._mismatch
        if not self._cmd_confirmed and now - self._cmd_first_sent >= ACK_TIMEOUT_S:
            return f"command {self._commanded.encode()!r} not acknowledged"
        return None

    def _reading_locked(self, now: float) -> PilotReading:
        if self._fault_locked(now) is not None:
            return FAULT_READING
        if self._commanded.kind is PilotOutput.STATE_F and self._reported.state is not CpState.E:
            # Driving -12 V, the line can only read F (or E if CP is held at 0 V): say so at
            # once, as the other pilots do, rather than echo reports made before the command.
            return _STATE_F_READING
        return self._reported

    def _changed_listener_locked(self, now: float) -> Listener | None:
        """The listener to call (outside the lock) if the reading changed since last time."""
        reading = self._reading_locked(now)
        if reading == self._notified:
            return None
        self._notified = reading
        return self._listener

    def _handle_body_locked(self, body: str, now: float) -> None:
        fields = body.split(" ")
        seq = parse_seq(fields[0])
        if seq is None or len(fields) < 2:
            logger.debug("%s: malformed message %r", self._name, body)
            return
        self._last_rx = now  # a line with a good CRC: the co-processor is alive
        verb, args = fields[1], fields[2:]
        if verb == "ST":
            self._on_state_locked(body, args)
        elif verb == "OK":
            self._on_ack_locked(body, seq, args)
        elif verb == "ER":
            if seq == self._cmd_seq and seq != 0:
                self._mismatch = f"co-processor rejected {self._commanded.encode()!r}: {body}"
                self._cmd_answered = True
                self._acked.notify_all()
            else:
                logger.warning("%s: co-processor error %r", self._name, body)
        elif verb == "EVT":
            level = logging.WARNING if args in (["WDOG"], ["BOOT"]) else logging.INFO
            logger.log(level, "%s: co-processor event %s", self._name, " ".join(args))
        else:
            logger.debug("%s: unknown message %r ignored", self._name, body)

    def _on_state_locked(self, body: str, args: list[str]) -> None:
        if len(args) < 3 or args[0] not in _STATES or args[1] not in _DIODE:
            logger.debug("%s: malformed state report %r", self._name, body)
            return
        output = Output.parse(args[2:])
        if output is None:
            logger.debug("%s: malformed state report %r", self._name, body)
            return
        self._reported = PilotReading(_STATES[args[0]], diode_ok=_DIODE[args[1]])
        if self._cmd_confirmed and output != self._commanded and self._mismatch is None:
            # Acknowledged, and now it drives something else: its watchdog fired or it reset.
            self._mismatch = (
                f"co-processor drives {output.encode()!r}, commanded {self._commanded.encode()!r}"
            )

    def _on_ack_locked(self, body: str, seq: int, args: list[str]) -> None:
        if seq != self._cmd_seq or seq == 0:
            return  # the acknowledgement of a command already superseded
        output = Output.parse(args)
        self._cmd_answered = True
        if output == self._commanded:
            self._cmd_confirmed = True
            self._mismatch = None
        else:
            self._mismatch = f"co-processor acknowledged {body!r} for {self._commanded.encode()!r}"
        self._acked.notify_all()

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        decoder = LineDecoder()
        next_reopen = 0.0
        while not self._stop.is_set():
            port = self._port
            data = b""
            if port is None:
                now = self._clock()
                if self._reopen is not None and now >= next_reopen:
                    next_reopen = now + _REOPEN_INTERVAL_S
                    port = self._try_reopen()
                if port is None:
                    self._stop.wait(_READ_TIMEOUT_S)
            else:
                try:
                    data = port.read(max(1, port.in_waiting))
                except (serial.SerialException, OSError, TypeError, ValueError) as exc:
                    # TypeError/ValueError: pyserial's read on a port closed under it.
                    if self._stop.is_set():
                        break
                    logger.warning("%s: read failed, port closed: %s", self._name, exc)
                    with self._mutex:
                        self._port = None
                    _close_quietly(port)
                    next_reopen = self._clock() + _REOPEN_INTERVAL_S
            self._tick(list(decoder.feed(data)) if data else [])

    def _try_reopen(self) -> Any | None:
        assert self._reopen is not None
        try:
            port = self._reopen()
        except (serial.SerialException, OSError) as exc:
            logger.debug("%s: reopen failed: %s", self._name, exc)
            return None
        logger.info("%s: port reopened", self._name)
        with self._mutex:
            if self._closed or self._stop.is_set():
                _close_quietly(port)
                return None
            self._port = port
            # What the co-processor drives after the gap is unknown: confirm the command again.
            self._cmd_confirmed = False
            self._cmd_answered = False
            self._cmd_last_sent = self._clock()
            self._write_locked(self._cmd_line)
        return port

    def _tick(self, bodies: list[str]) -> None:
        with self._mutex:
            now = self._clock()
            for body in bodies:
                self._handle_body_locked(body, now)
            if now >= self._next_heartbeat:
                self._write_locked(encode_line(f"{self._next_seq_locked():02X} HB"))
                self._next_heartbeat += HEARTBEAT_INTERVAL_S
                if self._next_heartbeat <= now:  # fell behind: no burst of heartbeats
                    self._next_heartbeat = now + HEARTBEAT_INTERVAL_S
            # Repeated until answered; an answer that contradicts it is a fault, not a loss.
            if not self._cmd_answered and now - self._cmd_last_sent >= RETRY_INTERVAL_S:
                self._cmd_last_sent = now
                self._write_locked(self._cmd_line)
            fault = self._fault_locked(now)
            if fault != self._last_fault:
                if fault is None:
                    logger.info("%s: co-processor link healthy again", self._name)
                else:
                    logger.warning("%s: pilot fault: %s", self._name, fault)
                self._last_fault = fault
            listener = self._changed_listener_locked(now)
        if listener is not None:
            _call_listener(listener, self._name)

    def _stop_worker(self) -> None:
        self._stop.set()
        port = self._port
        if port is not None:
            try:
                port.cancel_read()
            except (AttributeError, serial.SerialException, OSError):
                pass
        if self._thread is not threading.current_thread():
            self._thread.join(timeout=1.0)


def _call_listener(listener: Listener, name: str) -> None:
    try:
        listener()
    except Exception:
        logger.exception("%s: pilot listener failed", name)


def _close_quietly(port: Any) -> None:
    try:
        port.close()
    except (serial.SerialException, OSError):
        pass


def open_port(device: str, baudrate: int = DEFAULT_BAUDRATE) -> Any:
    """The pyserial port for a pilot co-processor: non-blocking writes, 10 ms read timeout,
    exclusive (two daemons must never drive the same pilot)."""
    return serial.Serial(
        device,
        baudrate=baudrate,
        bytesize=serial.EIGHTBITS,
        parity=serial.PARITY_NONE,
        stopbits=serial.STOPBITS_ONE,
        timeout=_READ_TIMEOUT_S,
        write_timeout=0,
        exclusive=True,
    )


_OPTIONS: Final = frozenset({"device", "baudrate"})


def uart_pilot_from_options(options: Mapping[str, object]) -> UartPilot:
    """A ``UartPilot`` from a config table: ``device`` (required), ``baudrate`` (115200).

    Raises ValueError for bad options, ``serial.SerialException`` (an OSError) if the port
    cannot be opened.
    """
    unknown = sorted(set(options) - _OPTIONS)
    if unknown:
        raise ValueError(
            f"uart pilot: unknown option(s) {', '.join(unknown)}; "
            f"known: {', '.join(sorted(_OPTIONS))}"
        )
    device = options.get("device")
    if not isinstance(device, str) or not device:
        raise ValueError(
            f"uart pilot: 'device' must be the serial port's path, e.g. \"/dev/ttyAMA1\", "
            f"not {device!r}"
        )
    baudrate = options.get("baudrate", DEFAULT_BAUDRATE)
    if (
        isinstance(baudrate, bool)
        or not isinstance(baudrate, int)
        or not MIN_BAUDRATE <= baudrate <= MAX_BAUDRATE
    ):
        raise ValueError(
            f"uart pilot: 'baudrate' must be an integer from {MIN_BAUDRATE} to {MAX_BAUDRATE}, "
            f"not {baudrate!r}"
        )
    # A port that cannot be opened is an I/O error, not a bad option: SerialException (an
    # OSError) names the device and the reason.
    port = open_port(device, baudrate)
    return UartPilot(port, reopen=lambda: open_port(device, baudrate), name=f"pilot-uart {device}")
