"""MeterValues sampled values from meter readings (OCPP 1.6 §7.31 SampledValue)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from drivers.protocols import MeterReading

from ..clock import iso_utc

PHASES = ("L1", "L2", "L3")


def _value(number: float, digits: int) -> str:
    return f"{number:.{digits}f}"


def sampled_values(
    reading: MeterReading,
    offered_current_a: float,
    measurands: tuple[str, ...],
    context: str,
) -> list[dict[str, Any]]:
    """The SampledValue list for these measurands (camelCase, as on the wire)."""
    values: list[dict[str, Any]] = []

    def add(measurand: str, value: str, unit: str, phase: str | None = None) -> None:
        entry: dict[str, Any] = {
            "value": value,
            "context": context,
            "format": "Raw",
            "measurand": measurand,
            "location": "Outlet",
            "unit": unit,
        }
        if phase is not None:
            entry["phase"] = phase
        values.append(entry)

    for measurand in measurands:
        if measurand == "Energy.Active.Import.Register":
            add(measurand, _value(reading.energy_import_wh, 1), "Wh")
        elif measurand == "Power.Active.Import":
            add(measurand, _value(reading.power_w, 1), "W")
        elif measurand == "Current.Import":
            for phase, current in zip(PHASES, reading.current_a, strict=False):
                add(measurand, _value(current, 2), "A", phase)
        elif measurand == "Current.Offered":
            add(measurand, _value(offered_current_a, 1), "A")
        elif measurand == "Voltage":
            for phase, voltage in zip(PHASES, reading.voltage_v, strict=False):
                add(measurand, _value(voltage, 1), "V", f"{phase}-N")
    return values


def meter_value(
    timestamp: datetime,
    reading: MeterReading,
    offered_current_a: float,
    measurands: tuple[str, ...],
    context: str,
) -> dict[str, Any]:
    return {
        "timestamp": iso_utc(timestamp),
        "sampledValue": sampled_values(reading, offered_current_a, measurands, context),
    }
