"""Modbus energy meters described by a register map (``hardware/meters/<model>.toml``).

One generic driver, :class:`ModbusMeter`, reads any meter whose registers a map file describes,
over Modbus TCP or Modbus RTU on a serial port, so a technician adds a meter model without code.
The map format is documented in ``hardware/meters/README.md``; :func:`load_meter_map` validates
a map and names the file and key of every mistake.

Several meters may hang on one RS485 bus (or sit behind one Modbus TCP gateway): a
:class:`ModbusBuses` registry, created once by the caller, gives every meter on the same serial
device (or the same host and port) one shared client, and each meter holds the bus's
``asyncio.Lock`` for the whole of its read, so requests never interleave.

Failures are :class:`~drivers.protocols.MeterError`, never a made-up value: no answer within
``timeout_s`` (the connection is then dropped and reopened on the next read), a Modbus exception
response, a transport error, a NaN or infinite value, a value outside what any charger meter can
show, or an energy register that runs backwards.

pymodbus is pinned exactly and only this module touches it, through the thin
:class:`_ModbusBus` adapter; it is imported when the first bus connects, so loading and checking
a map (``evse-daemon check-config``) does not pay for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
import struct
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from drivers.protocols import MeterError, MeterReading

if TYPE_CHECKING:
    from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Register map format

#: data type -> (struct format, registers)
DATA_TYPES: Final[Mapping[str, tuple[str, int]]] = {
    "int16": ("h", 1),
    "uint16": ("H", 1),
    "int32": ("i", 2),
    "uint32": ("I", 2),
    "int64": ("q", 4),
    "uint64": ("Q", 4),
    "float32": ("f", 2),
}
WORD_ORDERS: Final = ("big", "little")
FUNCTION_CODES: Final = (3, 4)

# Raw units a map may name per dimension, with the factor to the SI unit the driver reports.
_ENERGY_UNITS: Final[Mapping[str, float]] = {"Wh": 1.0, "kWh": 1e3, "MWh": 1e6}
_POWER_UNITS: Final[Mapping[str, float]] = {"W": 1.0, "kW": 1e3}
_CURRENT_UNITS: Final[Mapping[str, float]] = {"A": 1.0, "mA": 1e-3}
_VOLTAGE_UNITS: Final[Mapping[str, float]] = {"V": 1.0}

#: quantity -> the units it may be given in
QUANTITIES: Final[Mapping[str, Mapping[str, float]]] = {
    "energy_import": _ENERGY_UNITS,
    "power": _POWER_UNITS,
    "power_l1": _POWER_UNITS,
    "power_l2": _POWER_UNITS,
    "power_l3": _POWER_UNITS,
    "current_l1": _CURRENT_UNITS,
    "current_l2": _CURRENT_UNITS,
    "current_l3": _CURRENT_UNITS,
    "voltage_l1": _VOLTAGE_UNITS,
    "voltage_l2": _VOLTAGE_UNITS,
    "voltage_l3": _VOLTAGE_UNITS,
}

#: The most registers one FC03/FC04 request may ask for (Modbus application protocol 6.3/6.4).
MAX_REGISTERS_PER_REQUEST: Final = 125

_METER_KEYS: Final = frozenset({"description", "phases", "max_gap", "max_registers", "notes"})
_SERIAL_KEYS: Final = frozenset({"baudrate", "parity", "stopbits"})
_DEFAULT_KEYS: Final = frozenset({"function_code", "type", "word_order"})
_REGISTER_KEYS: Final = frozenset(
    {"address", "function_code", "type", "word_order", "unit", "scale"}
)
_TOP_KEYS: Final = frozenset({"meter", "serial", "defaults", "registers"})

BAUDRATES: Final = (1200, 2400, 4800, 9600, 19200, 38400, 57600, 115200)
PARITIES: Final = ("N", "E", "O")
STOPBITS: Final = (1, 2)

# Plausibility bounds: a reading outside them is a decoding or bus fault, not a measurement.
# 100 GWh is centuries of a 44 kW charger at full power; a charger's AC meter never sees 1 MW,
# 2 kA or 1 kV between a phase and neutral.
MAX_ENERGY_WH: Final = 1e11
MAX_ABS_POWER_W: Final = 1e6
MAX_ABS_CURRENT_A: Final = 2000.0
MAX_VOLTAGE_V: Final = 1000.0

_MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True, slots=True)
class RegisterSpec:
    """Where and how one quantity sits in the meter: ``value_si = decoded_raw * scale``."""

    quantity: str
    function_code: int
    address: int
    data_type: str
    word_order: Literal["big", "little"]
    unit: str
    scale: float

    @property
    def words(self) -> int:
        return DATA_TYPES[self.data_type][1]

    def decode(self, registers: list[int]) -> float:
        """The value in SI units (Wh, W, A, V) from this quantity's registers."""
        fmt, words = DATA_TYPES[self.data_type]
        if len(registers) != words:
            raise ValueError(f"{self.quantity}: {len(registers)} registers, expected {words}")
        ordered = registers if self.word_order == "big" else registers[::-1]
        raw = struct.unpack(">" + fmt, struct.pack(f">{words}H", *ordered))[0]
        return float(raw) * self.scale


@dataclass(frozen=True, slots=True)
class MeterMap:
    """A validated register map."""

    path: Path
    description: str
    phases: int
    registers: Mapping[str, RegisterSpec]
    max_gap: int = 0
    max_registers: int = MAX_REGISTERS_PER_REQUEST
    baudrate: int | None = None
    parity: str | None = None
    stopbits: int | None = None

    @property
    def model(self) -> str:
        return self.path.stem


@dataclass(frozen=True, slots=True)
class ReadBlock:
    """One request: ``count`` registers from ``address`` with ``function_code``, and where each
    quantity sits in the answer (offset in registers)."""

    function_code: int
    address: int
    count: int
    fields: tuple[tuple[int, RegisterSpec], ...]


class _MapError(ValueError):
    pass


def _fail(path: Path, key: str, message: str) -> _MapError:
    return _MapError(f"{path}: {key}: {message}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _table(path: Path, doc: Mapping[str, object], key: str, *, required: bool) -> dict[str, object]:
    value = doc.get(key)
    if value is None:
        if required:
            raise _fail(path, key, "missing table")
        return {}
    if not isinstance(value, dict):
        raise _fail(path, key, "must be a table")
    return value


def _unknown_keys(
    path: Path, prefix: str, table: Mapping[str, object], known: Iterable[str]
) -> None:
    allowed = frozenset(known)
    for key in table:
        if key not in allowed:
            raise _fail(
                path,
                f"{prefix}{key}",
                f"unknown key (expected one of {', '.join(sorted(allowed))})",
            )


def _int_in(path: Path, key: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value):
        raise _fail(path, key, f"must be an integer, not {value!r}")
    assert isinstance(value, int)
    if not lo <= value <= hi:
        raise _fail(path, key, f"must be between {lo} and {hi}, not {value}")
    return value


def _choice(path: Path, key: str, value: object, choices: Iterable[object]) -> None:
    options = tuple(choices)
    if isinstance(value, bool) or value not in options:
        shown = ", ".join(repr(c) for c in options)
        raise _fail(path, key, f"must be one of {shown}, not {value!r}")


def _int_choice(path: Path, key: str, value: object, choices: Iterable[int]) -> int:
    _choice(path, key, value, choices)
    assert isinstance(value, int)
    return value


def _str_choice(path: Path, key: str, value: object, choices: Iterable[str]) -> str:
    _choice(path, key, value, choices)
    assert isinstance(value, str)
    return value


def _register(path: Path, name: str, raw: object, defaults: Mapping[str, object]) -> RegisterSpec:
    key = f"registers.{name}"
    if name not in QUANTITIES:
        raise _fail(path, key, f"unknown quantity (expected one of {', '.join(QUANTITIES)})")
    if not isinstance(raw, dict):
        raise _fail(path, key, 'must be a table such as { address = 0x0048, unit = "kWh" }')
    _unknown_keys(path, key + ".", raw, _REGISTER_KEYS)
    if "address" not in raw:
        raise _fail(path, key + ".address", "missing")
    address = _int_in(path, key + ".address", raw["address"], 0, 65535)

    def setting(field: str) -> object:
        if field in raw:
            return raw[field]
        if field in defaults:
            return defaults[field]
        raise _fail(path, f"{key}.{field}", "missing (give it here or in [defaults])")

    function_code = _int_choice(
        path, key + ".function_code", setting("function_code"), FUNCTION_CODES
    )
    data_type = _str_choice(path, key + ".type", setting("type"), DATA_TYPES)
    order = _str_choice(path, key + ".word_order", setting("word_order"), WORD_ORDERS)
    word_order: Literal["big", "little"] = "big" if order == "big" else "little"
    if address + DATA_TYPES[data_type][1] > 65536:
        raise _fail(path, key + ".address", f"{data_type} at {address:#06x} runs past 0xFFFF")
    units = QUANTITIES[name]
    if "unit" not in raw:
        raise _fail(path, key + ".unit", f"missing (one of {', '.join(units)})")
    unit = _str_choice(path, key + ".unit", raw["unit"], units)
    scale_raw = raw.get("scale", units[unit])
    if isinstance(scale_raw, bool) or not isinstance(scale_raw, int | float):
        raise _fail(path, key + ".scale", f"must be a number, not {scale_raw!r}")
    scale = float(scale_raw)
    if not math.isfinite(scale) or scale <= 0.0:
        raise _fail(path, key + ".scale", f"must be a positive number, not {scale_raw!r}")
    return RegisterSpec(
        quantity=name,
        function_code=function_code,
        address=address,
        data_type=data_type,
        word_order=word_order,
        unit=unit,
        scale=scale,
    )


def parse_meter_map(path: Path, text: str) -> MeterMap:
    """Validate a register map given as TOML text; ``path`` names it in errors."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise _MapError(f"{path}: {exc}") from None
    _unknown_keys(path, "", doc, _TOP_KEYS)

    meter = _table(path, doc, "meter", required=True)
    _unknown_keys(path, "meter.", meter, _METER_KEYS)
    description = meter.get("description", path.stem)
    if not isinstance(description, str):
        raise _fail(path, "meter.description", "must be a string")
    notes = meter.get("notes", "")
    if not isinstance(notes, str):
        raise _fail(path, "meter.notes", "must be a string")
    if "phases" not in meter:
        raise _fail(path, "meter.phases", "missing (1 or 3)")
    phases = _int_choice(path, "meter.phases", meter["phases"], (1, 3))
    max_gap = _int_in(
        path, "meter.max_gap", meter.get("max_gap", 0), 0, MAX_REGISTERS_PER_REQUEST - 1
    )
    max_registers = _int_in(
        path,
        "meter.max_registers",
        meter.get("max_registers", MAX_REGISTERS_PER_REQUEST),
        4,  # the widest data type must fit
        MAX_REGISTERS_PER_REQUEST,
    )

    serial = _table(path, doc, "serial", required=False)
    _unknown_keys(path, "serial.", serial, _SERIAL_KEYS)
    baudrate = stopbits = None
    parity = None
    if "baudrate" in serial:
        baudrate = _int_choice(path, "serial.baudrate", serial["baudrate"], BAUDRATES)
    if "parity" in serial:
        parity = _str_choice(path, "serial.parity", serial["parity"], PARITIES)
    if "stopbits" in serial:
        stopbits = _int_choice(path, "serial.stopbits", serial["stopbits"], STOPBITS)

    defaults = _table(path, doc, "defaults", required=False)
    _unknown_keys(path, "defaults.", defaults, _DEFAULT_KEYS)
    if "function_code" in defaults:
        _choice(path, "defaults.function_code", defaults["function_code"], FUNCTION_CODES)
    if "type" in defaults:
        _choice(path, "defaults.type", defaults["type"], DATA_TYPES)
    if "word_order" in defaults:
        _choice(path, "defaults.word_order", defaults["word_order"], WORD_ORDERS)

    raw_registers = _table(path, doc, "registers", required=True)
    registers = {name: _register(path, name, raw, defaults) for name, raw in raw_registers.items()}

    if "energy_import" not in registers:
        raise _fail(
            path, "registers.energy_import", "missing: the import energy register is required"
        )
    per_phase_power = [f"power_l{i}" for i in range(1, phases + 1)]
    if "power" not in registers and not all(p in registers for p in per_phase_power):
        raise _fail(
            path,
            "registers.power",
            f"missing: give the total power, or {', '.join(per_phase_power)} to be summed",
        )
    for family in ("power", "current", "voltage"):
        present = [i for i in (1, 2, 3) if f"{family}_l{i}" in registers]
        for i in present:
            if i > phases:
                raise _fail(
                    path,
                    f"registers.{family}_l{i}",
                    f"the meter has {phases} phase(s) (meter.phases)",
                )
        if family != "power" and present and len(present) != phases:
            missing = [f"{family}_l{i}" for i in range(1, phases + 1) if i not in present]
            raise _fail(
                path,
                f"registers.{missing[0]}",
                f"missing: give every phase's {family} ({phases}) or none",
            )

    # Two quantities may not claim the same register of the same table.
    spans = sorted(
        (spec.function_code, spec.address, spec.address + spec.words, spec.quantity)
        for spec in registers.values()
    )
    for (fc_a, _start_a, end_a, name_a), (fc_b, start_b, _end_b, name_b) in itertools.pairwise(
        spans
    ):
        if fc_a == fc_b and start_b < end_a:
            raise _fail(
                path, f"registers.{name_b}.address", f"overlaps registers.{name_a} (FC{fc_a:02d})"
            )

    return MeterMap(
        path=path,
        description=description,
        phases=phases,
        registers=registers,
        max_gap=max_gap,
        max_registers=max_registers,
        baudrate=baudrate,
        parity=parity,
        stopbits=stopbits,
    )


def load_meter_map(path: Path) -> MeterMap:
    """Read and validate a register map file; ValueError names the file and the key at fault."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"{path}: cannot read the meter map: {exc.strerror or exc}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_meter_map(path, text)


def available_models(maps_dir: Path) -> list[str]:
    """The map names shipped in ``maps_dir`` (``<model>.toml``), sorted."""
    try:
        return sorted(p.stem for p in maps_dir.glob("*.toml") if p.is_file())
    except OSError:
        return []


def plan_reads(
    specs: Iterable[RegisterSpec], *, max_gap: int, max_registers: int
) -> tuple[ReadBlock, ...]:
    """Group quantities into as few requests as the map allows: one request per run of
    registers of the same function code whose holes are at most ``max_gap`` registers and
    whose length is at most ``max_registers``."""
    blocks: list[ReadBlock] = []
    ordered = sorted(specs, key=lambda s: (s.function_code, s.address))
    current: list[RegisterSpec] = []

    def flush() -> None:
        if not current:
            return
        start = current[0].address
        end = max(s.address + s.words for s in current)
        blocks.append(
            ReadBlock(
                function_code=current[0].function_code,
                address=start,
                count=end - start,
                fields=tuple((s.address - start, s) for s in current),
            )
        )
        current.clear()

    for spec in ordered:
        if current:
            first = current[0]
            end = max(s.address + s.words for s in current)
            if (
                spec.function_code != first.function_code
                or spec.address - end > max_gap
                or spec.address + spec.words - first.address > max_registers
            ):
                flush()
        current.append(spec)
    flush()
    return tuple(blocks)


# --------------------------------------------------------------------------------------------
# The bus adapter: the only code that talks to pymodbus

# RTU answers carry no transaction id. After a failure on a serial bus a meter may still be
# answering the abandoned request, so the port is reopened and left quiet this long (pymodbus
# drops an answer that arrives with no request pending) before the next request. A heuristic:
# an answer later still is caught by the function-code and register-count checks, and the
# plausibility checks (energy backwards) catch what those cannot.
_SERIAL_SETTLE_S: Final = 0.1
# pymodbus's own per-request timeout; the meter's timeout_s (asyncio.timeout) always fires first.
_CLIENT_TIMEOUT_S: Final = 30.0

_EXCEPTION_NAMES: Final[Mapping[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


@dataclass(frozen=True, slots=True)
class _SerialSettings:
    device: str
    baudrate: int
    parity: str
    stopbits: int


@dataclass(frozen=True, slots=True)
class _TcpSettings:
    host: str
    port: int


def _label(settings: _SerialSettings | _TcpSettings) -> str:
    if isinstance(settings, _SerialSettings):
        return f"{settings.device} ({settings.baudrate} 8{settings.parity}{settings.stopbits})"
    return f"{settings.host}:{settings.port}"


class _ModbusBus:
    """One Modbus connection (a serial port or a TCP host:port) and the lock its meters share.

    A thin adapter over pymodbus: connect, read a block of registers, drop the connection.
    Callers hold ``lock`` around everything they do on the bus.
    """

    def __init__(self, settings: _SerialSettings | _TcpSettings) -> None:
        self.settings: Final = settings
        self.lock: Final = asyncio.Lock()
        self.unit_ids: set[int] = set()
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None
        self._dirty = False
        self.closed = False  # by ModbusBuses.close(): stays closed

    @property
    def label(self) -> str:
        return _label(self.settings)

    @property
    def is_serial(self) -> bool:
        return isinstance(self.settings, _SerialSettings)

    def _new_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        # Imported here so that loading maps and checking a config never imports pymodbus.
        from pymodbus import FramerType
        from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

        s = self.settings
        # retries=0 and reconnect_delay=0: the driver decides when to retry and reconnect (on
        # the next read), so a dead meter costs one timeout per read and no background task.
        if isinstance(s, _SerialSettings):
            return AsyncModbusSerialClient(
                s.device,
                framer=FramerType.RTU,
                baudrate=s.baudrate,
                bytesize=8,
                parity=s.parity,
                stopbits=s.stopbits,
                timeout=_CLIENT_TIMEOUT_S,
                retries=0,
                reconnect_delay=0,
                name=f"meter-bus {s.device}",
            )
        return AsyncModbusTcpClient(
            s.host,
            port=s.port,
            timeout=_CLIENT_TIMEOUT_S,
            retries=0,
            reconnect_delay=0,
            name=f"meter-bus {s.host}:{s.port}",
        )

    async def _ensure_connected(
        self, timeout_s: float
    ) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self.closed:
            raise MeterError(f"{self.label}: the bus is closed")
        client = self._client
        if client is not None and client.connected:
            return client
        self.close()
        logger.debug("%s: connecting", self.label)
        client = self._client = self._new_client()
        try:
            async with asyncio.timeout(timeout_s):
                ok = await client.connect()
        except TimeoutError:
            ok = False
        except asyncio.CancelledError:
            self.close()
            raise
        except Exception as exc:  # whatever the transport raises is a bus fault, not a bug here
            self.close()
            raise MeterError(f"{self.label}: cannot connect: {exc}") from exc
        if not ok:
            self.close()
            raise MeterError(f"{self.label}: cannot connect")
        if self._dirty and self.is_serial:
            await asyncio.sleep(_SERIAL_SETTLE_S)
        self._dirty = False
        return client

    async def read_registers(
        self, function_code: int, address: int, count: int, *, unit_id: int, timeout_s: float
    ) -> list[int]:
        """``count`` registers from ``address``; MeterError on any failure. Hold ``lock``."""
        where = f"{self.label} unit {unit_id} FC{function_code:02d} {address:#06x}+{count}"
        client = await self._ensure_connected(timeout_s)
        try:
            async with asyncio.timeout(timeout_s):
                if function_code == 3:
                    response = await client.read_holding_registers(
                        address, count=count, device_id=unit_id
                    )
                else:
                    response = await client.read_input_registers(
                        address, count=count, device_id=unit_id
                    )
        except TimeoutError:
            self.drop()
            raise MeterError(f"{where}: no answer within {timeout_s:g} s") from None
        except asyncio.CancelledError:
            self.drop()  # the request is in flight: the next user must not get its answer
            raise
        except Exception as exc:  # pymodbus' ConnectionException, ModbusIOException, OSError...
            self.drop()
            raise MeterError(f"{where}: {type(exc).__name__}: {exc}") from exc
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = _EXCEPTION_NAMES.get(code, "unknown exception")
            raise MeterError(f"{where}: Modbus exception {code} ({name})")
        registers = list(response.registers)
        if response.function_code != function_code or len(registers) != count:
            # An answer to another request (a late one, or another device's): resync.
            self.drop()
            raise MeterError(
                f"{where}: answer does not match the request "
                f"(FC{response.function_code:02d}, {len(registers)} registers)"
            )
        return registers

    def drop(self) -> None:
        """Forget the connection after a failure: the next read reconnects."""
        self._dirty = True
        self.close()

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()


class ModbusBuses:
    """The Modbus connections of one daemon, shared by the meters on them.

    Create one, pass it to every :func:`modbus_meter_from_options` call, and ``await close()``
    it at shutdown. Meters on the same serial ``device`` share one client and must agree on
    its settings; meters on the same TCP ``host``/``port`` (a gateway) share one connection.
    Each meter holds the bus lock for its whole read, so requests never interleave.
    """

    def __init__(self) -> None:
        self._buses: dict[tuple[str, str, int], _ModbusBus] = {}

    @property
    def labels(self) -> tuple[str, ...]:
        """The open buses, e.g. ``("/dev/ttyUSB0 (9600 8N1)", "192.168.1.5:502")``."""
        return tuple(bus.label for bus in self._buses.values())

    def serial(
        self, device: str, *, baudrate: int, parity: str, stopbits: int, unit_id: int
    ) -> _ModbusBus:
        settings = _SerialSettings(device, baudrate, parity, stopbits)
        key = ("serial", device, 0)
        bus = self._buses.get(key)
        if bus is not None and bus.settings != settings:
            raise ValueError(
                f"device {device}: every meter on one serial port needs the same settings; "
                f"another meter uses {bus.label}, this one {_label(settings)}"
            )
        return self._claim(key, bus if bus is not None else _ModbusBus(settings), unit_id)

    def tcp(self, host: str, port: int, *, unit_id: int) -> _ModbusBus:
        key = ("tcp", host, port)
        bus = self._buses.get(key)
        return self._claim(
            key, bus if bus is not None else _ModbusBus(_TcpSettings(host, port)), unit_id
        )

    def _claim(self, key: tuple[str, str, int], bus: _ModbusBus, unit_id: int) -> _ModbusBus:
        if unit_id in bus.unit_ids:
            raise ValueError(f"{bus.label}: unit_id {unit_id} is already used by another meter")
        bus.unit_ids.add(unit_id)
        self._buses[key] = bus
        return bus

    def release(self, bus: _ModbusBus, unit_id: int) -> None:
        """A meter leaves the bus; the last one out closes the connection."""
        bus.unit_ids.discard(unit_id)
        if not bus.unit_ids:
            bus.close()
            for key, value in list(self._buses.items()):
                if value is bus:
                    del self._buses[key]

    async def close(self) -> None:
        """Close every connection (meters still holding a bus get MeterError on read)."""
        for bus in list(self._buses.values()):
            async with bus.lock:
                bus.closed = True
                bus.close()
                bus.unit_ids.clear()
        self._buses.clear()
        await asyncio.sleep(0)  # let the transports finish closing


# --------------------------------------------------------------------------------------------
# The driver


class ModbusMeter:
    """An energy meter read over Modbus through a register map (the ``EnergyMeter`` Protocol).

    Build it with :func:`modbus_meter_from_options`. ``phases`` is the connector's: a
    single-phase connector on a three-phase meter reports L1 only.
    """

    def __init__(
        self,
        meter_map: MeterMap,
        *,
        bus: _ModbusBus,
        buses: ModbusBuses,
        unit_id: int,
        phases: int,
        timeout_s: float,
    ) -> None:
        if not 1 <= phases <= meter_map.phases:
            raise ValueError(
                f"{meter_map.path}: a {phases}-phase connector cannot use this "
                f"{meter_map.phases}-phase meter"
            )
        self.map: Final = meter_map
        self.unit_id: Final = unit_id
        self.phases: Final = phases
        self.timeout_s: Final = timeout_s
        self._bus = bus
        self._buses = buses
        self._closed = False
        self._last_energy_wh: float | None = None
        regs = meter_map.registers
        wanted = ["energy_import"]
        if "power" in regs:
            wanted.append("power")
        else:
            wanted += [f"power_l{i}" for i in range(1, phases + 1)]
        self._has_current = "current_l1" in regs
        self._has_voltage = "voltage_l1" in regs
        if self._has_current:
            wanted += [f"current_l{i}" for i in range(1, phases + 1)]
        if self._has_voltage:
            wanted += [f"voltage_l{i}" for i in range(1, phases + 1)]
        self.blocks: Final = plan_reads(
            (regs[name] for name in wanted),
            max_gap=meter_map.max_gap,
            max_registers=meter_map.max_registers,
        )

    def __repr__(self) -> str:
        return f"ModbusMeter({self.map.model!r}, {self._bus.label}, unit {self.unit_id})"

    @property
    def description(self) -> str:
        """For logs and status: model, bus and unit id."""
        return f"{self.map.description} on {self._bus.label}, unit {self.unit_id}"

    async def read(self) -> MeterReading:
        if self._closed:
            raise MeterError(f"{self!r} is shut down")
        values: dict[str, float] = {}
        async with self._bus.lock:
            if self._closed:
                raise MeterError(f"{self!r} is shut down")
            for block in self.blocks:
                registers = await self._bus.read_registers(
                    block.function_code,
                    block.address,
                    block.count,
                    unit_id=self.unit_id,
                    timeout_s=self.timeout_s,
                )
                for offset, spec in block.fields:
                    values[spec.quantity] = spec.decode(registers[offset : offset + spec.words])
        return self._plausible(values)

    def _plausible(self, values: Mapping[str, float]) -> MeterReading:
        where = f"{self.map.model} unit {self.unit_id}"
        for name, value in values.items():
            if not math.isfinite(value):
                raise MeterError(f"{where}: {name} is {value!r}")
        energy = values["energy_import"]
        if not 0.0 <= energy <= MAX_ENERGY_WH:
            raise MeterError(f"{where}: implausible import energy {energy!r} Wh")
        last = self._last_energy_wh
        if last is not None and energy < last:
            raise MeterError(f"{where}: energy register went backwards ({last!r} → {energy!r} Wh)")
        if "power" in values:
            power = values["power"]
        else:
            power = sum(values[f"power_l{i}"] for i in range(1, self.phases + 1))
        if abs(power) > MAX_ABS_POWER_W:
            raise MeterError(f"{where}: implausible power {power!r} W")
        currents: tuple[float, ...] = ()
        if self._has_current:
            currents = tuple(values[f"current_l{i}"] for i in range(1, self.phases + 1))
            if any(abs(c) > MAX_ABS_CURRENT_A for c in currents):
                raise MeterError(f"{where}: implausible current {currents!r} A")
        voltages: tuple[float, ...] = ()
        if self._has_voltage:
            voltages = tuple(values[f"voltage_l{i}"] for i in range(1, self.phases + 1))
            if any(not 0.0 <= v <= MAX_VOLTAGE_V for v in voltages):
                raise MeterError(f"{where}: implausible voltage {voltages!r} V")
        self._last_energy_wh = energy
        return MeterReading(
            energy_import_wh=energy, power_w=power, current_a=currents, voltage_v=voltages
        )

    async def shutdown(self) -> None:
        """Leave the bus; the last meter on it closes the port or connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        async with self._bus.lock:  # let a read in progress finish
            self._buses.release(self._bus, self.unit_id)
        await asyncio.sleep(0)  # let the transport finish closing


# --------------------------------------------------------------------------------------------
# Building a meter from the config options

_OPTION_NAMES: Final = frozenset(
    {
        "model",
        "map_file",
        "host",
        "port",
        "device",
        "baudrate",
        "parity",
        "stopbits",
        "unit_id",
        "timeout_s",
    }
)


def _opt_str(options: Mapping[str, object], name: str) -> str | None:
    value = options.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name}: must be a non-empty string, not {value!r}")
    return value


def _opt_int(options: Mapping[str, object], name: str, choices: Iterable[int]) -> int | None:
    value = options.get(name)
    if value is None:
        return None
    allowed = tuple(choices)
    if not _is_int(value) or value not in allowed:
        if len(allowed) > 10:
            raise ValueError(
                f"{name}: must be an integer from {allowed[0]} to {allowed[-1]}, not {value!r}"
            )
        raise ValueError(f"{name}: must be one of {', '.join(map(str, allowed))}, not {value!r}")
    assert isinstance(value, int)
    return value


def resolve_meter_map(
    options: Mapping[str, object], *, maps_dir: Path, base_dir: Path | None = None
) -> MeterMap:
    """The map that ``model`` (``maps_dir/<model>.toml``) or ``map_file`` names, validated."""
    model = _opt_str(options, "model")
    map_file = _opt_str(options, "map_file")
    if (model is None) == (map_file is None):
        raise ValueError("give exactly one of model (a shipped map) or map_file (a map's path)")
    if model is not None:
        path = maps_dir / f"{model}.toml"
        if _MODEL_NAME.fullmatch(model) is None or not path.is_file():
            known = ", ".join(available_models(maps_dir)) or f"none in {maps_dir}"
            raise ValueError(f"model: no meter map {model!r} (known: {known})")
    else:
        assert map_file is not None
        path = Path(map_file)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
    return load_meter_map(path)


def modbus_meter_from_options(
    options: Mapping[str, object],
    *,
    phases: int,
    maps_dir: Path,
    buses: ModbusBuses,
    base_dir: Path | None = None,
) -> ModbusMeter:
    """A :class:`ModbusMeter` from a connector's ``meter = { driver = "modbus", ... }`` options.

    ``phases`` is the connector's; ``maps_dir`` holds the shipped maps (``hardware/meters``);
    ``buses`` is the daemon's one :class:`ModbusBuses`; a relative ``map_file`` is taken from
    ``base_dir`` (the config file's directory) when given. Raises ValueError with a message
    naming the option or the map file and key at fault. Opens nothing: the first read connects.
    """
    unknown = sorted(set(options) - _OPTION_NAMES - {"driver"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown option of the modbus meter driver")
    if not _is_int(phases) or phases not in (1, 2, 3):
        raise ValueError(f"phases must be 1, 2 or 3, not {phases!r}")
    meter_map = resolve_meter_map(options, maps_dir=maps_dir, base_dir=base_dir)
    if phases > meter_map.phases:
        raise ValueError(
            f"{meter_map.path}: this {meter_map.phases}-phase meter cannot measure a "
            f"{phases}-phase connector"
        )

    host = _opt_str(options, "host")
    device = _opt_str(options, "device")
    if (host is None) == (device is None):
        raise ValueError("give exactly one of host (Modbus TCP) or device (Modbus RTU serial port)")
    unit_id = _opt_int(options, "unit_id", range(1, 248)) or 1
    timeout_raw = options.get("timeout_s", 1.0)
    if isinstance(timeout_raw, bool) or not isinstance(timeout_raw, int | float):
        raise ValueError(f"timeout_s: must be a number, not {timeout_raw!r}")
    timeout_s = float(timeout_raw)
    if not 0.05 <= timeout_s <= 10.0:
        raise ValueError(f"timeout_s: must be between 0.05 and 10, not {timeout_raw!r}")

    if host is not None:
        for name in ("baudrate", "parity", "stopbits"):
            if name in options:
                raise ValueError(f"{name}: applies to a serial device, not to host (Modbus TCP)")
        port = _opt_int(options, "port", range(1, 65536)) or 502
        bus = buses.tcp(host, port, unit_id=unit_id)
    else:
        assert device is not None
        if "port" in options:
            raise ValueError("port: applies to host (Modbus TCP), not to a serial device")
        baudrate = _opt_int(options, "baudrate", BAUDRATES) or meter_map.baudrate or 9600
        parity_opt = options.get("parity")
        if parity_opt is not None and parity_opt not in PARITIES:
            raise ValueError(f"parity: must be one of N, E, O, not {parity_opt!r}")
        parity = str(parity_opt) if parity_opt is not None else meter_map.parity or "N"
        stopbits = _opt_int(options, "stopbits", STOPBITS) or meter_map.stopbits or 1
        bus = buses.serial(
            device, baudrate=baudrate, parity=parity, stopbits=stopbits, unit_id=unit_id
        )
    try:
        return ModbusMeter(
            meter_map, bus=bus, buses=buses, unit_id=unit_id, phases=phases, timeout_s=timeout_s
        )
    except BaseException:
        buses.release(bus, unit_id)
        raise
