"""The daemon (App, in-process) on the REAL drivers of the reference board, over stand-ins.

What runs is what runs on a charger: ``build_hardware`` builds ``SysfsAdcPilot``,
``GpioContactor``, ``GpioLock``, ``GpioRcd``, ``ProximityPilot`` and ``AdcTemperature`` from the
``pi-evse-reference`` board profile, a ``ModbusMeter`` (eastron-sdm630 map over Modbus TCP) and
an ``Rdm6300Reader`` (on a socat pty), and the App talks OCPP 1.6J over a real websocket to the
BenchCsms. Only the world around the board is simulated:

- the CP wire and an EV (``rpi_fakes.CpWire``) read by an MCP3008 emulated on gpiozero's mock
  SPI, the generator being what the driver wrote to a fake sysfs PWM tree; the EV behaves like
  a car (asks for energy, C, while it sees PWM and wants it; B otherwise);
- the PP coding resistor of the plugged cable and an LM35 on the same ADC;
- the contactor (aux contact follows the relay unless welded or stuck open), the lock (switch
  follows the motor), the RCD (trip follows its test input while it works, or a real fault);
- an energy meter whose register counts while the main contacts are closed;
- an RDM6300 module writing its frames to the other end of the pty.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import math
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import serial  # type: ignore[import-untyped]
from gpiozero import InputDevice  # type: ignore[import-untyped]
from gpiozero.pins.mock import MockFactory  # type: ignore[import-untyped]
from ocpp.v16 import call

from drivers.protocols import CpState
from drivers.rpi import (
    ContactorWiring,
    LockWiring,
    PilotWiring,
    ProximityWiring,
    RcdWiring,
    TemperatureWiring,
    WatchdogWiring,
)
from evse_daemon.app import App
from evse_daemon.bench.csms import BenchCsms, ReceivedMessage
from evse_daemon.board import Board
from evse_daemon.config import Config, load_config
from evse_daemon.hardware import Hardware, HostAccess, UnsupportedDriver, build_hardware
from tests.drivers.modbus_peers import (
    LAYOUTS,
    FakeMeter,
    Server,
    start_tcp_server,
    stop_server,
)
from tests.drivers.rpi_fakes import (
    CpWire,
    EmulatedMcp3008,
    FakePwmKernel,
    HookedPin,
    cp_to_adc_volts,
    drive_input,
    hooked_pin,
    make_pwm_tree,
    read_attr,
)

CARD = bytes.fromhex("0A1B2C3D4E")
TAG = "0A1B2C3D4E"  # id_tag_format "hex": the 5 data bytes, version byte first

MAX_CURRENT_A = 16  # the connector's rating in the config
CABLE_OHM = 220.0  # PP coding resistor: a 32 A cable, so the connector's 16 A binds
# 16 A → 26.666… % (IEC 61851-1 table A.8), rounded down to the 1 ns step of a 1 ms period.
DUTY_NS = "266666"
PERIOD_NS = "1000000"  # steady +12 V (x1) is 100 % duty

START_WH = 1_234_500.0  # 1234.5 kWh: exact in the meter's float32 kWh register
STEP_WH = 250.0  # per integration tick while the contacts are closed (exact in float32)
TICK_S = 0.2
POWER_W = 11_040.0

WAIT_S = 10.0
# The reference board's charge pump keeps the coil driver enabled this long after an edge.
PUMP_HOLD_S = 0.3


# ------------------------------------------------------------------------ the world

T = TypeVar("T")


def wiring(board: Board, part: str, cls: type[T]) -> T:
    """Connector 1's wiring of ``part`` in the board profile (the drivers use the same)."""
    found = board.wiring(1, part)
    assert isinstance(found, cls), f"the profile has no {part} for connector 1"
    return found


class Plant:
    """Everything the board is wired to, driven by the driver's outputs through mock pins."""

    def __init__(self, factory: MockFactory, board: Board, channel_dir: Path) -> None:
        self.factory = factory
        self.events: list[tuple[float, str]] = []
        pilot = wiring(board, "pilot", PilotWiring)
        self.pilot_wiring = pilot
        self.pp = wiring(board, "proximity", ProximityWiring)
        self.temp = wiring(board, "temperature", TemperatureWiring)
        self.cw = wiring(board, "contactor", ContactorWiring)
        self.lw = wiring(board, "lock", LockWiring)
        self.rw = wiring(board, "rcd", RcdWiring)
        self.channel_dir = channel_dir

        # CP / PP / EV
        self.wire = CpWire(channel_dir, inverted=pilot.pwm_inverted)
        self.plugged = False
        self.wants_energy = True
        self.cable_ohm = CABLE_OHM
        self.adc = EmulatedMcp3008(factory, self._adc_source, vref_v=pilot.adc_vref_v)

        # the charge pump enabling the coil driver: alive while its input keeps toggling
        self.watchdog = wiring(board, "watchdog", WatchdogWiring)
        self.toggles: list[float] = []
        self.watchdog_pin = hooked_pin(factory, self.watchdog.gpio, self._watchdog_edge)

        # contactor
        self.welded = False
        self.stuck_open = False  # the coil or its driver is broken: the contacts never close
        self.contacts_closed = False
        self.relay_pin = hooked_pin(factory, self.cw.relay_gpio, self._relay_changed)

        # lock
        self.locked = False
        self.lock_pin = hooked_pin(factory, self.lw.lock_gpio, lambda _: self._motor())
        self.unlock_pin = hooked_pin(factory, self.lw.unlock_gpio, lambda _: self._motor())

        # RCD
        self.residual_fault = False
        self.test_works = True
        self.test_tripped = False
        self.test_presses = 0
        assert self.rw.test_gpio is not None, "the reference board has an RCD test output"
        self.test_pin = hooked_pin(factory, self.rw.test_gpio, self._test_changed)

    # -- after the drivers have configured their inputs

    def sync(self) -> None:
        self._apply_contacts()
        self._switch()
        self._apply_trip()

    def close(self) -> None:
        self.adc.close()

    def log(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    def when(self, what: str, after: float = 0.0) -> float | None:
        """The time of the first event ``what`` at or after ``after``."""
        return next((t for t, e in self.events if e == what and t >= after), None)

    @staticmethod
    def _on(pin: HookedPin, active_high: bool) -> bool:
        return bool(pin.state) == active_high

    # -- CP, PP, temperature

    def _adc_source(self, channel: int) -> float:
        if channel == self.pilot_wiring.adc_channel:
            return cp_to_adc_volts(self.wire.sample(), self.pilot_wiring)
        if channel == self.pp.adc_channel:
            supply = self.pp.pullup_supply_v
            if not self.plugged:
                return supply / self.pp.adc_scale  # open: the pull-up alone
            r = self.cable_ohm
            return supply * r / (r + self.pp.pullup_ohm) / self.pp.adc_scale
        if channel == self.temp.adc_channel:
            return (25.0 - self.temp.offset_c) / self.temp.c_per_v
        return 0.0

    @property
    def pwm_on(self) -> bool:
        return 0.0 < self.wire.high_fraction() < 1.0

    def ev_step(self) -> None:
        """The EV's reaction to what it sees on CP (a car, not a script)."""
        if not self.plugged:
            self.wire.ev = CpState.A
        else:
            self.wire.ev = CpState.C if self.wants_energy and self.pwm_on else CpState.B

    def plug(self) -> None:
        self.plugged = True
        self.ev_step()

    def unplug(self) -> None:
        self.plugged = False
        self.ev_step()

    def duty_ns(self) -> str:
        return read_attr(self.channel_dir, "duty_cycle")

    # -- contactor

    @property
    def relay_on(self) -> bool:
        return self._on(self.relay_pin, self.cw.relay_active_high)

    def _relay_changed(self, _level: bool) -> None:
        self.log("relay on" if self.relay_on else "relay off")
        self._apply_contacts()

    def _watchdog_edge(self, _level: bool) -> None:
        self.toggles.append(time.monotonic())
        self._apply_contacts()

    def pump_alive(self) -> bool:
        """The coil driver is enabled: the watchdog input toggled within PUMP_HOLD_S."""
        return bool(self.toggles) and time.monotonic() - self.toggles[-1] < PUMP_HOLD_S

    def check_pump(self) -> None:
        if self.contacts_closed and not self.pump_alive():
            self.log("charge pump dropped the coil")
            self._apply_contacts()

    def _apply_contacts(self) -> None:
        if self.relay_on and self.pump_alive() and not self.stuck_open:
            self.contacts_closed = True
        elif not self.welded:
            self.contacts_closed = False
        high = self.contacts_closed == self.cw.feedback_active_high
        assert self.cw.feedback_gpio is not None
        drive_input(self.factory, self.cw.feedback_gpio, high)

    def weld(self, welded: bool = True) -> None:
        self.welded = welded
        self._apply_contacts()

    def aux_closed(self) -> bool:
        assert self.cw.feedback_gpio is not None
        level = bool(self.factory.pin(self.cw.feedback_gpio).state)
        return level == self.cw.feedback_active_high

    # -- lock

    def _motor(self) -> None:
        lock_on = self._on(self.lock_pin, self.lw.motor_active_high)
        unlock_on = self._on(self.unlock_pin, self.lw.motor_active_high)
        assert not (lock_on and unlock_on), "both H-bridge inputs on: a short"
        if lock_on and not self.locked:
            self.locked = True
            self.log("locked")
        elif unlock_on and self.locked:
            self.locked = False
            self.log("unlocked")
        self._switch()

    def _switch(self) -> None:
        drive_input(
            self.factory, self.lw.feedback_gpio, self.locked == self.lw.feedback_active_high
        )

    # -- RCD

    def _test_changed(self, level: bool) -> None:
        pressed = level == self.rw.test_active_high
        self.log("rcd test on" if pressed else "rcd test off")
        if pressed:
            self.test_presses += 1
        self.test_tripped = pressed and self.test_works
        self._apply_trip()

    def _apply_trip(self) -> None:
        tripped = self.residual_fault or self.test_tripped
        drive_input(self.factory, self.rw.trip_gpio, tripped == self.rw.trip_active_high)

    def residual_current(self, present: bool) -> None:
        self.residual_fault = present
        self.log("residual current" if present else "residual current gone")
        self._apply_trip()


def rdm6300_frame(data: bytes) -> bytes:
    """STX, 10 hex digits, 2 hex digits of XOR checksum, ETX (as the module sends it)."""
    checksum = functools.reduce(lambda a, b: a ^ b, data)
    return b"\x02" + (data.hex().upper() + f"{checksum:02X}").encode() + b"\x03"


class Rdm6300Module:
    """An RDM6300 on the far end of a socat pty pair; the daemon opens ``port_path``."""

    def __init__(self, directory: Path) -> None:
        self.port_path = directory / "ttyRFID"
        self.module_path = directory / "ttyRFID-module"
        self._proc: asyncio.subprocess.Process | None = None
        self._port: Any = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            "socat",
            f"pty,raw,echo=0,link={self.port_path}",
            f"pty,raw,echo=0,link={self.module_path}",
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await until(lambda: self.port_path.exists() and self.module_path.exists(), "socat's ptys")
        self._port = serial.Serial(str(self.module_path), 9600, timeout=0.1)

    async def stop(self) -> None:
        """The port vanishes, as when the reader's USB-serial adapter is pulled."""
        if self._port is not None:
            self._port.close()
            self._port = None
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), WAIT_S)
        await until(lambda: not self.port_path.exists(), "socat's links to go")

    async def hold(self, card: bytes, seconds: float = 0.3) -> None:
        """A card in the field: the module sends its frame about every 100 ms."""
        assert self._port is not None
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while True:
            self._port.write(rdm6300_frame(card))
            if loop.time() + 0.1 > end:
                break
            await asyncio.sleep(0.1)


async def until(predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


# ----------------------------------------------------------------------- the rig


def write_config(directory: Path, csms_url: str, meter_port: int, reader: Path) -> Path:
    """The config a technician writes for the reference board (sampling made lighter:
    the emulated ADC bit-bangs its SPI in Python, ~0.15 ms per conversion)."""
    meter = ", ".join(
        [
            'driver = "modbus"',
            'model = "eastron-sdm630"',
            'host = "127.0.0.1"',
            f"port = {meter_port}",
            "unit_id = 1",
            "timeout_s = 0.3",
        ]
    )
    text = f"""
[station]
id = "CP-RPI-1"
vendor = "TestVendor"
model = "PiCharger"

[ocpp]
csms_url = "{csms_url}"
reconnect_min_s = 0.05
reconnect_max_s = 0.5
message_timeout_s = 5

[ocpp.config]
HeartbeatInterval = 300
MeterValueSampleInterval = 1
ConnectionTimeOut = 60

[storage]
state_dir = "{directory}/state"

[control]
socket = "{directory}/control.sock"

[logging]
level = "DEBUG"

[rfid]
driver = "rdm6300"
device = "{reader}"
repeat_s = 0.5

[board]
profile = "pi-evse-reference"

[board.connector.1.pilot]
samples_per_burst = 20

[[connector]]
id = 1
max_current_a = {MAX_CURRENT_A}
phases = 3
pilot = {{ driver = "rpi" }}
contactor = {{ driver = "gpio" }}
lock = {{ driver = "gpio" }}
rcd = {{ driver = "gpio" }}
temperature = {{ driver = "adc" }}
meter = {{ {meter} }}
"""
    path = directory / "evse.toml"
    path.write_text(text)
    return path


@dataclass
class Rig:
    csms: BenchCsms
    config: Config
    hardware: Hardware
    app: App
    plant: Plant
    meter: FakeMeter
    reader: Rdm6300Module
    server: Server | None
    meter_port: int
    task: asyncio.Task[Any] | None = None

    # -- OCPP side

    async def wait_status(
        self,
        connector_id: int,
        status: str,
        *,
        error_code: str | None = None,
        after: int = 0,
        timeout_s: float = WAIT_S,
    ) -> ReceivedMessage:
        return await self.csms.wait_for(
            "StatusNotification",
            lambda p: (
                p["connectorId"] == connector_id
                and p["status"] == status
                and (error_code is None or p["errorCode"] == error_code)
            ),
            timeout_s=timeout_s,
            after=after,
        )

    def statuses(self, connector_id: int, *, after: int = 0) -> list[tuple[str, str]]:
        return [
            (m.payload["status"], m.payload["errorCode"])
            for m in self.csms.received[after:]
            if m.action == "StatusNotification" and m.payload["connectorId"] == connector_id
        ]

    async def barrier(self) -> None:
        """Everything the charger had decided to send before this has reached the CSMS."""
        mark = self.csms.mark()
        result = await self.csms.call(call.TriggerMessage(requested_message="Heartbeat"))
        assert result.status == "Accepted"
        await self.csms.wait_for("Heartbeat", after=mark)

    async def booted(self) -> None:
        await self.csms.wait_for("BootNotification")
        for connector_id in (0, 1):
            await self.wait_status_any(connector_id)

    async def wait_status_any(self, connector_id: int) -> ReceivedMessage:
        return await self.csms.wait_for(
            "StatusNotification", lambda p: p["connectorId"] == connector_id
        )

    # -- hardware side

    async def wait_until(
        self, predicate: Callable[[], bool], what: str, timeout_s: float = WAIT_S
    ) -> None:
        await until(predicate, what, timeout_s)

    async def swipe(self, card: bytes = CARD) -> None:
        # A card counts once per presentation: keep presentations apart by more than
        # repeat_s (0.5 s), as a person does.
        await asyncio.sleep(0.6)
        await self.reader.hold(card)

    async def start_charging(self) -> int:
        """Plug in, swipe, and wait until energy flows; returns the CSMS transactionId."""
        mark = self.csms.mark()
        self.plant.plug()
        await self.wait_status(1, "Preparing", after=mark)
        await self.swipe()
        await self.csms.wait_for("StartTransaction", after=mark)
        await self.wait_status(1, "Charging", after=mark)
        await self.wait_until(lambda: self.plant.contacts_closed, "contacts closed")
        return max(t for t, tag in self.csms.transaction_ids.items() if tag == TAG)

    async def stop_meter_server(self) -> None:
        server, self.server = self.server, None
        if server is not None:
            await stop_server(server)

    async def start_meter_server(self) -> None:
        self.server, _ = await start_tcp_server([self.meter], port=self.meter_port)


async def _integrate(plant: Plant, meter: FakeMeter) -> None:
    """The meter: its register counts while the main contacts are closed."""
    while True:
        await asyncio.sleep(TICK_S)
        closed = plant.contacts_closed
        if closed:
            meter.values["energy_import"] += STEP_WH
        current = POWER_W / 690.0 if closed else 0.0
        meter.values["power"] = POWER_W if closed else 0.0
        for n in (1, 2, 3):
            meter.values[f"current_l{n}"] = current


async def _drive_ev(plant: Plant) -> None:
    """The EV follows the pilot; the pilot's duty changes are logged as "duty N" events."""
    last_duty = None
    while True:
        plant.ev_step()
        plant.check_pump()
        duty = plant.duty_ns()
        if duty != last_duty:
            plant.log(f"duty {duty}")
            last_duty = duty
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def rig(directory: Path, factory: MockFactory) -> AsyncIterator[Rig]:
    """The CSMS, the stand-ins and the daemon on the real drivers; all stopped afterwards."""
    async with contextlib.AsyncExitStack() as stack:
        csms = BenchCsms()
        url = await csms.start()
        stack.push_async_callback(csms.stop)

        meter = FakeMeter(
            LAYOUTS["eastron-sdm630"][1],
            values={
                "energy_import": START_WH,
                "power": 0.0,
                "current_l1": 0.0,
                "current_l2": 0.0,
                "current_l3": 0.0,
            },
        )
        server, meter_port = await start_tcp_server([meter])

        reader = Rdm6300Module(directory)
        await reader.start()
        stack.push_async_callback(reader.stop)

        sysfs = directory / "sys-class-pwm"
        chip_dir = make_pwm_tree(sysfs)  # channel 0 not exported: the driver exports it
        kernel = FakePwmKernel(chip_dir)
        stack.callback(kernel.stop)

        config = load_config(write_config(directory, url, meter_port, reader.port_path))
        assert config.board is not None
        plant = Plant(factory, config.board.board, chip_dir / "pwm0")
        stack.callback(plant.close)
        access = HostAccess(pin_factory=factory, sysfs_pwm_root=str(sysfs))
        hardware = build_hardware(config, access)
        stack.push_async_callback(hardware.shutdown)
        plant.sync()

        the_rig = Rig(
            csms, config, hardware, App(config, hardware), plant, meter, reader, server, meter_port
        )

        async def stop_server_at_end() -> None:
            await the_rig.stop_meter_server()

        stack.push_async_callback(stop_server_at_end)

        background = [
            asyncio.create_task(_integrate(plant, meter)),
            asyncio.create_task(_drive_ev(plant)),
        ]

        async def cancel_background() -> None:
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)

        stack.push_async_callback(cancel_background)

        the_rig.task = asyncio.create_task(the_rig.app.run())

        async def stop_app() -> None:
            the_rig.app.request_stop()
            assert the_rig.task is not None
            with contextlib.suppress(Exception):
                await asyncio.wait_for(the_rig.task, 15)

        stack.push_async_callback(stop_app)
        await the_rig.booted()
        yield the_rig


# --------------------------------------------------------------------------- helpers


def sampled(message: ReceivedMessage, measurand: str) -> list[float]:
    """Every value of ``measurand`` in a MeterValues or StopTransaction."""
    key = "meterValue" if message.action == "MeterValues" else "transactionData"
    values = []
    for meter_value in message.payload.get(key) or []:
        for entry in meter_value["sampledValue"]:
            # Energy.Active.Import.Register is the default measurand (OCPP 1.6 §7.45).
            if entry.get("measurand", "Energy.Active.Import.Register") == measurand:
                values.append(float(entry["value"]))
    return values


def energy_values(message: ReceivedMessage) -> list[float]:
    """Every Energy.Active.Import.Register value (Wh) of a MeterValues or StopTransaction."""
    return sampled(message, "Energy.Active.Import.Register")


def sampled_of(payload: dict[str, Any], measurand: str) -> list[float]:
    return sampled(ReceivedMessage("MeterValues", payload, "", 0.0), measurand)


def energy_values_of(payload: dict[str, Any]) -> list[float]:
    return sampled_of(payload, "Energy.Active.Import.Register")


def assert_no_made_up_energy(r: Rig) -> None:
    """No message ever reported a 0, NaN or infinite register, nor one below meterStart."""
    for message in r.csms.received:
        if message.action in ("MeterValues", "StopTransaction"):
            for value in energy_values(message):
                assert math.isfinite(value) and value >= START_WH, (message.action, value)
        if message.action == "StartTransaction":
            assert message.payload["meterStart"] >= START_WH, message.payload
        if message.action == "StopTransaction":
            assert message.payload["meterStop"] >= START_WH, message.payload
    connector = r.app.status()["connectors"][0]
    assert connector["energy_wh"] is None or connector["energy_wh"] >= START_WH


# ----------------------------------------------------------------------------- tests


async def test_full_session(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        # Boot: Available, x1 on the pilot (100 % duty), contactor open, cable unlocked.
        await r.wait_status(1, "Available")
        await r.wait_until(lambda: p.duty_ns() == PERIOD_NS, "x1 (steady +12 V) on the pilot")
        assert read_attr(p.channel_dir, "period") == PERIOD_NS
        assert read_attr(p.channel_dir, "enable") == "1"
        assert not p.relay_on and not p.aux_closed() and not p.locked

        # The EV is plugged in: the electrical model presents B.
        mark = r.csms.mark()
        t_plug = time.monotonic()
        p.plug()
        await r.wait_status(1, "Preparing", after=mark)
        # The RCD self-test runs for this EV (the board has a test output) and passes.
        await r.wait_until(lambda: p.when("rcd test off", t_plug) is not None, "RCD self-test")
        assert p.test_presses == 1

        # Card over the pty: Authorize, lock confirmed, StartTransaction, PWM.
        await r.swipe()
        authorize = await r.csms.wait_for("Authorize", after=mark)
        assert authorize.payload["idTag"] == TAG
        start = await r.csms.wait_for("StartTransaction", after=mark)
        assert start.payload["connectorId"] == 1
        assert start.payload["idTag"] == TAG
        assert start.payload["meterStart"] == int(START_WH)
        assert p.locked
        t_locked = p.when("locked", t_plug)
        t_tested = p.when("rcd test off", t_plug)
        assert t_locked is not None and t_tested is not None
        assert t_tested < t_locked < start.received_at
        tx_id = next(t for t, tag in r.csms.transaction_ids.items() if tag == TAG)
        await r.wait_until(lambda: p.duty_ns() == DUTY_NS, f"PWM duty {DUTY_NS} ns")
        assert read_attr(p.channel_dir, "period") == PERIOD_NS
        assert not p.relay_on, "no energy before the EV asks for it"

        # The EV sees PWM and asks for energy (C): relay on, aux contact closed, Charging.
        await r.wait_status(1, "Charging", after=mark)
        await r.wait_until(lambda: p.relay_on and p.aux_closed(), "contactor closed")
        t_closed = p.when("relay on", t_plug)
        assert t_closed is not None and t_closed > t_locked
        assert r.hardware.connectors[1].contactor.feedback_closed() is True

        # MeterValues from the Modbus meter, in the transaction, counting up.
        sample = await r.csms.wait_for(
            "MeterValues",
            lambda m: (
                m.get("transactionId") == tx_id and any(v > START_WH for v in energy_values_of(m))
            ),
            after=mark,
        )
        assert sample.payload["connectorId"] == 1

        # The card again: the transaction stops; the EV sees x1 and goes to B; contactor open.
        mark_stop = r.csms.mark()
        await r.swipe()
        stop = await r.csms.wait_for("StopTransaction", after=mark_stop)
        assert stop.payload["transactionId"] == tx_id
        assert stop.payload["reason"] == "Local"
        assert stop.payload["idTag"] == TAG
        assert not p.relay_on and not p.aux_closed()
        t_open = p.when("relay off", t_closed)
        assert t_open is not None and t_open < stop.received_at
        # meterStop is the register (Wh) with the contacts open: it does not move any more.
        register = r.meter.values["energy_import"]
        assert register > START_WH
        assert stop.payload["meterStop"] == int(register)
        assert p.duty_ns() == PERIOD_NS
        # The cable is unlocked once the contactor is open.
        await r.wait_until(lambda: not p.locked, "cable unlocked")
        t_unlocked = p.when("unlocked", t_open)
        assert t_unlocked is not None and t_unlocked > t_open
        await r.wait_status(1, "Finishing", after=mark_stop)

        # Unplug: Available again, still x1.
        mark_unplug = r.csms.mark()
        p.unplug()
        await r.wait_status(1, "Available", after=mark_unplug)
        assert p.duty_ns() == PERIOD_NS
        statuses = [s for s, _ in r.statuses(1, after=mark)]
        assert statuses[0] == "Preparing" and statuses[-1] == "Available"
        assert "Charging" in statuses and "Finishing" in statuses
        assert all(code == "NoError" for _, code in r.statuses(1))
        assert_no_made_up_energy(r)


async def test_contactor_weld(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        p.weld()
        mark = r.csms.mark()
        t_stop = time.monotonic()
        await r.swipe()  # stop: the relay opens, the aux contact stays closed
        faulted = await r.wait_status(1, "Faulted", error_code="PowerSwitchFailure", after=mark)
        assert not p.relay_on, "the relay is commanded open"
        assert p.aux_closed()
        assert faulted.payload.get("info") == "contactor welded"
        stop = await r.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["meterStop"] >= START_WH

        # State F, then x1 (the EV stays visible) while the contacts stay welded.
        def f_then_x1() -> bool:
            t_f = p.when("duty 0", t_stop)
            return t_f is not None and p.when(f"duty {PERIOD_NS}", t_f) is not None

        await r.wait_until(f_then_x1, "state F, then x1")
        assert p.aux_closed() and not p.relay_on

        # The contacts come free: the fault clears.
        mark_clear = r.csms.mark()
        p.weld(False)
        await r.wait_until(lambda: not p.aux_closed(), "aux contact open")
        cleared = await r.csms.wait_for(
            "StatusNotification",
            lambda m: m["connectorId"] == 1 and m["errorCode"] == "NoError",
            after=mark_clear,
        )
        assert cleared.payload["status"] in ("Finishing", "Available")
        assert not p.relay_on
        assert_no_made_up_energy(r)


async def test_contactor_fails_to_close(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        p.stuck_open = True
        mark = r.csms.mark()
        p.plug()
        await r.wait_status(1, "Preparing", after=mark)
        await r.swipe()
        await r.csms.wait_for("StartTransaction", after=mark)
        faulted = await r.wait_status(1, "Faulted", error_code="PowerSwitchFailure", after=mark)
        assert faulted.payload.get("vendorErrorCode") == "ContactorNoClose"
        assert p.when("relay on") is not None, "the relay was commanded on"
        await r.wait_until(lambda: not p.relay_on, "relay off")
        assert not p.aux_closed()

        # Latched until the EV leaves: unplug clears it.
        mark_clear = r.csms.mark()
        p.stuck_open = False
        p.unplug()
        stop = await r.csms.wait_for("StopTransaction", after=mark_clear)
        assert stop.payload["reason"] == "EVDisconnected"
        await r.wait_status(1, "Available", error_code="NoError", after=mark_clear)
        assert not p.relay_on


async def test_rcd_trip(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        mark = r.csms.mark()
        t_trip = time.monotonic()
        p.residual_current(True)
        await r.wait_until(lambda: not p.relay_on, "relay off after the trip")
        faulted = await r.wait_status(1, "Faulted", error_code="GroundFailure", after=mark)
        # Opened first, reported after (how soon is for benchmarks/daemon.py to measure).
        t_open = p.when("relay off", t_trip)
        assert t_open is not None and t_open < faulted.received_at
        await r.wait_until(lambda: p.when("duty 0", t_trip) is not None, "state F")

        # The residual current goes away: the fault clears and the EV may charge again.
        mark_clear = r.csms.mark()
        p.residual_current(False)
        await r.wait_status(1, "Charging", error_code="NoError", after=mark_clear)
        await r.wait_until(lambda: p.relay_on and p.aux_closed(), "contactor closed again")
        assert_no_made_up_energy(r)


async def test_missing_diode(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        mark = r.csms.mark()
        p.wire.diode = False  # the EV's resistor now loads the negative half too
        faulted = await r.wait_status(1, "Faulted", error_code="OtherError", after=mark)
        assert faulted.payload.get("vendorErrorCode") == "DiodeMissing"
        await r.wait_until(lambda: not p.relay_on and not p.aux_closed(), "contactor open")
        assert p.duty_ns() in ("0", PERIOD_NS), "no PWM while faulted"

        # Cleared when the EV leaves (only PWM shows the diode).
        mark_clear = r.csms.mark()
        p.wire.diode = True
        p.unplug()
        await r.wait_status(1, "Available", error_code="NoError", after=mark_clear)
        stop = await r.csms.wait_for("StopTransaction", after=mark)
        assert stop.payload["reason"] == "EVDisconnected"
        assert not p.relay_on


async def test_pilot_short(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        mark = r.csms.mark()
        p.wire.shorted = True  # CP at 0 V: state E
        faulted = await r.wait_status(1, "Faulted", after=mark)
        assert faulted.payload["errorCode"] == "OtherError"
        assert faulted.payload.get("vendorErrorCode") == "PilotShort"
        await r.wait_until(lambda: not p.relay_on and not p.aux_closed(), "contactor open")

        # The short is removed: the fault clears and the session goes on.
        mark_clear = r.csms.mark()
        p.wire.shorted = False
        await r.wait_status(1, "Charging", error_code="NoError", after=mark_clear)
        await r.wait_until(lambda: p.relay_on and p.aux_closed(), "contactor closed again")


async def test_meter_lost_then_back(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()

        # The meter's TCP server goes away: connections are refused.
        mark = r.csms.mark()
        await r.stop_meter_server()
        await r.wait_status(1, "Faulted", error_code="PowerMeterFailure", after=mark)
        await r.wait_until(lambda: not p.relay_on, "contactor open")
        assert r.app.status()["connectors"][0]["meter_ok"] is False
        mark_back = r.csms.mark()
        await r.start_meter_server()
        await r.wait_status(1, "Charging", error_code="NoError", after=mark_back)
        await r.wait_until(lambda: p.relay_on, "contactor closed again")

        # The meter stops answering (no reply within timeout_s).
        mark = r.csms.mark()
        r.meter.silent_s = 1.0
        await r.wait_status(1, "Faulted", error_code="PowerMeterFailure", after=mark)
        await r.wait_until(lambda: not p.relay_on, "contactor open")
        mark_back = r.csms.mark()
        r.meter.silent_s = 0.0
        await r.wait_status(1, "Charging", error_code="NoError", after=mark_back)
        assert_no_made_up_energy(r)


async def test_meter_garbage(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        good = r.meter.values["energy_import"]
        for garbage in (math.nan, 1e12 * 1000.0):  # NaN; 10^15 Wh, beyond any meter
            mark = r.csms.mark()
            r.meter.values["energy_import"] = garbage
            await r.wait_status(1, "Faulted", error_code="PowerMeterFailure", after=mark)
            await r.wait_until(lambda: not p.relay_on, "contactor open")
            energy = r.app.status()["connectors"][0]["energy_wh"]
            assert energy is not None and math.isfinite(energy) and energy >= START_WH
            mark_back = r.csms.mark()
            r.meter.values["energy_import"] = good
            await r.wait_status(1, "Charging", error_code="NoError", after=mark_back)
            await r.wait_until(lambda: p.relay_on, "contactor closed again")
            good = r.meter.values["energy_import"]
        assert_no_made_up_energy(r)


async def test_reader_gone_then_back(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        await r.wait_status(0, "Available", error_code="NoError")
        mark = r.csms.mark()
        await r.reader.stop()
        await r.wait_status(0, "Available", error_code="ReaderFailure", after=mark)
        assert r.statuses(1, after=mark) == [], "connector 1 is not affected"

        mark_back = r.csms.mark()
        await r.reader.start()
        await r.wait_status(0, "Available", error_code="NoError", after=mark_back)
        # And it reads cards again.
        r.plant.plug()
        await r.swipe()
        authorize = await r.csms.wait_for("Authorize", after=mark_back)
        assert authorize.payload["idTag"] == TAG


async def test_rcd_self_test_failure(tmp_path: Path, gpio_factory: MockFactory) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        p.test_works = False  # the trip never comes
        mark = r.csms.mark()
        await r.swipe()  # identify first: the authorization waits for the EV
        await r.csms.wait_for("Authorize", after=mark)
        p.plug()
        faulted = await r.wait_status(1, "Faulted", error_code="GroundFailure", after=mark)
        assert faulted.payload.get("vendorErrorCode") == "RcdSelfTestFailed"
        assert p.test_presses == 1
        assert not p._on(p.test_pin, p.rw.test_active_high), "test output released"
        await r.barrier()
        assert r.csms.messages("StartTransaction") == []
        assert p.when("relay on") is None and p.duty_ns() in ("0", PERIOD_NS)

        # Cleared when the EV leaves (state F for 300 ms, then x1, under which the departure is
        # seen). The card's authorization still waits for an EV until ConnectionTimeOut, so
        # the connector is Preparing; the next EV is tested again, passes, and charges.
        mark_clear = r.csms.mark()
        p.unplug()
        await r.wait_status(1, "Preparing", error_code="NoError", after=mark_clear, timeout_s=5.0)
        assert r.app.charger.connector(1).faults == set()
        p.test_works = True
        p.plug()
        await r.wait_until(lambda: p.test_presses == 2, "a second self-test")
        await r.csms.wait_for("StartTransaction", after=mark_clear)


async def test_no_stale_meter_values_from_a_lost_meter(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    """While the meter does not answer, no MeterValues present its last good reading as a new
    sample (it would show power drawn through an open contactor)."""
    async with rig(tmp_path, gpio_factory) as r:
        tx_id = await r.start_charging()
        await r.csms.wait_for(
            "MeterValues",
            lambda m: (
                m.get("transactionId") == tx_id
                and any(v > 0 for v in sampled_of(m, "Power.Active.Import"))
            ),
        )
        mark = r.csms.mark()
        await r.stop_meter_server()
        faulted = await r.wait_status(1, "Faulted", error_code="PowerMeterFailure", after=mark)
        await r.wait_until(lambda: not r.plant.relay_on, "contactor open")
        await asyncio.sleep(2.5)  # MeterValueSampleInterval = 1 s: two samples were due
        await r.barrier()
        stale = [
            (energy_values(m), sampled(m, "Power.Active.Import"))
            for m in r.csms.received[mark:]
            if m.action == "MeterValues" and m.received_at > faulted.received_at + 0.2
        ]
        assert stale == [], f"MeterValues (Wh, W) sent while the meter was lost: {stale}"


# ----------------------------------------------------------------------- bring-up


async def _bringup(r: Rig, part: str, **extra: Any) -> Any:
    request: dict[str, Any] = {"cmd": "bringup", "part": part, **extra}
    if part != "rfid":
        request["connector"] = 1
    return await r.app.handle_control(request)


async def test_bringup_exercises_each_part_on_the_real_drivers(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    """`evsectl bringup` on the reference board: what the technician reads is what the
    stand-ins saw the drivers do (PWM files, relay, motor and test pins, Modbus, the pty)."""
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.wait_status(1, "Available")

        # Meter first, while the register is still at its start (the contactor test below
        # closes the contacts for half a second, and the register counts meanwhile).
        meter = await _bringup(r, "meter")
        assert meter["passed"] is True
        assert [read["energy_import_wh"] for read in meter["reads"]] == [START_WH] * 3

        # Pilot, nothing plugged in: F under state F, A under x1, and the PWM duty written
        # to the kernel's file at the 1 ns resolution.
        t0 = time.monotonic()
        pilot = await _bringup(r, "pilot")
        steps = {s["step"]: s for s in pilot["steps"]}
        assert set(steps["state F"]["states"]) == {"F"}
        assert steps["x1 (+12 V)"]["states"][-1] == "A"
        assert steps["PWM 6 A"]["duty_percent"] == pytest.approx(10.0)
        assert steps[f"PWM {MAX_CURRENT_A} A"]["states"][-1] == "A"
        assert pilot["duty_resolution_percent"] == pytest.approx(1e-4)
        assert p.when("duty 100000", t0) is not None  # 6 A: 10 % of 1 ms
        assert p.when(f"duty {DUTY_NS}", t0) is not None
        assert pilot["passed"] is True
        await r.wait_until(lambda: p.duty_ns() == PERIOD_NS, "x1 again, handed back")

        t0 = time.monotonic()
        contactor = await _bringup(r, "contactor")
        assert contactor["verdict"] == "ok", contactor
        assert contactor["feedback_before"] is False
        assert contactor["close_ms"] is not None and contactor["open_ms"] is not None
        relay_on = p.when("relay on", t0)
        assert relay_on is not None and p.when("relay off", relay_on) is not None
        assert not p.relay_on and not p.aux_closed()

        t0 = time.monotonic()
        lock = await _bringup(r, "lock")
        assert (lock["lock"]["ok"], lock["unlock"]["ok"], lock["passed"]) == (True, True, True)
        locked = p.when("locked", t0)
        assert locked is not None and p.when("unlocked", locked) is not None
        assert not p.locked

        presses = p.test_presses
        rcd = await _bringup(r, "rcd")
        assert rcd["self_test"]["passed"] is True
        assert (rcd["tripped"], rcd["tripped_after"], rcd["passed"]) == (False, False, True)
        assert p.test_presses == presses + 1

        mark = r.csms.mark()
        pending = asyncio.create_task(_bringup(r, "rfid", wait_s=5))
        await r.reader.hold(CARD)
        card = await pending
        assert (card["id_tag"], card["passed"]) == (TAG, True)
        await r.barrier()
        assert not any(m.action == "Authorize" for m in r.csms.received[mark:])
        await r.wait_status(1, "Available")


async def test_bringup_finds_the_faults_of_the_real_parts(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.wait_status(1, "Available")

        # An EV (or test box) in B: B under x1; it asks for energy (C) once PWM is offered,
        # and the relay is never switched on for it.
        mark = r.csms.mark()
        p.plug()
        await r.wait_status(1, "Preparing", after=mark)
        t0 = time.monotonic()
        pilot = await _bringup(r, "pilot")
        steps = {s["step"]: s for s in pilot["steps"]}
        assert steps["x1 (+12 V)"]["states"][-1] == "B"
        assert steps[f"PWM {MAX_CURRENT_A} A"]["states"][-1] == "C"
        assert all(s["diode_ok"] for s in pilot["steps"][1:])
        assert p.when("relay on", t0) is None
        assert not any(m.action == "StartTransaction" for m in r.csms.received[mark:])
        p.unplug()
        await r.wait_status(1, "Available", after=mark)

        p.test_works = False
        rcd = await _bringup(r, "rcd")
        assert (rcd["self_test"]["passed"], rcd["passed"]) == (False, False)
        p.test_works = True

        await r.stop_meter_server()
        meter = await _bringup(r, "meter")
        assert meter["passed"] is False
        assert all("error" in read for read in meter["reads"])
        await r.start_meter_server()

        p.weld()
        contactor = await _bringup(r, "contactor")
        assert contactor["verdict"].startswith("WELDED"), contactor
        assert contactor["passed"] is False
        await r.wait_status(1, "Faulted", error_code="PowerSwitchFailure")


async def test_a_start_up_that_fails_half_way_releases_every_part(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    """Another program holds the RCD's input pin: the start-up fails naming the pin, and every
    part built before the RCD (pilot sampler and PWM, relay, lock motor, the ADC's SPI bus) is
    released, so that the daemon's next start (systemd restarts it) can claim them."""
    sysfs = tmp_path / "sys-class-pwm"
    kernel = FakePwmKernel(make_pwm_tree(sysfs))
    access = HostAccess(pin_factory=gpio_factory, sysfs_pwm_root=str(sysfs))
    adc = EmulatedMcp3008(gpio_factory, lambda _channel: 0.0)
    try:
        config = load_config(write_config(tmp_path, "ws://127.0.0.1:1/ocpp", 1, tmp_path / "tty"))
        assert config.board is not None
        board = config.board.board
        rcd_gpio = wiring(board, "rcd", RcdWiring).trip_gpio
        squatter = InputDevice(rcd_gpio, pin_factory=gpio_factory)
        with pytest.raises(UnsupportedDriver, match=f"GPIO{rcd_gpio} is already in use"):
            build_hardware(config, access)
        squatter.close()

        assert not [t.name for t in threading.enumerate() if t.name.endswith("-sampler")]
        assert read_attr(sysfs / "pwmchip0" / "pwm0", "duty_cycle") == "0"  # left in state F
        contactor = wiring(board, "contactor", ContactorWiring)
        lock = wiring(board, "lock", LockWiring)
        spi_pins = [8, 9, 10, 11]  # CE0, MISO, MOSI, SCLK: held while any ADC channel is open
        pins = [contactor.relay_gpio, contactor.feedback_gpio, lock.lock_gpio, lock.unlock_gpio]
        for gpio in [*pins, lock.feedback_gpio, *spi_pins]:
            InputDevice(gpio, pin_factory=gpio_factory).close()  # GPIOPinInUse if still held
    finally:
        adc.close()
        kernel.stop()


async def test_a_hung_safety_loop_drops_the_contactor_through_the_hardware_watchdog(
    tmp_path: Path, gpio_factory: MockFactory
) -> None:
    """The safety loop toggles the charge pump's GPIO on every turn. Hung (here: held by the
    bench's stall, the rest of the daemon running on), it stops toggling and the board's
    charge pump drops the coil, although the relay output still says closed. Released, the
    toggling resumes and the session goes on."""
    async with rig(tmp_path, gpio_factory) as r:
        p = r.plant
        await r.start_charging()
        toggling_at = len(p.toggles)
        await r.wait_until(lambda: len(p.toggles) >= toggling_at + 10, "the pump toggled")
        # Held until the test lets it go (not for a set time: a loaded machine must not
        # release it before the drop was seen).
        r.app.stall_safety_loop(3600)
        t_stall = time.monotonic()
        held_at = len(p.toggles)
        await r.wait_until(lambda: not p.contacts_closed, "the coil dropped")
        assert p.relay_on, "the software did not open it: the hardware did"
        t_drop = p.when("charge pump dropped the coil", t_stall)
        assert t_drop is not None
        # The loop runs on the test's event loop: once held, not one more edge.
        assert p.toggles[held_at:] == [], "the pump was toggled while the loop was held"
        r.app.stall_safety_loop(0)
        await r.wait_until(lambda: len(p.toggles) > held_at, "toggling again once released")
        await r.wait_until(lambda: p.contacts_closed, "closed again once the loop runs")
        assert r.app.charger.transaction_on(1) is not None
    assert not p.watchdog_pin.state, "left low: no edge, no coil, after the daemon stopped"
