"""Torture test: the daemon, as a subprocess, charges through many sessions on two connectors
(plug, card or remote start, charge, stop by card, unplug, RemoteStop or Reset) while the CSMS
goes away and comes back and the daemon is SIGKILLed at random moments and restarted (its mock
hardware dies with it: after a restart the cars are unplugged). Afterwards, with everything
delivered and the daemon stopped cleanly, the CSMS's record must hold every transaction exactly
once, complete, in order, with energies that agree with the mock meter's register.

Seeded: the kill and outage schedules come from ``random.Random(seed)``; the seed is printed
and attached to any failure. The figures of the run are printed (``pytest -s`` shows them).
Environment:

- ``EVSE_TORTURE_SEED``: replay a seed (default: a new one per run).
- ``EVSE_TORTURE_KILLS``: how many SIGKILLs (default 50, ~1 min; e.g. 500 for a long run).

At-least-once: a message the CSMS answered is sent again when the daemon is killed (or the
connection cut) before it has recorded the answer: measured, within about 2 ms of the CSMS
taking the message. OCPP 1.6 has no message id that survives a connection, so the CSMS here
deduplicates the way a real one can: an identical StartTransaction gets the transactionId it
got the first time, and an identical StopTransaction or MeterValues is recognised as the one
already received. A tenth of the kills aim at that window on purpose. Duplicates are counted
and reported, never silently accepted: a second message that differs in anything is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import math
import os
import random
import secrets
import shutil
import sqlite3
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import OCPPError
from ocpp.v16 import call

from evse_daemon.bench.csms import BenchCsms, ReceivedMessage
from evse_daemon.control import ControlError, request_async
from tests.harness import DaemonProcess, write_config

SEED_ENV = "EVSE_TORTURE_SEED"
KILLS_ENV = "EVSE_TORTURE_KILLS"
DEFAULT_KILLS = 50
CONNECTORS = 2
# A Reset restarts the daemon in-process: it waits for its StopTransactions to be delivered
# (10 s at most for a soft one, while offline), then rebuilds everything above the drivers.
RESET_RESTART_S = 15.0
TX_ACTIONS = ("StartTransaction", "MeterValues", "StopTransaction")
ENERGY = "Energy.Active.Import.Register"
# How the sessions here end: card, unplug, RemoteStop, kill (same boot), Reset.
STOP_REASONS = frozenset({"Local", "EVDisconnected", "Remote", "Reboot", "SoftReset", "HardReset"})


def _kills() -> int:
    return int(os.environ.get(KILLS_ENV) or DEFAULT_KILLS)


def _seed() -> int:
    return int(os.environ.get(SEED_ENV) or secrets.randbelow(2**32))


# --- a CSMS that recognises a resent message -------------------------------------------------


class DedupCsms(BenchCsms):
    """The bench CSMS, answering a StartTransaction identical to one it already answered with
    the transactionId it gave then (what a real CSMS does with a charger's retry: connector,
    idTag, meterStart and timestamp identify the transaction)."""

    def __init__(self) -> None:
        super().__init__()
        self.start_ids: dict[str, int] = {}
        self.start_duplicates = 0
        self._routing_start: str | None = None

    def _before_routing(self, session: Any, raw: str | bytes) -> str | None:
        # Connections are handled one frame at a time: the handler that follows this hook
        # for a StartTransaction is the one for this frame.
        self._routing_start = None
        with contextlib.suppress(ValueError, TypeError, IndexError):
            frame = json.loads(raw)
            if frame[0] == 2 and frame[2] == "StartTransaction":
                self._routing_start = _identity(frame[3])
        return super()._before_routing(session, raw)

    def _new_transaction(self, id_tag: str) -> int:
        key, self._routing_start = self._routing_start, None
        if key is not None and key in self.start_ids:
            self.start_duplicates += 1
            return self.start_ids[key]
        transaction_id = super()._new_transaction(id_tag)
        if key is not None:
            self.start_ids[key] = transaction_id
        return transaction_id


def _identity(payload: dict[str, Any]) -> str:
    return json.dumps(payload, sort_keys=True)


# --- the run ---------------------------------------------------------------------------------


@dataclass
class Figures:
    kills: int = 0
    kills_before_control: int = 0
    targeted_kills: int = 0
    outages: int = 0
    commands: Counter[str] = field(default_factory=Counter)
    wall_s: float = 0.0


class Torture:
    def __init__(self, seed: int, kills: int, directory: Path, csms: DedupCsms) -> None:
        self.seed = seed
        self.kills = kills
        self.directory = directory
        self.csms = csms
        # Separate streams, so that the kill and outage schedules do not depend on how many
        # decisions the driver happened to make (which depends on timing).
        self.kill_rng = random.Random(f"{seed}-kill")
        self.outage_rng = random.Random(f"{seed}-outage")
        self.drive_rng = random.Random(f"{seed}-drive")
        self.socket = directory / "control.sock"
        self.logs = directory / "logs"
        self.logs.mkdir()
        self.figures = Figures()
        self._tags = 0
        self._answering = False  # the current daemon has answered on its control socket
        self._reset_at = -math.inf  # when the driver last asked the CSMS for a Reset
        self.config = write_config(
            directory,
            csms.url,
            connectors=CONNECTORS,
            ocpp_config={
                "MeterValueSampleInterval": 1,
                "ClockAlignedDataInterval": 1,
                "TransactionMessageRetryInterval": 1,
                "AllowOfflineTxForUnknownId": True,
                "LocalAuthorizeOffline": True,
            },
            extra_ocpp={"reconnect_min_s": 0.05, "reconnect_max_s": 0.3, "message_timeout_s": 3},
        )

    # -- helpers

    async def ctl(self, **command: Any) -> Any:
        reply = await request_async(str(self.socket), dict(command), timeout_s=3.0)
        if not reply["ok"]:
            raise ControlError(str(reply))
        self.figures.commands[str(command["cmd"])] += 1
        return reply.get("result")

    def new_tag(self) -> str:
        self._tags += 1
        return f"TT{self._tags:06d}"

    def _lifetime_s(self) -> float:
        # A quarter of the kills land around start-up (the control socket answers after
        # ~0.25 s): imports, the store, the recovery of the previous run's transactions, the
        # first BootNotification. Some runs last long enough for a few sampled meter values.
        roll = self.kill_rng.random()
        if roll < 0.25:
            return self.kill_rng.uniform(0.02, 0.45)
        if roll < 0.85:
            return self.kill_rng.uniform(0.45, 2.2)
        return self.kill_rng.uniform(2.2, 4.0)

    async def _live(self, lifetime_s: float, targeted: bool) -> None:
        """Let the daemon live; a targeted kill lands a few milliseconds after the CSMS took
        a transaction message: between its answer and the daemon's record of the answer."""
        if not targeted:
            await asyncio.sleep(lifetime_s)
            return
        mark = self.csms.mark()
        deadline = time.monotonic() + lifetime_s
        while time.monotonic() < deadline:
            if any(m.action in TX_ACTIONS for m in self.csms.received[mark:]):
                self.figures.targeted_kills += 1
                # Measured: a kill 0-2 ms after the CSMS took the message often has it sent
                # again after the restart, one 5 ms or more after never does.
                await asyncio.sleep(self.kill_rng.uniform(0.0, 0.003))
                return
            await asyncio.sleep(0.001)

    def _stash_log(self, daemon: DaemonProcess, name: str) -> None:
        with contextlib.suppress(OSError):
            shutil.move(daemon.log_path, self.logs / name)

    # -- chaos

    async def outages(self) -> None:
        """The CSMS goes away (handshakes refused, the connection cut) and comes back."""
        rng = self.outage_rng
        try:
            while True:
                await asyncio.sleep(rng.uniform(1.0, 5.0))
                self.csms.accepting = False
                self.figures.outages += 1
                await self.csms.drop_connection()
                await asyncio.sleep(rng.uniform(0.3, 3.0))
                self.csms.accepting = True
        finally:
            self.csms.accepting = True

    async def drive(self) -> None:
        """A crowd of drivers: plug, swipe, charge, stop by card, unplug, remote start/stop."""
        rng = self.drive_rng
        while True:
            try:
                await self.ctl(cmd="status")
                break
            except ControlError:
                await asyncio.sleep(0.05)
        self._answering = True
        while True:
            await asyncio.sleep(rng.uniform(0.02, 0.25))
            try:
                status = await self.ctl(cmd="status")
                await self._act(rng, rng.choice(status["connectors"]))
            except ControlError:
                # A Reset restarts the daemon in-process: its control socket closes for a
                # moment. At any other time an unreachable daemon is a failure.
                if time.monotonic() - self._reset_at > RESET_RESTART_S:
                    raise

    async def _act(self, rng: random.Random, connector: dict[str, Any]) -> None:
        cid = connector["id"]
        tx = connector["transaction"]
        plugged = connector["pilot_state"] != "A"
        roll = rng.random()
        if tx is not None:
            # Mostly let it charge: a session then lasts about a second, often cut by a kill.
            if roll < 0.06:
                await self.ctl(cmd="swipe", tag=tx["id_tag"])  # stopped by the same card
            elif roll < 0.12:
                await self.ctl(cmd="unplug", connector=cid)
            elif roll < 0.17 and tx["id"] is not None:
                await self._csms_call(call.RemoteStopTransaction(transaction_id=tx["id"]))
            elif roll < 0.21:
                await self.ctl(cmd="ev", connector=cid, state="B")  # the car pauses
            elif roll < 0.27:
                await self.ctl(cmd="ev", connector=cid, state="auto")  # and goes on
            elif roll < 0.29:
                # The daemon stops its transactions and restarts in-process (the car stays).
                self._reset_at = time.monotonic()
                await self._csms_call(call.Reset(type=rng.choice(["Soft", "Hard"])))
            return
        if not plugged:
            if roll < 0.85:
                await self.ctl(cmd="plug", connector=cid)
            elif roll < 0.95:
                await self.ctl(cmd="swipe", tag=self.new_tag())  # identify first, then plug
            return
        if connector["status"] == "Finishing":
            if roll < 0.7:
                await self.ctl(cmd="unplug", connector=cid)
            return
        if connector["authorized_id_tag"] is not None:
            if roll < 0.05:
                await self.ctl(cmd="unplug", connector=cid)  # changed their mind
            return  # the transaction is about to start
        if roll < 0.6:
            await self.ctl(cmd="swipe", tag=self.new_tag())
        elif roll < 0.85:
            request = call.RemoteStartTransaction(id_tag=self.new_tag(), connector_id=cid)
            await self._csms_call(request)
        elif roll < 0.9:
            await self.ctl(cmd="unplug", connector=cid)  # changed their mind

    async def _csms_call(self, request: Any) -> None:
        if not self.csms.connected:
            return
        with contextlib.suppress(ConnectionError, TimeoutError, OCPPError):
            await self.csms.call(request, timeout_s=2.0)
            self.figures.commands[type(request).__name__] += 1

    # -- the whole run

    async def run(self) -> None:
        started = time.monotonic()
        chaos = asyncio.create_task(self.outages())
        try:
            for epoch in range(self.kills):
                daemon = DaemonProcess(self.config)
                self._answering = False
                driver = asyncio.create_task(self.drive())
                try:
                    lifetime_s = self._lifetime_s()
                    await self._live(lifetime_s, targeted=self.kill_rng.random() < 0.1)
                    if daemon.proc.poll() is not None:
                        raise AssertionError(
                            f"the daemon died by itself (exit {daemon.proc.returncode}) in run "
                            f"{epoch}:\n{daemon.log()[-4000:]}"
                        )
                    if driver.done() and driver.exception() is not None:
                        raise AssertionError(f"driver failed in run {epoch}") from (
                            driver.exception()
                        )
                finally:
                    daemon.kill()
                    driver.cancel()
                    with contextlib.suppress(BaseException):
                        await driver
                self.figures.kills += 1
                self.figures.kills_before_control += not self._answering
                self._stash_log(daemon, f"run-{epoch:04d}.log")
        finally:
            chaos.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await chaos
        await self.drain()
        self.figures.wall_s = time.monotonic() - started

    async def drain(self) -> None:
        """One last run with the CSMS there: everything is delivered, then a clean stop."""
        self.csms.accepting = True
        daemon = DaemonProcess(self.config)
        try:
            deadline = time.monotonic() + 60.0
            status: Any = None
            while True:
                if time.monotonic() > deadline:
                    raise AssertionError(
                        f"queue not drained within 60 s: {status}\n{daemon.log()[-4000:]}"
                    )
                await asyncio.sleep(0.1)
                try:
                    status = await self.ctl(cmd="status")
                except ControlError:
                    continue
                ocpp = status["ocpp"]
                if (
                    ocpp["connected"]
                    and ocpp["registration"] == "Accepted"
                    and ocpp["queue_depth"] == 0
                    and all(c["transaction"] is None for c in status["connectors"])
                ):
                    break
            code = await asyncio.to_thread(daemon.terminate)
            assert code == 0, f"clean stop exited {code}:\n{daemon.log()[-4000:]}"
        finally:
            daemon.kill()
            self._stash_log(daemon, "final.log")

    def unexpected_log_lines(self) -> list[str]:
        """Errors the daemons logged, other than the CSMS refusing them during an outage: a
        bug the daemon survived (a failed task, a discarded message) still fails the test."""
        lines = []
        for path in sorted(self.logs.iterdir()):
            for line in path.read_text(errors="replace").splitlines():
                if (" ERROR " in line or " CRITICAL " in line or "Traceback" in line) and (
                    "CSMS refused the websocket handshake: HTTP 503" not in line
                ):
                    lines.append(f"{path.name}: {line}")
        return lines

    def leftovers(self) -> tuple[int, int]:
        """(queued messages, open transactions) left in the store after the clean stop."""
        with contextlib.closing(sqlite3.connect(self.directory / "state" / "evse.sqlite3")) as db:
            (queued,) = db.execute("SELECT count(*) FROM tx_queue").fetchone()
            (open_tx,) = db.execute("SELECT count(*) FROM transactions").fetchone()
        return int(queued), int(open_tx)

    def registers(self) -> dict[int, float]:
        out = {}
        for cid in range(1, CONNECTORS + 1):
            path = self.directory / "state" / f"mock-meter-{cid}.json"
            if path.exists():
                out[cid] = float(json.loads(path.read_text())["energy_import_wh"])
        return out


# --- the checks -------------------------------------------------------------------------------


@dataclass
class Transaction:
    id: int
    start: ReceivedMessage
    index: int  # of the StartTransaction in the CSMS's record
    meter_values: list[tuple[int, ReceivedMessage]] = field(default_factory=list)
    stop: ReceivedMessage | None = None
    stop_index: int = -1


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _energies(message: ReceivedMessage) -> list[tuple[datetime, float]]:
    out = []
    for meter_value in message.payload["meterValue"]:
        for sampled in meter_value["sampledValue"]:
            if sampled.get("measurand", ENERGY) == ENERGY:
                value = float(sampled["value"])
                if sampled.get("unit") == "kWh":
                    value *= 1000.0
                out.append((_time(meter_value["timestamp"]), value))
    return out


@dataclass
class Record:
    transactions: dict[int, Transaction]
    messages: int
    duplicates: Counter[str]


def check_record(
    received: list[ReceivedMessage], registers: dict[int, float], start_ids: dict[str, int]
) -> Record:
    """Every transaction exactly once, complete, in order, with consistent energies.

    ``start_ids``: the transactionId the CSMS answered to each distinct StartTransaction.
    """
    errors: list[str] = []
    refused = [m for m in received if m.action in TX_ACTIONS and m.error is not None]
    assert not refused, f"the CSMS refused transaction messages: {refused[:5]}"
    transactions: dict[int, Transaction] = {}
    seen: set[tuple[str, str]] = set()
    duplicates: Counter[str] = Counter()
    order: list[tuple[int, ReceivedMessage]] = []  # transaction messages, duplicates left out
    for index, message in enumerate(received):
        if message.action not in TX_ACTIONS or message.error is not None:
            continue
        key = (message.action, _identity(message.payload))
        if key in seen:
            # A resent message, identical to one already received: the at-least-once window.
            duplicates[message.action] += 1
            continue
        seen.add(key)
        order.append((index, message))
        if message.action == "StartTransaction":
            given = start_ids[_identity(message.payload)]
            if given in transactions:
                errors.append(f"#{index} transactionId {given} handed out twice")
            transactions[given] = Transaction(given, message, index)
    for index, message in order:
        if message.action == "StartTransaction":
            continue
        tx_id: Any = message.payload.get("transactionId")
        if tx_id is None and message.action == "MeterValues":
            continue  # a meter value outside any transaction
        tx = transactions.get(tx_id) if isinstance(tx_id, int) else None
        if tx is None:
            errors.append(f"#{index} {message.action} for unknown transaction {tx_id}")
            continue
        if index < tx.index:
            errors.append(f"#{index} {message.action} before the start of transaction {tx_id}")
        if tx.stop is not None:
            errors.append(
                f"#{index} {message.action} after the StopTransaction of {tx_id}: "
                f"{message.payload} (stop: {tx.stop.payload})"
            )
        if message.action == "MeterValues":
            tx.meter_values.append((index, message))
        else:
            tx.stop, tx.stop_index = message, index
    by_connector: dict[int, list[Transaction]] = {}
    for tx in transactions.values():
        start = tx.start.payload
        by_connector.setdefault(int(start["connectorId"]), []).append(tx)
        if tx.stop is None:
            errors.append(f"transaction {tx.id} ({start}) has no StopTransaction")
            continue
        stop = tx.stop.payload
        meter_start, meter_stop = int(start["meterStart"]), int(stop["meterStop"])
        if meter_stop < meter_start:
            errors.append(f"transaction {tx.id}: meterStop {meter_stop} < meterStart {meter_start}")
        begin, end = _time(start["timestamp"]), _time(stop["timestamp"])
        if end < begin:
            errors.append(f"transaction {tx.id}: stopped ({end}) before it started ({begin})")
        previous: tuple[datetime, float] | None = None
        for index, meter_values in tx.meter_values:
            for moment, energy in _energies(meter_values):
                # Values carry 0.1 Wh, meterStart/Stop whole Wh (rounded down).
                if not meter_start <= energy <= meter_stop + 1:
                    errors.append(
                        f"#{index} transaction {tx.id}: meter value {energy} Wh outside "
                        f"[{meter_start}, {meter_stop}]"
                    )
                if not begin <= moment <= end:
                    errors.append(
                        f"#{index} transaction {tx.id}: meter value at {moment} outside "
                        f"its transaction [{begin}, {end}]"
                    )
                if previous is not None and (moment, energy) < previous:
                    errors.append(
                        f"#{index} transaction {tx.id}: meter value ({moment}, {energy}) "
                        f"after ({previous[0]}, {previous[1]})"
                    )
                previous = (moment, energy)
    for connector_id, series in by_connector.items():
        # Transactions on one connector follow each other: each one starts after the previous
        # stopped, in time, in the CSMS's record and on the register (which never runs back).
        register = registers.get(connector_id)
        for before, after in itertools.pairwise(series):
            if before.stop is None or after.stop is None:
                continue
            if after.index < before.stop_index:
                errors.append(
                    f"connector {connector_id}: transaction {after.id} started (#{after.index}) "
                    f"before {before.id} stopped (#{before.stop_index})"
                )
            if _time(after.start.payload["timestamp"]) < _time(before.stop.payload["timestamp"]):
                errors.append(
                    f"connector {connector_id}: transaction {after.id} starts at "
                    f"{after.start.payload['timestamp']}, before {before.id} stopped at "
                    f"{before.stop.payload['timestamp']}"
                )
            if int(after.start.payload["meterStart"]) < int(before.stop.payload["meterStop"]):
                errors.append(
                    f"connector {connector_id}: meterStart {after.start.payload['meterStart']} of "
                    f"{after.id} < meterStop {before.stop.payload['meterStop']} of {before.id}"
                )
        last = series[-1]
        if register is None:
            errors.append(f"connector {connector_id}: no meter register file")
        elif last.stop is not None:
            # The contactor is open after the last stop, so the register has not moved since.
            if int(last.stop.payload["meterStop"]) != int(register):
                errors.append(
                    f"connector {connector_id}: last meterStop {last.stop.payload['meterStop']} "
                    f"!= register {register}"
                )
            for tx in series:
                if tx.stop is not None and int(tx.stop.payload["meterStop"]) > register:
                    errors.append(f"transaction {tx.id}: meterStop above the register {register}")
    # The daemon produces StartTransaction and StopTransaction in the order of the charger's
    # events, which carry the time of the event: in the CSMS's record their timestamps never
    # go back, across connectors.
    events = [(i, m) for i, m in order if m.action != "MeterValues"]
    for (i, a), (j, b) in itertools.pairwise(events):
        if _time(b.payload["timestamp"]) < _time(a.payload["timestamp"]):
            errors.append(f"#{j} {b.action} {b.payload} stamped before #{i} {a.action} {a.payload}")
    assert not errors, f"{len(errors)} problems:\n" + "\n".join(errors[:40])
    return Record(transactions, len(order) + sum(duplicates.values()), duplicates)


# --- the test ---------------------------------------------------------------------------------


@pytest.mark.timeout(90 + 3 * _kills())
async def test_torture_kills_and_outages_lose_and_double_nothing(tmp_path: Path) -> None:
    seed, kills = _seed(), _kills()
    print(f"torture: seed {seed}, {kills} kills (replay: {SEED_ENV}={seed} {KILLS_ENV}={kills})")
    try:
        csms = DedupCsms()
        async with csms:
            torture = Torture(seed, kills, tmp_path, csms)
            await torture.run()
        with (tmp_path / "csms-record.jsonl").open("w") as record_file:
            for index, message in enumerate(csms.received):
                entry = {"i": index, "at": message.received_at, "action": message.action}
                entry.update(payload=message.payload, error=message.error)
                record_file.write(json.dumps(entry) + "\n")
        assert torture.leftovers() == (0, 0), "the store still holds messages or transactions"
        registers = torture.registers()
        record = check_record(csms.received, registers, csms.start_ids)
        # The CSMS handed out one transactionId per distinct StartTransaction.
        assert sorted(csms.transaction_ids) == sorted(record.transactions)
        assert csms.start_duplicates == record.duplicates["StartTransaction"]
        unexpected = torture.unexpected_log_lines()
        assert not unexpected, "the daemon logged errors:\n" + "\n".join(unexpected[:20])
        figures = torture.figures
        reasons: Counter[str] = Counter()
        for tx in record.transactions.values():
            assert tx.stop is not None
            reason = tx.stop.payload.get("reason", "Local")
            reasons[reason] += 1
            # Same boot of the machine: a killed run's transactions stop with Reboot.
            assert reason in STOP_REASONS, f"transaction {tx.id}: reason {reason}"
            if reason == "Local":
                assert tx.stop.payload.get("idTag") == tx.start.payload["idTag"], tx.id
        energy_wh = sum(
            int(tx.stop.payload["meterStop"]) - int(tx.start.payload["meterStart"])
            for tx in record.transactions.values()
            if tx.stop is not None
        )
        print(
            f"torture: seed {seed}: {figures.kills} kills ({figures.kills_before_control} "
            f"before the control socket answered, {figures.targeted_kills} just after a "
            f"transaction message reached the CSMS), {figures.outages} CSMS outages, "
            f"{figures.commands['plug']} sessions (plugs), {len(record.transactions)} "
            f"transactions, {record.messages} transaction messages "
            f"({len(csms.received)} messages in all), duplicates seen: "
            f"{sum(record.duplicates.values())} {dict(record.duplicates)}, "
            f"{energy_wh} Wh, wall time {figures.wall_s:.1f} s"
        )
        print(f"torture: stop reasons {dict(reasons)}; commands {dict(figures.commands)}")
        print(f"torture: registers {registers}")
    except BaseException as exc:
        exc.add_note(f"torture seed {seed}: replay with {SEED_ENV}={seed} {KILLS_ENV}={kills}")
        raise


# --- the checks themselves --------------------------------------------------------------------


def _msg(action: str, **payload: Any) -> ReceivedMessage:
    return ReceivedMessage(action, payload, unique_id="x", received_at=0.0)


def _session(tx_id: int, start_wh: int, stop_wh: int, second: int) -> list[ReceivedMessage]:
    stamp = f"2026-01-01T00:00:{second:02d}.000Z"
    later = f"2026-01-01T00:00:{second + 1:02d}.000Z"
    value = {"value": f"{(start_wh + stop_wh) / 2:.1f}", "unit": "Wh"}
    return [
        _msg(
            "StartTransaction",
            connectorId=1,
            idTag=f"T{tx_id}",
            meterStart=start_wh,
            timestamp=stamp,
        ),
        _msg(
            "MeterValues",
            connectorId=1,
            transactionId=tx_id,
            meterValue=[{"timestamp": later, "sampledValue": [value]}],
        ),
        _msg("StopTransaction", transactionId=tx_id, meterStop=stop_wh, timestamp=later),
    ]


def _ids(messages: list[ReceivedMessage]) -> dict[str, int]:
    ids: dict[str, int] = {}
    for message in messages:
        if message.action == "StartTransaction":
            ids.setdefault(_identity(message.payload), len(ids) + 1)
    return ids


def test_the_checks_accept_a_clean_record_and_count_resent_messages() -> None:
    first, second = _session(1, 0, 10, 0), _session(2, 12, 20, 5)
    record = [first[0], first[0], *first[1:], first[2], *second]  # Start and Stop resent
    result = check_record(record, {1: 20.4}, _ids(record))
    assert sorted(result.transactions) == [1, 2]
    assert result.duplicates == Counter({"StartTransaction": 1, "StopTransaction": 1})


@pytest.mark.parametrize(
    ("mangle", "problem"),
    [
        (lambda r: r[:-1], "has no StopTransaction"),
        (
            lambda r: [
                *r,
                _msg(
                    "StopTransaction",
                    transactionId=7,
                    meterStop=1,
                    timestamp="2026-01-02T00:00:00Z",
                ),
            ],
            "unknown",
        ),
        (
            lambda r: [
                *r,
                _msg(
                    "StopTransaction",
                    transactionId=2,
                    meterStop=21,
                    timestamp=r[-1].payload["timestamp"],
                ),
            ],
            "after the StopTransaction",
        ),
        (lambda r: [r[0], r[2], r[1], *r[3:]], "after the StopTransaction"),
        (lambda r: [*r[3:], *r[:3]], "before 1 stopped"),
    ],
)
def test_the_checks_find_lost_doubled_and_misordered_messages(mangle: Any, problem: str) -> None:
    record = mangle([*_session(1, 0, 10, 0), *_session(2, 12, 20, 5)])
    with pytest.raises(AssertionError, match=problem):
        check_record(record, {1: 20.4}, _ids(record))


def test_the_checks_find_energy_that_went_back_or_beyond_the_register() -> None:
    record = [*_session(1, 0, 10, 0), *_session(2, 8, 20, 5)]
    with pytest.raises(AssertionError, match="meterStart 8 of 2 < meterStop 10 of 1"):
        check_record(record, {1: 20.4}, _ids(record))
    record = [*_session(1, 0, 10, 0), *_session(2, 12, 20, 5)]
    with pytest.raises(AssertionError, match="register"):
        check_record(record, {1: 19.0}, _ids(record))
