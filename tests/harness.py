"""A bench for integration tests: the real daemon (in-process) on mock drivers, talking to a
real CSMS built on ``ocpp`` over a websocket on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from drivers.mock import MockConnectorHardware
from evse_daemon.app import App, RunOutcome
from evse_daemon.bench.csms import BenchCsms, ReceivedMessage
from evse_daemon.clock import Clock, SystemClock
from evse_daemon.config import Config, load_config
from evse_daemon.control import request_async
from evse_daemon.hardware import Hardware, build_hardware


def config_value(result: Any, key: str) -> str | None:
    """The value a GetConfiguration.conf reports for ``key`` (None if it is not listed)."""
    for entry in result.configuration_key or []:
        if entry["key"] == key:
            value = entry.get("value")
            return None if value is None else str(value)
    return None


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return '"' + str(value) + '"'


def write_config(
    directory: Path,
    csms_url: str,
    *,
    connectors: int = 1,
    lock: bool = True,
    ocpp_config: Mapping[str, Any] | None = None,
    max_current_a: float = 32,
    phases: int = 3,
    station_id: str = "CP-TEST-1",
    extra_ocpp: Mapping[str, Any] | None = None,
    site_max_a: float | None = None,
    extra_toml: str = "",
) -> Path:
    """A bench config in ``directory``; reconnects are fast so tests do not wait."""
    keys = {"HeartbeatInterval": 300, "MeterValueSampleInterval": 0, "ConnectionTimeOut": 60}
    keys.update(ocpp_config or {})
    ocpp_extra = {"reconnect_min_s": 0.05, "reconnect_max_s": 0.5, "message_timeout_s": 5}
    ocpp_extra.update(extra_ocpp or {})
    lines = [
        "[station]",
        f'id = "{station_id}"',
        'vendor = "TestVendor"',
        'model = "TestModel"',
        "[ocpp]",
        f'csms_url = "{csms_url}"',
        *(f"{k} = {_toml_value(v)}" for k, v in ocpp_extra.items()),
        "[ocpp.config]",
        *(f"{k} = {_toml_value(v)}" for k, v in keys.items()),
        "[storage]",
        f'state_dir = "{directory}/state"',
        "[control]",
        f'socket = "{directory}/control.sock"',
        "[logging]",
        'level = "DEBUG"',
        "[rfid]",
        'driver = "mock"',
    ]
    if site_max_a is not None:
        lines += ["[site]", f"max_current_a = {site_max_a}"]
    if extra_toml:
        lines.append(extra_toml.strip())  # further tables, e.g. [firmware]
    for connector_id in range(1, connectors + 1):
        lines += [
            "[[connector]]",
            f"id = {connector_id}",
            f"max_current_a = {max_current_a}",
            f"phases = {phases}",
            'pilot = { driver = "mock" }',
            'contactor = { driver = "mock" }',
            'meter = { driver = "mock" }',
        ]
        if lock:
            lines.append('lock = { driver = "mock" }')
    path = directory / "evse.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Bench:
    csms: BenchCsms
    config: Config
    hardware: Hardware
    app: App
    task: asyncio.Task[RunOutcome]
    directory: Path
    outcomes: list[RunOutcome] = field(default_factory=list)
    # Each run of the daemon gets a new clock from this (None: the App's own SystemClock).
    clock_factory: Callable[[], Clock] | None = None

    def new_app(self) -> App:
        clock = None if self.clock_factory is None else self.clock_factory()
        return App(self.config, self.hardware, clock=clock)

    def ev(self, connector_id: int = 1) -> MockConnectorHardware:
        bench = self.hardware.connectors[connector_id].bench
        assert bench is not None
        return bench

    def swipe(self, tag: str) -> None:
        assert self.hardware.bench_reader is not None
        self.hardware.bench_reader.swipe(tag)

    async def wait_status(
        self, connector_id: int, status: str, *, after: int = 0, timeout_s: float = 10.0
    ) -> ReceivedMessage:
        return await self.csms.wait_for(
            "StatusNotification",
            lambda p: p["connectorId"] == connector_id and p["status"] == status,
            timeout_s=timeout_s,
            after=after,
        )

    def statuses(self, connector_id: int, *, after: int = 0) -> list[str]:
        return [
            m.payload["status"]
            for m in self.csms.received[after:]
            if m.action == "StatusNotification" and m.payload["connectorId"] == connector_id
        ]

    async def barrier(self) -> None:
        """Have the charger send a Heartbeat (TriggerMessage) and wait for it.

        Whatever the charger had already decided to send before the trigger arrived reaches
        the CSMS first, so checking for the absence of a message after this is not a race.
        """
        mark = self.csms.mark()
        result = await self.csms.call(call.TriggerMessage(requested_message="Heartbeat"))
        assert result.status == "Accepted"
        await self.csms.wait_for("Heartbeat", after=mark)

    async def go_offline(self) -> None:
        """The CSMS drops the link and refuses reconnects until ``go_online``."""
        self.csms.accepting = False
        await self.csms.drop_connection()
        await self.wait_until(lambda: not self.app.adapter.connected, what="charger offline")

    async def go_online(self) -> int:
        """Let the charger reconnect; returns the mark from which its messages are new."""
        mark = self.csms.mark()
        connections = self.csms.connections
        self.csms.accepting = True
        await self.csms.wait_connected(after=connections)
        return mark

    def actions(self, after: int) -> list[str]:
        """The actions the CSMS received from index ``after`` on."""
        return [m.action for m in self.csms.received[after:]]

    async def wait_until(
        self, predicate: Callable[[], bool], timeout_s: float = 10.0, what: str = "condition"
    ) -> None:
        deadline = time.monotonic() + timeout_s
        while not predicate():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            await asyncio.sleep(0.01)

    async def booted(self) -> None:
        """Wait until the daemon is registered and has reported every connector."""
        await self.csms.wait_for("BootNotification")
        for connector_id in range(0, len(self.config.connectors) + 1):
            await self.csms.wait_for(
                "StatusNotification", lambda p, c=connector_id: p["connectorId"] == c
            )

    async def start_charging(self, connector_id: int = 1, tag: str = "TAG-OK") -> int:
        """Plug in, swipe, and wait for Charging; returns the CSMS transactionId."""
        mark = self.csms.mark()
        self.ev(connector_id).plug()
        self.swipe(tag)
        await self.csms.wait_for("StartTransaction", after=mark)
        await self.wait_status(connector_id, "Charging", after=mark)
        return max(t for t, g in self.csms.transaction_ids.items() if g == tag)

    async def restart_app(self) -> None:
        """Stop this run of the daemon and start a new one on the same drivers."""
        self.app.request_stop()
        self.outcomes.append(await asyncio.wait_for(self.task, 15))
        self.app = self.new_app()
        self.task = asyncio.create_task(self.app.run())

    async def follow_reset(self) -> RunOutcome:
        """After a Reset: wait for the run to end and start the next one, as `run` does."""
        outcome = await asyncio.wait_for(self.task, 20)
        self.outcomes.append(outcome)
        self.app = self.new_app()
        self.task = asyncio.create_task(self.app.run())
        return outcome


@contextlib.asynccontextmanager
async def bench(directory: Path, **kwargs: Any) -> AsyncIterator[Bench]:
    """Start a CSMS and the daemon; both are stopped afterwards whatever happened."""
    csms_options = {
        k: kwargs.pop(k)
        for k in (
            "boot_responses",
            "id_tag_status",
            "default_id_tag_status",
            "id_tag_parent",
            "id_tag_expiry",
            "heartbeat_interval_s",
            "ssl_context",
            "url_host",
            "basic_auth",
            "require_client_certificate",
        )
        if k in kwargs
    }
    clock_factory: Callable[[], Clock] | None = kwargs.pop("clock_factory", None)
    csms = BenchCsms(**csms_options)
    url = await csms.start()
    try:
        config = load_config(write_config(directory, url, **kwargs))
        hardware = build_hardware(config)
        app = App(config, hardware, clock=None if clock_factory is None else clock_factory())
        task = asyncio.create_task(app.run())
        test_bench = Bench(
            csms, config, hardware, app, task, directory, clock_factory=clock_factory
        )
        try:
            yield test_bench
        finally:
            test_bench.app.request_stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(test_bench.task, 15)
            await hardware.shutdown()
    finally:
        await csms.stop()


class DaemonProcess:
    """``evse-daemon run --config FILE`` as a subprocess."""

    def __init__(self, config_path: Path, *, env: Mapping[str, str] | None = None) -> None:
        self.config_path = config_path
        env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        self.log_path = config_path.with_suffix(".log")
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "evse_daemon.cli", "run", "--config", str(config_path)],
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout_s: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout_s)
        finally:
            self._log.close()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


# --- helpers of the tests on the bench --------------------------------------------------------

TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")

# fake-hwclock restored the time of the last shutdown, three years ago.
STALE = timedelta(days=3 * 365)
# How far a corrected timestamp may be from the instant the test saw the event happen: the
# correction is exact; this covers the test's own observation lag on a loaded machine.
SLACK = timedelta(seconds=5)

# The bench's connectors (``write_config``'s defaults): 32 A, three phases.
RATING_A = 32.0

Periods = Sequence[tuple[int, float]]


def stale_clock() -> SystemClock:
    """The board's clock before NTP: the system time is STALE behind, NTP never syncs."""
    return SystemClock(synchronized=lambda: False, system_utc=lambda: datetime.now(UTC) - STALE)


def utc_time(value: str) -> datetime:
    """An OCPP timestamp (which must carry its time zone), in UTC."""
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    assert moment.tzinfo is not None, f"timestamp {value!r} has no time zone"
    return moment.astimezone(UTC)


def local_status(b: Bench, connector_id: int = 1) -> str:
    """The connector's status as the daemon has it (whatever the CSMS was told)."""
    return str(b.app.status()["connectors"][connector_id - 1]["status"])


def queued_actions(b: Bench) -> list[str]:
    """The actions in the charger's transaction-message queue, oldest first."""
    return [m.action for m in b.app.adapter._tx_queue]


def tx_messages(csms: BenchCsms, after: int = 0) -> list[ReceivedMessage]:
    """The transaction messages the CSMS received (and did not reject) from ``after`` on."""
    return [m for m in csms.received[after:] if m.action in TX_ACTIONS and m.error is None]


def pretend_the_board_rebooted(state_dir: Path) -> None:
    """A power cut restarts the board: the kernel's boot id changes. The test machine cannot
    reboot, so the boot id the daemon recorded is replaced by another one."""
    with sqlite3.connect(state_dir / "evse.sqlite3") as db:
        db.execute(
            "UPDATE kv SET value = ? WHERE namespace = 'daemon' AND key = 'boot_id'",
            (json.dumps("a-previous-boot"),),
        )


async def control(socket: Path, **command: object) -> Any:
    """A command on the daemon's control socket; its result (the reply must be ok)."""
    reply = await request_async(str(socket), dict(command))
    assert reply["ok"], reply
    return reply.get("result")


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def charging_profile(
    profile_id: int,
    purpose: str,
    periods: Periods,
    *,
    stack_level: int = 0,
    kind: str = "Absolute",
    start: datetime | None = None,
    duration: int | None = None,
    transaction_id: int | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    unit: str = "A",
    number_phases: int | None = None,
) -> dict[str, Any]:
    """A csChargingProfiles / chargingProfile object, camelCase as on the wire (the library's
    snake_to_camel_case leaves camelCase keys as they are)."""
    schedule: dict[str, Any] = {"chargingRateUnit": unit}
    if duration is not None:
        schedule["duration"] = duration
    if start is not None:
        schedule["startSchedule"] = _iso(start)
    schedule["chargingSchedulePeriod"] = [
        {"startPeriod": start_period, "limit": float(limit)}
        | ({} if number_phases is None else {"numberPhases": number_phases})
        for start_period, limit in periods
    ]
    profile: dict[str, Any] = {
        "chargingProfileId": profile_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": kind,
        "chargingSchedule": schedule,
    }
    if transaction_id is not None:
        profile["transactionId"] = transaction_id
    if valid_from is not None:
        profile["validFrom"] = _iso(valid_from)
    if valid_to is not None:
        profile["validTo"] = _iso(valid_to)
    return profile


async def set_charging_profile(b: Bench, connector_id: int, profile: dict[str, Any]) -> str:
    """SetChargingProfile: its status, or the code of the CALLERROR it was answered with."""
    try:
        result = await b.csms.call(
            call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=profile)
        )
    except OCPPError as exc:
        return str(exc.code)
    return str(result.status)
