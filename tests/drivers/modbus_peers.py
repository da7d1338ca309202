"""Real Modbus peers for the meter tests: pymodbus servers (TCP on loopback, RTU on a socat pty
pair) that serve an energy meter's registers encoded exactly as that meter would.

The register layouts here are an independent transcription of ``reference/standards.md`` §8,
not read from ``hardware/meters``: a test that decodes the served values through a shipped map
checks the map against the reference, not against itself.
"""

from __future__ import annotations

import asyncio
import math
import os
import struct
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from pymodbus import FramerType
from pymodbus.constants import ExcCodes
from pymodbus.pdu import ModbusPDU
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

# data type -> (struct format, registers)
_FORMATS = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
}


@dataclass(frozen=True)
class Reg:
    """Where a meter keeps one quantity: ``raw = si_value / scale`` encoded as ``dtype``."""

    fc: int
    address: int
    dtype: str
    word_order: str  # "big": high word first; "little": low word first
    scale: float = 1.0

    @property
    def words(self) -> int:
        return _FORMATS[self.dtype][1]

    def encode(self, si_value: float) -> list[int]:
        fmt, words = _FORMATS[self.dtype]
        raw_value = si_value / self.scale
        raw: float | int = raw_value
        if fmt != "f":
            raw = round(raw_value)
        packed = struct.pack(">" + fmt, raw)
        regs = list(struct.unpack(f">{words}H", packed))
        return regs if self.word_order == "big" else regs[::-1]


def _three(
    fc: int,
    dtype: str,
    order: str,
    *,
    v: tuple[int, float],
    i: tuple[int, float],
    p: tuple[int, float],
    e: tuple[int, float],
    e_dtype: str | None = None,
    p_dtype: str | None = None,
    v_dtype: str | None = None,
    i_dtype: str | None = None,
) -> dict[str, Reg]:
    regs = {
        "energy_import": Reg(fc, e[0], e_dtype or dtype, order, e[1]),
        "power": Reg(fc, p[0], p_dtype or dtype, order, p[1]),
    }
    for n in range(3):
        regs[f"voltage_l{n + 1}"] = Reg(fc, v[0] + 2 * n, v_dtype or dtype, order, v[1])
        regs[f"current_l{n + 1}"] = Reg(fc, i[0] + 2 * n, i_dtype or dtype, order, i[1])
    return regs


_SDM_1P = {
    "voltage_l1": Reg(4, 0x0000, "float32", "big"),
    "current_l1": Reg(4, 0x0006, "float32", "big"),
    "power": Reg(4, 0x000C, "float32", "big"),
    "energy_import": Reg(4, 0x0048, "float32", "big", 1000.0),
}
_ABB = _three(
    3,
    "uint32",
    "big",
    v=(0x5B00, 0.1),
    i=(0x5B0C, 0.01),
    p=(0x5B14, 0.01),
    e=(0x5000, 10.0),
    p_dtype="int32",
    e_dtype="uint64",
)
_ORNO = _three(
    3, "float32", "big", v=(0x000E, 1.0), i=(0x0016, 1.0), p=(0x001C, 1000.0), e=(0x0108, 1000.0)
)

#: model -> (phases, quantity -> register), per reference/standards.md §8.
LAYOUTS: Mapping[str, tuple[int, Mapping[str, Reg]]] = {
    "eastron-sdm630": (
        3,
        _three(
            4,
            "float32",
            "big",
            v=(0x0000, 1.0),
            i=(0x0006, 1.0),
            p=(0x0034, 1.0),
            e=(0x0048, 1000.0),
        ),
    ),
    "eastron-sdm120": (1, _SDM_1P),
    "eastron-sdm230": (1, _SDM_1P),
    "eastron-sdm72d-m": (
        3,
        {
            "power": Reg(4, 0x0034, "float32", "big"),
            "energy_import": Reg(4, 0x0048, "float32", "big", 1000.0),
        },
    ),
    "abb-b23": (3, _ABB),
    "abb-b24": (3, _ABB),
    "carlo-gavazzi-em340": (
        3,
        _three(
            4,
            "int32",
            "little",
            v=(0x0000, 0.1),
            i=(0x000C, 0.001),
            p=(0x0028, 0.1),
            e=(0x0034, 100.0),
        ),
    ),
    "inepro-pro380": (
        3,
        _three(
            3,
            "float32",
            "big",
            v=(0x5002, 1.0),
            i=(0x500C, 1.0),
            p=(0x5012, 1000.0),
            e=(0x600C, 1000.0),
        ),
    ),
    "orno-we516": (3, _ORNO),
    "orno-we517": (3, _ORNO),
}

# Values every fake meter starts with; exactly representable at every shipped resolution.
KNOWN_VALUES: Mapping[str, float] = {
    "energy_import": 12_345_600.0,
    "power": 7_360.5,
    "current_l1": 10.5,
    "current_l2": 10.75,
    "current_l3": 10.25,
    "voltage_l1": 230.1,
    "voltage_l2": 231.2,
    "voltage_l3": 229.3,
}


@dataclass
class FakeMeter:
    """One meter on a bus: serves ``values`` (SI units) through ``layout``; tests change
    ``values`` between reads. ``silent_s`` > 0 makes every answer (or those to requests at
    ``silent_at``) that late."""

    layout: Mapping[str, Reg]
    unit_id: int = 1
    values: dict[str, float] = field(default_factory=dict)
    silent_s: float = 0.0
    silent_at: int | None = None  # only requests starting at this address are late
    requests: int = 0

    def __post_init__(self) -> None:
        for name in self.layout:
            self.values.setdefault(name, KNOWN_VALUES[name])

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        self.requests += 1
        for name, reg in self.layout.items():
            if reg.fc == function_code:
                offset = reg.address - start_address
                registers[offset : offset + reg.words] = reg.encode(self.values[name])
        if self.silent_s and self.silent_at in (None, address):
            await asyncio.sleep(self.silent_s)
        return None

    def device(self) -> SimDevice:
        blocks: dict[int, list[SimData]] = {3: [], 4: []}
        for name, reg in self.layout.items():
            blocks[reg.fc].append(
                SimData(
                    reg.address, values=reg.encode(self.values[name]), datatype=DataType.REGISTERS
                )
            )
        # Distinct blocks per table, so a map that reads with the wrong function code fails.
        # pymodbus 3.16 needs every list non-empty: one placeholder where a table is unused.
        for fc, regs in blocks.items():
            if not regs:
                regs.append(SimData(0xFFF0 + fc, values=0, datatype=DataType.REGISTERS))
        bit = [SimData(0, values=False, datatype=DataType.BITS)]
        return SimDevice(
            id=self.unit_id, simdata=(bit, list(bit), blocks[3], blocks[4]), action=self._action
        )


def decoded(layout: Mapping[str, Reg], name: str, si_value: float) -> float:
    """What a correct decoder gives for ``si_value`` after the meter's own rounding."""
    reg = layout[name]
    fmt, words = _FORMATS[reg.dtype]
    regs = reg.encode(si_value)
    ordered = regs if reg.word_order == "big" else regs[::-1]
    raw = struct.unpack(">" + fmt, struct.pack(f">{words}H", *ordered))[0]
    return float(raw) * reg.scale


Server = ModbusTcpServer | ModbusSerialServer
TracePdu = Callable[[bool, ModbusPDU], ModbusPDU]
TracePacket = Callable[[bool, bytes], bytes]


async def start_tcp_server(
    meters: list[FakeMeter], *, port: int = 0, trace_pdu: TracePdu | None = None
) -> tuple[Server, int]:
    server = ModbusTcpServer(
        [m.device() for m in meters], address=("127.0.0.1", port), trace_pdu=trace_pdu
    )
    await server.serve_forever(background=True)
    bound = server.transport.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
    return server, int(bound)


async def start_rtu_server(
    meters: list[FakeMeter],
    port: Path,
    *,
    trace_pdu: TracePdu | None = None,
    trace_packet: TracePacket | None = None,
) -> Server:
    server = ModbusSerialServer(
        [m.device() for m in meters],
        framer=FramerType.RTU,
        port=str(port),
        baudrate=9600,
        trace_pdu=trace_pdu,
        trace_packet=trace_packet,
    )
    await server.serve_forever(background=True)
    return server


async def stop_server(server: Server) -> None:
    await server.shutdown()  # type: ignore[no-untyped-call]  # unannotated in pymodbus 3.16
    await asyncio.sleep(0.01)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def settles(predicate: Callable[[], bool], timeout_s: float = 2.0) -> bool:
    """Wait until ``predicate()`` holds (True) or the time is up (False)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


async def eventually(read: Callable[[], Awaitable[object]], timeout_s: float = 5.0) -> object:
    """Retry ``read`` until it succeeds (for a peer that is coming back)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await read()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


def crc16(frame: bytes) -> bytes:
    """The Modbus RTU CRC of ``frame``, low byte first."""
    crc = 0xFFFF
    for byte in frame:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
    return struct.pack("<H", crc)


def is_finite_reading(values: list[float]) -> bool:
    return all(math.isfinite(v) for v in values)
