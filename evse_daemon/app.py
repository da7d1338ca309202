"""The daemon: builds the controller, store and OCPP adapter around the drivers, and runs one
asyncio task per concern under a TaskGroup.

Safety path: a pilot or RCD change reaches ``_hardware_changed`` through the driver's listener
(``call_soon_threadsafe``), the controller decides synchronously, and ``_apply`` commands the
contactor before anything else runs; nothing on that path awaits the network, the disk or the
meter. A 50 ms safety loop re-reads every input as a backstop and runs the controller's timers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from drivers.protocols import CpState, MeterError, MeterReading, PilotOutput, ReaderError

from .auth import Authorizer, AuthSettings
from .bringup import Bringup, BringupRefused
from .certs import CertificateUse, roots_dir
from .charger import (
    Action,
    AuthorizationExpired,
    AvailabilityChanged,
    CableHoldChanged,
    CardDecision,
    Charger,
    ChargerSettings,
    ConnectorSpec,
    ConnectorView,
    ErrorCode,
    Fault,
    RunRcdSelfTest,
    SetContactor,
    SetLock,
    SetPilot,
    StatusChanged,
    StopReason,
    TransactionStarted,
    TransactionStopped,
)
from .clock import Clock, SystemClock, current_boot_id
from .config import Config
from .control import ControlError, ControlServer
from .diagnostics import DiagnosticsRunner
from .firmware_install import build_installer
from .firmware_runner import FirmwareRunner
from .hardware import Hardware
from .iec61851 import CONTACTOR_FEEDBACK_TIMEOUT_S, X1_OPEN_UNDER_LOAD_S
from .limits import ConnectorLimits, LimitDecision, offered_currents, thermal_derating_a
from .logfields import IdTag, journal_fields
from .ocpp16.adapter import OcppAdapter16
from .ocpp16.firmware import FirmwareManagement16
from .ocpp_keys import OcppConfiguration
from .ports import AvailabilityResult, ResetKind, UnlockResult
from .profiles import (
    ChargingProfile,
    CompositePeriod,
    InstalledProfile,
    ProfileLimits,
    ProfilePurpose,
    ProfileSet,
    RateUnit,
    composite_schedule,
    limit_at,
    profile_from_ocpp,
    profile_to_ocpp,
)
from .store import Store
from .transfer import TransferSettings

log = logging.getLogger(__name__)

SAFETY_INTERVAL_S = 0.05
# UnlockConnector waits this long for the contactor to open: x1's 6 s, the feedback's delay
# and a margin.
UNLOCK_WAIT_FOR_OPEN_S = X1_OPEN_UNDER_LOAD_S + CONTACTOR_FEEDBACK_TIMEOUT_S + 1.0
# A polled input that fails to read is logged at most this often.
HARDWARE_ERROR_LOG_S = 60.0
METER_INTERVAL_S = 1.0
METER_TIMEOUT_S = 3.0
LIMITS_RECHECK_S = 60.0
TEMPERATURE_HYSTERESIS_C = 5.0
# How long a stop or reset waits for queued transaction messages to reach the CSMS.
SOFT_RESET_FLUSH_S = 10.0
HARD_RESET_FLUSH_S = 2.0
SHUTDOWN_FLUSH_S = 3.0

Narrator = Callable[[str, str, dict[str, Any]], None]


class RunOutcome(enum.Enum):
    STOPPED = "stopped"
    SOFT_RESET = "soft-reset"
    HARD_RESET = "hard-reset"
    # The power is failing (SIGPWR from a UPS or backup-power monitor): the transactions end
    # with reason PowerLoss while the backup lasts (OCTT TC_032_1), then the daemon stops.
    POWER_LOSS = "power-loss"
    # A firmware update switched versions: the process exits for systemd to start the one
    # now installed (an in-process restart would run the old code again).
    FIRMWARE_UPDATE = "firmware-update"


class _Stop(Exception):
    """Raised inside the task group to end the run."""


def _latest_pilot_only(actions: list[Action]) -> list[Action]:
    """Drop every SetPilot that a later one for the same connector in the same batch
    supersedes: the pilot shows only the final offer (all decided at the same instant)."""
    last_pilot = {a.connector_id: i for i, a in enumerate(actions) if isinstance(a, SetPilot)}
    return [
        a
        for i, a in enumerate(actions)
        if not isinstance(a, SetPilot) or last_pilot[a.connector_id] == i
    ]


class _MeterAtRest:
    """The meter readings of one connector that bound its transactions' energy.

    meterStart and meterStop must be the register while no energy flows: read after the
    contactor opened and before it closes again. The meter loop's latest reading can be up to
    an interval old, and the event forwarder may reach a transaction's event late (it waits for
    the stop reading of the session before), so neither is used directly. Each period in which
    the contactor is open gets a future, resolved by the first reading that both started and
    ended within that period (one is requested the moment the contactor opens). A transaction's
    start and its stop each take the reading of the period in which the contactor is open at or
    after the event: the current one if it is open, else the next (a session started while
    the last one's EV still draws starts where that one stops). If the contactor does not open
    within the wait, the latest reading is taken instead.
    """

    def __init__(self) -> None:
        self.open = True  # the run starts from the safe state
        self.generation = 0  # counts contactor changes: a reading spanning one is not at rest
        self._period: asyncio.Future[MeterReading] | None = None
        self._next_period: asyncio.Future[MeterReading] | None = None

    def _new_future(self) -> asyncio.Future[MeterReading]:
        return asyncio.get_running_loop().create_future()

    def current(self) -> asyncio.Future[MeterReading]:
        """The reading at rest of the current open period (while closed: of the last)."""
        if self._period is None:
            self._period = self._new_future()
        return self._period

    def after_next_open(self) -> asyncio.Future[MeterReading]:
        """The reading at rest once the contactor is open: the current one if it is."""
        if self.open:
            return self.current()
        if self._next_period is None:
            self._next_period = self._new_future()
        return self._next_period

    def contactor_commanded(self, closed: bool) -> bool:
        """Record a contactor command; True if the contactor just opened."""
        if closed == (not self.open):
            return False
        self.generation += 1
        self.open = not closed
        if self.open:
            self._period, self._next_period = self._next_period, None
        return self.open

    def reading(self, reading: MeterReading, generation_at_request: int) -> None:
        """A reading arrived: it is at rest if no contactor change happened around it."""
        if self.open and generation_at_request == self.generation:
            period = self.current()
            if not period.done():
                period.set_result(reading)


class App:
    """One run of the daemon on a set of drivers (a reset ends the run; the caller rebuilds)."""

    def __init__(
        self,
        config: Config,
        hardware: Hardware,
        *,
        clock: Clock | None = None,
        narrator: Narrator | None = None,
    ) -> None:
        self.config = config
        self.hardware = hardware
        self.clock: Clock = clock or SystemClock()
        self._narrator = narrator
        self.store = Store(config.storage.state_dir)
        # Transaction ids continue from the store: loaded before the first transaction.
        self._last_local_tx_id = 0
        self.keys = OcppConfiguration.for_connectors(len(config.connectors))
        self.charger = Charger(
            [
                ConnectorSpec(
                    c.id,
                    c.max_current_a,
                    c.phases,
                    pwm_resolution_percent=hardware.connectors[c.id].pilot.duty_resolution_percent,
                    has_lock=hardware.connectors[c.id].lock is not None,
                    has_rcd_self_test=bool(
                        getattr(hardware.connectors[c.id].rcd, "has_self_test", False)
                    ),
                )
                for c in config.connectors
            ],
            self.clock,
            ChargerSettings(),
            next_local_tx_id=self._next_local_tx_id,
        )
        self.authorizer = Authorizer(self.clock, AuthSettings())
        self.adapter = OcppAdapter16(
            station=config.station,
            ocpp_section=config.ocpp,
            port=self,
            keys=self.keys,
            authorizer=self.authorizer,
            clock=self.clock,
            persist_key=self._persist_key,
            narrator=narrator,
            store=self.store,
            max_queued_messages=config.storage.max_queued_messages,
        )
        self.control = ControlServer(config.control.socket, self)
        state_dir = Path(config.storage.state_dir)
        transfer = TransferSettings(ca_file=config.ocpp.ca_file)
        self.firmware = FirmwareRunner(
            config.firmware,
            store=self.store,
            clock=self.clock,
            installer=build_installer(config.firmware, config.path),
            directory=state_dir / "firmware",
            roots_dir=roots_dir(state_dir, CertificateUse.MANUFACTURER_ROOT),
            port=self,
            transfer=transfer,
        )
        self.diagnostics = DiagnosticsRunner(
            config.diagnostics,
            directory=state_dir / "diagnostics",
            config_path=config.path,
            station_id=config.station.id,
            clock=self.clock,
            snapshot=self._diagnostics_snapshot,
            transfer=transfer,
        )
        self.adapter.firmware_management = FirmwareManagement16(
            self.adapter,
            self.firmware,
            self.diagnostics,
            require_signed=config.firmware.require_signed,
        )
        self._events: asyncio.Queue[Action] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stop = asyncio.Event()
        self.outcome = RunOutcome.STOPPED
        self._loop: asyncio.AbstractEventLoop | None = None
        self._temperature_checked = 0.0
        self._hardware_error_logged: dict[str, float] = {}
        self._meter_ok: dict[int, bool] = {}
        self._at_rest = {c.id: _MeterAtRest() for c in config.connectors}
        # (connector, local transaction id) → the future of its meterStart / meterStop reading.
        self._bound_readings: dict[tuple[int, int, bool], asyncio.Future[MeterReading]] = {}
        self.started = asyncio.Event()
        # Turns of the safety loop: the systemd watchdog is fed only while this advances.
        self.safety_ticks = 0
        # Set while the safety loop may run; cleared by the bench's stall-safety-loop.
        self._safety_may_run = asyncio.Event()
        self._safety_may_run.set()
        self._safety_stall_timer: asyncio.TimerHandle | None = None
        # Smart charging: the installed profiles, the limits last applied, the profiles of
        # accepted RemoteStartTransactions waiting for their transaction (by idTag).
        self.profiles = ProfileSet(ProfileLimits(), [0, *self.charger.connectors])
        self._persisted_profiles: dict[int, dict[str, Any]] = {}
        self._persisting_profiles = asyncio.Lock()
        self.limit_decisions: dict[int, LimitDecision] = {}
        self._limits_changed = asyncio.Event()
        self._updating_limits = False
        self._next_limit_change: datetime | None = None
        self._derating_a: dict[int, float | None] = {}
        self.bringup = Bringup(self)
        self._commissioning: set[int] = set()
        self._card_capture: asyncio.Future[str] | None = None
        self._remote_start_profiles: dict[str, tuple[int | None, ChargingProfile]] = {}

    # --- lifecycle ----------------------------------------------------------------------------

    def request_stop(self, outcome: RunOutcome = RunOutcome.STOPPED) -> None:
        self.outcome = outcome
        self._stop.set()

    async def run(self) -> RunOutcome:
        self._loop = asyncio.get_running_loop()
        self.hardware.safe_state()  # whatever happened before, open first
        try:
            await self.store.open()
            await self._load_state()
            # Drive the outputs the controller derives before reading anything back, so
            # that no reading is judged against a pilot output not yet commanded.
            self.charger.start()
            self._apply(self.charger.drain())
            for connector_id in self.charger.connectors:
                await self._read_meter(connector_id)
                self._read_inputs(connector_id)
                self._apply(self.charger.drain())
            await self._recover_transactions()
            self._install_listeners()
            await self.control.start()
            self.started.set()
            try:
                async with asyncio.TaskGroup() as tasks:
                    tasks.create_task(self._wait_for_stop())
                    tasks.create_task(self._safety_loop())
                    tasks.create_task(self._forward_events())
                    tasks.create_task(self._limits_loop())
                    tasks.create_task(self.adapter.run())
                    tasks.create_task(self.firmware.run())
                    tasks.create_task(self.diagnostics.run())
                    for connector_id in self.charger.connectors:
                        tasks.create_task(self._meter_loop(connector_id))
                    if self.hardware.reader is not None:
                        tasks.create_task(self._reader_loop())
            except* _Stop:
                pass
        finally:
            self._remove_listeners()
            self.hardware.safe_state()
            for task in list(self._tasks):
                task.cancel()
            await self.control.close()
            await self.store.close()
        return self.outcome

    async def _wait_for_stop(self) -> None:
        await self._stop.wait()
        if self.outcome in (RunOutcome.STOPPED, RunOutcome.FIRMWARE_UPDATE):
            await self._stop_transactions(StopReason.REBOOT, SHUTDOWN_FLUSH_S)
        elif self.outcome is RunOutcome.POWER_LOSS:
            await self._stop_transactions(StopReason.POWER_LOSS, SHUTDOWN_FLUSH_S)
        raise _Stop

    async def _stop_transactions(self, reason: StopReason, flush_s: float) -> None:
        self.charger.stop_all(reason)
        self._apply(self.charger.drain())
        # Let the forwarder hand the StopTransactions to the adapter, then let them go out.
        deadline = time.monotonic() + flush_s
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(flush_s):
                await self._events.join()  # every event handed over, StopTransactions queued
        await self.adapter.flush(max(0.0, deadline - time.monotonic()))

    async def _load_state(self) -> None:
        for name, value in self.config.ocpp.initial_configuration().items():
            self.keys.set_initial(name, value)
        persisted = await self.store.get_all("ocpp_config")
        ignored = self.keys.load({k: str(v) for k, v in persisted.items()})
        for name in ignored:
            log.warning("ignoring stored OCPP configuration value for %s", name)
        self.configuration_changed("*")
        self._last_local_tx_id = await self.store.last_local_id()
        await self.adapter.load()
        await self.adapter.load_authorization()
        await self._load_profiles()
        for key, held in (await self.store.get_all("cable_hold")).items():
            if int(key) in self.charger.connectors and held is not None:
                self.charger.restore_hold(int(key), str(held[0]), held[1])
        availability = await self.store.get_all("availability")
        for key, operative in availability.items():
            connector_id = int(key)
            if connector_id in self.charger.connectors and operative is False:
                self.charger.set_operative(connector_id, False)
        # A firmware update under way holds the connectors again before they first report.
        await self.firmware.load()

    def _next_local_tx_id(self) -> int:
        self._last_local_tx_id += 1
        return self._last_local_tx_id

    async def _recover_transactions(self) -> None:
        """Finish the transactions a previous run left open: the daemon was killed or the
        power was cut while they ran. The meter kept counting meanwhile, so meterStop is what
        it reads now."""
        boot_id = current_boot_id()
        previous = (await self.store.get_all("daemon")).get("boot_id")
        await self.store.put("daemon", "boot_id", boot_id)
        # Same boot of the OS: only the daemon restarted (watchdog, crash, kill) → Reboot.
        # Another boot: the board lost power (or was rebooted) under the transaction.
        reason = StopReason.REBOOT if previous == boot_id else StopReason.POWER_LOSS
        for tx in await self.store.transactions():
            if tx["stopped"]:
                continue  # its StopTransaction is already queued
            connector_id = int(tx["connector_id"])
            reading = (
                self.charger.connector(connector_id).meter
                if connector_id in self.charger.connectors
                else None
            )
            if reading is not None:
                meter_stop_wh = reading.energy_import_wh
            else:
                log.error(
                    "connector %d: meter unreadable at start-up; transaction %d is closed "
                    "with its start reading",
                    connector_id,
                    tx["local_id"],
                )
                meter_stop_wh = float(tx["meter_start_wh"])
            log.warning(
                "transaction %d on connector %d was still running: stopping it (%s)",
                tx["local_id"],
                connector_id,
                reason.value,
            )
            await self.adapter.recovered_stop(
                int(tx["local_id"]),
                connector_id,
                meter_stop_wh,
                reason.value,
                self.clock.utc_now(),
            )

    async def _persist_key(self, key: str, value: str) -> None:
        await self.store.put("ocpp_config", key, value)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task failed", exc_info=task.exception())

    # --- the safety path --------------------------------------------------------------------

    def _install_listeners(self) -> None:
        loop = asyncio.get_running_loop()
        for connector_id, hw in self.hardware.connectors.items():

            def changed(cid: int = connector_id) -> None:
                # Drivers may call from any thread and from inside their own methods: only
                # schedule, never act re-entrantly.
                loop.call_soon_threadsafe(self._hardware_changed, cid)

            hw.pilot.set_listener(changed)
            if hw.rcd is not None:
                hw.rcd.set_listener(changed)

    def _remove_listeners(self) -> None:
        for hw in self.hardware.connectors.values():
            hw.pilot.set_listener(None)
            if hw.rcd is not None:
                hw.rcd.set_listener(None)

    def _hardware_changed(self, connector_id: int) -> None:
        self._read_inputs(connector_id)
        self._apply(self.charger.drain())

    def _read_inputs(self, connector_id: int) -> None:
        if connector_id in self._commissioning:
            return  # a bring-up test drives this connector: its readings are its own
        hw = self.hardware.connectors[connector_id]
        self.charger.on_pilot(connector_id, hw.pilot.read())
        if hw.rcd is not None:
            self.charger.set_fault(connector_id, Fault.RCD, hw.rcd.tripped())
        self.charger.check_contactor_feedback(connector_id, hw.contactor.feedback_closed())

    def _apply(self, actions: list[Action]) -> None:
        """Carry out the controller's actions: hardware now, everything else in order later."""
        # The safety output before any other work (the limits below evaluate profiles and
        # read the proximity input): a contactor whose last command in this batch is "open"
        # opens now, and earlier commands for it in the batch are moot.
        last_contactor = {a.connector_id: a for a in actions if isinstance(a, SetContactor)}
        opening = {cid for cid, a in last_contactor.items() if not a.closed}
        for connector_id in opening:
            self._command_contactor(last_contactor[connector_id])
        if opening:
            actions = [
                a
                for a in actions
                if not (isinstance(a, SetContactor) and a.connector_id in opening)
            ]
        if not self._updating_limits and any(
            isinstance(a, TransactionStarted | TransactionStopped | StatusChanged) for a in actions
        ):
            # A session began or ended, or an EV came, went, began or stopped drawing: the
            # limits (shares, a RemoteStart profile) are worked out before any of this reaches
            # the hardware, so that a new session's first PWM offer is already its share.
            for action in actions:
                if isinstance(action, TransactionStarted):
                    self._bind_remote_start_profile(action)
                elif isinstance(action, TransactionStopped):
                    self._end_transaction_profiles(action.connector_id)
            actions = _latest_pilot_only([*actions, *self._limit_actions()])
            self._limits_changed.set()  # the next scheduled change may have moved
        for action in actions:
            if isinstance(action, SetContactor):
                self._command_contactor(action)
            elif isinstance(action, SetPilot):
                pilot = self.hardware.connectors[action.connector_id].pilot
                if action.output is PilotOutput.PWM:
                    pilot.set_pwm(action.duty_percent)
                elif action.output is PilotOutput.STEADY:
                    pilot.set_steady()
                else:
                    pilot.set_state_f()
                self.narrate(
                    "hw",
                    "pilot",
                    {
                        "connector": action.connector_id,
                        "output": action.output.value,
                        "duty_percent": round(action.duty_percent, 2),
                    },
                )
            elif isinstance(action, SetLock):
                self._spawn(self._drive_lock(action.connector_id, action.locked))
            elif isinstance(action, RunRcdSelfTest):
                self._spawn(self._rcd_self_test(action.connector_id))
            else:
                if isinstance(action, (TransactionStarted, TransactionStopped)):
                    # A start, like a stop, is bounded by the reading once the contactor is
                    # open: a session started while the last one's EV still draws (x1's 6 s)
                    # starts where that one stops, not from before it.
                    at_rest = self._at_rest[action.connector_id].after_next_open()
                    is_start = isinstance(action, TransactionStarted)
                    self._bound_readings[(action.connector_id, action.local_id, is_start)] = at_rest
                elif isinstance(action, AuthorizationExpired):
                    self._remote_start_profiles.pop(action.id_tag, None)
                self._events.put_nowait(action)

    def _command_contactor(self, action: SetContactor) -> None:
        self.hardware.connectors[action.connector_id].contactor.set_closed(action.closed)
        self.narrate("hw", "contactor", {"connector": action.connector_id, "closed": action.closed})
        if self._at_rest[action.connector_id].contactor_commanded(action.closed):
            self._spawn(self._read_meter_at_rest(action.connector_id))

    async def _safety_loop(self) -> None:
        while True:
            if not self._safety_may_run.is_set():
                await self._safety_may_run.wait()  # bench: evsectl debug stall-safety-loop
            for connector_id in self.charger.connectors:
                self._read_inputs(connector_id)
            now = time.monotonic()
            if now - self._temperature_checked >= 1.0:
                self._temperature_checked = now
                self._check_temperatures()
            self.charger.tick()
            self._apply(self.charger.drain())
            # The hardware watchdog's edge comes from here and nowhere else: if this loop
            # hangs, the coil drops by itself, whatever the contactor's GPIO says.
            for hw in self.hardware.connectors.values():
                if hw.watchdog is not None:
                    hw.watchdog.toggle()
            self.safety_ticks += 1
            await asyncio.sleep(SAFETY_INTERVAL_S)

    def stall_safety_loop(self, seconds: float) -> None:
        """Bench: hold the safety loop for ``seconds`` (0: let it go now) while the rest of
        the daemon runs on, as an await on a hung driver would. The systemd watchdog then
        goes unfed; drivers' listeners still reach the controller meanwhile."""
        if self._safety_stall_timer is not None:
            self._safety_stall_timer.cancel()
            self._safety_stall_timer = None
        if seconds <= 0:
            log.warning("safety loop released")
            self._safety_may_run.set()
            return
        log.warning("safety loop stalled for %.1f s on request (bench)", seconds)
        self._safety_may_run.clear()
        self._safety_stall_timer = asyncio.get_running_loop().call_later(
            seconds, self._safety_may_run.set
        )

    def _check_temperatures(self) -> None:
        derating_changed = False
        for connector_config in self.config.connectors:
            sensor = self.hardware.connectors[connector_config.id].temperature
            if sensor is None:
                continue
            try:
                temperature_c = sensor.read_c()
            except Exception:
                # A sensor that cannot be read cannot vouch for the relay: as if too hot (the
                # contactor opens), rather than the daemon going down with it.
                self._log_hardware_error(f"connector {connector_config.id}: temperature")
                temperature_c = math.inf
            limit_c = connector_config.max_temperature_c
            faulted = Fault.OVERTEMP in self.charger.connector(connector_config.id).faults
            # Hysteresis: a relay at the limit must not chatter between charging and not.
            threshold = limit_c - TEMPERATURE_HYSTERESIS_C if faulted else limit_c
            self.charger.set_fault(connector_config.id, Fault.OVERTEMP, temperature_c >= threshold)
            derating_a = thermal_derating_a(temperature_c, limit_c, connector_config.max_current_a)
            if self._derating_a.get(connector_config.id) != derating_a:
                self._derating_a[connector_config.id] = derating_a
                derating_changed = True
        if derating_changed:
            self.update_limits()

    def _cable_rating_a(self, connector_id: int) -> float | None:
        proximity = self.hardware.connectors[connector_id].proximity
        if proximity is None:
            return None
        try:
            return proximity.read_cable_rating_a()
        except Exception:
            # An unreadable PP is a cable of unknown rating: nothing is offered through it.
            self._log_hardware_error(f"connector {connector_id}: proximity pilot")
            return 0.0

    def _log_hardware_error(self, what: str) -> None:
        """A failed read of a polled input, logged at most once a minute per input."""
        now = time.monotonic()
        if now - self._hardware_error_logged.get(what, -math.inf) >= HARDWARE_ERROR_LOG_S:
            self._hardware_error_logged[what] = now
            log.exception("%s could not be read", what)

    async def _rcd_self_test(self, connector_id: int) -> None:
        rcd = self.hardware.connectors[connector_id].rcd
        self_test = getattr(rcd, "self_test", None)
        try:
            passed = bool(await self_test()) if self_test is not None else True
        except Exception:
            log.exception("connector %d: RCD self-test could not run", connector_id)
            passed = False
        if not passed:
            log.error("connector %d: RCD failed its self-test: no energy", connector_id)
        self.charger.rcd_self_tested(connector_id, passed)
        self._apply(self.charger.drain())

    async def _drive_lock(self, connector_id: int, locked: bool) -> None:
        lock = self.hardware.connectors[connector_id].lock
        if lock is None:
            return
        ok = await (lock.lock() if locked else lock.unlock())
        self.charger.set_fault(connector_id, Fault.LOCK, not ok)
        if ok and not locked:
            self.charger.on_unlocked(connector_id)
        elif ok:
            self.charger.on_locked(connector_id)
        elif locked:
            self.charger.on_lock_failed(connector_id)
        self._apply(self.charger.drain())

    # --- meters ---------------------------------------------------------------------------

    async def _read_meter(self, connector_id: int) -> MeterReading | None:
        """Read one meter; a failure or an implausible value raises the meter fault (the
        last good reading stays, but nothing is ever reported as 0)."""
        meter = self.hardware.connectors[connector_id].meter
        connector = self.charger.connector(connector_id)
        at_rest = self._at_rest[connector_id]
        generation = at_rest.generation
        try:
            # Not asyncio.wait_for: on Python 3.11 it drops a cancellation that arrives as the
            # reading does, and the meter loop would then keep a stop or a Reset waiting.
            async with asyncio.timeout(METER_TIMEOUT_S):
                reading = await meter.read()
            previous = connector.meter
            if not math.isfinite(reading.energy_import_wh) or not math.isfinite(reading.power_w):
                raise MeterError("meter returned a non-finite value")
            if previous is not None and reading.energy_import_wh < previous.energy_import_wh:
                raise MeterError(
                    f"energy register went backwards ({previous.energy_import_wh} → "
                    f"{reading.energy_import_wh} Wh)"
                )
        except (MeterError, TimeoutError) as exc:
            if self._meter_ok.get(connector_id, True):
                log.error(
                    "connector %d: meter failure: %s",
                    connector_id,
                    exc or "timeout",
                    extra=journal_fields(connector=connector_id),
                )
            self._meter_ok[connector_id] = False
            self.charger.set_fault(connector_id, Fault.METER, True)
            self._apply(self.charger.drain())
            return None
        at_rest.reading(reading, generation)
        self.charger.on_meter(connector_id, reading)
        self._apply(self.charger.drain())
        if not self._meter_ok.get(connector_id, True):
            log.info(
                "connector %d: meter answers again",
                connector_id,
                extra=journal_fields(connector=connector_id),
            )
            self.charger.set_fault(connector_id, Fault.METER, False)
            self._apply(self.charger.drain())
        self._meter_ok[connector_id] = True
        return reading

    async def _meter_loop(self, connector_id: int) -> None:
        while True:
            await asyncio.sleep(METER_INTERVAL_S)
            await self._read_meter(connector_id)

    async def _read_meter_at_rest(self, connector_id: int) -> None:
        await self._read_meter(connector_id)

    async def _bounding_reading(
        self, event: TransactionStarted | TransactionStopped
    ) -> MeterReading | None:
        """The reading at rest that starts or ends ``event``'s transaction (see _MeterAtRest).

        If none comes (the meter failed, or the contactor never opened: welded contacts are
        commanded open all the same), the latest good reading is used, and said so in the log.
        """
        starting = isinstance(event, TransactionStarted)
        at_rest = self._bound_readings.pop((event.connector_id, event.local_id, starting))
        # A stop may wait for the EV to stop drawing under x1 before the contactor opens.
        wait_s = METER_TIMEOUT_S + (0.0 if starting else X1_OPEN_UNDER_LOAD_S) + 1.0
        try:
            async with asyncio.timeout(wait_s):
                return await asyncio.shield(at_rest)
        except TimeoutError:
            log.warning(
                "connector %d: no meter reading at rest for the %s of transaction %d within "
                "%.1f s: using the latest reading",
                event.connector_id,
                "start" if starting else "stop",
                event.local_id,
                wait_s,
            )
            return self.charger.connector(event.connector_id).meter

    # --- smart charging and limits ------------------------------------------------------------

    def _profile_limits(self) -> ProfileLimits:
        keys = self.keys
        units = {
            {"Current": RateUnit.AMPS, "Power": RateUnit.WATTS}[member]
            for member in keys.get("ChargingScheduleAllowedChargingRateUnit").split(",")
            if member
        }
        return ProfileLimits(
            max_stack_level=keys.get_int("ChargeProfileMaxStackLevel"),
            max_periods=keys.get_int("ChargingScheduleMaxPeriods"),
            max_installed=keys.get_int("MaxChargingProfilesInstalled"),
            allowed_units=frozenset(units),
        )

    def _transaction_context(self, connector_id: int) -> tuple[datetime | None, int | None]:
        """When the connector's transaction started and its CSMS transactionId, if any."""
        tx = self.charger.transaction_on(connector_id) if connector_id else None
        if tx is None:
            return None, None
        return tx.started_at, self.adapter.csms_transaction_id(tx.local_id)

    def _phases(self, connector_id: int) -> int:
        if connector_id == 0:
            return max(c.phases for c in self.config.connectors)
        return self.charger.connector(connector_id).phases

    def update_limits(self) -> datetime | None:
        """Work out every connector's offered current now and apply it; returns when a
        charging profile next changes a limit (None: no change is scheduled)."""
        if self._updating_limits:
            return None
        self._apply(self._limit_actions())
        return self._next_limit_change

    def _limit_actions(self) -> list[Action]:
        """Set every connector's limit in the controller; the actions that follow."""
        self._updating_limits = True
        try:
            self._next_limit_change = self._set_limits()
            return self.charger.drain()
        finally:
            self._updating_limits = False

    def _set_limits(self) -> datetime | None:
        now = self.clock.utc_now()
        voltage = self.config.station.nominal_voltage_v
        next_changes: list[datetime] = []
        cp_max_a, change = limit_at(
            self.profiles,
            0,
            now,
            nominal_voltage_v=voltage,
            connector_phases=self._phases(0),
            transaction_start=None,
            transaction_id=None,
        )
        if change is not None:
            next_changes.append(change)
        inputs: dict[int, ConnectorLimits] = {}
        for connector_id, connector in self.charger.connectors.items():
            started_at, transaction_id = self._transaction_context(connector_id)
            ocpp_a, change = limit_at(
                self.profiles,
                connector_id,
                now,
                nominal_voltage_v=voltage,
                connector_phases=connector.phases,
                transaction_start=started_at,
                transaction_id=transaction_id,
            )
            if change is not None:
                next_changes.append(change)
            tx = connector.tx
            inputs[connector_id] = ConnectorLimits(
                rating_a=connector.max_current_a,
                # A socket's cable says what it can carry (PP); re-read at every update, and
                # an update follows every plug-in (the status changes).
                cable_a=self._cable_rating_a(connector_id),
                ocpp_a=ocpp_a,
                derating_a=self._derating_a.get(connector_id),
                charging=tx is not None and connector.ev_present,
                started_order=tx.local_id if tx is not None else 0,
            )
        decisions = offered_currents(
            inputs, charge_point_max_a=cp_max_a, site_max_a=self.config.site.max_current_a
        )
        self.limit_decisions = decisions
        # Lower limits first: a share moving from one connector to another never adds up to
        # more than the budget, even between two commands.
        changes = sorted(
            (
                (decision.limit_a - self.charger.connector(cid).limit_a, cid, decision.limit_a)
                for cid, decision in decisions.items()
                if self.charger.connector(cid).limit_a != decision.limit_a
            ),
        )
        for _delta, connector_id, limit_a in changes:
            self.charger.set_limit(connector_id, limit_a)
        return min(next_changes, default=None)

    def limits_changed(self) -> None:
        """Something the limits depend on changed: re-evaluate now (and re-plan the timer)."""
        self.update_limits()
        self._limits_changed.set()

    async def _limits_loop(self) -> None:
        """Applies the limits when a charging profile's period begins or ends. Whoever sets
        ``_limits_changed`` has just applied them: then only the timer is re-planned."""
        next_change = self.update_limits()
        while True:
            self._limits_changed.clear()
            # Re-checked at least every minute: the wall clock may be stepped (NTP on a board
            # without an RTC), which a monotonic sleep would not notice.
            wait_s = LIMITS_RECHECK_S
            if next_change is not None:
                wait_s = min(wait_s, max(0.0, (next_change - self.clock.utc_now()).total_seconds()))
            try:
                async with asyncio.timeout(wait_s):
                    await self._limits_changed.wait()
            except TimeoutError:
                next_change = self.update_limits()
            else:
                next_change = self._next_limit_change

    async def _load_profiles(self) -> None:
        self.profiles = ProfileSet(self._profile_limits(), [0, *self.charger.connectors])
        stored = await self.store.get_all("charging_profiles")
        restored: list[InstalledProfile] = []
        for key, entry in stored.items():
            try:
                profile = profile_from_ocpp(entry["profile"])
                restored.append(InstalledProfile(int(entry["connector_id"]), profile))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("dropping stored charging profile %s: %s", key, exc)
        # TxProfiles belong to transactions that a restart has ended.
        self.profiles.load(p for p in restored if p.profile.purpose is not ProfilePurpose.TX)
        self._persisted_profiles = {int(k): v for k, v in stored.items()}
        await self._persist_profiles()

    async def _persist_profiles(self) -> None:
        """Make the store hold exactly the installed profiles (FULL durability: rare writes,
        and only of what changed: a CSMS may replace one profile every minute)."""
        async with self._persisting_profiles:  # one at a time, each from the set as it is now
            await self._persist_profiles_now()

    async def _persist_profiles_now(self) -> None:
        installed = {
            p.profile.profile_id: {
                "connector_id": p.connector_id,
                "profile": profile_to_ocpp(p.profile),
            }
            for p in self.profiles.installed()
        }
        for profile_id in self._persisted_profiles.keys() - installed.keys():
            await self.store.delete("charging_profiles", str(profile_id))
            del self._persisted_profiles[profile_id]
        for profile_id, entry in installed.items():
            if self._persisted_profiles.get(profile_id) != entry:
                await self.store.put("charging_profiles", str(profile_id), entry)
                self._persisted_profiles[profile_id] = entry

    def _bind_remote_start_profile(self, event: TransactionStarted) -> None:
        if not event.remote:
            return
        pending = self._remote_start_profiles.pop(event.id_tag, None)
        if pending is None:
            return
        connector_id, profile = pending
        if connector_id not in (None, event.connector_id):
            return
        reason = self.profiles.install_remote_start(event.connector_id, profile, None)
        if reason is not None:
            log.warning("RemoteStartTransaction charging profile not applied: %s", reason)
            return
        self._spawn(self._persist_profiles())

    def _end_transaction_profiles(self, connector_id: int) -> None:
        revision = self.profiles.revision
        self.profiles.end_transaction(connector_id)
        if self.profiles.revision != revision:
            self._spawn(self._persist_profiles())

    # The ChargerPort side of smart charging, for the OCPP adapter.

    def remote_start_profile(
        self, connector_id: int | None, id_tag: str, profile: ChargingProfile | None
    ) -> None:
        """The chargingProfile of a RemoteStartTransaction (None: it had none): it applies
        to the transaction that the remote start begins."""
        if profile is None:
            self._remote_start_profiles.pop(id_tag, None)
        else:
            self._remote_start_profiles[id_tag] = (connector_id, profile)

    async def set_charging_profile(self, connector_id: int, profile: ChargingProfile) -> str | None:
        """SetChargingProfile: None if Accepted, else why it is Rejected. An unknown
        connector raises ProfileError (PropertyConstraintViolation)."""
        _started_at, transaction_id = self._transaction_context(connector_id)
        if connector_id and self.charger.transaction_on(connector_id) is not None:
            # A transaction whose StartTransaction is still queued has no CSMS id yet.
            transaction_id = transaction_id if transaction_id is not None else -1
        reason = self.profiles.install(connector_id, profile, transaction_id=transaction_id)
        if reason is None:
            self.limits_changed()
            await self._persist_profiles()
        return reason

    async def clear_charging_profile(
        self,
        profile_id: int | None,
        connector_id: int | None,
        purpose: ProfilePurpose | None,
        stack_level: int | None,
    ) -> bool:
        cleared = self.profiles.clear(
            profile_id=profile_id,
            connector_id=connector_id,
            purpose=purpose,
            stack_level=stack_level,
        )
        if cleared:
            self.limits_changed()
            await self._persist_profiles()
        return cleared

    def composite_schedule(
        self, connector_id: int, duration_s: int, unit: RateUnit | None
    ) -> tuple[datetime, RateUnit, list[CompositePeriod]] | None:
        """GetCompositeSchedule: from now for ``duration_s``, or None for an unknown
        connector (Rejected). Unconstrained time is reported at the connector's rating
        (connector 0: the site limit, or the sum of the ratings)."""
        if connector_id != 0 and connector_id not in self.charger.connectors:
            return None
        start = self.clock.utc_now().replace(microsecond=0)
        unit = unit or RateUnit.AMPS
        started_at, transaction_id = self._transaction_context(connector_id)
        phases = self._phases(connector_id)
        voltage = self.config.station.nominal_voltage_v
        periods = composite_schedule(
            self.profiles,
            connector_id,
            start,
            duration_s,
            unit=unit,
            nominal_voltage_v=voltage,
            connector_phases=phases,
            transaction_start=started_at,
            transaction_id=transaction_id,
        )
        if connector_id == 0:
            ceiling_a = sum(c.max_current_a for c in self.config.connectors)
            if self.config.site.max_current_a is not None:
                ceiling_a = min(ceiling_a, self.config.site.max_current_a)
        else:
            ceiling_a = self.charger.connector(connector_id).max_current_a
        ceiling = ceiling_a if unit is RateUnit.AMPS else ceiling_a * voltage * phases
        capped = [
            CompositePeriod(p.start_period_s, min(p.limit, ceiling), p.number_phases)
            for p in periods
        ]
        merged: list[CompositePeriod] = []
        for period in capped:
            if merged and (merged[-1].limit, merged[-1].number_phases) == (
                period.limit,
                period.number_phases,
            ):
                continue
            merged.append(period)
        return start, unit, merged

    # --- OCPP-facing events -----------------------------------------------------------------

    async def _forward_events(self) -> None:
        while True:
            event = await self._events.get()
            try:
                await self._forward(event)
            finally:
                self._events.task_done()

    async def _forward(self, event: Action) -> None:
        if isinstance(event, StatusChanged):
            log.info(
                "connector %d: %s%s",
                event.connector_id,
                event.status.value,
                "" if event.error_code is ErrorCode.NO_ERROR else f" ({event.error_code.value})",
                extra=journal_fields(connector=event.connector_id),
            )
            self.narrate(
                "status",
                event.status.value,
                {"connector": event.connector_id, "error": event.error_code.value},
            )
            self.adapter.status_changed(event)
        elif isinstance(event, TransactionStarted):
            reading = await self._bounding_reading(event)
            energy = self._register_wh(event.connector_id, reading)
            if reading is not None:
                self.charger.set_meter_start(event.connector_id, event.local_id, energy)
                self._apply(self.charger.drain())
            log.info(
                "connector %d: transaction %d started for %s, meter %.0f Wh",
                event.connector_id,
                event.local_id,
                IdTag(event.id_tag),
                energy,
                extra=journal_fields(connector=event.connector_id, transaction_id=event.local_id),
            )
            self.narrate(
                "tx",
                "started",
                {
                    "connector": event.connector_id,
                    "id_tag": event.id_tag,
                    "meter_start_wh": energy,
                },
            )
            await self.adapter.transaction_started(event, energy, reading)
        elif isinstance(event, TransactionStopped):
            reading = await self._bounding_reading(event)
            energy = self._register_wh(event.connector_id, reading)
            log.info(
                "connector %d: transaction %d stopped (%s), meter %.0f Wh",
                event.connector_id,
                event.local_id,
                event.reason.value,
                energy,
                extra=journal_fields(connector=event.connector_id, transaction_id=event.local_id),
            )
            self.narrate(
                "tx",
                "stopped",
                {
                    "connector": event.connector_id,
                    "reason": event.reason.value,
                    "meter_stop_wh": energy,
                },
            )
            await self.adapter.transaction_stopped(event, energy, reading)
        elif isinstance(event, CableHoldChanged):
            key = str(event.connector_id)
            if event.held_for is None:
                await self.store.delete("cable_hold", key)
            else:
                await self.store.put("cable_hold", key, list(event.held_for))
        elif isinstance(event, AuthorizationExpired):
            log.info(
                "connector %d: authorization of %s expired (ConnectionTimeOut)",
                event.connector_id,
                IdTag(event.id_tag),
                extra=journal_fields(connector=event.connector_id),
            )
        elif isinstance(event, AvailabilityChanged):
            log.info(
                "connector %d: now %s",
                event.connector_id,
                "operative" if event.operative else "inoperative",
                extra=journal_fields(connector=event.connector_id),
            )

    @staticmethod
    def _register_wh(connector_id: int, reading: MeterReading | None) -> float:
        if reading is None:
            # Cannot happen: a connector whose meter never answered is faulted and starts no
            # transaction. Should it ever, say so loudly rather than quietly report 0 Wh.
            log.error("connector %d: no meter reading for a transaction message", connector_id)
            return 0.0
        return reading.energy_import_wh

    def narrate(self, kind: str, what: str, data: dict[str, Any]) -> None:
        if self._narrator is not None:
            self._narrator(kind, what, data)

    # --- cards ------------------------------------------------------------------------------

    async def _reader_loop(self) -> None:
        reader = self.hardware.reader
        assert reader is not None
        while True:
            read = asyncio.ensure_future(reader.read_card())
            try:
                if self.charger.reader_fault:
                    # A reader that raised must prove itself for a second before the fault
                    # clears; a dead one raises again at once.
                    done, _ = await asyncio.wait({read}, timeout=1.0)
                    if not done:
                        self.charger.set_fault(0, Fault.READER, False)
                        self._apply(self.charger.drain())
                tag = await read
            except ReaderError as exc:
                if not self.charger.reader_fault:
                    log.error("card reader failure: %s", exc)
                    self.charger.set_fault(0, Fault.READER, True)
                    self._apply(self.charger.drain())
                await asyncio.sleep(1.0)
                continue
            finally:
                if not read.done():
                    read.cancel()
            capture = self._card_capture
            if capture is not None and not capture.done():
                capture.set_result(tag)  # evsectl bringup rfid: shown, not authorized
                continue
            self.present_card(tag)

    def capture_next_card(self, future: asyncio.Future[str] | None) -> None:
        """Hand the next card read to ``future`` instead of authorizing it (None: stop)."""
        self._card_capture = future

    def set_commissioning(self, connector_id: int, on: bool) -> bool:
        """Hand a connector to a bring-up test (True if it was idle) or take it back."""
        if not self.charger.set_commissioning(connector_id, on):
            return False
        if on:
            self._commissioning.add(connector_id)
        else:
            self._commissioning.discard(connector_id)
            self._read_inputs(connector_id)
        self._apply(self.charger.drain())
        return True

    def present_card(self, id_tag: str) -> None:
        self.narrate("card", id_tag, {})
        decision = self.charger.on_card(id_tag)
        self._apply(self.charger.drain())
        if decision is CardDecision.AUTHORIZE:
            self._spawn(self._authorize_card(id_tag))

    async def _authorize_card(self, id_tag: str) -> None:
        info = self.authorizer.pre_authorized(id_tag) or await self.adapter.authorize(id_tag)
        if info is None:
            info = self.authorizer.offline_decision(id_tag)
        self.charger.on_authorized(id_tag, info.accepted, info.parent_id_tag)
        self._apply(self.charger.drain())

    # --- ChargerPort (what the OCPP adapter may ask) -----------------------------------------

    @property
    def connector_ids(self) -> list[int]:
        return list(self.charger.connectors)

    def views(self) -> list[ConnectorView]:
        return self.charger.views()

    def view(self, connector_id: int) -> ConnectorView:
        return self.charger.connector(connector_id).view()

    def current_status(self, connector_id: int) -> StatusChanged:
        return self.charger.current_status(connector_id)

    def can_remote_start(self, connector_id: int | None) -> bool:
        return self.charger.connector_for_remote_start(connector_id) is not None

    def remote_start(
        self, connector_id: int | None, id_tag: str, parent_id_tag: str | None = None
    ) -> bool:
        target = self.charger.connector_for_remote_start(connector_id)
        if target is None:
            return False
        started = self.charger.remote_start(target.connector_id, id_tag, parent_id_tag)
        self._apply(self.charger.drain())
        return started

    def remote_stop(self, connector_id: int) -> bool:
        stopped = self.charger.stop(connector_id, StopReason.REMOTE)
        self._apply(self.charger.drain())
        return stopped

    async def unlock(self, connector_id: int) -> UnlockResult:
        lock = self.hardware.connectors[connector_id].lock
        if lock is None:
            return UnlockResult.NOT_SUPPORTED  # fixed cable (errata 3.85)
        # §5.18: a running transaction is stopped first.
        self.charger.stop(connector_id, StopReason.UNLOCK_COMMAND)
        self._apply(self.charger.drain())
        # The socket stays live until the contactor is open (an EV still drawing gets up to
        # 6 s under x1) and its auxiliary contact agrees (a weld): never unlock before.
        try:
            async with asyncio.timeout(UNLOCK_WAIT_FOR_OPEN_S):
                # Polled at the safety loop's pace: the auxiliary contact is an input read
                # by polling, not an event.
                while self._socket_live(connector_id):  # noqa: ASYNC110
                    await asyncio.sleep(SAFETY_INTERVAL_S)
        except TimeoutError:
            log.error("connector %d: not unlocked: the contactor is still closed", connector_id)
            return UnlockResult.FAILED
        if not await lock.unlock():
            return UnlockResult.FAILED
        self.charger.on_unlocked(connector_id)
        self._apply(self.charger.drain())
        return UnlockResult.UNLOCKED

    def _socket_live(self, connector_id: int) -> bool:
        if self.charger.connector(connector_id).contactor_closed:
            return True
        return self.hardware.connectors[connector_id].contactor.feedback_closed() is True

    async def change_availability(self, connector_id: int, operative: bool) -> AvailabilityResult:
        applied = self.charger.set_operative(connector_id, operative)
        self._apply(self.charger.drain())
        targets = self.connector_ids if connector_id == 0 else [connector_id]
        for target in targets:
            # The target is persisted at once, so a scheduled change survives a restart.
            await self.store.put("availability", str(target), operative)
        return AvailabilityResult.ACCEPTED if applied else AvailabilityResult.SCHEDULED

    def request_reset(self, kind: ResetKind) -> None:
        self._spawn(self._reset(kind))

    async def _reset(self, kind: ResetKind) -> None:
        log.warning("%s reset requested by the CSMS", kind.value)
        if kind is ResetKind.SOFT:
            await self._stop_transactions(StopReason.SOFT_RESET, SOFT_RESET_FLUSH_S)
            self.request_stop(RunOutcome.SOFT_RESET)
        else:
            await self._stop_transactions(StopReason.HARD_RESET, HARD_RESET_FLUSH_S)
            self.request_stop(RunOutcome.HARD_RESET)

    def transaction_rejected(self, connector_id: int, local_id: int) -> None:
        self.charger.transaction_rejected(connector_id, local_id)
        self._apply(self.charger.drain())

    def set_parent_id_tag(self, connector_id: int, local_id: int, parent: str | None) -> None:
        self.charger.set_parent_id_tag(connector_id, local_id, parent)

    def clock_set(self) -> None:
        self.limits_changed()

    def configuration_changed(self, key: str) -> None:
        keys = self.keys
        settings = self.charger.settings
        settings.connection_timeout_s = float(keys.get_int("ConnectionTimeOut"))
        settings.stop_tx_on_ev_side_disconnect = keys.get_bool("StopTransactionOnEVSideDisconnect")
        settings.unlock_on_ev_side_disconnect = keys.get_bool("UnlockConnectorOnEVSideDisconnect")
        settings.stop_tx_on_invalid_id = keys.get_bool("StopTransactionOnInvalidId")
        settings.max_energy_on_invalid_id_wh = float(keys.get_int("MaxEnergyOnInvalidId"))
        auth = self.authorizer.settings
        auth.cache_enabled = keys.get_bool("AuthorizationCacheEnabled")
        auth.local_pre_authorize = keys.get_bool("LocalPreAuthorize")
        auth.local_authorize_offline = keys.get_bool("LocalAuthorizeOffline")
        auth.allow_offline_tx_for_unknown_id = keys.get_bool("AllowOfflineTxForUnknownId")
        auth.local_auth_list_enabled = keys.get_bool("LocalAuthListEnabled")
        auth.local_auth_list_max_length = keys.get_int("LocalAuthListMaxLength")
        auth.send_local_list_max_length = keys.get_int("SendLocalListMaxLength")

    # --- firmware updates and diagnostics (FirmwarePort) -----------------------------------

    def set_maintenance(self, held: bool) -> None:
        self.charger.set_maintenance(held)
        if self.started.is_set():
            # (While loading, run() drives the outputs once everything is loaded.)
            self._apply(self.charger.drain())

    def ready_to_install(self) -> bool:
        if self._stop.is_set():
            return False  # the stop ends the transactions; the next run installs
        return all(view.transaction_local_id is None for view in self.charger.views())

    def restart_for_firmware(self) -> None:
        self.request_stop(RunOutcome.FIRMWARE_UPDATE)

    async def wait_registered(self) -> None:
        await self.adapter.wait_online()

    async def _diagnostics_snapshot(
        self, start: datetime | None, stop: datetime | None
    ) -> dict[str, Any]:
        """The charger's state for GetDiagnostics (the archive's JSON members)."""
        low = start.timestamp() if start is not None else float("-inf")
        high = stop.timestamp() if stop is not None else float("inf")
        events = [
            {"at": datetime.fromtimestamp(at, UTC).isoformat(), "kind": kind, "detail": detail}
            for at, kind, detail in await self.store.events()
            if low <= at <= high
        ]
        keys = [
            {"key": entry.key, "readonly": entry.readonly, "value": entry.value}
            for entry in self.keys.get_configuration(None)[0]
        ]
        return {
            "status.json": self.status(),
            "ocpp-configuration.json": keys,
            "events.json": events,
            "firmware.json": self.firmware.status_info(),
        }

    # --- the control socket -----------------------------------------------------------------

    async def handle_control(self, request: dict[str, Any]) -> Any:
        command = request["cmd"]
        if command == "status":
            return self.status()
        if command == "bringup":
            connector = request.get("connector")
            wait_s = request.get("wait_s")
            try:
                return await self.bringup.run(
                    str(request["part"]),
                    int(connector) if connector is not None else None,
                    float(wait_s) if wait_s is not None else None,
                )
            except BringupRefused as exc:
                raise ControlError(str(exc)) from None
        if command == "swipe":
            if self.hardware.bench_reader is None:
                raise ControlError('swipe needs the mock card reader ([rfid] driver = "mock")')
            self.hardware.bench_reader.swipe(str(request["tag"]))
            return None
        if command == "debug":  # only stall-safety-loop so far
            if not self.config.is_bench:
                raise ControlError("debug is a bench command: this daemon runs real drivers")
            self.stall_safety_loop(float(request["seconds"]))
            return None
        connector_id = int(request["connector"])
        if command in ("fault", "clear") and request["kind"] == "reader":
            if self.hardware.bench_reader is None:
                raise ControlError("no mock card reader to fault")
            reader = self.hardware.bench_reader
            (reader.inject_fault if command == "fault" else reader.clear_fault)("reader")
            return None
        hw = self.hardware.connectors.get(connector_id)
        if hw is None:
            raise ControlError(f"no connector {connector_id}")
        bench = hw.bench
        if bench is None:
            drivers = ", ".join(f"{part}={name}" for part, name in hw.drivers.items())
            raise ControlError(
                f"{command} is a bench command: connector {connector_id} "
                f"runs real drivers ({drivers})"
            )
        try:
            if command == "plug":
                bench.plug()
            elif command == "unplug":
                bench.unplug()
            elif command == "ev":
                state = request["state"]
                bench.set_ev_state(None if state == "auto" else CpState(state))
            elif command == "fault":
                bench.inject_fault(str(request["kind"]))
            elif command == "clear":
                bench.clear_fault(str(request["kind"]))
            else:
                raise ControlError(f"unknown command {command!r}")
        except ValueError as exc:
            raise ControlError(str(exc)) from None
        return None

    def _limits_status(self, connector_id: int) -> dict[str, Any]:
        """Each limit that applies (amperes per phase) and the one that binds."""
        decision = self.limit_decisions.get(connector_id)
        if decision is None:
            return {"limit_a": None, "limit_binding": None, "limits_a": {}}
        return {
            "limit_a": round(decision.limit_a, 2),
            "limit_binding": decision.binding,
            "limits_a": {name: round(value, 2) for name, value in decision.limits.items()},
        }

    def status(self) -> dict[str, Any]:
        connectors = []
        for view in self.charger.views():
            hw = self.hardware.connectors[view.connector_id]
            meter = view.meter
            local_id = view.transaction_local_id
            connectors.append(
                {
                    "id": view.connector_id,
                    "status": view.status.value,
                    "error_code": view.error_code.value,
                    "info": view.info,
                    "pilot_state": view.cp_state.value,
                    "pilot_output": view.pilot_output.value,
                    "duty_percent": round(view.duty_percent, 4),
                    "contactor": "closed" if view.contactor_closed else "open",
                    "contactor_feedback": hw.contactor.feedback_closed(),
                    "offered_current_a": round(view.offered_current_a, 2),
                    "max_current_a": view.max_current_a,
                    **self._limits_status(view.connector_id),
                    "operative": view.operative,
                    "maintenance": view.maintenance,
                    "scheduled_operative": view.scheduled_operative,
                    "faults": list(view.faults),
                    "transaction": None
                    if local_id is None
                    else {
                        "local_id": local_id,
                        "id": self.adapter.csms_transaction_id(local_id),
                        "id_tag": view.transaction_id_tag,
                    },
                    "authorized_id_tag": view.authorized_id_tag,
                    "energy_wh": round(meter.energy_import_wh, 1) if meter else None,
                    "power_w": round(meter.power_w, 1) if meter else None,
                    "meter_ok": self._meter_ok.get(view.connector_id, False),
                }
            )
        return {
            "station": self.config.station.id,
            "bench": self.config.is_bench,
            "ocpp": self.adapter.status_info(),
            "reader_fault": self.charger.reader_fault,
            "connectors": connectors,
            "firmware": self.firmware.status_info(),
            "diagnostics": {
                "uploading": self.diagnostics.busy,
                "status": self.diagnostics.last_status,
                "file": self.diagnostics.last_file,
            },
        }
