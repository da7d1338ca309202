"""Building the drivers a config names (the only place that knows concrete driver classes)."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field

from drivers.mock import MockCardReader, MockConnectorHardware
from drivers.protocols import (
    CardReader,
    ContactorDriver,
    EnergyMeter,
    LockDriver,
    PilotDriver,
    ResidualCurrentMonitor,
    TemperatureSensor,
)

from .config import Config, ConnectorConfig, DriverConfig

log = logging.getLogger(__name__)


@dataclass
class ConnectorHardware:
    pilot: PilotDriver
    contactor: ContactorDriver
    meter: EnergyMeter
    lock: LockDriver | None = None
    rcd: ResidualCurrentMonitor | None = None
    temperature: TemperatureSensor | None = None
    # The simulation behind mock drivers, for bench commands; None on real hardware.
    bench: MockConnectorHardware | None = None
    drivers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hardware:
    connectors: dict[int, ConnectorHardware]
    reader: CardReader | None = None
    bench_reader: MockCardReader | None = None

    def safe_state(self) -> None:
        """Contactors open, pilots in state F: what the charger must be in whenever the
        controller is not running. Never raises: every part is tried."""
        for connector_id, hw in self.connectors.items():
            try:
                hw.contactor.set_closed(False)
            except Exception:
                log.exception("connector %d: could not open the contactor", connector_id)
            try:
                hw.pilot.set_state_f()
            except Exception:
                log.exception("connector %d: could not set the pilot to state F", connector_id)

    async def shutdown(self) -> None:
        self.safe_state()
        for hw in self.connectors.values():
            for sync_part in (hw.contactor, hw.pilot, hw.rcd, hw.temperature):
                if sync_part is not None:
                    with contextlib.suppress(Exception):
                        sync_part.shutdown()
            for async_part in (hw.meter, hw.lock):
                if async_part is not None:
                    with contextlib.suppress(Exception):
                        await async_part.shutdown()
        if self.reader is not None:
            with contextlib.suppress(Exception):
                await self.reader.shutdown()


class UnsupportedDriver(Exception):
    pass


def _option_float(part: DriverConfig, name: str, default: float) -> float:
    value = part.options.get(name, default)
    return float(value) if isinstance(value, int | float) else default


def _option_int(part: DriverConfig, name: str) -> int | None:
    value = part.options.get(name)
    return value if isinstance(value, int) else None


def _build_connector(config: Config, connector: ConnectorConfig) -> ConnectorHardware:
    parts = connector.drivers
    drivers = {name: part.driver for name, part in parts.items()}
    if any(part.driver != "mock" for part in parts.values()):
        # Real drivers arrive with the hardware issue; the config check already refuses
        # unknown driver names, so this only guards against a half-mock connector.
        raise UnsupportedDriver(
            f"connector {connector.id}: only mock drivers are available in this build"
        )
    sim = MockConnectorHardware(
        connector.id,
        state_dir=config.storage.state_dir,
        phases=connector.phases,
        nominal_voltage_v=config.station.nominal_voltage_v,
        ev_max_current_a=_option_float(
            connector.pilot, "ev_max_current_a", connector.max_current_a
        ),
        ev_phases=_option_int(connector.pilot, "ev_phases"),
        has_lock=connector.lock is not None,
    )
    return ConnectorHardware(
        pilot=sim.pilot,
        contactor=sim.contactor,
        meter=sim.meter,
        lock=sim.lock,
        # The simulated charger always has an RCD and a temperature sensor, so that every
        # bench fault can be exercised with the design's minimal config.
        rcd=sim.rcd,
        temperature=sim.temperature,
        bench=sim,
        drivers=drivers,
    )


def build_hardware(config: Config) -> Hardware:
    """Drivers for every part the config names, left in the safe state."""
    connectors = {c.id: _build_connector(config, c) for c in config.connectors}
    reader: CardReader | None = None
    bench_reader: MockCardReader | None = None
    if config.rfid is not None:
        if config.rfid.driver != "mock":
            raise UnsupportedDriver("rfid: only the mock reader is available in this build")
        bench_reader = MockCardReader()
        reader = bench_reader
    hardware = Hardware(connectors, reader, bench_reader)
    hardware.safe_state()
    return hardware
