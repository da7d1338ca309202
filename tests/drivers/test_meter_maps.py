"""The register-map format: every shipped map loads and validates, a broken map is a ValueError
naming the file and the key, decoding matches pymodbus's own, requests are grouped, and the
factory checks its options (and a shared serial bus) with clear messages."""

from __future__ import annotations

import math
import struct
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pymodbus.client import AsyncModbusTcpClient

from drivers.modbus_meter import (
    DATA_TYPES,
    ModbusBuses,
    RegisterSpec,
    available_models,
    load_meter_map,
    modbus_meter_from_options,
    plan_reads,
)
from evse_daemon.config import METER_MAPS_DIR as MAPS_DIR
from tests.drivers.modbus_peers import LAYOUTS

SHIPPED = [
    "abb-b23",
    "abb-b24",
    "carlo-gavazzi-em340",
    "eastron-sdm120",
    "eastron-sdm230",
    "eastron-sdm630",
    "eastron-sdm72d-m",
    "inepro-pro380",
    "orno-we516",
    "orno-we517",
]


def test_the_shipped_maps_are_the_documented_set() -> None:
    assert available_models(MAPS_DIR) == SHIPPED
    readme = (MAPS_DIR / "README.md").read_text()
    for model in SHIPPED:
        assert f"`{model}`" in readme


@pytest.mark.parametrize("model", SHIPPED)
def test_every_shipped_map_loads_and_matches_the_reference(model: str) -> None:
    meter_map = load_meter_map(MAPS_DIR / f"{model}.toml")
    phases, layout = LAYOUTS[model]
    assert meter_map.model == model
    assert meter_map.phases == phases
    assert set(meter_map.registers) == set(layout)
    for name, reg in layout.items():
        spec = meter_map.registers[name]
        assert (spec.function_code, spec.address, spec.data_type, spec.word_order) == (
            reg.fc,
            reg.address,
            reg.dtype,
            reg.word_order,
        ), name
        assert spec.scale == pytest.approx(reg.scale), name
    blocks = plan_reads(
        meter_map.registers.values(),
        max_gap=meter_map.max_gap,
        max_registers=meter_map.max_registers,
    )
    assert sum(len(b.fields) for b in blocks) == len(layout)
    assert len(blocks) <= 4


# The makers' factory serial settings (hardware/meters/*.toml say where each comes from).
FACTORY_SERIAL = {
    "eastron-sdm120": (2400, "N"),
    "eastron-sdm230": (2400, "N"),
    "inepro-pro380": (9600, "E"),
    "orno-we516": (9600, "E"),
    "orno-we517": (9600, "E"),
}


@pytest.mark.parametrize("model", SHIPPED)
def test_factory_serial_settings(model: str) -> None:
    meter_map = load_meter_map(MAPS_DIR / f"{model}.toml")
    expected = FACTORY_SERIAL.get(model, (9600, "N"))
    assert (meter_map.baudrate or 9600, meter_map.parity or "N") == expected


GOOD = """
[meter]
description = "test meter"
phases = 3

[defaults]
function_code = 4
type = "float32"
word_order = "big"

[registers]
energy_import = { address = 0x0048, unit = "kWh" }
power = { address = 0x0034, unit = "W" }
voltage_l1 = { address = 0x0000, unit = "V" }
voltage_l2 = { address = 0x0002, unit = "V" }
voltage_l3 = { address = 0x0004, unit = "V" }
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "broken-meter.toml"
    path.write_text(text)
    return path


def test_a_minimal_map_loads_with_unit_defaults(tmp_path: Path) -> None:
    meter_map = load_meter_map(write(tmp_path, GOOD))
    assert meter_map.registers["energy_import"].scale == 1000.0  # kWh -> Wh by default
    assert meter_map.registers["power"].scale == 1.0
    assert meter_map.max_gap == 0
    assert meter_map.max_registers == 125


@pytest.mark.parametrize(
    ("edit", "key", "message"),
    [
        (
            ("[registers]", '[registers]\nenrgy_import = { address = 1, unit = "Wh" }'),
            "registers.enrgy_import",
            "unknown quantity",
        ),
        (('type = "float32"', 'type = "float"'), "defaults.type", "must be one of"),
        (
            ('energy_import = { address = 0x0048, unit = "kWh" }', ""),
            "registers.energy_import",
            "missing",
        ),
        (("address = 0x0048", "address = 70000"), "registers.energy_import.address", "between"),
        (("address = 0x0034", "address = 0x0049"), "registers.power.address", "overlaps"),
        (('unit = "kWh"', 'unit = "kW"'), "registers.energy_import.unit", "must be one of"),
        (('unit = "kWh"', 'unit = "kWh", scale = -1'), "registers.energy_import.scale", "positive"),
        (
            ('unit = "kWh"', 'unit = "kWh", scale = "1000"'),
            "registers.energy_import.scale",
            "number",
        ),
        (
            ('unit = "kWh"', 'unit = "kWh", word_order = "middle"'),
            "registers.energy_import.word_order",
            "must be one of",
        ),
        (
            ('unit = "kWh"', 'unit = "kWh", function_code = 6'),
            "registers.energy_import.function_code",
            "must be one of",
        ),
        (
            ('unit = "kWh"', 'unit = "kWh", adress = 3'),
            "registers.energy_import.adress",
            "unknown key",
        ),
        (
            ('voltage_l3 = { address = 0x0004, unit = "V" }', ""),
            "registers.voltage_l3",
            "every phase",
        ),
        (("phases = 3", "phases = 1"), "registers.voltage_l2", "1 phase"),
        (("phases = 3", "phases = 2"), "meter.phases", "must be one of"),
        (("phases = 3", ""), "meter.phases", "missing"),
        (('power = { address = 0x0034, unit = "W" }', ""), "registers.power", "missing"),
        (("[meter]", "[meter]\nmax_gap = -1"), "meter.max_gap", "between"),
        (("[meter]", "[meter]\nmax_registers = 200"), "meter.max_registers", "between"),
        (("[meter]", '[serial]\nparity = "X"\n[meter]'), "serial.parity", "must be one of"),
        (("[meter]", "[serial]\nbaudrate = 9601\n[meter]"), "serial.baudrate", "must be one of"),
        (("[meter]", "[modbus]\nx = 1\n[meter]"), "modbus", "unknown key"),
        (
            ("[defaults]\nfunction_code = 4\n", "[defaults]\n"),
            "registers.energy_import.function_code",
            "missing",
        ),
        (
            (
                'power = { address = 0x0034, unit = "W" }',
                'power = { address = 0xFFFF, unit = "W" }',
            ),
            "registers.power.address",
            "past 0xFFFF",
        ),
    ],
)
def test_a_broken_map_names_the_file_and_the_key(
    tmp_path: Path, edit: tuple[str, str], key: str, message: str
) -> None:
    old, new = edit
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ValueError) as info:
        load_meter_map(path)
    text = str(info.value)
    assert text.startswith(f"{path}: {key}: "), text
    assert message in text, text


def test_toml_syntax_errors_carry_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('unit = "W" }', 'unit = "W"'))
    with pytest.raises(ValueError, match=rf"^{path}: .*line \d+"):
        load_meter_map(path)


def test_a_missing_map_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read the meter map"):
        load_meter_map(tmp_path / "nowhere.toml")


# ------------------------------------------------------------------- decoding and planning

_PYMODBUS_TYPES = {
    "int16": AsyncModbusTcpClient.DATATYPE.INT16,
    "uint16": AsyncModbusTcpClient.DATATYPE.UINT16,
    "int32": AsyncModbusTcpClient.DATATYPE.INT32,
    "uint32": AsyncModbusTcpClient.DATATYPE.UINT32,
    "int64": AsyncModbusTcpClient.DATATYPE.INT64,
    "uint64": AsyncModbusTcpClient.DATATYPE.UINT64,
    "float32": AsyncModbusTcpClient.DATATYPE.FLOAT32,
}


@given(
    data_type=st.sampled_from(sorted(DATA_TYPES)),
    word_order=st.sampled_from(["big", "little"]),
    words=st.lists(st.integers(0, 0xFFFF), min_size=4, max_size=4),
)
def test_decoding_agrees_with_pymodbus(data_type: str, word_order: str, words: list[int]) -> None:
    spec = RegisterSpec(
        "power", 4, 0, data_type, "big" if word_order == "big" else "little", "W", 1.0
    )
    regs = words[: spec.words]
    ours = spec.decode(regs)
    theirs = AsyncModbusTcpClient.convert_from_registers(
        regs, _PYMODBUS_TYPES[data_type], word_order="big" if word_order == "big" else "little"
    )
    assert isinstance(theirs, int | float)
    if math.isnan(float(theirs)):
        assert math.isnan(ours)
    else:
        assert ours == float(theirs)


def test_decoding_known_encodings() -> None:
    cdab = RegisterSpec("current_l1", 4, 0, "int32", "little", "A", 0.001)
    assert cdab.decode([0x2904, 0x0000]) == pytest.approx(10.5)  # 10500 mA, low word first
    signed = RegisterSpec("power", 3, 0, "int32", "big", "W", 0.01)
    assert signed.decode(list(struct.unpack(">2H", struct.pack(">i", -123456)))) == pytest.approx(
        -1234.56
    )
    abb = RegisterSpec("energy_import", 3, 0, "uint64", "big", "kWh", 10.0)
    assert abb.decode([0, 0x0001, 0x0000, 0x0000]) == 2**32 * 10.0  # beyond SmartEVSE's low 32 bits


def _spec(name: str, address: int, fc: int = 4, data_type: str = "float32") -> RegisterSpec:
    return RegisterSpec(name, fc, address, data_type, "big", "V", 1.0)


def test_planning_groups_contiguous_registers_by_function_code() -> None:
    specs = [
        _spec("voltage_l1", 0),
        _spec("voltage_l2", 2),
        _spec("current_l1", 6),
        _spec("power", 0x34),
        _spec("energy_import", 0x10, fc=3),
        _spec("current_l2", 4),
    ]
    blocks = plan_reads(specs, max_gap=0, max_registers=125)
    assert [(b.function_code, b.address, b.count) for b in blocks] == [
        (3, 0x10, 2),
        (4, 0, 8),
        (4, 0x34, 2),
    ]
    wide = plan_reads(specs, max_gap=60, max_registers=125)
    assert [(b.function_code, b.address, b.count) for b in wide] == [(3, 0x10, 2), (4, 0, 0x36)]
    assert dict((s.quantity, off) for off, s in wide[1].fields)["power"] == 0x34
    short = plan_reads(specs, max_gap=60, max_registers=6)
    assert [(b.function_code, b.address, b.count) for b in short] == [
        (3, 0x10, 2),
        (4, 0, 6),
        (4, 6, 2),
        (4, 0x34, 2),
    ]


# ------------------------------------------------------------------- factory options


def build(options: dict[str, object], phases: int = 3, buses: ModbusBuses | None = None) -> object:
    return modbus_meter_from_options(
        options, phases=phases, maps_dir=MAPS_DIR, buses=ModbusBuses() if buses is None else buses
    )


@pytest.mark.parametrize(
    ("options", "phases", "message"),
    [
        ({"host": "h"}, 3, "exactly one of model"),
        (
            {"model": "eastron-sdm630", "map_file": "/x.toml", "host": "h"},
            3,
            "exactly one of model",
        ),
        ({"model": "eastron-sdm631", "host": "h"}, 3, "no meter map 'eastron-sdm631'"),
        ({"model": "../meters/eastron-sdm630", "host": "h"}, 3, "no meter map"),
        ({"model": "eastron-sdm630"}, 3, "exactly one of host"),
        (
            {"model": "eastron-sdm630", "host": "h", "device": "/dev/ttyUSB0"},
            3,
            "exactly one of host",
        ),
        ({"model": "eastron-sdm630", "host": "h", "baudrate": 9600}, 3, "baudrate: applies to"),
        ({"model": "eastron-sdm630", "device": "/dev/x", "port": 502}, 3, "port: applies to"),
        ({"model": "eastron-sdm630", "device": "/dev/x", "parity": "X"}, 3, "parity: must be"),
        ({"model": "eastron-sdm630", "device": "/dev/x", "baudrate": 9601}, 3, "baudrate: must be"),
        ({"model": "eastron-sdm630", "host": "h", "unit_id": 0}, 3, "unit_id: must be"),
        ({"model": "eastron-sdm630", "host": "h", "unit_id": True}, 3, "unit_id: must be"),
        ({"model": "eastron-sdm630", "host": "h", "timeout_s": 0.0}, 3, "timeout_s: must be"),
        ({"model": "eastron-sdm630", "host": "h", "unit": 1}, 3, "unit: unknown option"),
        ({"model": "eastron-sdm120", "host": "h"}, 3, "1-phase meter cannot measure a 3-phase"),
        ({"model": "eastron-sdm630", "host": "h"}, 4, "phases must be"),
    ],
)
def test_bad_options_are_clear_value_errors(
    options: dict[str, object], phases: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        build(options, phases)


def test_unknown_model_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="known: abb-b23, abb-b24, carlo-gavazzi-em340"):
        build({"model": "nope", "host": "h"})


def test_map_file_is_relative_to_base_dir(tmp_path: Path) -> None:
    (tmp_path / "mine.toml").write_text(GOOD)
    meter = modbus_meter_from_options(
        {"map_file": "mine.toml", "host": "h"},
        phases=3,
        maps_dir=MAPS_DIR,
        buses=ModbusBuses(),
        base_dir=tmp_path,
    )
    assert meter.map.description == "test meter"


def test_a_broken_map_file_through_the_factory_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace('type = "float32"', 'type = "float"'))
    with pytest.raises(ValueError, match=rf"^{path}: defaults.type: "):
        build({"map_file": str(path), "host": "h"})


def test_serial_settings_come_from_the_map_unless_the_options_say_otherwise() -> None:
    buses = ModbusBuses()
    orno = modbus_meter_from_options(
        {"model": "orno-we516", "device": "/dev/ttyUSB0"}, phases=3, maps_dir=MAPS_DIR, buses=buses
    )
    assert "9600 8E1" in orno.description
    other = modbus_meter_from_options(
        {
            "model": "orno-we517",
            "device": "/dev/ttyUSB1",
            "parity": "N",
            "baudrate": 19200,
            "stopbits": 2,
        },
        phases=3,
        maps_dir=MAPS_DIR,
        buses=buses,
    )
    assert "19200 8N2" in other.description
    assert len(buses.labels) == 2


def test_meters_sharing_a_serial_port_must_agree_and_have_distinct_unit_ids() -> None:
    buses = ModbusBuses()
    build({"model": "eastron-sdm630", "device": "/dev/ttyUSB0", "unit_id": 1}, buses=buses)
    build({"model": "eastron-sdm630", "device": "/dev/ttyUSB0", "unit_id": 2}, buses=buses)
    assert len(buses.labels) == 1
    with pytest.raises(ValueError, match="unit_id 2 is already used"):
        build({"model": "abb-b23", "device": "/dev/ttyUSB0", "unit_id": 2}, buses=buses)
    # The ORNO's map says 8E1: it cannot share a port the SDM630s run at 8N1.
    with pytest.raises(ValueError, match=r"same settings.*9600 8N1.*9600 8E1"):
        build({"model": "orno-we516", "device": "/dev/ttyUSB0", "unit_id": 3}, buses=buses)
    build(
        {"model": "orno-we516", "device": "/dev/ttyUSB0", "unit_id": 3, "parity": "N"}, buses=buses
    )
    # TCP meters behind one gateway share a connection as well.
    build({"model": "eastron-sdm630", "host": "gw", "unit_id": 1}, buses=buses)
    build({"model": "eastron-sdm630", "host": "gw", "port": 502, "unit_id": 2}, buses=buses)
    build({"model": "eastron-sdm630", "host": "gw", "port": 5020, "unit_id": 2}, buses=buses)
    assert len(buses.labels) == 3
