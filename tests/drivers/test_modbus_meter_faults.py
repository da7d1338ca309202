"""How the Modbus meter driver fails, against real pymodbus peers: every fault is a MeterError
(never a made-up value, never another exception, never a hang), and the driver reads again
once the peer is back. A peer that does not answer is told apart by the error ("no answer
within ..."), not by a stopwatch: how soon the error comes is no test's business here."""

from __future__ import annotations

import asyncio
import math
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymodbus.pdu import ModbusPDU

from drivers.modbus_meter import ModbusBuses, ModbusMeter, modbus_meter_from_options
from drivers.protocols import MeterError, MeterReading
from evse_daemon.config import METER_MAPS_DIR as MAPS_DIR
from tests.drivers.modbus_peers import (
    LAYOUTS,
    FakeMeter,
    crc16,
    eventually,
    start_rtu_server,
    start_tcp_server,
    stop_server,
)
from tests.drivers.ptys import PtyPair, socat_pair

TIMEOUT_S = 0.3
# Only guards against a read that hangs: a loaded machine never comes near it.
HANG_S = 10 * TIMEOUT_S

SDM630 = LAYOUTS["eastron-sdm630"][1]


@pytest.fixture
def pty_pair(tmp_path: Path) -> Iterator[PtyPair]:
    with socat_pair(tmp_path) as pair:
        yield pair


def tcp_meter(port: int, buses: ModbusBuses, **extra: object) -> ModbusMeter:
    options: dict[str, object] = {
        "model": "eastron-sdm630",
        "host": "127.0.0.1",
        "port": port,
        "timeout_s": TIMEOUT_S,
    }
    return modbus_meter_from_options(options | extra, phases=3, maps_dir=MAPS_DIR, buses=buses)


def rtu_meter(pair: PtyPair, buses: ModbusBuses, **extra: object) -> ModbusMeter:
    options: dict[str, object] = {
        "model": "eastron-sdm630",
        "device": str(pair.a),
        "timeout_s": TIMEOUT_S,
    }
    return modbus_meter_from_options(options | extra, phases=3, maps_dir=MAPS_DIR, buses=buses)


def assert_known(reading: MeterReading, fake: FakeMeter) -> None:
    assert reading.energy_import_wh == pytest.approx(fake.values["energy_import"], rel=1e-6)
    assert reading.power_w == pytest.approx(fake.values["power"], rel=1e-6)
    assert reading.voltage_v == pytest.approx(
        tuple(fake.values[f"voltage_l{i}"] for i in (1, 2, 3)), rel=1e-6
    )


async def read_fails(meter: ModbusMeter, match: str | None = None) -> MeterError:
    """The read raises MeterError (matching ``match``), and does not hang."""
    with pytest.raises(MeterError, match=match) as info:
        async with asyncio.timeout(HANG_S):
            await meter.read()
    return info.value


# ------------------------------------------------------------------- no answer / recovery


async def test_tcp_server_stopped_then_back() -> None:
    fake = FakeMeter(SDM630)
    server, port = await start_tcp_server([fake])
    meter = tcp_meter(port, ModbusBuses())
    try:
        assert_known(await meter.read(), fake)
        await stop_server(server)
        await read_fails(meter)
        await read_fails(meter)  # still down: fails again, no hang, no backlog
        server, _ = await start_tcp_server([fake], port=port)
        fake.values["energy_import"] += 500.0
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
    finally:
        await meter.shutdown()
        await stop_server(server)


async def test_tcp_server_not_answering_times_out_then_recovers() -> None:
    fake = FakeMeter(SDM630)
    server, port = await start_tcp_server([fake])
    meter = tcp_meter(port, ModbusBuses())
    try:
        await meter.read()
        fake.silent_s = 3.0
        await read_fails(meter, "no answer within")
        fake.silent_s = 0.0
        # The connection was dropped after the timeout; the next read opens a new one.
        assert_known(await meter.read(), fake)
    finally:
        await meter.shutdown()
        await stop_server(server)


async def test_rtu_server_stopped_times_out_then_recovers(pty_pair: PtyPair) -> None:
    fake = FakeMeter(SDM630)
    server = await start_rtu_server([fake], pty_pair.b)
    meter = rtu_meter(pty_pair, ModbusBuses())
    try:
        assert_known(await meter.read(), fake)
        await stop_server(server)
        await read_fails(meter, "no answer within")
        await read_fails(meter, "no answer within")
        server = await start_rtu_server([fake], pty_pair.b)
        fake.values["energy_import"] += 500.0
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
        for _ in range(5):  # and stays in step with the server afterwards
            assert_known(await meter.read(), fake)
    finally:
        await meter.shutdown()
        await stop_server(server)


async def test_late_answers_never_give_a_wrong_value(pty_pair: PtyPair) -> None:
    """RTU has no transaction id: an answer that comes after its timeout must not be taken for
    the answer to a later request (here the power block answers late, and the energy block,
    the same size, is asked next)."""
    fake = FakeMeter(SDM630)
    server = await start_rtu_server([fake], pty_pair.b)
    meter = rtu_meter(pty_pair, ModbusBuses())
    outcomes: list[str] = []
    try:
        assert_known(await meter.read(), fake)
        fake.silent_s, fake.silent_at = TIMEOUT_S * 1.5, 0x0034
        for i in range(6):
            if i == 3:
                fake.silent_s = 0.0
            try:
                reading = await meter.read()
            except MeterError as exc:
                outcomes.append(str(exc))
            else:
                assert_known(reading, fake)
                outcomes.append("ok")
            await asyncio.sleep(0.02 * i)
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
    finally:
        await meter.shutdown()
        await stop_server(server)
    assert "ok" in outcomes


async def test_a_cancelled_read_leaves_the_bus_usable(pty_pair: PtyPair) -> None:
    fake = FakeMeter(SDM630)
    server = await start_rtu_server([fake], pty_pair.b)
    meter = rtu_meter(pty_pair, ModbusBuses())
    try:
        fake.silent_s = 0.2
        task = asyncio.create_task(meter.read())
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        fake.silent_s = 0.0
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
    finally:
        await meter.shutdown()
        await stop_server(server)


# ------------------------------------------------------------------- exception responses


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
async def test_unit_id_not_served_is_a_modbus_exception(transport: str, tmp_path: Path) -> None:
    fake = FakeMeter(SDM630, unit_id=1)
    buses = ModbusBuses()
    with socat_pair(tmp_path) as pair:
        if transport == "tcp":
            server, port = await start_tcp_server([fake])
            meter = tcp_meter(port, buses, unit_id=9)
        else:
            server = await start_rtu_server([fake], pair.b)
            meter = rtu_meter(pair, buses, unit_id=9)
        try:
            # pymodbus 3.16 answers an unknown unit with exception 4 (device failure).
            error = await read_fails(meter, "Modbus exception")
            assert "unit 9" in str(error)
        finally:
            await meter.shutdown()
            await stop_server(server)


async def test_illegal_address_is_a_modbus_exception(tmp_path: Path) -> None:
    text = (MAPS_DIR / "eastron-sdm630.toml").read_text()
    # The energy register moved to where this meter has nothing.
    map_file = tmp_path / "moved.toml"
    map_file.write_text(text.replace("address = 0x0048", "address = 0x0148"))
    fake = FakeMeter(SDM630)
    server, port = await start_tcp_server([fake])
    meter = modbus_meter_from_options(
        {"map_file": str(map_file), "host": "127.0.0.1", "port": port, "timeout_s": TIMEOUT_S},
        phases=3,
        maps_dir=MAPS_DIR,
        buses=ModbusBuses(),
    )
    try:
        await read_fails(meter, r"Modbus exception 2 \(illegal data address\)")
    finally:
        await meter.shutdown()
        await stop_server(server)


# ------------------------------------------------------------------- implausible values


@pytest.mark.parametrize(
    ("model", "quantity", "value", "match"),
    [
        ("eastron-sdm630", "energy_import", math.nan, "energy_import is nan"),
        ("eastron-sdm630", "power", math.inf, "power is inf"),
        ("eastron-sdm630", "voltage_l2", -math.inf, "voltage_l2 is -inf"),
        ("carlo-gavazzi-em340", "energy_import", -100.0, "implausible import energy"),
        ("eastron-sdm630", "energy_import", 3e14, "implausible import energy"),
        ("eastron-sdm630", "power", 2e6, "implausible power"),
        ("eastron-sdm630", "current_l3", 1e5, "implausible current"),
        ("eastron-sdm630", "voltage_l1", 1e5, "implausible voltage"),
        ("eastron-sdm630", "voltage_l1", -230.0, "implausible voltage"),
    ],
)
async def test_implausible_values_are_errors(
    model: str, quantity: str, value: float, match: str
) -> None:
    phases, layout = LAYOUTS[model]
    fake = FakeMeter(layout)
    server, port = await start_tcp_server([fake])
    meter = modbus_meter_from_options(
        {"model": model, "host": "127.0.0.1", "port": port, "timeout_s": TIMEOUT_S},
        phases=phases,
        maps_dir=MAPS_DIR,
        buses=ModbusBuses(),
    )
    try:
        good = fake.values[quantity]
        fake.values[quantity] = value
        await read_fails(meter, match)
        fake.values[quantity] = good
        await meter.read()  # a good value is accepted again
    finally:
        await meter.shutdown()
        await stop_server(server)


async def test_energy_going_backwards_is_an_error() -> None:
    fake = FakeMeter(SDM630)
    server, port = await start_tcp_server([fake])
    meter = tcp_meter(port, ModbusBuses())
    try:
        first = await meter.read()
        fake.values["energy_import"] -= 1000.0
        await read_fails(meter, "went backwards")
        await read_fails(meter, "went backwards")  # compared with the last *good* reading
        fake.values["energy_import"] = first.energy_import_wh  # equal is fine
        assert (await meter.read()).energy_import_wh == first.energy_import_wh
        fake.values["energy_import"] += 10.0
        assert (await meter.read()).energy_import_wh > first.energy_import_wh
    finally:
        await meter.shutdown()
        await stop_server(server)


# ------------------------------------------------------------------- garbage on the line


class LineNoise:
    """Mangles the server's answers on their way onto the line."""

    def __init__(self) -> None:
        self.mode: str | None = None

    def __call__(self, sending: bool, data: bytes) -> bytes:
        if not sending or self.mode is None:
            return data
        if self.mode == "junk":
            return b"\xff\x00\x13\x37 line noise \x55\xaa\x81"
        if self.mode == "bad-crc":
            return data[:-1] + bytes([data[-1] ^ 0xFF])
        if self.mode == "other-unit":
            body = bytes([(data[0] % 200) + 17]) + data[1:-2]
            return body + crc16(body)
        if self.mode == "short-answer":
            # A well-formed frame (right unit, right CRC) with fewer registers than asked for.
            body = data[:-2]
            if len(body) > 7:
                body = bytes([body[0], body[1], body[2] - 4]) + body[3:-4]
            return body + crc16(body)
        if self.mode == "truncated":
            return data[: len(data) // 2]
        if self.mode == "noise-then-answer":
            return b"\x00\xfe\x13" + data
        raise AssertionError(self.mode)


@pytest.mark.parametrize("mode", ["junk", "bad-crc", "other-unit", "short-answer", "truncated"])
async def test_garbage_answers_on_the_serial_line_are_errors(mode: str, pty_pair: PtyPair) -> None:
    fake = FakeMeter(SDM630)
    noise = LineNoise()
    server = await start_rtu_server([fake], pty_pair.b, trace_packet=noise)
    meter = rtu_meter(pty_pair, ModbusBuses())
    try:
        assert_known(await meter.read(), fake)
        noise.mode = mode
        await read_fails(meter)
        noise.mode = None
        fake.values["energy_import"] += 100.0
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
    finally:
        await meter.shutdown()
        await stop_server(server)


async def test_junk_written_into_the_pty_never_gives_a_wrong_value(pty_pair: PtyPair) -> None:
    fake = FakeMeter(SDM630)
    noise = LineNoise()
    server = await start_rtu_server([fake], pty_pair.b, trace_packet=noise)
    meter = rtu_meter(pty_pair, ModbusBuses())
    # A second writer on the server's end: what it writes reaches the driver as line noise.
    fd = os.open(pty_pair.b, os.O_WRONLY | os.O_NOCTTY | os.O_NONBLOCK)
    outcomes: list[str] = []
    try:
        for i in range(12):
            noise.mode = "noise-then-answer" if i % 3 == 0 else None
            task = asyncio.create_task(meter.read())
            await asyncio.sleep(0.001 * (i % 4))
            os.write(fd, bytes((i * 37 + k * 11) & 0xFF for k in range(5 + i)))
            try:
                reading = await task
            except MeterError:
                outcomes.append("error")
            else:
                assert_known(reading, fake)
                outcomes.append("ok")
        noise.mode = None
        assert_known(await eventually(meter.read), fake)  # type: ignore[arg-type]
    finally:
        os.close(fd)
        await meter.shutdown()
        await stop_server(server)
    assert len(outcomes) == 12


# ------------------------------------------------------------------- several meters, one bus


async def test_two_meters_on_one_rtu_bus_read_concurrently_without_interleaving(
    pty_pair: PtyPair,
) -> None:
    first = FakeMeter(SDM630, unit_id=1)
    second = FakeMeter(
        LAYOUTS["abb-b23"][1],
        unit_id=2,
        values={"energy_import": 98_765_430.0, "power": -1234.56, "voltage_l1": 239.9},
    )
    requests: list[int] = []

    def record(sending: bool, pdu: ModbusPDU) -> ModbusPDU:
        if not sending:
            requests.append(pdu.dev_id)
        return pdu

    server = await start_rtu_server([first, second], pty_pair.b, trace_pdu=record)
    buses = ModbusBuses()
    one = rtu_meter(pty_pair, buses, unit_id=1)
    two = modbus_meter_from_options(
        {"model": "abb-b23", "device": str(pty_pair.a), "unit_id": 2, "timeout_s": TIMEOUT_S},
        phases=3,
        maps_dir=MAPS_DIR,
        buses=buses,
    )
    assert len(buses.labels) == 1  # one serial client for the port
    try:
        rounds = 6
        for _ in range(rounds):
            a, b, a2 = await asyncio.gather(one.read(), two.read(), one.read())
            assert_known(a, first)
            assert_known(a2, first)
            assert b.energy_import_wh == pytest.approx(98_765_430.0)
            assert b.power_w == pytest.approx(-1234.56)
            assert b.voltage_v[0] == pytest.approx(239.9)
            first.values["energy_import"] += 10.0
            second.values["energy_import"] += 10.0
    finally:
        await one.shutdown()
        assert len(buses.labels) == 1  # the other meter still uses the port
        await two.read()
        await two.shutdown()
        assert len(buses.labels) == 0
        await stop_server(server)

    # Every read holds the bus: its requests follow each other, none from the other meter
    # in between. Runs of one unit are whole reads (3 requests for the SDM630, 4 for the B23).
    blocks = {1: len(one.blocks), 2: len(two.blocks)}
    assert blocks == {1: 3, 2: 4}
    runs: list[tuple[int, int]] = []
    for unit in requests:
        if runs and runs[-1][0] == unit:
            runs[-1] = (unit, runs[-1][1] + 1)
        else:
            runs.append((unit, 1))
    assert all(length % blocks[unit] == 0 for unit, length in runs), runs
    assert sum(length for unit, length in runs if unit == 1) == 2 * rounds * 3
    assert sum(length for unit, length in runs if unit == 2) == (rounds + 1) * 4


async def test_buses_close_ends_every_connection(pty_pair: PtyPair) -> None:
    fake = FakeMeter(SDM630)
    server = await start_rtu_server([fake], pty_pair.b)
    buses = ModbusBuses()
    meter = rtu_meter(pty_pair, buses)
    try:
        await meter.read()
        await buses.close()
        assert len(buses.labels) == 0
        with pytest.raises(MeterError):
            await meter.read()
    finally:
        await meter.shutdown()
        await stop_server(server)
