"""The CardReader contract, run against the mock reader and the real RDM6300 and PN532 drivers.

The real drivers talk to a socat pty pair: the driver opens one end as its serial port, and the
test plays the reader on the other end, sending RDM6300 frames as a real module does (repeated
about every 100 ms while a card is held) or answering the driver's PN532 commands with real
HSU frames from a small PN532 emulator running in a thread. The framing on the test side is
written here from the datasheets, independently of ``drivers.rfid``.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import functools
import os
import signal
import threading
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import serial

from drivers.mock import MockCardReader
from drivers.protocols import CardReader, ReaderError
from drivers.rfid import Pn532Reader, Rdm6300Parser, Rdm6300Reader

REPEAT_S = 0.4  # repeat_s of the readers under test
HOLD_S = 0.25  # how long a card is held in the field
QUIET_S = 0.25  # how long to wait to be sure that no further idTag comes
AWAY_LONG_S = REPEAT_S + 0.15  # away for longer than repeat_s (delays only make it longer)
AWAY_SHORT_S = 0.1  # away for less than repeat_s (the last sighting is ~0.2 s before the next)
RDM_FRAME_PERIOD_S = 0.1
PN532_POLL_S = 0.05
WAIT_S = 3.0  # upper bound for anything that must happen


async def eventually(condition: Callable[[], bool], what: str, within: float = WAIT_S) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ------------------------------------------------------------------ the test side of the wire


def rdm_frame(data: bytes, *, checksum: int | None = None) -> bytes:
    """An RDM6300 frame: STX, 10 hex digits, 2 hex digits of XOR checksum, ETX."""
    assert len(data) == 5
    if checksum is None:
        checksum = functools.reduce(lambda a, b: a ^ b, data)
    return b"\x02" + (data.hex().upper() + f"{checksum:02X}").encode() + b"\x03"


def pn532_reply(data: bytes) -> bytes:
    """A PN532 → host information frame (TFI 0xD5)."""
    body = b"\xd5" + data
    return (
        bytes([0x00, 0x00, 0xFF, len(body), (0x100 - len(body)) & 0xFF])
        + body
        + bytes([(0x100 - sum(body) % 0x100) & 0xFF, 0x00])
    )


ACK = bytes.fromhex("0000ff00ff00")
NACK = bytes.fromhex("0000ffff0000")
ERROR_FRAME = bytes.fromhex("0000ff01ff7f8100")


def target(uid: bytes) -> bytes:
    """InListPassiveTarget data (NbTg = 1, then Tg = 1 and the target) for one ISO 14443 A
    target at 106 kbps with this UID."""
    sens_res = {4: b"\x00\x04", 7: b"\x00\x44", 10: b"\x00\x84"}[len(uid)]
    if len(uid) == 7:  # a DESFire-like card: SEL_RES 0x20 and an ATS after the UID
        return b"\x01\x01" + sens_res + b"\x20\x07" + uid + bytes.fromhex("067577810280")
    return b"\x01\x01" + sens_res + b"\x08" + bytes([len(uid)]) + uid


class SocatPair:
    """Two linked ptys: ``reader_path`` for the driver, ``device_path`` for the test."""

    def __init__(self, tmp_path: Path) -> None:
        self.reader_path = tmp_path / "ttyREADER"
        self.device_path = tmp_path / "ttyDEVICE"
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "socat",
            f"pty,raw,echo=0,link={self.reader_path}",
            f"pty,raw,echo=0,link={self.device_path}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await eventually(
            lambda: self.reader_path.exists() and self.device_path.exists(), "socat's pty links"
        )

    async def stop(self) -> None:
        """The port vanishes, as when a USB-serial adapter is unplugged."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), WAIT_S)
        await eventually(lambda: not self.reader_path.exists(), "socat's links to go")


class Pn532Emulator:
    """A PN532 in HSU mode on the device end of the pty pair, answering in its own thread.

    After power-up it ignores everything until woken with 0x55 0x55 and configured with
    SAMConfiguration, as a real one in its low-power state does. ``script`` holds one-shot
    misbehaviours for the next InListPassiveTarget commands (``None``: answer normally).
    """

    def __init__(self, path: Path) -> None:
        self._port = serial.Serial(str(path), 115200, timeout=0.01)
        self.card: bytes | None = None
        self.ghost = bytes.fromhex("0badc0de")  # the UID that corrupted answers carry
        self.script: deque[str | None] = deque()
        self.commands: list[int] = []
        self.wakeups = 0
        self.polls = 0
        self._powered = True
        self._awake = False
        self._configured = False
        self._buf = bytearray()
        self._last = b""
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pn532-emulator", daemon=True)
        self._thread.start()

    def power(self, on: bool) -> None:
        """Off: silent. On: back in the low-power state, needing wake-up and SAMConfiguration."""
        self._awake = self._configured = False
        self._powered = on

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self._port.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data = self._port.read(max(1, self._port.in_waiting))
            except OSError:
                return  # the pty went away
            if data and self._powered:
                self._feed(data)
            elif data:
                self._buf.clear()

    def _feed(self, data: bytes) -> None:
        if not self._awake and 0x55 in data:  # 0x55 0x55 may arrive in two reads
            self._awake = True
            self.wakeups += 1
        buf = self._buf
        buf += data
        while True:
            start = buf.find(b"\x00\xff")
            if start < 0:
                del buf[: len(buf) - (1 if buf.endswith(b"\x00") else 0)]
                return
            del buf[:start]
            if len(buf) < 4:
                return
            length, lcs = buf[2], buf[3]
            if (length, lcs) == (0x00, 0xFF):  # the host aborts the command
                del buf[:4]
                continue
            if (length, lcs) == (0xFF, 0x00):  # the host asks for the last answer again
                del buf[:4]
                self._port.write(self._last)
                continue
            if (length + lcs) & 0xFF:
                del buf[:2]
                continue
            if len(buf) < 5 + length:
                return
            body = bytes(buf[4 : 4 + length])
            good = (sum(body) + buf[4 + length]) & 0xFF == 0
            del buf[: 5 + length]
            if good and self._awake and body[0] == 0xD4 and len(body) >= 2:
                self._command(body[1], body[2:])

    def _answer(self, data: bytes, *, before: bytes = b"", between: bytes = b"") -> None:
        self._last = pn532_reply(data)
        self._port.write(before + ACK + between + self._last)

    def _command(self, command: int, params: bytes) -> None:
        if command != 0x14 and not self._configured:
            return  # still in the low-power state
        self.commands.append(command)
        if command == 0x14:
            assert params[:1] == b"\x01", "SAMConfiguration must select normal mode"
            self._configured = True
            self._answer(b"\x15")
        elif command == 0x32:
            self._answer(b"\x33")
        elif command == 0x4A:
            assert params == b"\x01\x00", "one target, 106 kbps type A"
            self.polls += 1
            self._poll(self.script.popleft() if self.script else None)
        else:
            self._port.write(ACK + ERROR_FRAME)

    def _poll(self, behaviour: str | None) -> None:
        card = self.card
        answer = b"\x4b" + (target(card) if card is not None else b"\x00")
        ghost = pn532_reply(b"\x4b" + target(self.ghost))
        if behaviour is None:
            self._answer(answer)
        elif behaviour == "noisy":  # line noise around good frames
            self._answer(answer, before=b"\xfe\x13\x37\x00\xff\x99", between=b"\x55\xaa\x00")
        elif behaviour == "silence":
            pass
        elif behaviour == "ack-only":
            self._port.write(ACK)
        elif behaviour == "garbage":
            self._port.write(bytes.fromhex("deadbeef13375a5aa5c3ff7f") * 3)
        elif behaviour == "bad-lcs":
            self._port.write(bytes.fromhex("0000ff0c11d54b01") + ghost[7:])
        elif behaviour == "nack":
            self._port.write(NACK)
        elif behaviour == "error":
            self._port.write(ACK + ERROR_FRAME)
        elif behaviour == "bad-dcs":
            self._port.write(ACK + ghost[:-2] + bytes([ghost[-2] ^ 0x01, 0x00]))
        elif behaviour == "truncated":
            self._port.write(ACK + ghost[: len(ghost) // 2])
        elif behaviour == "bad-uid-length":
            self._answer(b"\x4b\x01\x01\x00\x04\x08\x05" + self.ghost + b"\x01")
        else:
            raise AssertionError(f"unknown behaviour {behaviour}")


# ------------------------------------------------------------------ rigs: one per reader kind


class Rig(abc.ABC):
    """A reader under test and the physical world around it."""

    kind: str
    reader: Any
    # A card seen again within repeat_s of its last sighting is the same presentation.
    debounces = True
    card_a: bytes
    card_b: bytes

    def tag(self, card: bytes) -> str:
        """The idTag of this card in the default format."""
        return card.hex().upper()

    @abc.abstractmethod
    async def hold(self, card: bytes, seconds: float = HOLD_S) -> None:
        """A card is held in the reader's field for ``seconds``."""

    async def away(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    @abc.abstractmethod
    async def break_reader(self) -> None:
        """The reader stops answering (unplugged, powered off)."""

    @abc.abstractmethod
    async def repair_reader(self) -> None:
        """The reader is back."""

    async def close(self) -> None:
        await self.reader.shutdown()


class MockRig(Rig):
    kind = "mock"
    debounces = False  # the mock delivers every swipe: it has no field to debounce
    card_a = bytes.fromhex("04A1B2C3")
    card_b = bytes.fromhex("04112233445566")

    def __init__(self) -> None:
        self.reader = MockCardReader()

    async def start(self) -> None:
        pass

    async def hold(self, card: bytes, seconds: float = HOLD_S) -> None:
        self.reader.swipe(self.tag(card))
        await asyncio.sleep(0)

    async def away(self, seconds: float) -> None:
        await asyncio.sleep(0.02)  # no field, no timing: only let the reading task run

    async def break_reader(self) -> None:
        self.reader.inject_fault("reader")

    async def repair_reader(self) -> None:
        self.reader.clear_fault("reader")


class Rdm6300Rig(Rig):
    kind = "rdm6300"
    card_a = bytes.fromhex("0A1B2C3D4E")
    card_b = bytes.fromhex("01DEADBEEF")

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.pair = SocatPair(tmp_path)
        self.reader = Rdm6300Reader(
            str(self.pair.reader_path),
            repeat_s=REPEAT_S,
            retry_s=0.05,
            max_retry_s=0.2,
            **options,
        )
        self.port: Any = None

    async def start(self) -> None:
        await self.pair.start()
        self.port = serial.Serial(str(self.pair.device_path), 9600, timeout=0.1)
        await self.reader.start()
        await eventually(lambda: self.reader.connected, "the driver to open its port")

    def send(self, data: bytes) -> None:
        self.port.write(data)

    async def hold(self, card: bytes, seconds: float = HOLD_S) -> None:
        """A card in the field: the module sends its frame about every 100 ms."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            self.send(rdm_frame(card))
            if loop.time() + RDM_FRAME_PERIOD_S > end:
                break
            await asyncio.sleep(RDM_FRAME_PERIOD_S)
        await asyncio.sleep(0.05)  # 14 bytes at 9600 baud, plus the pty hop

    async def break_reader(self) -> None:
        self.port.close()
        await self.pair.stop()

    async def repair_reader(self) -> None:
        await self.pair.start()
        self.port = serial.Serial(str(self.pair.device_path), 9600, timeout=0.1)
        await eventually(lambda: self.reader.connected, "the driver to reopen its port")

    async def close(self) -> None:
        await self.reader.shutdown()
        if self.port is not None:
            self.port.close()
        await self.pair.stop()


class Pn532Rig(Rig):
    kind = "pn532"
    card_a = bytes.fromhex("DEADBEEF")
    card_b = bytes.fromhex("045271CA3B5E80")

    def __init__(self, tmp_path: Path, **options: Any) -> None:
        self.pair = SocatPair(tmp_path)
        self.reader = Pn532Reader(
            str(self.pair.reader_path),
            repeat_s=REPEAT_S,
            poll_interval_s=PN532_POLL_S,
            ack_timeout_s=0.05,
            response_timeout_s=0.1,
            retry_s=0.05,
            max_retry_s=0.2,
            **options,
        )
        self.emulator: Pn532Emulator | None = None

    @property
    def pn532(self) -> Pn532Emulator:
        assert self.emulator is not None
        return self.emulator

    async def start(self) -> None:
        await self.pair.start()
        self.emulator = Pn532Emulator(self.pair.device_path)
        await self.reader.start()
        await eventually(lambda: self.reader.connected, "the PN532 to be initialised")

    async def hold(self, card: bytes, seconds: float = HOLD_S) -> None:
        self.pn532.card = card
        await asyncio.sleep(seconds)
        self.pn532.card = None

    async def break_reader(self) -> None:
        self.pn532.power(False)

    async def repair_reader(self) -> None:
        self.pn532.power(True)

    async def close(self) -> None:
        await self.reader.shutdown()
        if self.emulator is not None:
            self.emulator.close()
        await self.pair.stop()


RigFactory = Callable[..., Awaitable[Rig]]


@pytest.fixture
async def make_rig(tmp_path: Path) -> AsyncIterator[RigFactory]:
    rigs: list[Rig] = []

    async def make(kind: str, **options: Any) -> Rig:
        rig: Rig
        if kind == "mock":
            rig = MockRig()
        elif kind == "rdm6300":
            rig = Rdm6300Rig(tmp_path / f"r{len(rigs)}", **options)
        else:
            rig = Pn532Rig(tmp_path / f"r{len(rigs)}", **options)
        (tmp_path / f"r{len(rigs)}").mkdir()
        rigs.append(rig)
        await rig.start()  # type: ignore[attr-defined]
        return rig

    yield make
    for rig in rigs:
        await rig.close()


@pytest.fixture(params=["mock", "rdm6300", "pn532"])
async def rig(request: pytest.FixtureRequest, make_rig: RigFactory) -> Rig:
    return await make_rig(request.param)


class Collector:
    """Reads cards the way the app does: keeps calling read_card, pausing after an error."""

    def __init__(self, reader: CardReader) -> None:
        self.reader = reader
        self.tags: list[str] = []
        self.errors: list[ReaderError] = []
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            try:
                self.tags.append(await self.reader.read_card())
            except ReaderError as exc:
                self.errors.append(exc)
                await asyncio.sleep(0.05)

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def collectors() -> AsyncIterator[Callable[[CardReader], Collector]]:
    made: list[Collector] = []

    def make(reader: CardReader) -> Collector:
        made.append(Collector(reader))
        return made[-1]

    yield make
    for c in made:
        await c.close()


# ------------------------------------------------------------------ the contract


def test_readers_satisfy_the_protocol(tmp_path: Path) -> None:
    assert isinstance(MockCardReader(), CardReader)
    assert isinstance(Rdm6300Reader(str(tmp_path / "x")), CardReader)
    assert isinstance(Pn532Reader(str(tmp_path / "x")), CardReader)


async def test_a_card_yields_exactly_one_id_tag(rig: Rig, collectors: Any) -> None:
    c = collectors(rig.reader)
    await rig.hold(rig.card_a)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a)]
    assert c.errors == []


async def test_a_second_card_counts_at_once(rig: Rig, collectors: Any) -> None:
    c = collectors(rig.reader)
    await rig.hold(rig.card_a)
    await rig.hold(rig.card_b)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a), rig.tag(rig.card_b)]


async def test_the_same_card_within_repeat_s_is_a_repeat(rig: Rig, collectors: Any) -> None:
    c = collectors(rig.reader)
    await rig.hold(rig.card_a)
    await rig.away(AWAY_SHORT_S)
    await rig.hold(rig.card_a)
    await rig.away(QUIET_S)
    # The mock has no field: each swipe is a presentation of its own, as documented.
    presentations = 1 if rig.debounces else 2
    assert c.tags == [rig.tag(rig.card_a)] * presentations


async def test_the_same_card_after_it_was_away_counts_again(rig: Rig, collectors: Any) -> None:
    c = collectors(rig.reader)
    await rig.hold(rig.card_a)
    await rig.away(AWAY_LONG_S)
    await rig.hold(rig.card_a)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a)] * 2


async def test_a_held_card_counts_once_however_long(rig: Rig, collectors: Any) -> None:
    c = collectors(rig.reader)
    await rig.hold(rig.card_a, seconds=2 * REPEAT_S)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a)]


async def test_a_failing_reader_raises_and_recovers(rig: Rig) -> None:
    reader = rig.reader
    waiting = asyncio.create_task(reader.read_card())
    await asyncio.sleep(0.05)
    await rig.break_reader()
    # A read_card that was waiting is woken with the error...
    with pytest.raises(ReaderError):
        await asyncio.wait_for(waiting, WAIT_S)
    # ...and while the reader stays dead, every call raises (rather than wait for a card or
    # for the repair, which only comes after: that would end in TimeoutError).
    for _ in range(3):
        with pytest.raises(ReaderError):
            await asyncio.wait_for(reader.read_card(), WAIT_S)
        await asyncio.sleep(0.1)

    await rig.repair_reader()
    # Back: read_card waits again (the app clears ReaderFailure after a second of this)...
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_S
    while True:
        read = asyncio.create_task(reader.read_card())
        done, _ = await asyncio.wait({read}, timeout=0.3)
        if not done:
            break
        with pytest.raises(ReaderError):
            read.result()
        assert loop.time() < deadline, "the reader did not recover"
        await asyncio.sleep(0.05)
    # ...and reads cards.
    await rig.hold(rig.card_a)
    assert await asyncio.wait_for(read, WAIT_S) == rig.tag(rig.card_a)


async def test_shutdown_is_clean(rig: Rig) -> None:
    reader = rig.reader
    device = getattr(rig, "pair", None)
    pts = _pts_of(device.reader_path) if device is not None else None
    waiting = asyncio.create_task(reader.read_card())
    await asyncio.sleep(0.05)
    await reader.shutdown()
    # A clean stop is not a reader failure: the waiting task is left to its owner.
    await asyncio.sleep(0.05)
    assert not waiting.done()
    waiting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiting
    with pytest.raises(ReaderError):
        await reader.read_card()
    await reader.shutdown()  # idempotent
    assert asyncio.all_tasks() == {asyncio.current_task()}
    if pts is not None:
        assert not [t for t in threading.enumerate() if t.name.startswith(f"rfid {rig.kind}")]
        fds = os.listdir("/proc/self/fd")
        held = [fd for fd in fds if _fd_target(fd) == pts]
        assert held == [], "the driver still holds its serial port"


def _pts_of(link: Path) -> str:
    return os.path.realpath(link)


def _fd_target(fd: str) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


# ------------------------------------------------------------------ bad frames

GHOST_RDM = bytes.fromhex("0BADC0DE55")


async def test_rdm6300_bad_frames_never_yield_an_id_tag(
    make_rig: RigFactory, collectors: Any
) -> None:
    rig = await make_rig("rdm6300")
    assert isinstance(rig, Rdm6300Rig)
    c = collectors(rig.reader)
    good = rdm_frame(GHOST_RDM)
    bad_checksum = rdm_frame(GHOST_RDM, checksum=good[11] ^ 0x5A)  # any wrong value
    not_hex = b"\x02" + b"0BADC0DG55" + good[11:]
    no_etx = good[:13] + b"\x04"
    for frame in (bad_checksum, good[:7], not_hex, no_etx, b"\xff\x13garbage\x03", good[:13]):
        for _ in range(3):
            rig.send(frame)
            await asyncio.sleep(0.03)
    await rig.away(QUIET_S)
    assert c.tags == []
    assert c.errors == []
    assert rig.reader.rejected_frames >= 12
    # Resynchronised: the next good frame right after a truncated one reads.
    rig.send(good[:5])
    await rig.hold(rig.card_b)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_b)]


async def test_rdm6300_garbage_between_and_split_frames(
    make_rig: RigFactory, collectors: Any
) -> None:
    rig = await make_rig("rdm6300")
    assert isinstance(rig, Rdm6300Rig)
    c = collectors(rig.reader)
    frame = rdm_frame(rig.card_a)
    for _ in range(4):
        rig.send(b"\x00\xff\x7f noise \x03")
        for i in range(0, len(frame), 5):  # a frame arriving in pieces
            rig.send(frame[i : i + 5])
            await asyncio.sleep(0.005)
        await asyncio.sleep(RDM_FRAME_PERIOD_S)
    rig.send(frame.lower())  # lower-case hex digits also read
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a)]


async def test_pn532_bad_frames_never_yield_an_id_tag(
    make_rig: RigFactory, collectors: Any
) -> None:
    rig = await make_rig("pn532")
    assert isinstance(rig, Pn532Rig)
    c = collectors(rig.reader)
    bad = ["bad-dcs", "truncated", "garbage", "bad-lcs", "error", "nack"]
    bad += ["bad-uid-length", "ack-only", "silence"]
    for behaviour in bad:  # a good "no target" answer after each: never 3 misses in a row
        rig.pn532.script.extend([behaviour, None])
    await eventually(lambda: not rig.pn532.script, "the emulator to play its script")
    await rig.away(QUIET_S)
    assert c.tags == []
    assert c.errors == []
    assert rig.reader.rejected_frames >= 5  # bad-dcs, bad-lcs, error, nack, bad-uid-length
    await rig.hold(rig.card_b)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_b)]


async def test_pn532_reads_through_line_noise(make_rig: RigFactory, collectors: Any) -> None:
    rig = await make_rig("pn532")
    assert isinstance(rig, Pn532Rig)
    c = collectors(rig.reader)
    rig.pn532.script.extend(["noisy"] * 20)
    await rig.hold(rig.card_a)
    await rig.away(QUIET_S)
    assert c.tags == [rig.tag(rig.card_a)]


# ------------------------------------------------------------------ PN532 life cycle


async def test_pn532_wakes_configures_and_polls(make_rig: RigFactory) -> None:
    rig = await make_rig("pn532")
    assert isinstance(rig, Pn532Rig)
    await eventually(lambda: rig.pn532.polls >= 3, "polling")
    assert rig.pn532.wakeups >= 1
    assert rig.pn532.commands[:3] == [0x14, 0x32, 0x4A]
    # Polls are poll_interval_s apart, not a busy loop.
    before = rig.pn532.polls
    await asyncio.sleep(0.5)
    assert rig.pn532.polls - before <= 0.5 / PN532_POLL_S + 1


async def test_pn532_recovery_wakes_and_configures_again(make_rig: RigFactory) -> None:
    rig = await make_rig("pn532")
    assert isinstance(rig, Pn532Rig)
    rig.pn532.power(False)
    await eventually(lambda: not rig.reader.healthy, "the failure")
    rig.pn532.commands.clear()
    wakeups = rig.pn532.wakeups
    rig.pn532.power(True)
    await eventually(lambda: rig.reader.healthy and rig.reader.connected, "the recovery")
    assert rig.pn532.wakeups > wakeups
    assert rig.pn532.commands[:2] == [0x14, 0x32]


async def test_pn532_port_removed_raises_and_recovers(make_rig: RigFactory) -> None:
    rig = await make_rig("pn532")
    assert isinstance(rig, Pn532Rig)
    rig.pn532.close()
    await rig.pair.stop()
    await eventually(lambda: not rig.reader.healthy, "the failure")
    with pytest.raises(ReaderError, match="pn532"):
        await rig.reader.read_card()
    await rig.pair.start()
    rig.emulator = Pn532Emulator(rig.pair.device_path)
    await eventually(lambda: rig.reader.healthy and rig.reader.connected, "the recovery")
    read = asyncio.create_task(rig.reader.read_card())
    await rig.hold(rig.card_a)
    assert await asyncio.wait_for(read, WAIT_S) == rig.tag(rig.card_a)


async def test_a_crashed_worker_is_a_failure_and_restarts(
    make_rig: RigFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    rig = await make_rig("rdm6300")
    assert isinstance(rig, Rdm6300Rig)
    feed = Rdm6300Parser.feed
    calls = []

    def buggy_feed(self: Rdm6300Parser, data: bytes) -> list[bytes]:
        calls.append(data)
        if len(calls) == 1:
            raise RuntimeError("a bug")
        return feed(self, data)

    monkeypatch.setattr(Rdm6300Parser, "feed", buggy_feed)
    rig.send(rdm_frame(rig.card_b))
    await eventually(lambda: not rig.reader.healthy, "the failure")
    with pytest.raises(ReaderError, match="driver error"):
        await rig.reader.read_card()
    await eventually(lambda: rig.reader.healthy and rig.reader.connected, "the restart")
    read = asyncio.create_task(rig.reader.read_card())
    await rig.hold(rig.card_a)
    assert await asyncio.wait_for(read, WAIT_S) == rig.tag(rig.card_a)


async def test_missing_port_is_a_reader_failure(tmp_path: Path) -> None:
    for reader in (
        Rdm6300Reader(str(tmp_path / "nope"), retry_s=0.05),
        Pn532Reader(str(tmp_path / "nope"), retry_s=0.05),
    ):
        with pytest.raises(ReaderError, match="nope"):
            await asyncio.wait_for(reader.read_card(), WAIT_S)
        await reader.shutdown()


# ------------------------------------------------------------------ idTag formats

RDM_TAGS = {
    "hex": "0A1B2C3D4E",  # the 5 data bytes, version byte first
    "hex-reversed": "4E3D2C1B0A",
    "decimal": "0455884110",  # 0x1B2C3D4E: the 4 tag bytes, 10 digits
}


@pytest.mark.parametrize("fmt", sorted(RDM_TAGS))
async def test_rdm6300_id_tag_formats(make_rig: RigFactory, collectors: Any, fmt: str) -> None:
    rig = await make_rig("rdm6300", id_tag_format=fmt)
    c = collectors(rig.reader)
    await rig.hold(bytes.fromhex("0A1B2C3D4E"), seconds=0.1)
    await rig.hold(bytes.fromhex("00000000FF"), seconds=0.1)
    await rig.away(0.1)
    small = {"hex": "00000000FF", "hex-reversed": "FF00000000", "decimal": "0000000255"}
    assert c.tags == [RDM_TAGS[fmt], small[fmt]]


UID4 = bytes.fromhex("DEADBEEF")
UID7 = bytes.fromhex("045271CA3B5E80")
UID10 = bytes.fromhex("112233445566778899AA")
PN532_TAGS = {
    "hex": ["DEADBEEF", "045271CA3B5E80", "112233445566778899AA"],
    "hex-reversed": ["EFBEADDE", "805E3BCA715204", "AA998877665544332211"],
    # big-endian, zero-padded to 10 / 17 digits; a 10-byte UID needs 25: refused
    "decimal": ["3735928559", "01216548584513152"],
}


@pytest.mark.parametrize("fmt", sorted(PN532_TAGS))
async def test_pn532_id_tag_formats(make_rig: RigFactory, collectors: Any, fmt: str) -> None:
    rig = await make_rig("pn532", id_tag_format=fmt)
    c = collectors(rig.reader)
    for uid in (UID4, UID7, UID10):
        await rig.hold(uid, seconds=0.15)
    await rig.away(0.15)
    assert c.tags == PN532_TAGS[fmt]
    assert all(len(tag) <= 20 for tag in c.tags)
    assert c.errors == []
