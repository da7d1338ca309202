"""The EnergyMeter contract, for every implementation: the mock meter, and the Modbus register-map
driver over a real pymodbus server on TCP and on RTU over a socat pty pair. Then every shipped
register map, decoded from values a server encodes exactly as that meter would."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from drivers.mock import MockConnectorHardware
from drivers.modbus_meter import ModbusBuses, ModbusMeter, modbus_meter_from_options
from drivers.protocols import EnergyMeter, MeterError, MeterReading
from evse_daemon.config import METER_MAPS_DIR as MAPS_DIR
from tests.drivers.modbus_peers import (
    LAYOUTS,
    FakeMeter,
    decoded,
    open_fds,
    settles,
    start_rtu_server,
    start_tcp_server,
    stop_server,
)
from tests.drivers.ptys import PtyPair, socat_pair


@dataclass
class Subject:
    """A meter under test and a way to make its register move on."""

    meter: EnergyMeter
    phases: int
    advance: Callable[[], None]
    baseline_fds: int
    baseline_tasks: set[asyncio.Task[object]]
    stop: Callable[[], Awaitable[None]]


async def _mock_subject() -> Subject:
    now = [1000.0]
    hw = MockConnectorHardware(1, state_dir=None, phases=3, clock=lambda: now[0])
    # An EV that charges: plugged, offered 16 A (26.67 % duty), contactor closed.
    hw.plug()
    hw.pilot.set_pwm(16 / 0.6)
    hw.contactor.set_closed(True)

    def advance() -> None:
        now[0] += 60.0

    async def stop() -> None:
        pass

    return Subject(hw.meter, 3, advance, open_fds(), set(asyncio.all_tasks()), stop)


async def _modbus_subject(transport: str, pty: PtyPair | None) -> Subject:
    fake = FakeMeter(LAYOUTS["eastron-sdm630"][1], unit_id=3)
    options: dict[str, object] = {"model": "eastron-sdm630", "unit_id": 3, "timeout_s": 1.0}
    if transport == "tcp":
        server, port = await start_tcp_server([fake])
        options |= {"host": "127.0.0.1", "port": port}
    else:
        assert pty is not None
        server = await start_rtu_server([fake], pty.b)
        options |= {"device": str(pty.a), "baudrate": 9600}
    await asyncio.sleep(0.01)
    baseline_fds, baseline_tasks = open_fds(), set(asyncio.all_tasks())
    meter = modbus_meter_from_options(options, phases=3, maps_dir=MAPS_DIR, buses=ModbusBuses())

    def advance() -> None:
        fake.values["energy_import"] += 1500.0

    async def stop() -> None:
        await stop_server(server)

    return Subject(meter, 3, advance, baseline_fds, baseline_tasks, stop)


@pytest.fixture(params=["mock", "modbus-tcp", "modbus-rtu"])
async def subject(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Subject]:
    kind: str = request.param
    if kind == "mock":
        yield await _mock_subject()
        return
    if kind == "modbus-tcp":
        s = await _modbus_subject("tcp", None)
        try:
            yield s
        finally:
            await s.meter.shutdown()
            await s.stop()
        return
    with socat_pair(tmp_path) as pair:
        s = await _modbus_subject("rtu", pair)
        try:
            yield s
        finally:
            await s.meter.shutdown()
            await s.stop()


# ------------------------------------------------------------------------------- contract


async def test_satisfies_the_protocol(subject: Subject) -> None:
    assert isinstance(subject.meter, EnergyMeter)


async def test_readings_are_finite_and_per_phase(subject: Subject) -> None:
    reading = await subject.meter.read()
    assert isinstance(reading, MeterReading)
    values = [reading.energy_import_wh, reading.power_w, *reading.current_a, *reading.voltage_v]
    assert all(isinstance(v, float) and math.isfinite(v) for v in values)
    assert reading.energy_import_wh >= 0.0
    assert len(reading.current_a) == subject.phases
    assert len(reading.voltage_v) == subject.phases


async def test_energy_never_decreases_and_follows_the_register(subject: Subject) -> None:
    energies = []
    for _ in range(6):
        energies.append((await subject.meter.read()).energy_import_wh)
        energies.append((await subject.meter.read()).energy_import_wh)  # twice without change
        subject.advance()
    assert energies == sorted(energies)
    assert energies[-1] > energies[0]


async def test_read_is_awaitable_and_yields_to_the_loop(subject: Subject) -> None:
    ran = asyncio.Event()
    other = asyncio.get_running_loop().call_soon(ran.set)
    pending = subject.meter.read()
    assert isinstance(pending, Awaitable)
    assert not ran.is_set()
    await pending
    assert ran.is_set(), "read() completed without ever giving the loop a turn"
    other.cancel()


async def test_concurrent_reads_are_all_answered(subject: Subject) -> None:
    readings = await asyncio.gather(*(subject.meter.read() for _ in range(5)))
    assert len(readings) == 5
    energies = [r.energy_import_wh for r in readings]
    assert energies == sorted(energies)


async def test_shutdown_releases_everything(subject: Subject) -> None:
    await subject.meter.read()
    await subject.meter.shutdown()
    await subject.meter.shutdown()  # idempotent
    assert await settles(lambda: open_fds() <= subject.baseline_fds), "file descriptor leak"
    me = asyncio.current_task()
    assert await settles(
        lambda: (
            {t for t in asyncio.all_tasks() if t is not me and not t.done()}
            <= subject.baseline_tasks
        )
    ), "task leak"
    if isinstance(subject.meter, ModbusMeter):
        with pytest.raises(MeterError):
            await subject.meter.read()


# ------------------------------------------------------------------- every shipped map


@pytest.mark.parametrize("transport", ["tcp", "rtu"])
@pytest.mark.parametrize("model", sorted(LAYOUTS))
async def test_shipped_map_decodes_what_the_meter_encodes(
    model: str, transport: str, tmp_path: Path
) -> None:
    phases, layout = LAYOUTS[model]
    fake = FakeMeter(layout, unit_id=7)
    options: dict[str, object] = {"model": model, "unit_id": 7, "timeout_s": 2.0}
    buses = ModbusBuses()
    with socat_pair(tmp_path) if transport == "rtu" else contextlib.nullcontext() as pair:
        if pair is None:
            server, port = await start_tcp_server([fake])
            options |= {"host": "127.0.0.1", "port": port}
        else:
            # The RTU server talks 8N1; the map's own parity default (ORNO: E) must yield to the
            # option, and a pty ignores line settings anyway.
            server = await start_rtu_server([fake], pair.b)
            options |= {"device": str(pair.a), "parity": "N"}
        meter = modbus_meter_from_options(options, phases=phases, maps_dir=MAPS_DIR, buses=buses)
        try:
            reading = await meter.read()
            # The register moves on and the driver follows it.
            fake.values["energy_import"] += 12_300.0
            later = await meter.read()
        finally:
            await meter.shutdown()
            await stop_server(server)

    def expect(name: str, value: float | None = None) -> float:
        return decoded(layout, name, fake.values[name] if value is None else value)

    assert reading.energy_import_wh == pytest.approx(expect("energy_import", 12_345_600.0))
    assert reading.energy_import_wh == pytest.approx(12_345_600.0, rel=1e-6)
    assert later.energy_import_wh == pytest.approx(12_357_900.0, rel=1e-6)
    assert reading.power_w == pytest.approx(expect("power"))
    assert reading.power_w == pytest.approx(7_360.5, rel=1e-6)
    if "current_l1" in layout:
        assert reading.current_a == pytest.approx(
            tuple(expect(f"current_l{i}") for i in range(1, phases + 1))
        )
        assert reading.voltage_v == pytest.approx(
            tuple(expect(f"voltage_l{i}") for i in range(1, phases + 1))
        )
        assert reading.current_a == pytest.approx((10.5, 10.75, 10.25)[:phases], rel=1e-6)
        assert reading.voltage_v == pytest.approx((230.1, 231.2, 229.3)[:phases], rel=1e-6)
    else:
        assert reading.current_a == ()
        assert reading.voltage_v == ()
    # One request per contiguous run of registers, never one per register.
    assert fake.requests == 2 * len(meter.blocks)
    assert len(meter.blocks) <= 4


async def test_single_phase_connector_on_a_three_phase_meter_reports_l1(tmp_path: Path) -> None:
    fake = FakeMeter(LAYOUTS["eastron-sdm630"][1])
    server, port = await start_tcp_server([fake])
    meter = modbus_meter_from_options(
        {"model": "eastron-sdm630", "host": "127.0.0.1", "port": port},
        phases=1,
        maps_dir=MAPS_DIR,
        buses=ModbusBuses(),
    )
    try:
        reading = await meter.read()
    finally:
        await meter.shutdown()
        await stop_server(server)
    assert reading.current_a == pytest.approx((10.5,))
    assert reading.voltage_v == pytest.approx((230.1,), rel=1e-6)
