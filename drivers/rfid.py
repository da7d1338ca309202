"""Real RFID card readers on a serial port: RDM6300 (125 kHz EM4100) and PN532 (13.56 MHz, HSU).

Both implement ``drivers.protocols.CardReader``: ``read_card()`` waits for the next card and
returns its idTag; ``shutdown()`` stops the reader and releases the port.

Threading design
----------------
Each reader owns one worker thread that does blocking pyserial I/O with a short read timeout
(``read_timeout_s``: 50 ms for the RDM6300, 20 ms for the PN532), runs the whole reader
protocol (framing, checksums, PN532 command and answer, timeouts, debouncing, reopen with
backoff) as plain sequential code, and hands only *results* to the event loop through
``loop.call_soon_threadsafe``: an idTag, or a change of the reader's health. The event loop
never touches the port. A thread was chosen over a non-blocking
fd with ``loop.add_reader`` because the PN532 is a request/answer protocol with several nested
timeouts, which reads best as straight-line code, and because pyserial's blocking API is the
part of it that is portable and tested (opening a port, ``tcsetattr`` and USB-serial drivers
may block for milliseconds, which must not happen on the loop either). The thread notices
``shutdown`` within one read timeout and closes the port itself, so the port has one owner.

Health and ReaderError
----------------------
The worker tracks whether the reader works. The RDM6300 only transmits, so it can only fail by
its port vanishing or erroring (USB adapter unplugged: ``OSError``). The PN532 also fails when
it stops answering: ``max_misses`` (3) failed exchanges in a row. While the reader is failed,
``read_card`` raises ``ReaderError`` (at once, on every call, as the mock reader does: the app
keeps a ReaderFailure fault exactly as long as calls keep raising, and clears it once a call
has waited a second without raising). A waiting ``read_card`` is woken with the error when the
failure starts. Meanwhile the worker retries on its own with exponential backoff
(``retry_s`` doubling up to ``max_retry_s``): it reopens the port and, for the PN532, wakes it
and sends SAMConfiguration again. Once that succeeds, ``read_card`` waits for cards again.
The failure is logged once per episode (warning), the recovery once (info); single bad frames
are logged at debug level only and counted in ``rejected_frames``.

idTag formation (``id_tag_format``)
-----------------------------------
``format_id_tag`` turns id bytes into an idTag; which bytes are the id depends on the reader:

* PN532: the NFCID (UID) as the reader delivers it, byte 0 (uid0) first, 4, 7 or 10 bytes.
    - ``hex``: upper-case hex, byte 0 first (OCPP 1.6 §3.9): 8, 14 or 20 characters.
    - ``hex-reversed``: upper-case hex, last byte first.
    - ``decimal``: the UID read as one unsigned big-endian integer (byte 0 most significant,
      i.e. the value of the ``hex`` form), zero-padded to the width of the largest value of
      that length: 10 digits for 4 bytes, 17 for 7 bytes. A 10-byte UID needs 25 digits,
      more than the 20 an OCPP idTag may hold: such a card is refused with a warning.
* RDM6300: the 5 data bytes of the frame, version (customer) byte first, then the 4 tag bytes.
    - ``hex``: the 5 bytes as upper-case hex, version first: the 10 characters the reader
      sends, e.g. ``0A1B2C3D4E``.
    - ``hex-reversed``: the same 5 bytes, last byte first, e.g. ``4E3D2C1B0A``.
    - ``decimal``: the 4 tag bytes only (without the version byte), as a big-endian unsigned
      32-bit integer, zero-padded to 10 digits: the number printed on most EM4100 cards and
      fobs, e.g. ``0455884110`` for the frame above.

Debouncing (``repeat_s``)
-------------------------
A card counts once per presentation: it counts again only after it has not been seen for
``repeat_s``. The RDM6300 repeats its frame about every 100 ms while a card is in the field and
the PN532 sees a held card at every poll, so the effective window is never shorter than the
sighting period allows: at least 0.3 s for the RDM6300 and 2.5 poll intervals for the PN532
(a held card must never count twice because one sighting was missed).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Final, Literal, Protocol, cast

import serial  # type: ignore[import-untyped]

try:
    import termios
except ImportError:  # not POSIX: pyserial reports every port error as OSError there
    _PORT_ERRORS: tuple[type[Exception], ...] = (OSError,)
else:
    # pyserial lets termios.error (not an OSError) through from reset_input_buffer & co.
    _PORT_ERRORS = (OSError, termios.error)

from drivers.protocols import ReaderError

__all__ = [
    "ID_TAG_FORMATS",
    "IdTagFormat",
    "Pn532Frame",
    "Pn532FrameParser",
    "Pn532Reader",
    "Rdm6300Parser",
    "Rdm6300Reader",
    "format_id_tag",
    "pn532_frame",
    "pn532_from_options",
    "rdm6300_from_options",
    "rdm6300_id_tag",
]

logger = logging.getLogger(__name__)

IdTagFormat = Literal["hex", "hex-reversed", "decimal"]
ID_TAG_FORMATS: Final[frozenset[str]] = frozenset({"hex", "hex-reversed", "decimal"})

#: OCPP 1.6 IdToken is a CiString20.
MAX_ID_TAG_LENGTH: Final = 20

# Cards read while nobody awaits read_card wait here; a real reader buffers little, and an app
# that stopped reading must not grow memory.
_MAX_PENDING_CARDS: Final = 8
# How long shutdown waits for the worker thread (it notices the stop within one read timeout).
_STOP_TIMEOUT_S: Final = 2.0

_RDM6300_BAUDRATES: Final = frozenset({9600})
_PN532_BAUDRATES: Final = frozenset({9600, 57600, 115200})
_RDM6300_MIN_WINDOW_S: Final = 0.3
_PN532_MIN_WINDOW_POLLS: Final = 2.5


# ------------------------------------------------------------------------------ idTag formats


def format_id_tag(id_bytes: bytes, id_tag_format: IdTagFormat) -> str:
    """The idTag of these id bytes (byte 0 first) in this format; see the module docstring.

    Raises ValueError if the result would not fit an OCPP idTag (20 characters).
    """
    if not id_bytes:
        raise ValueError("no id bytes")
    if id_tag_format == "hex":
        tag = id_bytes.hex().upper()
    elif id_tag_format == "hex-reversed":
        tag = id_bytes[::-1].hex().upper()
    elif id_tag_format == "decimal":
        width = len(str(256 ** len(id_bytes) - 1))
        tag = f"{int.from_bytes(id_bytes, 'big'):0{width}d}"
    else:
        raise ValueError(f"unknown id_tag_format {id_tag_format!r}")
    if len(tag) > MAX_ID_TAG_LENGTH:
        raise ValueError(
            f"a {len(id_bytes)}-byte id is {len(tag)} characters as {id_tag_format!r}, "
            f"more than the {MAX_ID_TAG_LENGTH} an idTag may hold"
        )
    return tag


def rdm6300_id_tag(data: bytes, id_tag_format: IdTagFormat) -> str:
    """The idTag of the 5 data bytes of an RDM6300 frame (version byte, then 4 tag bytes)."""
    if len(data) != 5:
        raise ValueError(f"an RDM6300 id has 5 bytes, not {len(data)}")
    if id_tag_format == "decimal":
        return format_id_tag(data[1:], "decimal")
    return format_id_tag(data, id_tag_format)


# ------------------------------------------------------------------------------ RDM6300 framing

_STX: Final = 0x02
_ETX: Final = 0x03
_RDM6300_FRAME_LEN: Final = 14
_HEX_DIGITS: Final = frozenset(b"0123456789ABCDEFabcdef")


class Rdm6300Parser:
    """Sans-I/O RDM6300 framing: ``feed`` bytes as they come, get the 5 data bytes of every
    valid frame. Resynchronises on garbage (drops bytes until STX); truncated, non-hex,
    unterminated and bad-checksum frames are dropped, logged at debug level and counted."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.rejected = 0

    def clear(self) -> None:
        self._buf.clear()

    def _reject(self, why: str, raw: bytes | bytearray) -> None:
        self.rejected += 1
        logger.debug("RDM6300: dropped %s frame %s", why, bytes(raw).hex(" "))

    def feed(self, data: bytes) -> list[bytes]:
        buf = self._buf
        buf += data
        out: list[bytes] = []
        while buf:
            start = buf.find(_STX)
            if start < 0:
                logger.debug("RDM6300: dropped %d bytes of garbage", len(buf))
                buf.clear()
                break
            if start > 0:
                logger.debug("RDM6300: dropped %d bytes of garbage", start)
                del buf[:start]
            # A second STX inside what should be one frame: the first one was cut short.
            inner = buf.find(_STX, 1, _RDM6300_FRAME_LEN)
            if inner > 0:
                self._reject("truncated", buf[:inner])
                del buf[:inner]
                continue
            if len(buf) < _RDM6300_FRAME_LEN:
                if any(b not in _HEX_DIGITS for b in buf[1:]):
                    self._reject("malformed", buf)
                    del buf[:1]
                    continue
                break  # wait for the rest
            frame = bytes(buf[:_RDM6300_FRAME_LEN])
            if frame[13] != _ETX or any(b not in _HEX_DIGITS for b in frame[1:13]):
                self._reject("malformed", frame)
                del buf[:1]
                continue
            del buf[:_RDM6300_FRAME_LEN]
            payload = bytes.fromhex(frame[1:11].decode("ascii"))
            checksum = int(frame[11:13], 16)
            if functools.reduce(lambda a, b: a ^ b, payload) != checksum:
                self._reject("bad-checksum", frame)
                continue
            out.append(payload)
        return out


# ------------------------------------------------------------------------------ PN532 framing

_PN532_HOST_TFI: Final = 0xD4
_PN532_READER_TFI: Final = 0xD5
_PN532_ERROR_TFI: Final = 0x7F
PN532_ACK: Final = bytes.fromhex("0000ff00ff00")
#: HSU wake-up: 0x55 0x55, then zeros long enough for the oscillator to start.
PN532_WAKEUP: Final = b"\x55\x55" + bytes(14)
_CMD_SAM_CONFIGURATION: Final = 0x14
_CMD_RF_CONFIGURATION: Final = 0x32
_CMD_IN_LIST_PASSIVE_TARGET: Final = 0x4A
# SAMConfiguration: normal mode (no SAM), timeout 0 (unused in normal mode), use P70_IRQ.
_SAM_NORMAL_MODE: Final = bytes([0x01, 0x00, 0x01])
# RFConfiguration item 5 (MaxRetries): MxRtyATR 0xFF, MxRtyPSL 1, MxRtyPassiveActivation 2.
# The power-on default 0xFF makes InListPassiveTarget wait for a card forever; with 2 retries
# it answers "no target" within milliseconds, so every poll gets an answer.
_RF_MAX_RETRIES: Final = bytes([0x05, 0xFF, 0x01, 0x02])
# InListPassiveTarget: at most 1 target, 106 kbps type A (ISO/IEC 14443 A).
_LIST_ONE_TYPE_A: Final = bytes([0x01, 0x00])
_UID_LENGTHS: Final = frozenset({4, 7, 10})


def pn532_frame(payload: bytes) -> bytes:
    """A normal PN532 information frame: ``00 00 FF LEN LCS <payload> DCS 00``; ``payload``
    starts with the TFI (0xD4 from the host, 0xD5 from the reader)."""
    if not 1 <= len(payload) <= 254:
        raise ValueError(f"a normal PN532 frame carries 1..254 bytes, not {len(payload)}")
    length = len(payload)
    return (
        bytes([0x00, 0x00, 0xFF, length, (-length) & 0xFF])
        + payload
        + bytes([(-sum(payload)) & 0xFF, 0x00])
    )


@dataclass(frozen=True, slots=True)
class Pn532Frame:
    """One frame from the PN532. ``kind``: ``ack``, ``nack``, ``error`` (the application-level
    error frame, TFI 0x7F), ``data`` (``tfi`` and ``data``: the bytes after the TFI) or ``bad``
    (a frame whose checksums fail or that this driver does not handle; ``reason`` says why)."""

    kind: Literal["ack", "nack", "error", "data", "bad"]
    tfi: int = 0
    data: bytes = b""
    reason: str = ""


class Pn532FrameParser:
    """Sans-I/O PN532 framing: ``feed`` bytes as they come, get complete frames. Garbage before
    a start code is skipped; a frame whose LCS or DCS fails yields a ``bad`` frame and parsing
    resumes just after its start code, so that a real frame hidden in a cut-off one is found."""

    def __init__(self) -> None:
        self._buf = bytearray()

    def clear(self) -> None:
        self._buf.clear()

    def feed(self, data: bytes) -> list[Pn532Frame]:
        buf = self._buf
        buf += data
        out: list[Pn532Frame] = []
        while True:
            start = buf.find(b"\x00\xff")
            if start < 0:
                # Keep a trailing 0x00: it may be the first half of a start code.
                keep = 1 if buf.endswith(b"\x00") else 0
                del buf[: len(buf) - keep]
                break
            del buf[:start]
            if len(buf) < 4:
                break
            length, lcs = buf[2], buf[3]
            if length == 0x00 and lcs == 0xFF:
                out.append(Pn532Frame("ack"))
                del buf[:4]
                continue
            if length == 0xFF and lcs == 0x00:
                out.append(Pn532Frame("nack"))
                del buf[:4]
                continue
            if (length + lcs) & 0xFF:
                reason = "extended frame" if length == lcs == 0xFF else "LEN checksum"
                out.append(Pn532Frame("bad", reason=reason))
                del buf[:2]
                continue
            end = 4 + length + 1
            if len(buf) < end:
                break
            body = bytes(buf[4 : 4 + length])
            if (sum(body) + buf[4 + length]) & 0xFF:
                out.append(Pn532Frame("bad", reason="data checksum"))
                del buf[:2]
                continue
            del buf[:end]
            if body == bytes([_PN532_ERROR_TFI]):
                out.append(Pn532Frame("error", tfi=_PN532_ERROR_TFI))
            else:
                out.append(Pn532Frame("data", tfi=body[0], data=body[1:]))
        return out


def _parse_in_list_passive_target(data: bytes) -> bytes | None:
    """The UID from an InListPassiveTarget answer (after the 0x4B code), None if no target.
    Raises ValueError on an answer that does not hold a whole 106 kbps type A target."""
    if not data:
        raise ValueError("empty InListPassiveTarget answer")
    if data[0] == 0:
        return None
    # Tg, SENS_RES (2), SEL_RES, NFCIDLength, NFCID, [ATS]
    if len(data) < 6:
        raise ValueError(f"InListPassiveTarget answer too short: {data.hex(' ')}")
    uid_length = data[5]
    if uid_length not in _UID_LENGTHS:
        raise ValueError(f"NFCID length {uid_length} is not 4, 7 or 10")
    uid = data[6 : 6 + uid_length]
    if len(uid) != uid_length:
        raise ValueError(f"InListPassiveTarget answer cut short: {data.hex(' ')}")
    return uid


# ------------------------------------------------------------------------------ debouncing


class _Debouncer:
    """Counts a card once per presentation: again only after it was unseen for ``window_s``."""

    def __init__(self, window_s: float) -> None:
        self.window_s = window_s
        self._last_seen: dict[bytes, float] = {}

    def new_presentation(self, card: bytes, now: float) -> bool:
        stale = [c for c, t in self._last_seen.items() if now - t >= self.window_s]
        for c in stale:
            del self._last_seen[c]
        new = card not in self._last_seen
        self._last_seen[card] = now
        return new


# ------------------------------------------------------------------------------ the readers


class _Port(Protocol):
    """The part of ``serial.Serial`` the readers use."""

    @property
    def in_waiting(self) -> int: ...

    def read(self, size: int = 1) -> bytes: ...

    def write(self, data: bytes) -> int | None: ...

    def reset_input_buffer(self) -> None: ...

    def close(self) -> None: ...


class _Stopped(Exception):
    """shutdown() was called while the worker was in the middle of something."""


def _check_number(name: str, value: float, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a number, not {value!r}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ValueError(f"{name} must be between {low:g} and {high:g}, not {value!r}")
    return float(value)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class _SerialCardReader(abc.ABC):
    """What both readers share: option checks, the worker thread, and the loop side (cards
    waiting to be taken, the reader's health, waking ``read_card``)."""

    _kind: str = "serial"
    _baudrates: frozenset[int] = frozenset()

    def __init__(
        self,
        device: str,
        *,
        baudrate: int,
        id_tag_format: str,
        repeat_s: float,
        read_timeout_s: float,
        retry_s: float,
        max_retry_s: float,
    ) -> None:
        if not isinstance(device, str) or not device:
            raise ValueError(f"{self._kind}: device must be a serial port path, not {device!r}")
        if isinstance(baudrate, bool) or baudrate not in self._baudrates:
            allowed = ", ".join(str(b) for b in sorted(self._baudrates))
            raise ValueError(f"{self._kind}: baudrate must be one of {allowed}, not {baudrate!r}")
        if id_tag_format not in ID_TAG_FORMATS:
            allowed = ", ".join(sorted(ID_TAG_FORMATS))
            raise ValueError(
                f"{self._kind}: id_tag_format must be one of {allowed}, not {id_tag_format!r}"
            )
        self.device = device
        self.baudrate = int(baudrate)
        self.id_tag_format: IdTagFormat = cast(IdTagFormat, id_tag_format)
        self.repeat_s = _check_number(f"{self._kind}: repeat_s", repeat_s, 0.01, 3600.0)
        self._read_timeout_s = _check_number("read_timeout_s", read_timeout_s, 0.001, 1.0)
        self._retry_s = _check_number("retry_s", retry_s, 0.001, 600.0)
        self._max_retry_s = max(self._retry_s, _check_number("max_retry_s", max_retry_s, 0, 600))
        self._name = f"{self._kind} on {device}"
        # Shared with the worker: set once by shutdown.
        self._stop = threading.Event()
        # Loop side: only touched on the event loop.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._done: asyncio.Future[None] | None = None
        self._pending: deque[str] = deque(maxlen=_MAX_PENDING_CARDS)
        self._waiters: set[asyncio.Future[None]] = set()
        self._failure: str | None = None
        self._connected = False
        self._closed = False
        # Worker side: only touched by the worker thread.
        self._posted: tuple[bool, str | None] = (False, None)
        self._rejected = 0

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.device} {self.id_tag_format}>"

    # ----------------------------------------------------------------------- public, loop side

    @property
    def connected(self) -> bool:
        """True while the port is open and the reader works (PN532: it answered)."""
        return self._connected

    @property
    def healthy(self) -> bool:
        """False during a failure episode (while ``read_card`` raises ReaderError)."""
        return self._failure is None

    @property
    def rejected_frames(self) -> int:
        """How many bad frames (checksum, truncated, garbled, error frames) were dropped."""
        return self._rejected

    async def start(self) -> None:
        """Open the port and start reading in the background; ``read_card`` does this itself.
        The reader is bound to the running event loop."""
        loop = asyncio.get_running_loop()
        if self._closed:
            raise ReaderError(f"{self._name}: shut down")
        if self._thread is not None:
            if loop is not self._loop:
                raise RuntimeError(f"{self._name} is bound to another event loop")
            return
        self._loop = loop
        self._done = loop.create_future()
        self._thread = threading.Thread(target=self._worker, name=f"rfid {self._name}", daemon=True)
        self._thread.start()

    async def read_card(self) -> str:
        """Wait for the next card and return its idTag; ReaderError while the reader fails."""
        await self.start()
        loop = asyncio.get_running_loop()
        while True:
            if self._closed:
                raise ReaderError(f"{self._name}: shut down")
            if self._pending:
                return self._pending.popleft()
            if self._failure is not None:
                raise ReaderError(self._failure)
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.add(waiter)
            try:
                await waiter
            finally:
                self._waiters.discard(waiter)

    async def shutdown(self) -> None:
        """Stop the worker thread and close the port. Tasks still waiting in ``read_card`` are
        left for their owner to cancel (a clean stop is not a reader failure)."""
        self._closed = True
        self._stop.set()
        self._pending.clear()
        thread, done = self._thread, self._done
        if thread is None or done is None:
            return
        if asyncio.get_running_loop() is self._loop:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(done), _STOP_TIMEOUT_S)
        else:
            await asyncio.to_thread(thread.join, _STOP_TIMEOUT_S)
        if done.done():
            thread.join(0.5)  # the thread has run its last statement: returns at once
        if thread.is_alive():
            logger.warning("%s: worker thread did not stop", self._name)

    # ------------------------------------------------------------------- loop-side callbacks

    def _wake_all(self) -> None:
        for waiter in self._waiters:
            _resolve(waiter)

    def _on_card(self, tag: str) -> None:
        if self._closed:
            return
        self._pending.append(tag)
        self._wake_all()

    def _on_status(self, connected: bool, failure: str | None) -> None:
        self._connected = connected
        self._failure = failure
        if failure is not None:
            self._wake_all()

    # ---------------------------------------------------------------------- worker helpers

    def _worker(self) -> None:
        try:
            while True:
                try:
                    self._run()
                except _Stopped:
                    raise
                except Exception:
                    # A bug. Report it as a reader failure and start over rather than leave
                    # the charger without a reader until the next restart.
                    logger.exception("%s: worker thread crashed; restarting it", self._name)
                    self._set_status(False, f"{self._name}: driver error (see log)")
                    self._sleep(self._max_retry_s)
        except _Stopped:
            pass
        finally:
            self._post(functools.partial(self._on_status, False, self._posted[1]))
            done = self._done
            if done is not None:
                self._post(functools.partial(_resolve, done))

    @abc.abstractmethod
    def _run(self) -> None:
        """The worker thread's body: open the port, read, report (each reader its own)."""

    def _post(self, callback: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(callback)
        except RuntimeError:  # the loop is closed: nobody is left to read cards
            self._stop.set()

    def _set_status(self, connected: bool, failure: str | None) -> None:
        """Report the reader's health to the loop, logging transitions (worker thread)."""
        was_failure = self._posted[1]
        if failure is not None and was_failure is None:
            logger.warning("RFID reader failed: %s", failure)
        elif failure is None and was_failure is not None:
            logger.info("%s: reader answers again", self._name)
        elif failure is not None:
            logger.debug("%s: still failing: %s", self._name, failure)
            failure = was_failure  # one episode, one message
        if (connected, failure) != self._posted:
            self._posted = (connected, failure)
            self._post(functools.partial(self._on_status, connected, failure))

    def _emit(self, id_bytes: bytes) -> None:
        try:
            tag = self._format(id_bytes)
        except ValueError as exc:
            logger.warning("%s: card %s refused: %s", self._name, id_bytes.hex().upper(), exc)
            return
        logger.debug("%s: card %s", self._name, tag)
        self._post(functools.partial(self._on_card, tag))

    def _format(self, id_bytes: bytes) -> str:
        return format_id_tag(id_bytes, self.id_tag_format)

    def _open(self) -> _Port:
        port = serial.Serial(
            self.device,
            baudrate=self.baudrate,
            bytesize=8,
            parity="N",
            stopbits=1,
            timeout=self._read_timeout_s,
            write_timeout=0.5,
            exclusive=True,
        )
        return cast(_Port, port)

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    def _read_some(self, port: _Port) -> bytes:
        """What arrived, or b'' after one read timeout; OSError if the port failed."""
        if self._stop.is_set():
            raise _Stopped
        return port.read(max(1, port.in_waiting))


class Rdm6300Reader(_SerialCardReader):
    """RDM6300 / RDM630 125 kHz reader (EM4100 cards): 9600 8N1, transmit-only.

    It cannot be polled, so the only failure it can show is its port vanishing or erroring.
    ``read_timeout_s``, ``retry_s`` and ``max_retry_s`` tune the worker (tests shorten them).
    """

    _kind = "rdm6300"
    _baudrates = _RDM6300_BAUDRATES

    def __init__(
        self,
        device: str,
        *,
        baudrate: int = 9600,
        id_tag_format: str = "hex",
        repeat_s: float = 2.0,
        read_timeout_s: float = 0.05,
        retry_s: float = 1.0,
        max_retry_s: float = 10.0,
    ) -> None:
        super().__init__(
            device,
            baudrate=baudrate,
            id_tag_format=id_tag_format,
            repeat_s=repeat_s,
            read_timeout_s=read_timeout_s,
            retry_s=retry_s,
            max_retry_s=max_retry_s,
        )
        self._window_s = max(self.repeat_s, _RDM6300_MIN_WINDOW_S)

    def _format(self, id_bytes: bytes) -> str:
        return rdm6300_id_tag(id_bytes, self.id_tag_format)

    def _run(self) -> None:
        parser = Rdm6300Parser()
        debouncer = _Debouncer(self._window_s)
        backoff = self._retry_s
        while True:
            try:
                port = self._open()
            except _PORT_ERRORS as exc:
                self._set_status(False, f"{self._name}: cannot open the port: {exc}")
                self._sleep(backoff)
                backoff = min(2 * backoff, self._max_retry_s)
                continue
            backoff = self._retry_s
            parser.clear()
            self._set_status(True, None)
            try:
                while True:
                    chunk = self._read_some(port)
                    if not chunk:
                        continue
                    now = time.monotonic()
                    for data in parser.feed(chunk):
                        if debouncer.new_presentation(data, now):
                            self._emit(data)
                    self._rejected = parser.rejected
            except _PORT_ERRORS as exc:
                self._set_status(False, f"{self._name}: serial port failed: {exc}")
                self._sleep(backoff)
            finally:
                with contextlib.suppress(*_PORT_ERRORS):
                    port.close()


class _ExchangeFailed(Exception):
    """The PN532 did not answer a command properly (silence, NACK, error frame, garbage)."""


class Pn532Reader(_SerialCardReader):
    """PN532 NFC reader in HSU (UART) mode: wakes it, sets SAMConfiguration to normal mode and
    polls InListPassiveTarget (one ISO 14443 A target, 106 kbps) every ``poll_interval_s``.

    ``ack_timeout_s`` / ``response_timeout_s`` bound each exchange; ``max_misses`` failed
    exchanges in a row make a failure episode; ``read_timeout_s``, ``retry_s`` and
    ``max_retry_s`` tune the worker (tests shorten them).
    """

    _kind = "pn532"
    _baudrates = _PN532_BAUDRATES

    def __init__(
        self,
        device: str,
        *,
        baudrate: int = 115200,
        id_tag_format: str = "hex",
        repeat_s: float = 2.0,
        poll_interval_s: float = 0.2,
        ack_timeout_s: float = 0.1,
        response_timeout_s: float = 0.5,
        max_misses: int = 3,
        read_timeout_s: float = 0.02,
        retry_s: float = 1.0,
        max_retry_s: float = 5.0,
    ) -> None:
        super().__init__(
            device,
            baudrate=baudrate,
            id_tag_format=id_tag_format,
            repeat_s=repeat_s,
            read_timeout_s=read_timeout_s,
            retry_s=retry_s,
            max_retry_s=max_retry_s,
        )
        self.poll_interval_s = _check_number("pn532: poll_interval_s", poll_interval_s, 0.001, 60)
        self._ack_timeout_s = _check_number("ack_timeout_s", ack_timeout_s, 0.001, 10.0)
        self._response_timeout_s = _check_number("response_timeout_s", response_timeout_s, 0, 10)
        if isinstance(max_misses, bool) or not isinstance(max_misses, int) or max_misses < 1:
            raise ValueError(f"max_misses must be a positive integer, not {max_misses!r}")
        self._max_misses = max_misses
        self._window_s = max(self.repeat_s, _PN532_MIN_WINDOW_POLLS * self.poll_interval_s)
        self._parser = Pn532FrameParser()
        self._frames: deque[Pn532Frame] = deque()

    def _run(self) -> None:
        debouncer = _Debouncer(self._window_s)
        backoff = self._retry_s
        misses = 0
        while True:
            try:
                port = self._open()
            except _PORT_ERRORS as exc:
                self._set_status(False, f"{self._name}: cannot open the port: {exc}")
                self._sleep(backoff)
                backoff = min(2 * backoff, self._max_retry_s)
                continue
            try:
                initialised = False
                while True:
                    try:
                        if not initialised:
                            self._initialise(port)
                            initialised = True
                            misses = 0
                            backoff = self._retry_s
                            self._set_status(True, None)
                        uid = self._poll(port)
                    except _ExchangeFailed as exc:
                        # Whatever went wrong, wake it and configure it again next time: a
                        # PN532 that lost power is back in its low-power state.
                        initialised = False
                        misses += 1
                        logger.debug("%s: %s (%d in a row)", self._name, exc, misses)
                        if misses >= self._max_misses:
                            self._set_status(False, f"{self._name}: reader does not answer: {exc}")
                            self._sleep(backoff)
                            backoff = min(2 * backoff, self._max_retry_s)
                        else:
                            self._sleep(self.poll_interval_s)
                        continue
                    misses = 0
                    if uid is not None and debouncer.new_presentation(uid, time.monotonic()):
                        self._emit(uid)
                    self._sleep(self.poll_interval_s)
            except _PORT_ERRORS as exc:
                misses = self._max_misses
                self._set_status(False, f"{self._name}: serial port failed: {exc}")
                self._sleep(backoff)
            finally:
                with contextlib.suppress(*_PORT_ERRORS):
                    port.close()

    def _initialise(self, port: _Port) -> None:
        self._exchange(port, _CMD_SAM_CONFIGURATION, _SAM_NORMAL_MODE, prefix=PN532_WAKEUP)
        self._exchange(port, _CMD_RF_CONFIGURATION, _RF_MAX_RETRIES)

    def _poll(self, port: _Port) -> bytes | None:
        answer = self._exchange(port, _CMD_IN_LIST_PASSIVE_TARGET, _LIST_ONE_TYPE_A)
        try:
            return _parse_in_list_passive_target(answer)
        except ValueError as exc:
            self._rejected += 1
            raise _ExchangeFailed(str(exc)) from None

    def _exchange(self, port: _Port, command: int, params: bytes, *, prefix: bytes = b"") -> bytes:
        """Send one command; return the answer's data after the response code. Raises
        _ExchangeFailed, OSError (the port failed) or _Stopped."""
        port.reset_input_buffer()  # a late answer to an earlier command must not count
        self._parser.clear()
        self._frames.clear()
        try:
            port.write(prefix + pn532_frame(bytes([_PN532_HOST_TFI, command]) + params))
        except serial.SerialTimeoutException as exc:
            raise _ExchangeFailed(f"write timeout: {exc}") from None
        deadline = time.monotonic() + self._ack_timeout_s
        while True:
            frame = self._next_frame(port, deadline)
            if frame is None:
                raise _ExchangeFailed(f"no ACK to command 0x{command:02X}")
            if frame.kind == "ack":
                break
            self._rejected += 1
            if frame.kind in ("nack", "error"):
                raise _ExchangeFailed(f"{frame.kind} frame instead of ACK to 0x{command:02X}")
            logger.debug("%s: ignored %s frame waiting for ACK", self._name, frame.kind)
        deadline = time.monotonic() + self._response_timeout_s
        while True:
            frame = self._next_frame(port, deadline)
            if frame is None:
                with contextlib.suppress(serial.SerialTimeoutException):
                    port.write(PN532_ACK)  # an ACK from the host aborts the command
                raise _ExchangeFailed(f"no answer to command 0x{command:02X}")
            if (
                frame.kind == "data"
                and frame.tfi == _PN532_READER_TFI
                and frame.data[:1] == bytes([command + 1])
            ):
                return frame.data[1:]
            self._rejected += 1
            if frame.kind == "error":
                raise _ExchangeFailed(f"error frame in answer to command 0x{command:02X}")
            logger.debug("%s: ignored %s frame %s", self._name, frame.kind, frame.reason)

    def _next_frame(self, port: _Port, deadline: float) -> Pn532Frame | None:
        while not self._frames:
            if time.monotonic() >= deadline:
                return None
            chunk = self._read_some(port)
            if chunk:
                self._frames.extend(self._parser.feed(chunk))
        return self._frames.popleft()


# ------------------------------------------------------------------------------ factories

_COMMON_OPTIONS: Final = frozenset({"device", "baudrate", "id_tag_format", "repeat_s"})


class _Options:
    """Reads one driver's options with messages that name the option at fault."""

    def __init__(self, kind: str, options: Mapping[str, object], known: frozenset[str]) -> None:
        self.kind = kind
        self.options = options
        unknown = sorted(set(options) - known)
        if unknown:
            raise ValueError(
                f"rfid {kind}: unknown option(s) {', '.join(unknown)}; "
                f"known options: {', '.join(sorted(known))}"
            )

    def _error(self, name: str, message: str) -> ValueError:
        return ValueError(f"rfid {self.kind}: option {name!r} {message}")

    def device(self) -> str:
        value = self.options.get("device")
        if value is None:
            raise self._error("device", "(the serial port, e.g. /dev/ttyAMA0) is required")
        if not isinstance(value, str) or not value:
            raise self._error("device", f"must be a serial port path, not {value!r}")
        return value

    def choice(
        self, name: str, default: int | str, choices: frozenset[int] | frozenset[str]
    ) -> str | int:
        value = self.options.get(name, default)
        if isinstance(value, bool) or value not in choices:
            allowed = ", ".join(repr(c) for c in sorted(choices, key=str))
            raise self._error(name, f"must be one of {allowed}, not {value!r}")
        return cast(int | str, value)

    def number(self, name: str, default: float, low: float, high: float) -> float:
        value = self.options.get(name, default)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self._error(name, f"must be a number, not {value!r}")
        if not math.isfinite(value) or not low <= value <= high:
            raise self._error(name, f"must be between {low:g} and {high:g}, not {value!r}")
        return float(value)


def rdm6300_from_options(options: Mapping[str, object]) -> Rdm6300Reader:
    """An RDM6300 reader from the ``[rfid]`` table's options (``driver`` excluded):
    ``device`` (required), ``baudrate`` (9600), ``id_tag_format`` ("hex"), ``repeat_s`` (2.0).
    Only validates; the port is opened by the first ``read_card`` (or ``start``).
    Raises ValueError naming the bad option."""
    opts = _Options("rdm6300", options, _COMMON_OPTIONS)
    return Rdm6300Reader(
        opts.device(),
        baudrate=int(opts.choice("baudrate", 9600, _RDM6300_BAUDRATES)),
        id_tag_format=str(opts.choice("id_tag_format", "hex", ID_TAG_FORMATS)),
        repeat_s=opts.number("repeat_s", 2.0, 0.1, 30.0),
    )


def pn532_from_options(options: Mapping[str, object]) -> Pn532Reader:
    """A PN532 (HSU) reader from the ``[rfid]`` table's options (``driver`` excluded):
    ``device`` (required), ``baudrate`` (115200), ``id_tag_format`` ("hex"), ``repeat_s``
    (2.0), ``poll_interval_s`` (0.2). Only validates; the port is opened by the first
    ``read_card`` (or ``start``). Raises ValueError naming the bad option."""
    opts = _Options("pn532", options, _COMMON_OPTIONS | {"poll_interval_s"})
    return Pn532Reader(
        opts.device(),
        baudrate=int(opts.choice("baudrate", 115200, _PN532_BAUDRATES)),
        id_tag_format=str(opts.choice("id_tag_format", "hex", ID_TAG_FORMATS)),
        repeat_s=opts.number("repeat_s", 2.0, 0.1, 30.0),
        poll_interval_s=opts.number("poll_interval_s", 0.2, 0.05, 5.0),
    )
