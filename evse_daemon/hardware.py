"""Building the drivers a config names (the only place that knows concrete driver classes)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from drivers.mock import MockCardReader, MockConnectorHardware
from drivers.protocols import (
    CardReader,
    ContactorDriver,
    EnergyMeter,
    HardwareWatchdog,
    LockDriver,
    PilotDriver,
    ProximitySensor,
    ResidualCurrentMonitor,
    TemperatureSensor,
)

from .config import METER_MAPS_DIR, Config, ConnectorConfig, DriverConfig

if TYPE_CHECKING:
    from drivers.modbus_meter import ModbusBuses

log = logging.getLogger(__name__)


@dataclass
class ConnectorHardware:
    pilot: PilotDriver
    contactor: ContactorDriver
    meter: EnergyMeter
    lock: LockDriver | None = None
    rcd: ResidualCurrentMonitor | None = None
    temperature: TemperatureSensor | None = None
    # The cable's rating from the proximity pilot (a socket; None: none wired).
    proximity: ProximitySensor | None = None
    # A hardware watchdog on the contactor coil, toggled by the safety loop (None: none wired).
    watchdog: HardwareWatchdog | None = None
    # The simulation behind mock drivers, for bench commands; None on real hardware.
    bench: MockConnectorHardware | None = None
    drivers: dict[str, str] = field(default_factory=dict)


@dataclass
class Hardware:
    connectors: dict[int, ConnectorHardware]
    reader: CardReader | None = None
    bench_reader: MockCardReader | None = None
    buses: Any = None  # drivers.modbus_meter.ModbusBuses when a Modbus meter is configured

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
            sync_parts = (hw.contactor, hw.pilot, hw.rcd, hw.temperature, hw.proximity, hw.watchdog)
            for sync_part in sync_parts:
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
        if self.buses is not None:
            with contextlib.suppress(Exception):
                await self.buses.close()


class UnsupportedDriver(Exception):
    """A driver the config names cannot be built here (wrong wiring, a port that is missing)."""


def _option_float(part: DriverConfig, name: str, default: float) -> float:
    value = part.options.get(name, default)
    return float(value) if isinstance(value, int | float) else default


def _option_int(part: DriverConfig, name: str) -> int | None:
    value = part.options.get(name)
    return value if isinstance(value, int) else None


@dataclass(frozen=True)
class HostAccess:
    """Where the real drivers find the host's hardware; tests point these at stand-ins."""

    pin_factory: Any = None  # gpiozero's: None = its default (lgpio on Raspberry Pi OS)
    sysfs_pwm_root: str | None = None  # None = /sys/class/pwm


def _mock_connector(config: Config, connector: ConnectorConfig) -> ConnectorHardware:
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
        drivers={name: part.driver for name, part in connector.drivers.items()},
    )


class _Builder:
    """Builds real drivers part by part; what it built is closed again if a later part fails."""

    def __init__(self, config: Config, access: HostAccess) -> None:
        self.config = config
        self.access = access
        self.buses: ModbusBuses | None = None
        self.built: list[Any] = []

    def wiring(self, connector: ConnectorConfig, part: str) -> Any:
        board = self.config.board
        wiring = board.board.wiring(connector.id, part) if board is not None else None
        if wiring is None:  # check-config refuses this; kept for configs built in code
            raise UnsupportedDriver(f"connector {connector.id}: no board wiring for {part}")
        return wiring

    def _keep(self, driver: Any) -> Any:
        self.built.append(driver)
        return driver

    def pilot(self, connector: ConnectorConfig, sim: MockConnectorHardware | None) -> PilotDriver:
        part = connector.pilot
        if part.driver == "mock":
            assert sim is not None
            return sim.pilot
        if part.driver == "uart":
            from drivers.pilot_uart import uart_pilot_from_options

            return cast(PilotDriver, self._keep(uart_pilot_from_options(part.options)))
        from drivers.rpi import SysfsAdcPilot
        from drivers.sysfs_pwm import DEFAULT_SYSFS_PWM_ROOT

        return cast(
            PilotDriver,
            self._keep(
                SysfsAdcPilot(
                    self.wiring(connector, "pilot"),
                    pin_factory=self.access.pin_factory,
                    sysfs_root=self.access.sysfs_pwm_root or DEFAULT_SYSFS_PWM_ROOT,
                )
            ),
        )

    def meter(self, connector: ConnectorConfig, sim: MockConnectorHardware | None) -> EnergyMeter:
        part = connector.meter
        if part.driver == "mock":
            assert sim is not None
            return sim.meter
        from drivers.modbus_meter import ModbusBuses, modbus_meter_from_options

        if self.buses is None:
            self.buses = ModbusBuses()
        base_dir = Path(self.config.path).resolve().parent if self.config.path else None
        return modbus_meter_from_options(
            part.options,
            phases=connector.phases,
            maps_dir=METER_MAPS_DIR,
            buses=self.buses,
            base_dir=base_dir,
        )

    def gpio_part(self, connector: ConnectorConfig, part: str) -> Any:
        from drivers import rpi

        classes = {
            "contactor": rpi.GpioContactor,
            "lock": rpi.GpioLock,
            "rcd": rpi.GpioRcd,
            "temperature": rpi.AdcTemperature,
            "proximity": rpi.ProximityPilot,
            "watchdog": rpi.GpioWatchdogToggle,
        }
        return self._keep(
            classes[part](self.wiring(connector, part), pin_factory=self.access.pin_factory)
        )

    def connector(self, connector: ConnectorConfig) -> ConnectorHardware:
        parts = connector.drivers
        drivers = {name: part.driver for name, part in parts.items()}
        if all(part.driver == "mock" for part in parts.values()):
            return _mock_connector(self.config, connector)
        # A mixed connector (e.g. a real meter on the bench) keeps the simulation for the
        # parts still mocked; bench commands stay refused because not all parts are mocks.
        sim = None
        if any(part.driver == "mock" for part in parts.values()):
            sim = MockConnectorHardware(
                connector.id,
                state_dir=self.config.storage.state_dir,
                phases=connector.phases,
                nominal_voltage_v=self.config.station.nominal_voltage_v,
                has_lock=connector.lock is not None,
            )

        def part_or_mock(name: str, mock_part: Any) -> Any:
            driver = parts.get(name)
            if driver is None:
                return None
            if driver.driver == "mock":
                return mock_part
            return self.gpio_part(connector, name)

        board = self.config.board
        # Parts the board has whatever the config names: the PP input of a socket, and the
        # watchdog without whose toggling the contactor never closes.
        proximity = watchdog = None
        if board is not None and board.board.wiring(connector.id, "proximity") is not None:
            proximity = self.gpio_part(connector, "proximity")
        if board is not None and board.board.wiring(connector.id, "watchdog") is not None:
            watchdog = self.gpio_part(connector, "watchdog")
        return ConnectorHardware(
            pilot=self.pilot(connector, sim),
            contactor=part_or_mock("contactor", sim.contactor if sim else None),
            meter=self.meter(connector, sim),
            lock=part_or_mock("lock", sim.lock if sim else None),
            rcd=part_or_mock("rcd", sim.rcd if sim else None),
            temperature=part_or_mock("temperature", sim.temperature if sim else None),
            proximity=proximity,
            watchdog=watchdog,
            bench=None,
            drivers=drivers,
        )

    def reader(self) -> tuple[CardReader | None, MockCardReader | None]:
        rfid = self.config.rfid
        if rfid is None:
            return None, None
        if rfid.driver == "mock":
            bench_reader = MockCardReader()
            return bench_reader, bench_reader
        from drivers.rfid import pn532_from_options, rdm6300_from_options

        factory = rdm6300_from_options if rfid.driver == "rdm6300" else pn532_from_options
        return factory(rfid.options), None

    def close_built(self) -> None:
        """Release what was built before a later part failed. A driver whose shutdown is
        awaitable offers a synchronous ``close`` if it holds pins or threads from its
        construction on (the GPIO lock); the others hold nothing until first used."""
        for driver in reversed(self.built):
            release = driver.shutdown
            if asyncio.iscoroutinefunction(release):
                release = getattr(driver, "close", None)
            if release is not None:
                with contextlib.suppress(Exception):
                    release()


def _is_gpio_error(exc: Exception) -> bool:
    """One of gpiozero's errors (a pin already in use, no SPI bus), without importing
    gpiozero on a bench that never loaded it."""
    gpiozero = sys.modules.get("gpiozero")
    return gpiozero is not None and isinstance(exc, gpiozero.GPIOZeroError)


def build_hardware(config: Config, access: HostAccess | None = None) -> Hardware:
    """Drivers for every part the config names, left in the safe state. Raises
    UnsupportedDriver with the part named when one cannot be built."""
    builder = _Builder(config, access or HostAccess())
    try:
        connectors = {c.id: builder.connector(c) for c in config.connectors}
        reader, bench_reader = builder.reader()
    except Exception as exc:
        # Whatever went wrong, the parts built so far let go of their pins and threads.
        builder.close_built()
        if isinstance(exc, ValueError | OSError) or _is_gpio_error(exc):
            raise UnsupportedDriver(str(exc)) from exc
        raise
    hardware = Hardware(connectors, reader, bench_reader, buses=builder.buses)
    hardware.safe_state()
    return hardware
