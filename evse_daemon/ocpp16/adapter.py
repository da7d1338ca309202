"""OCPP 1.6J adapter: translates between the charger and a CSMS, over ``ocpp`` and ``websockets``.

The adapter owns the link (connect, register, reconnect with backoff), the order of outbound
messages (transaction messages strictly in order, one at a time; status notifications and
authorizations may overtake them), metering schedules, and the CSMS's requests, which it turns
into calls on the ``ChargerPort``. It never touches a driver.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import sqlite3
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote

import ocpp.messages
import websockets
from ocpp.charge_point import snake_to_camel_case
from ocpp.exceptions import (
    FormationViolationError,
    OccurenceConstraintViolationError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.messages import Call, unpack
from ocpp.routing import after, on
from ocpp.v16 import ChargePoint as _OcppChargePoint
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed

from drivers.protocols import MeterReading

from ..auth import Authorizer, IdTagInfo, ListEntry, StoredEntry, UpdateStatus
from ..charger import ErrorCode, StatusChanged, TransactionStarted, TransactionStopped
from ..clock import Clock, ClockStamp, SystemClock, correction, current_boot_id, iso_utc, stamp
from ..config import OcppSection, StationConfig
from ..logfields import IdTag
from ..ocpp_keys import ChangeResult, OcppConfiguration
from ..ports import ChargerPort, ResetKind
from ..profiles import (
    ChargingProfile,
    ProfileError,
    ProfilePurpose,
    RateUnit,
    profile_from_ocpp,
)
from ..store import AuthRow, Store
from .firmware import FirmwareManagement16, FirmwareRoutes
from .frames import FrameError, Ignored, InboundCall, InboundReply, parse_inbound
from .measurands import meter_value
from .security import (
    SECURITY_KEYS,
    HandshakeFailed,
    ReconnectRequested,
    SecurityHandlers,
    SecurityManager,
    redacted,
)

log = logging.getLogger(__name__)

SUBPROTOCOL = "ocpp1.6"
# The websocket layer refuses frames beyond this (close code 1009); frames.py answers frames
# between its own limit and this one with a CALLERROR.
WEBSOCKET_MAX_FRAME_BYTES = 1024 * 1024
# A connection that lived this long proves the CSMS is back: the backoff starts over.
STABLE_CONNECTION_S = 60.0
# Retry delay for BootNotification when the CSMS gives interval 0 (§4.2.1: the charge point
# then chooses a delay that does not flood the CSMS).
DEFAULT_BOOT_RETRY_S = 30.0

Narrator = Callable[[str, str, dict[str, Any]], None]


class Registration:
    NONE = "None"
    PENDING = "Pending"
    ACCEPTED = "Accepted"
    REJECTED = "Rejected"


@dataclass
class TxMessage:
    """A transaction-related message waiting in the outbound queue.

    The CSMS's transactionId is not known while the StartTransaction is still queued, so it is
    filled in when the message is sent (the queue is strictly FIFO, so the answer to the
    StartTransaction has arrived by then).
    """

    action: str  # StartTransaction, StopTransaction, MeterValues
    local_id: int
    connector_id: int
    payload: dict[str, Any]
    attempts: int = 0
    seq: int = 0  # its row in the store's queue (0 without a store, or not written)
    # A sampled meter value taken while online with nothing queued is sent straight away and
    # written to the card only if it cannot be delivered: online charging then writes
    # nothing per sample (storage wear). Start and Stop are always written first.
    durable: bool = True
    queued_at: float = field(default_factory=time.monotonic)
    # When it was made, if the wall clock was not trusted then: its timestamps are corrected
    # once the time is known (clock.correction).
    made: ClockStamp | None = None


def shift_timestamps(payload: dict[str, Any], error: timedelta) -> dict[str, Any]:
    """A copy of a StartTransaction / StopTransaction / MeterValues payload with every
    timestamp moved by ``error`` (the message's own and its meter values')."""

    def moved(stamp: str) -> str:
        return iso_utc(datetime.fromisoformat(stamp.replace("Z", "+00:00")) + error)

    shifted = dict(payload)
    if "timestamp" in shifted:
        shifted["timestamp"] = moved(shifted["timestamp"])
    for key in ("meter_value", "transaction_data"):
        if key in shifted:
            shifted[key] = [{**v, "timestamp": moved(v["timestamp"])} for v in shifted[key]]
    return shifted


# An expiryDate that cannot be read counts as passed: an authorization must never outlive the
# date the CSMS meant because the date was written oddly.
UNREADABLE_EXPIRY = datetime.min.replace(tzinfo=UTC)


def _parse_expiry(value: object) -> datetime:
    """An IdTagInfo's expiryDate (a time without zone is UTC); ValueError if unreadable."""
    if not isinstance(value, str):
        raise ValueError(f"expiryDate {value!r} is not a string")
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


_PROFILE_ERRORS: dict[str, type[OCPPError]] = {
    "PropertyConstraintViolation": PropertyConstraintViolationError,
    "TypeConstraintViolation": TypeConstraintViolationError,
    "OccurenceConstraintViolation": OccurenceConstraintViolationError,
    "FormationViolation": FormationViolationError,
}


def _plain_numbers(value: Any) -> Any:
    """Decimals (how frames.py parses JSON numbers) as floats, recursively."""
    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, dict):
        return {k: _plain_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain_numbers(v) for v in value]
    return value


def _charging_profile(snake: dict[str, Any]) -> ChargingProfile:
    """A chargingProfile as the library hands it over (snake_case keys) → ChargingProfile;
    what the schema lets through but the rules do not becomes the CALLERROR they name."""
    try:
        return profile_from_ocpp(_plain_numbers(snake_to_camel_case(snake)))
    except ProfileError as exc:
        error = _PROFILE_ERRORS.get(exc.code, PropertyConstraintViolationError)
        raise error(description=str(exc)[:200]) from exc


def _idtag_info(raw: dict[str, Any] | None) -> IdTagInfo | None:
    if not raw:
        return None
    expiry = raw.get("expiry_date")
    expiry_dt: datetime | None = None
    if expiry is not None:
        try:
            expiry_dt = _parse_expiry(expiry)
        except ValueError:
            log.warning("unreadable expiryDate %r in an IdTagInfo: taken as passed", expiry)
            expiry_dt = UNREADABLE_EXPIRY
    return IdTagInfo(str(raw.get("status", "Invalid")), expiry_dt, raw.get("parent_id_tag"))


def _list_entry(raw: dict[str, Any]) -> ListEntry:
    """One AuthorizationData of a SendLocalList.req; ValueError for an unreadable expiryDate
    (the update is refused rather than stored with a guessed date)."""
    info = raw.get("id_tag_info")
    if not info:
        return ListEntry(str(raw["id_tag"]), None)
    expiry = info.get("expiry_date")
    return ListEntry(
        str(raw["id_tag"]),
        IdTagInfo(
            str(info["status"]),
            _parse_expiry(expiry) if expiry is not None else None,
            info.get("parent_id_tag"),
        ),
    )


def _log_cache_write(done: asyncio.Future[None], id_tag: str) -> None:
    if done.cancelled():
        return
    exc = done.exception()
    if exc is not None:
        # The cache in memory is right for this run; only a restart would forget the entry.
        log.error("authorization cache entry for %s not stored: %s", IdTag(id_tag), exc)


def _auth_row(entry: StoredEntry) -> AuthRow:
    info = entry.info
    expiry = info.expiry_date.isoformat() if info.expiry_date is not None else None
    return (entry.key, entry.id_tag, info.status, expiry, info.parent_id_tag)


def _stored_entry(row: AuthRow) -> StoredEntry:
    key, id_tag, status, expiry, parent = row
    try:
        expiry_dt = _parse_expiry(expiry) if expiry is not None else None
    except ValueError:
        expiry_dt = UNREADABLE_EXPIRY
    return StoredEntry(key, id_tag, IdTagInfo(status, expiry_dt, parent))


def _parse_time(value: str) -> datetime | None:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


class _Link(FirmwareRoutes, SecurityHandlers, _OcppChargePoint):  # type: ignore[misc]
    """One websocket session with the CSMS: routes its requests to the adapter."""

    def __init__(self, cp_id: str, ws: ClientConnection, adapter: OcppAdapter16) -> None:
        super().__init__(cp_id, ws, response_timeout=adapter.message_timeout_s)
        self._adapter = adapter
        self._handled = frozenset(self.route_map)

    async def start(self) -> None:
        while True:
            message = await self._connection.recv()
            await self.route_message(message)
            # websockets hands over buffered frames without suspending, and answering one
            # need not suspend either: without this a CSMS flooding the charger would keep
            # this loop busy for seconds and starve the safety path of the event loop.
            await asyncio.sleep(0)

    async def route_message(self, raw_msg: str | bytes) -> None:
        inbound = parse_inbound(raw_msg, self._handled)
        adapter = self._adapter
        if isinstance(inbound, InboundReply):
            self._response_queue.put_nowait(unpack(inbound.raw))
            return
        if adapter.registration == Registration.REJECTED:
            # §4.2.1: after a Rejected boot the charge point does not respond to the CSMS.
            log.info("ignoring a frame while registration is Rejected")
            return
        if isinstance(inbound, Ignored):
            log.warning("ignoring inbound frame: %s", inbound.reason)
            return
        if isinstance(inbound, FrameError):
            log.warning(
                "answering a bad frame with %s: %s", inbound.error_code, inbound.description
            )
            adapter.narrate("out", "CALLERROR", {"code": inbound.error_code})
            await self._send(inbound.to_json())
            return
        assert isinstance(inbound, InboundCall)
        adapter.narrate("in", inbound.action, redacted(inbound.action, inbound.payload))
        message = Call(inbound.message_id, inbound.action, inbound.payload)
        try:
            await self._handle_call(message)
        except OCPPError as error:
            await self._send(message.create_call_error(error).to_json())

    # --- CSMS → charge point ------------------------------------------------------------

    @on(Action.remote_start_transaction, skip_schema_validation=True)
    def _remote_start(
        self,
        id_tag: str,
        connector_id: int | None = None,
        charging_profile: dict[str, Any] | None = None,
        **_: Any,
    ) -> call_result.RemoteStartTransaction:
        profile = None
        if charging_profile is not None:
            profile = _charging_profile(charging_profile)
            if profile.purpose is not ProfilePurpose.TX or profile.transaction_id is not None:
                # §5.11 / errata: only a TxProfile without a transactionId (OCTT TC_060).
                return call_result.RemoteStartTransaction(status="Rejected")
        return call_result.RemoteStartTransaction(
            status=self._adapter.remote_start(id_tag, connector_id, profile)
        )

    @after(Action.remote_start_transaction)
    def _after_remote_start(self, id_tag: str, connector_id: int | None = None, **_: Any) -> None:
        self._adapter.after_remote_start(id_tag, connector_id)

    @on(Action.remote_stop_transaction, skip_schema_validation=True)
    def _remote_stop(self, transaction_id: int, **_: Any) -> call_result.RemoteStopTransaction:
        return call_result.RemoteStopTransaction(status=self._adapter.remote_stop(transaction_id))

    @on(Action.reset, skip_schema_validation=True)
    def _reset(self, type: str, **_: Any) -> call_result.Reset:
        return call_result.Reset(status="Accepted")

    @after(Action.reset)
    async def _after_reset(self, type: str, **_: Any) -> None:
        try:
            # On the card before the reset stops the daemon; sent after it (A04.FR.02).
            await self._adapter.security_event("ResetOrReboot", f"{type} reset by the CSMS")
        finally:
            self._adapter.port.request_reset(ResetKind(type))

    @on(Action.unlock_connector, skip_schema_validation=True)
    async def _unlock(self, connector_id: int, **_: Any) -> call_result.UnlockConnector:
        return call_result.UnlockConnector(status=await self._adapter.unlock(connector_id))

    @on(Action.change_availability, skip_schema_validation=True)
    async def _change_availability(
        self, connector_id: int, type: str, **_: Any
    ) -> call_result.ChangeAvailability:
        status = await self._adapter.change_availability(connector_id, type == "Operative")
        return call_result.ChangeAvailability(status=status)

    @on(Action.get_configuration, skip_schema_validation=True)
    def _get_configuration(
        self, key: list[str] | None = None, **_: Any
    ) -> call_result.GetConfiguration:
        known, unknown = self._adapter.get_configuration(key)
        return call_result.GetConfiguration(
            configuration_key=known, unknown_key=unknown if key else None
        )

    @on(Action.change_configuration, skip_schema_validation=True)
    async def _change_configuration(
        self, key: str, value: str, **_: Any
    ) -> call_result.ChangeConfiguration:
        return call_result.ChangeConfiguration(
            status=await self._adapter.change_configuration(key, value)
        )

    @on(Action.clear_cache, skip_schema_validation=True)
    async def _clear_cache(self, **_: Any) -> call_result.ClearCache:
        return call_result.ClearCache(status=await self._adapter.clear_cache())

    @on(Action.get_local_list_version, skip_schema_validation=True)
    def _get_local_list_version(self, **_: Any) -> call_result.GetLocalListVersion:
        return call_result.GetLocalListVersion(
            list_version=self._adapter.authorizer.reported_list_version()
        )

    @on(Action.send_local_list, skip_schema_validation=True)
    async def _send_local_list(
        self,
        list_version: int,
        update_type: str,
        local_authorization_list: list[dict[str, Any]] | None = None,
        **_: Any,
    ) -> call_result.SendLocalList:
        status = await self._adapter.send_local_list(
            list_version, update_type, local_authorization_list or []
        )
        return call_result.SendLocalList(status=status)

    @on(Action.data_transfer, skip_schema_validation=True)
    def _data_transfer(
        self, vendor_id: str, message_id: str | None = None, data: str | None = None, **_: Any
    ) -> call_result.DataTransfer:
        status, reply = self._adapter.data_transfer(vendor_id, message_id, data)
        return call_result.DataTransfer(status=status, data=reply)

    @on(Action.set_charging_profile, skip_schema_validation=True)
    async def _set_charging_profile(
        self, connector_id: int, cs_charging_profiles: dict[str, Any], **_: Any
    ) -> call_result.SetChargingProfile:
        profile = _charging_profile(cs_charging_profiles)
        return call_result.SetChargingProfile(
            status=await self._adapter.set_charging_profile(connector_id, profile)
        )

    @on(Action.clear_charging_profile, skip_schema_validation=True)
    async def _clear_charging_profile(
        self,
        id: int | None = None,  # the OCPP field name
        connector_id: int | None = None,
        charging_profile_purpose: str | None = None,
        stack_level: int | None = None,
        **_: Any,
    ) -> call_result.ClearChargingProfile:
        purpose = ProfilePurpose(charging_profile_purpose) if charging_profile_purpose else None
        cleared = await self._adapter.port.clear_charging_profile(
            id, connector_id, purpose, stack_level
        )
        return call_result.ClearChargingProfile(status="Accepted" if cleared else "Unknown")

    @on(Action.get_composite_schedule, skip_schema_validation=True)
    def _get_composite_schedule(
        self,
        connector_id: int,
        duration: int,
        charging_rate_unit: str | None = None,
        **_: Any,
    ) -> call_result.GetCompositeSchedule:
        unit = RateUnit(charging_rate_unit) if charging_rate_unit else None
        result = self._adapter.port.composite_schedule(connector_id, duration, unit)
        if result is None:
            return call_result.GetCompositeSchedule(status="Rejected")
        start, unit, periods = result
        schedule: dict[str, Any] = {
            "duration": duration,
            "chargingRateUnit": unit.value,
            "chargingSchedulePeriod": [
                {"startPeriod": p.start_period_s, "limit": p.limit}
                | ({"numberPhases": p.number_phases} if p.number_phases is not None else {})
                for p in periods
            ],
        }
        return call_result.GetCompositeSchedule(
            status="Accepted",
            connector_id=connector_id,
            schedule_start=iso_utc(start),
            charging_schedule=schedule,
        )

    @on(Action.trigger_message, skip_schema_validation=True)
    def _trigger(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> call_result.TriggerMessage:
        return call_result.TriggerMessage(
            status=self._adapter.trigger_status(requested_message, connector_id)
        )

    @after(Action.trigger_message)
    def _after_trigger(
        self, requested_message: str, connector_id: int | None = None, **_: Any
    ) -> None:
        self._adapter.after_trigger(requested_message, connector_id)


class OcppAdapter16:
    def __init__(
        self,
        *,
        station: StationConfig,
        ocpp_section: OcppSection,
        port: ChargerPort,
        keys: OcppConfiguration,
        authorizer: Authorizer,
        clock: Clock,
        persist_key: Callable[[str, str], Awaitable[None]] | None = None,
        narrator: Narrator | None = None,
        store: Store | None = None,
        max_queued_messages: int = 10000,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        # The library validates in a thread pool by default; that thread races on shutdown
        # and adds a context switch per message. Inline validation costs ~0.1 ms.
        ocpp.messages.ASYNC_VALIDATION = False
        self.station = station
        self.section = ocpp_section
        self.port = port
        self.keys = keys
        self.authorizer = authorizer
        self.clock = clock
        self._boot_id = current_boot_id()
        self._persist_key = persist_key
        self._store = store
        self.max_queued_messages = max_queued_messages
        self.thinned_meter_values = 0
        self._forgetting: asyncio.Future[None] | None = None
        self._narrator = narrator

        self.registration = Registration.NONE
        self._ever_accepted = False
        self._link: _Link | None = None
        self._session: asyncio.TaskGroup | None = None
        self.connected = False
        self._online = asyncio.Event()
        self._tx_queue: deque[TxMessage] = deque()
        self._tx_changed = asyncio.Event()
        self._tx_idle = asyncio.Event()
        self._tx_idle.set()
        self._status_queue: deque[tuple[float, StatusChanged]] = deque()
        self._status_changed = asyncio.Event()
        self._last_sent_status: dict[int, tuple[str, str]] = {}
        self._csms_tx_ids: dict[int, int] = {}  # local id → CSMS transactionId
        self._active_tx: dict[int, int] = {}  # connector → local id
        self._begin_readings: dict[int, MeterReading] = {}
        self._started_at: dict[int, datetime] = {}  # local id → start, for aligned values
        self._heartbeat_changed = asyncio.Event()
        self._boot_now = asyncio.Event()
        self._last_sample: dict[int, float] = {}
        self.vendor_handlers: dict[
            str, Callable[[str | None, str | None], tuple[str, str | None]]
        ] = {"org.evse-daemon": self._own_vendor_data}
        self.connection_count = 0
        self.connection_attempts = 0
        # A remote start answered Accepted whose authorization runs after the answer is sent
        # (AuthorizeRemoteTxRequests); the link handles one request at a time.
        self._deferred_remote_start: tuple[str, int | None] | None = None
        # UpdateFirmware, SignedUpdateFirmware, GetDiagnostics (set up by the app).
        self.firmware_management: FirmwareManagement16 | None = None
        if state_dir is None and store is not None:
            state_dir = store.path.parent
        self.security = SecurityManager(self, Path(state_dir) if state_dir is not None else None)

    # --- properties for status displays ------------------------------------------------

    @property
    def message_timeout_s(self) -> float:
        return float(self.keys.get_int("MessageTimeout") or self.section.message_timeout_s)

    @property
    def online(self) -> bool:
        return self.connected and self.registration == Registration.ACCEPTED

    @property
    def queue_depth(self) -> int:
        return len(self._tx_queue)

    def narrate(self, direction: str, action: str, payload: dict[str, Any]) -> None:
        if self._narrator is not None:
            self._narrator(direction, action, payload)

    def csms_transaction_id(self, local_id: int) -> int | None:
        return self._csms_tx_ids.get(local_id)

    def status_info(self) -> dict[str, Any]:
        return {
            "version": "1.6",
            "csms_url": self.section.csms_url,
            "connected": self.connected,
            "registration": self.registration,
            "queue_depth": self.queue_depth,
            "queue_bound": self.max_queued_messages,
            "thinned_meter_values": self.thinned_meter_values,
            "connections": self.connection_count,
            "connection_attempts": self.connection_attempts,
            "security_profile": self.security.profile,
        }

    async def security_event(self, event_type: str, tech_info: str | None = None) -> None:
        """A security event (security whitepaper §8): written to the security log, and, if
        it is one the CSMS is told of, queued on the card and sent when the link is up."""
        await self.security.event(event_type, tech_info)

    # --- events from the charger ------------------------------------------------------------

    def status_changed(self, event: StatusChanged) -> None:
        self._status_queue.append((time.monotonic(), event))
        self._status_changed.set()

    async def load(self) -> None:
        """Take over the queue and the transactionIds a previous run left in the store."""
        await self.security.load()
        if self._store is None:
            return
        for row in await self._store.transactions():
            if row["csms_id"] is not None:
                self._csms_tx_ids[row["local_id"]] = row["csms_id"]
        for queued in await self._store.load_queue():
            made = None if queued.clock is None else ClockStamp.from_json(queued.clock)
            message = TxMessage(
                queued.action, queued.local_id, queued.connector_id, queued.payload, made=made
            )
            message.seq = queued.seq
            self._tx_queue.append(message)
        if self._tx_queue:
            log.info("%d transaction messages queued from before", len(self._tx_queue))
            self._tx_idle.clear()
            self._tx_changed.set()

    async def transaction_started(
        self, event: TransactionStarted, meter_start_wh: float, reading: MeterReading | None
    ) -> None:
        self._active_tx[event.connector_id] = event.local_id
        self._started_at[event.local_id] = event.timestamp
        self._last_sample[event.connector_id] = time.monotonic()
        if reading is not None:
            self._begin_readings[event.local_id] = reading
        await self._enqueue(
            TxMessage(
                "StartTransaction",
                event.local_id,
                event.connector_id,
                {
                    "connector_id": event.connector_id,
                    "id_tag": event.id_tag,
                    "meter_start": int(meter_start_wh),
                    "timestamp": iso_utc(event.timestamp),
                },
            ),
            started={
                "id_tag": event.id_tag,
                "started_at": iso_utc(event.timestamp),
                "meter_start_wh": meter_start_wh,
            },
        )

    async def transaction_stopped(
        self, event: TransactionStopped, meter_stop_wh: float, reading: MeterReading | None
    ) -> None:
        if self._active_tx.get(event.connector_id) == event.local_id:
            del self._active_tx[event.connector_id]
        self._started_at.pop(event.local_id, None)
        payload: dict[str, Any] = {
            "meter_stop": int(meter_stop_wh),
            "timestamp": iso_utc(event.timestamp),
            "reason": event.reason.value,
        }
        if event.id_tag is not None:
            payload["id_tag"] = event.id_tag
        measurands = self.keys.get_csl("StopTxnSampledData")
        begin = self._begin_readings.pop(event.local_id, None)
        if measurands and reading is not None:
            offered = 0.0
            data = []
            if begin is not None:
                data.append(
                    meter_value(event.timestamp, begin, offered, measurands, "Transaction.Begin")
                )
            data.append(
                meter_value(event.timestamp, reading, offered, measurands, "Transaction.End")
            )
            payload["transaction_data"] = data
        await self._enqueue(
            TxMessage("StopTransaction", event.local_id, event.connector_id, payload), stopped=True
        )

    async def _thin(self) -> None:
        """Make room by dropping one intermediate meter value: from the transaction with the
        most queued, the one whose neighbours are closest in time, so the series that remains
        is as even as possible. Start, Stop, and the first and last meter value of a
        transaction are never dropped; the head of the queue may be in flight and stays."""
        by_transaction: dict[int, list[TxMessage]] = {}
        for message in list(self._tx_queue)[1:]:
            if message.action == "MeterValues":
                by_transaction.setdefault(message.local_id, []).append(message)
        candidates = max(by_transaction.values(), key=len, default=[])
        if len(candidates) < 3:
            log.error(
                "transaction queue over its bound of %d and nothing left to thin",
                self.max_queued_messages,
            )
            return
        times = [_sample_time(m) for m in candidates]
        victim_index = min(range(1, len(candidates) - 1), key=lambda i: times[i + 1] - times[i - 1])
        victim = candidates[victim_index]
        self._tx_queue.remove(victim)
        if self._store is not None and victim.durable:
            await self._store.delivered(victim.seq)
        if self.thinned_meter_values % 100 == 0:
            log.warning(
                "transaction queue full (%d messages): thinning meter values of transaction %d "
                "(%d dropped so far)",
                self.max_queued_messages,
                victim.local_id,
                self.thinned_meter_values + 1,
            )
        self.thinned_meter_values += 1

    async def recovered_stop(
        self,
        local_id: int,
        connector_id: int,
        meter_stop_wh: float,
        reason: str,
        timestamp: datetime,
    ) -> None:
        """Finish a transaction a previous run left open (power cut, kill, watchdog)."""
        payload = {
            "meter_stop": int(meter_stop_wh),
            "timestamp": iso_utc(timestamp),
            "reason": reason,
        }
        await self._enqueue(
            TxMessage("StopTransaction", local_id, connector_id, payload), stopped=True
        )

    async def _enqueue(
        self, message: TxMessage, *, started: dict[str, Any] | None = None, stopped: bool = False
    ) -> None:
        """Queue a transaction message: on the card first, then in memory for the sender."""
        if message.action == "MeterValues" and len(self._tx_queue) >= self.max_queued_messages:
            await self._thin()
        message.made = stamp(self.clock, self._boot_id)
        if self._store is not None:
            message.seq = await self._store.enqueue(
                message.action,
                message.local_id,
                message.connector_id,
                message.payload,
                started=started,
                stopped=stopped,
                clock=None if message.made is None else message.made.to_json(),
            )
        self._tx_queue.append(message)
        self._tx_idle.clear()
        self._tx_changed.set()

    async def flush(self, timeout_s: float) -> bool:
        """Wait until every queued transaction message is delivered; False on timeout."""
        return await _wait_event(self._tx_idle, timeout_s)

    async def authorize(self, id_tag: str) -> IdTagInfo | None:
        """Ask the CSMS; None when it cannot be asked (offline, timeout, CALLERROR)."""
        link = self._link
        if link is None or not self.online:
            return None
        try:
            result = await self._call(link, call.Authorize(id_tag=id_tag))
        except (TimeoutError, OCPPError, ConnectionClosed) as exc:
            log.warning("Authorize for %s failed: %s", IdTag(id_tag), exc)
            return None
        info = _idtag_info(result.id_tag_info) or IdTagInfo("Invalid")
        self.id_tag_info_received(id_tag, info)
        return info

    # --- authorization: the Local Authorization List and the cache -------------------------

    async def load_authorization(self) -> None:
        """Take over the list, its version and the cache that a previous run stored."""
        if self._store is None:
            return
        version, entries, cache = await self._store.load_authorization()
        self.authorizer.restore(
            version,
            [_stored_entry(row) for row in entries],
            [(_stored_entry(row), seq) for row, seq in cache],
        )
        log.info(
            "local authorization list version %d (%d entries), %d cached idTags",
            version,
            len(entries),
            len(cache),
        )

    async def send_local_list(
        self, version: int, update_type: str, raw_entries: list[dict[str, Any]]
    ) -> str:
        """SendLocalList (§5.15): checked, stored, then in effect; or refused unchanged."""
        try:
            entries = [_list_entry(raw) for raw in raw_entries]
        except ValueError as exc:
            log.warning("SendLocalList version %d refused: %s", version, exc)
            return UpdateStatus.FAILED.value
        checked = self.authorizer.check_local_list_update(version, update_type, entries)
        if isinstance(checked, UpdateStatus):
            log.warning(
                "SendLocalList %s version %d with %d entries: %s (list stays at version %d)",
                update_type,
                version,
                len(entries),
                checked.value,
                self.authorizer.list_version,
            )
            return checked.value
        if self._store is not None:
            try:
                await self._store.write_local_list(
                    checked.version,
                    full=checked.full,
                    upserts=[_auth_row(entry) for entry in checked.upserts],
                    removals=list(checked.removals),
                )
            except sqlite3.Error as exc:
                # Failed, and the list in effect stays the one on the card: the CSMS resends
                # (§5.15: after Failed, a Full list).
                log.error("SendLocalList version %d could not be stored: %s", version, exc)
                return UpdateStatus.FAILED.value
        self.authorizer.apply_local_list(checked)
        log.info(
            "local authorization list now version %d with %d entries",
            checked.version,
            self.authorizer.local_list_size(),
        )
        return UpdateStatus.ACCEPTED.value

    async def clear_cache(self) -> str:
        """ClearCache (§5.4). Also while AuthorizationCacheEnabled is false: the entries kept
        would otherwise come back when the cache is enabled again."""
        self.authorizer.clear_cache()
        if self._store is not None:
            try:
                await self._store.clear_auth_cache()
            except sqlite3.Error as exc:
                # The entries would be back after a restart: not cleared, as far as the CSMS
                # can rely on.
                log.error("authorization cache could not be cleared on the card: %s", exc)
                return "Rejected"
        return "Accepted"

    def id_tag_info_received(self, id_tag: str, info: IdTagInfo) -> None:
        """Every IdTagInfo the CSMS sends (Authorize, StartTransaction, StopTransaction): the
        cache learns it (§3.5.1), and a verdict that contradicts the local list is reported
        with a StatusNotification for connector 0, LocalListConflict (§3.5.2).

        Never suspends: it runs between a transaction message's answer and its removal from
        the queue, where a wait would open a window to send the message twice.
        """
        if self.authorizer.conflicts_with_list(id_tag, info):
            local = self.authorizer.local_list_entry(id_tag)
            log.warning(
                "CSMS says %s for %s, the local list says %s: reporting LocalListConflict",
                info.status,
                IdTag(id_tag),
                local.status if local else None,
            )
            cp = self.port.current_status(0)
            self.status_changed(
                StatusChanged(
                    0,
                    cp.status,
                    ErrorCode.LOCAL_LIST_CONFLICT,
                    self.clock.utc_now(),
                    info=f"{id_tag}: {info.status}"[:50],
                )
            )
        update = self.authorizer.remember(id_tag, info)
        if update is None or self._store is None:
            return
        try:
            written = self._store.write_auth_cache(
                _auth_row(update.entry), update.seq, list(update.evicted)
            )
        except RuntimeError as exc:  # the store is already closed (shutting down)
            log.warning("authorization cache entry for %s not stored: %s", IdTag(id_tag), exc)
            return
        written.add_done_callback(lambda done: _log_cache_write(done, id_tag))

    # --- the link ---------------------------------------------------------------------------

    def _url(self) -> str:
        return self.section.csms_url.rstrip("/") + "/" + quote(self.station.id, safe="")

    def _backoff_s(self, attempt: int) -> float:
        # Capped exponential with full jitter: a fleet reconnecting after a CSMS outage
        # spreads out instead of arriving in waves.
        cap = min(self.section.reconnect_max_s, self.section.reconnect_min_s * (2**attempt))
        return random.uniform(self.section.reconnect_min_s, max(cap, self.section.reconnect_min_s))

    async def run(self) -> None:
        """Keep a session with the CSMS, forever (until cancelled)."""
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._metering())
            tasks.create_task(self._connection_loop())
            if self.firmware_management is not None:
                tasks.create_task(self.firmware_management.run())
            tasks.create_task(self.security.run())

    async def wait_online(self) -> None:
        """Return once connected and registered (BootNotification Accepted)."""
        while not self.online:
            await self._online.wait()
            await asyncio.sleep(0.05)  # set, yet not online (a link just lost): look again

    async def call_when_online(self, payload: Any) -> Any:
        """Send ``payload`` once registered, as part of the session: a link lost meanwhile
        raises ConnectionError at once rather than after the message timeout. TimeoutError
        or the OCPPError of a CALLERROR otherwise, as ``call`` raises them."""
        while True:
            await self.wait_online()
            session, link = self._session, self._link
            if session is not None and link is not None:
                break
            await asyncio.sleep(0.1)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def exchange() -> None:
            # Nothing may escape into the session's task group: it would end the session.
            try:
                answer.set_result(await self._call(link, payload))
            except (TimeoutError, OCPPError) as exc:
                answer.set_exception(exc)

        try:
            task = session.create_task(exchange())
        except RuntimeError:  # the session is ending
            raise ConnectionError("the CSMS link is closing") from None
        try:
            await asyncio.wait({task})
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not answer.done():
            raise ConnectionError("the CSMS link was lost during the exchange")
        return answer.result()

    async def _connection_loop(self) -> None:
        attempt = 0
        while True:
            started = time.monotonic()
            minimum_wait = 0.0
            reconnect_now = False
            try:
                await self._connect_once()
            except* HandshakeFailed as group:
                # Logged (once per kind of failure) where it was judged.
                minimum_wait = _first(group).retry_after_s
            except* ReconnectRequested as group:
                log.info("reconnecting to the CSMS: %s", _first(group))
                reconnect_now = True
            except* ConnectionClosed:
                log.warning("CSMS connection lost")
            except* (OSError, TimeoutError, websockets.InvalidHandshake) as group:
                log.warning("CSMS connection failed: %s", _first(group))
            except* Exception as group:
                # A bug in a session must not end the link for good: log it and reconnect.
                log.error("OCPP session failed", exc_info=_first(group))
            finally:
                self._disconnected()
            if reconnect_now:
                attempt = 0
                continue
            if time.monotonic() - started >= STABLE_CONNECTION_S:
                attempt = 0
            delay = max(minimum_wait, self._backoff_s(attempt))
            attempt += 1
            log.info("reconnecting to the CSMS in %.1f s", delay)
            await asyncio.sleep(delay)

    def _disconnected(self) -> None:
        self.connected = False
        self._link = None
        self._session = None
        self._online.clear()
        self.security.disconnected()

    async def _connect_once(self) -> None:
        ping_s = self.keys.get_int("WebSocketPingInterval")
        self.connection_attempts += 1
        plan = await self.security.connect_plan()
        try:
            ws = await websockets.connect(
                plan.url,
                subprotocols=[websockets.Subprotocol(SUBPROTOCOL)],
                ssl=plan.ssl_context,
                additional_headers=plan.headers,
                ping_interval=ping_s or None,
                ping_timeout=ping_s or None,
                open_timeout=self.message_timeout_s,
                max_size=WEBSOCKET_MAX_FRAME_BYTES,
                proxy=None,
                compression=None,
                # A stopping daemon does not wait 10 s (the default) for the CSMS's close frame.
                close_timeout=2.0,
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            raise await self.security.handshake_failed(exc) from exc
        async with ws:
            if ws.subprotocol != SUBPROTOCOL:
                # A CSMS that negotiated no subprotocol may not speak 1.6 at all.
                raise websockets.InvalidHandshake(f"CSMS did not accept {SUBPROTOCOL}")
            await self.security.connected(ws)
            link = _Link(self.station.id, ws, self)
            self._link = link
            self.connected = True
            self.connection_count += 1
            log.info("connected to %s (security profile %d)", plan.url, plan.profile)
            async with asyncio.TaskGroup() as session:
                self._session = session
                session.create_task(link.start())
                session.create_task(self._run_session(link, session))

    def request_reconnect(self, reason: str) -> None:
        """End the session (after the answer being sent has gone out) and connect again at
        once: new credentials or a new security profile take effect on a new connection."""
        self._spawn(self._end_session(reason))

    @staticmethod
    async def _end_session(reason: str) -> None:
        raise ReconnectRequested(reason)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        session = self._session
        if session is None:
            coro.close()
            return
        session.create_task(self._guard(coro))

    @staticmethod
    async def _guard(coro: Coroutine[Any, Any, None]) -> None:
        try:
            await coro
        except (TimeoutError, OCPPError) as exc:
            log.warning("background OCPP exchange failed: %s", exc)

    async def _call(self, link: _Link, payload: Any) -> Any:
        action = type(payload).__name__
        self.narrate("out", action, _wire(payload))
        result = await link.call(payload, suppress=False)
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            # Python 3.11's asyncio.wait_for (inside the library's call) returns the answer
            # and drops a cancellation that arrives in the same loop iteration; a sender loop
            # that went on waiting for work would then hold up a stop or a Reset forever.
            raise asyncio.CancelledError
        self.narrate("in", f"{action}.conf", _wire(result))
        return result

    # --- registration -----------------------------------------------------------------------

    async def _register(self, link: _Link) -> None:
        while True:
            self._boot_now.clear()
            try:
                conf = await self._call(link, self._boot_notification())
            except (TimeoutError, OCPPError) as exc:
                log.warning("BootNotification failed: %s", exc)
                await asyncio.sleep(self._backoff_s(2))
                continue
            self._take_csms_time(conf.current_time)
            interval = int(conf.interval)
            self.registration = str(conf.status)
            log.info("BootNotification: %s (interval %s s)", conf.status, interval)
            if conf.status == Registration.ACCEPTED:
                if interval > 0:
                    self.keys.change("HeartbeatInterval", str(interval))
                return
            wait_s = float(interval) if interval > 0 else DEFAULT_BOOT_RETRY_S
            if conf.status == Registration.PENDING:
                # A TriggerMessage(BootNotification) while Pending retries at once.
                await _wait_event(self._boot_now, wait_s)
            else:
                await asyncio.sleep(wait_s)

    def _boot_notification(self) -> call.BootNotification:
        station = self.station
        return call.BootNotification(
            charge_point_vendor=station.vendor,
            charge_point_model=station.model,
            charge_point_serial_number=station.serial_number,
            firmware_version=station.firmware_version[:50],
        )

    async def _run_session(self, link: _Link, session: asyncio.TaskGroup) -> None:
        if not self._ever_accepted or self.registration != Registration.ACCEPTED:
            # §5.4 OCPP-J: after a plain reconnect no new BootNotification is sent.
            await self._register(link)
            first_boot = not self._ever_accepted
            self._ever_accepted = True
        else:
            first_boot = False
        self._online.set()
        self._prepare_status_queue(first_boot)
        session.create_task(self._heartbeat(link))
        if first_boot:
            session.create_task(self._status_sender(link))
            session.create_task(self._tx_sender(link))
        else:
            # After a reconnect the statuses to report were reached after the transaction
            # messages still queued: the Charging of a transaction started offline follows
            # its StartTransaction (OCTT TC_037_1). The library sends one CALL at a time, in
            # the order they are asked for, so the queue's head goes first.
            session.create_task(self._tx_sender(link))
            session.create_task(self._status_sender(link))
        # Security events after the messages above: a CSMS learns of a reboot once it knows
        # the charger's state.
        session.create_task(self.security.send_events(link))

    # --- status notifications ---------------------------------------------------------------

    def _prepare_status_queue(self, first_boot: bool) -> None:
        """After boot: every connector's status. After a reconnect: those that changed."""
        now = time.monotonic()
        current = [self.port.current_status(cid) for cid in [0, *self.port.connector_ids]]
        if first_boot:
            self._status_queue = deque((now, event) for event in current)
        else:
            self._status_queue = deque(
                (now, event)
                for event in current
                if self._last_sent_status.get(event.connector_id)
                != (event.status.value, event.error_code.value)
            )
        self._status_changed.set()

    async def _status_sender(self, link: _Link) -> None:
        while True:
            if not self._status_queue:
                self._status_changed.clear()
                await self._status_changed.wait()
                continue
            queued_at, event = self._status_queue[0]
            minimum_s = self.keys.get_int("MinimumStatusDuration")
            if minimum_s > 0:
                # MinimumStatusDuration: a status that does not last that long is not sent.
                if any(
                    e.connector_id == event.connector_id for _, e in list(self._status_queue)[1:]
                ):
                    self._status_queue.popleft()
                    continue
                remaining = queued_at + minimum_s - time.monotonic()
                if remaining > 0:
                    self._status_changed.clear()
                    await _wait_event(self._status_changed, remaining)
                    continue
            await self._send_status(link, event)
            if self._status_queue and self._status_queue[0][1] is event:
                self._status_queue.popleft()

    async def _send_status(self, link: _Link, event: StatusChanged) -> None:
        try:
            await self._call(
                link,
                call.StatusNotification(
                    connector_id=event.connector_id,
                    error_code=event.error_code.value,
                    status=event.status.value,
                    timestamp=iso_utc(event.timestamp),
                    info=event.info,
                    vendor_error_code=event.vendor_error_code,
                ),
            )
        except (TimeoutError, OCPPError) as exc:
            log.warning("StatusNotification failed: %s", exc)
            return
        self._last_sent_status[event.connector_id] = (event.status.value, event.error_code.value)

    # --- heartbeat ------------------------------------------------------------------------------

    async def _heartbeat(self, link: _Link) -> None:
        while True:
            interval = self.keys.get_int("HeartbeatInterval")
            self._heartbeat_changed.clear()
            if await _wait_event(self._heartbeat_changed, interval if interval > 0 else None):
                continue  # the interval changed: start counting again
            await self._send_heartbeat(link)

    async def _send_heartbeat(self, link: _Link) -> None:
        try:
            conf = await self._call(link, call.Heartbeat())
        except (TimeoutError, OCPPError) as exc:
            log.warning("Heartbeat failed: %s", exc)
            return
        self._take_csms_time(conf.current_time)

    def _take_csms_time(self, current_time: str) -> None:
        """The CSMS's currentTime sets the clock until NTP has (a board without an RTC)."""
        moment = _parse_time(current_time)
        if moment is None:
            log.warning("the CSMS's currentTime %r is not a time; ignored", current_time)
            return
        if isinstance(self.clock, SystemClock):
            before = self.clock.utc_now()
            if self.clock.adjust_to(moment):
                self.port.clock_set()
                self._spawn(self.security.clock_set((moment - before).total_seconds()))

    # --- transaction messages ---------------------------------------------------------------

    async def _tx_sender(self, link: _Link) -> None:
        while True:
            if not self._tx_queue:
                self._tx_idle.set()
                self._tx_changed.clear()
                await self._tx_changed.wait()
                continue
            message = self._tx_queue[0]
            try:
                delivered = await self._deliver(link, message)
            except BaseException:
                # The link broke (or the daemon stops) under a message not yet written.
                if not message.durable:
                    await asyncio.shield(self._persist(message))
                raise
            if not delivered and not message.durable:
                await self._persist(message)
            if self._tx_queue and self._tx_queue[0] is message:
                if delivered:
                    await self._forget(message)
                    continue
                message.attempts += 1
                attempts = max(1, self.keys.get_int("TransactionMessageAttempts"))
                if message.attempts >= attempts:
                    log.error(
                        "%s for transaction %s not processed after %d attempts; discarded",
                        message.action,
                        message.local_id,
                        message.attempts,
                    )
                    await self._forget(message)
                    continue
                # §4.8 (errata 3.17): wait RetryInterval × the attempts so far.
                interval = self.keys.get_int("TransactionMessageRetryInterval")
                await asyncio.sleep(interval * message.attempts)

    async def _persist(self, message: TxMessage) -> None:
        """Write a message that was being sent directly, keeping its place in the queue."""
        if self._store is None or message.durable:
            return
        later = [m.seq for m in self._tx_queue if m.durable and m.seq]
        message.seq = await self._store.enqueue(
            message.action,
            message.local_id,
            message.connector_id,
            message.payload,
            seq=min(later) - 1 if later else None,
            clock=None if message.made is None else message.made.to_json(),
        )
        message.durable = True

    async def _forget(self, message: TxMessage) -> None:
        """Drop the head of the queue once it is answered (or given up on).

        The store's delete runs while the next message is on its way: at most one delete is
        outstanding, and the store's single writer thread keeps every write in order. A power
        cut before the delete commits means that message is sent again after the restart
        (at-least-once; OCPP 1.6 has no message id to deduplicate by).
        """
        await self._settle_forgetting()
        if self._store is not None and message.durable:
            is_start = message.action == "StartTransaction"
            self._forgetting = asyncio.ensure_future(
                self._store.delivered(
                    message.seq,
                    started_local_id=message.local_id if is_start else None,
                    csms_id=self._csms_tx_ids.get(message.local_id) if is_start else None,
                    finished_local_id=(
                        message.local_id if message.action == "StopTransaction" else None
                    ),
                )
            )
        if self._tx_queue and self._tx_queue[0] is message:
            self._tx_queue.popleft()
        if not self._tx_queue:
            # Nothing follows: "idle" (flush, shutdown) must mean "written" too.
            await self._settle_forgetting()

    async def _settle_forgetting(self) -> None:
        """Wait for the store's delete of the last answered message, if one is pending.

        Shielded: a sender cancelled because the connection was lost must neither cancel the
        delete (that message would be sent again after a restart) nor leave a cancelled
        future behind, on which the next session's sender would end at once and silently
        (a TaskGroup takes a cancelled child for normal) and the queue would stall.
        """
        forgetting = self._forgetting
        if forgetting is None:
            return
        if not forgetting.cancelled():
            try:
                await asyncio.shield(forgetting)
            except Exception as exc:
                # At least once: the message is sent again after a restart.
                log.error("an answered transaction message was not removed from the store: %s", exc)
        self._forgetting = None

    async def _correct_timestamps(self, message: TxMessage) -> None:
        """A message made before the time was trusted: now that it is, move its timestamps
        to the true time, durably (once)."""
        made = message.made
        if made is None or not self.clock.trusted:
            return
        message.made = None
        error = correction(self.clock, made, self._boot_id)
        if error is None:
            if made.boot_id != self._boot_id:
                log.warning(
                    "%s for transaction %s was made before a reboot, with the clock not yet "
                    "synchronized: its timestamps cannot be corrected",
                    message.action,
                    message.local_id,
                )
            return
        log.info(
            "%s for transaction %s: timestamps corrected by %+.3f s (made before the time "
            "was known)",
            message.action,
            message.local_id,
            error.total_seconds(),
        )
        message.payload = shift_timestamps(message.payload, error)
        if self._store is not None and message.durable and message.seq:
            await self._store.rewrite(message.seq, message.payload)

    async def _deliver(self, link: _Link, message: TxMessage) -> bool:
        await self._correct_timestamps(message)
        payload = dict(message.payload)
        if message.action != "StartTransaction":
            # -1 where the StartTransaction could never be delivered (errata 3.18).
            payload["transaction_id"] = self._csms_tx_ids.get(message.local_id, -1)
        request: Any
        if message.action == "StartTransaction":
            request = call.StartTransaction(**payload)
        elif message.action == "StopTransaction":
            request = call.StopTransaction(**payload)
        else:
            request = call.MeterValues(**payload)
        try:
            result = await self._call(link, request)
        except (TimeoutError, OCPPError) as exc:
            log.warning("%s failed to process: %s", message.action, exc)
            return False
        if message.action == "StartTransaction":
            self._csms_tx_ids[message.local_id] = int(result.transaction_id)
            info = _idtag_info(result.id_tag_info) or IdTagInfo("Invalid")
            self.id_tag_info_received(str(payload["id_tag"]), info)
            if info.parent_id_tag is not None:
                # A conf without parentIdTag keeps the parent the list, the cache or the
                # Authorize.conf gave: many CSMSs send it in Authorize.conf only.
                self.port.set_parent_id_tag(
                    message.connector_id, message.local_id, info.parent_id_tag
                )
            if not info.accepted:
                self.port.transaction_rejected(message.connector_id, message.local_id)
        elif message.action == "StopTransaction":
            stop_info = _idtag_info(getattr(result, "id_tag_info", None))
            if stop_info is not None and "id_tag" in payload:
                self.id_tag_info_received(str(payload["id_tag"]), stop_info)
        return True

    # --- metering ---------------------------------------------------------------------------------

    async def _metering(self) -> None:
        """Sampled (per transaction) and clock-aligned meter values, online or not."""
        next_aligned: datetime | None = None
        while True:
            await asyncio.sleep(0.25)
            # Clock-aligned values first: they are stamped with the boundary just passed, so
            # a sampled value taken in the same round must follow them, not precede them.
            aligned_s = self.keys.get_int("ClockAlignedDataInterval")
            if aligned_s <= 0:
                next_aligned = None
            else:
                wall = self.clock.utc_now()
                if next_aligned is None or (next_aligned - wall).total_seconds() > aligned_s:
                    # The first round, or the wall clock was set back (the CSMS's time, NTP):
                    # the next boundary is planned from now, not a boundary hours away.
                    next_aligned = _next_boundary(wall, aligned_s)
                elif wall >= next_aligned:
                    measurands = self.keys.get_csl("MeterValuesAlignedData")
                    for connector_id in self.port.connector_ids:
                        await self._sample(
                            connector_id,
                            self._active_tx.get(connector_id),
                            "Sample.Clock",
                            measurands,
                            timestamp=next_aligned,
                        )
                    next_aligned = _next_boundary(wall, aligned_s)
            now = time.monotonic()
            interval = self.keys.get_int("MeterValueSampleInterval")
            if interval > 0:
                for connector_id, local_id in list(self._active_tx.items()):
                    if now - self._last_sample.get(connector_id, now) >= interval:
                        self._last_sample[connector_id] = now
                        await self._sample(
                            connector_id,
                            local_id,
                            "Sample.Periodic",
                            self.keys.get_csl("MeterValuesSampledData"),
                        )

    async def _sample(
        self,
        connector_id: int,
        local_id: int | None,
        context: str,
        measurands: tuple[str, ...],
        timestamp: datetime | None = None,
    ) -> None:
        view = self.port.view(connector_id)
        if view.meter is None or "meter" in view.faults or not measurands:
            # No reading yet, or the meter is lost (the last good reading is not a new one):
            # never report a made-up or stale value.
            return
        if local_id is not None and (
            # The charger has stopped it: its StopTransaction (on its way) has the last value,
            # and a value stamped now would come after the transaction's end.
            view.transaction_local_id != local_id
            # A clock-aligned instant from before the transaction started.
            or (timestamp is not None and self._started_at.get(local_id, timestamp) > timestamp)
        ):
            if context == "Sample.Periodic":
                return
            local_id = None  # the connector's value, outside the transaction
        value = meter_value(
            timestamp or self.clock.utc_now(),
            view.meter,
            view.offered_current_a,
            measurands,
            context,
        )
        payload = {"connector_id": connector_id, "meter_value": [value]}
        if local_id is not None:
            message = TxMessage("MeterValues", local_id, connector_id, payload)
            if self.online and not self._tx_queue:
                message.durable = False
                self._tx_queue.append(message)
                self._tx_idle.clear()
                self._tx_changed.set()
            else:
                await self._enqueue(message)
        elif self.online and self._link is not None:
            # Meter values outside a transaction are not transaction messages: sent when
            # online, not queued.
            self._spawn(self._call_quietly(self._link, call.MeterValues(**payload)))

    async def _call_quietly(self, link: _Link, payload: Any) -> None:
        await self._call(link, payload)

    # --- CSMS requests ------------------------------------------------------------------------

    def remote_start(
        self, id_tag: str, connector_id: int | None, profile: ChargingProfile | None = None
    ) -> str:
        # Before the start: with the EV plugged in, the transaction begins inside it.
        self.port.remote_start_profile(connector_id, id_tag, profile)
        status = self._remote_start(id_tag, connector_id)
        if status != "Accepted":
            self.port.remote_start_profile(connector_id, id_tag, None)
        return status

    def _remote_start(self, id_tag: str, connector_id: int | None) -> str:
        self._deferred_remote_start = None
        if self.registration != Registration.ACCEPTED:
            return "Rejected"  # not allowed while Pending (§4.2.1)
        if connector_id is not None and connector_id not in self.port.connector_ids:
            return "Rejected"
        if not self.port.can_remote_start(connector_id):
            return "Rejected"
        if not self.keys.get_bool("AuthorizeRemoteTxRequests"):
            known = self.authorizer.lookup(id_tag)
            parent = known.parent_id_tag if known is not None else None
            started = self.port.remote_start(connector_id, id_tag, parent)
            return "Accepted" if started else "Rejected"
        self._deferred_remote_start = (id_tag, connector_id)
        return "Accepted"  # authorized first, after the answer is sent

    def after_remote_start(self, id_tag: str, connector_id: int | None) -> None:
        # Only a start answered Accepted goes on: a Rejected one must leave no trace (no
        # Authorize.req, no session), e.g. while Pending or on a busy connector.
        deferred, self._deferred_remote_start = self._deferred_remote_start, None
        if deferred is not None:
            self._spawn(self._authorize_then_start(*deferred))

    async def _authorize_then_start(self, id_tag: str, connector_id: int | None) -> None:
        info = self.authorizer.pre_authorized(id_tag) or await self.authorize(id_tag)
        decision = info if info is not None else self.authorizer.offline_decision(id_tag)
        if decision.accepted:
            self.port.remote_start(connector_id, id_tag, decision.parent_id_tag)
        else:
            log.info("remote start for %s not authorized: %s", IdTag(id_tag), decision.status)

    async def set_charging_profile(self, connector_id: int, profile: ChargingProfile) -> str:
        if connector_id != 0 and connector_id not in self.port.connector_ids:
            raise PropertyConstraintViolationError(
                description=f"no connector {connector_id}", details={"field": "connectorId"}
            )
        reason = await self.port.set_charging_profile(connector_id, profile)
        if reason is not None:
            log.info("SetChargingProfile %d Rejected: %s", profile.profile_id, reason)
            return "Rejected"
        return "Accepted"

    def remote_stop(self, transaction_id: int) -> str:
        if self.registration != Registration.ACCEPTED:
            return "Rejected"
        for connector_id, local_id in self._active_tx.items():
            if self._csms_tx_ids.get(local_id) == transaction_id:
                return "Accepted" if self.port.remote_stop(connector_id) else "Rejected"
        return "Rejected"

    async def unlock(self, connector_id: int) -> str:
        if connector_id not in self.port.connector_ids:
            return "NotSupported"
        return (await self.port.unlock(connector_id)).value

    async def change_availability(self, connector_id: int, operative: bool) -> str:
        if connector_id != 0 and connector_id not in self.port.connector_ids:
            return "Rejected"
        return (await self.port.change_availability(connector_id, operative)).value

    def get_configuration(
        self, requested: list[str] | None
    ) -> tuple[list[dict[str, Any]], list[str]]:
        entries, unknown = self.keys.get_configuration(requested)
        known = [{"key": e.key, "readonly": e.readonly, "value": e.value} for e in entries]
        return known, unknown

    async def change_configuration(self, key: str, value: str) -> str:
        if key in SECURITY_KEYS:
            status = await self.security.change_configuration(key, value)
            if status == ChangeResult.ACCEPTED.value:
                self.port.configuration_changed(key)
            return status
        result = self.keys.change(key, value)
        if result in (ChangeResult.ACCEPTED, ChangeResult.REBOOT_REQUIRED):
            if self._persist_key is not None:
                await self._persist_key(key, self.keys.get(key))
            if key == "HeartbeatInterval":
                self._heartbeat_changed.set()
            elif key == "MessageTimeout" and self._link is not None:
                self._link._response_timeout = self.message_timeout_s
            self.port.configuration_changed(key)
        return result.value

    def data_transfer(
        self, vendor_id: str, message_id: str | None, data: str | None
    ) -> tuple[str, str | None]:
        handler = self.vendor_handlers.get(vendor_id)
        if handler is None:
            return ("UnknownVendorId", None)
        return handler(message_id, data)

    def _own_vendor_data(self, message_id: str | None, data: str | None) -> tuple[str, str | None]:
        if message_id == "Status":
            views = [
                {"connector": v.connector_id, "status": v.status.value, "cp": v.cp_state.value}
                for v in self.port.views()
            ]
            return ("Accepted", json.dumps(views))
        return ("UnknownMessageId", None)

    TRIGGERABLE = frozenset(
        {
            "BootNotification",
            "DiagnosticsStatusNotification",
            "FirmwareStatusNotification",
            "Heartbeat",
            "MeterValues",
            "StatusNotification",
        }
    )

    def trigger_status(self, requested: str, connector_id: int | None) -> str:
        if requested not in self.TRIGGERABLE:
            return "NotImplemented"
        if connector_id is not None and (
            connector_id < 0 or (connector_id > 0 and connector_id not in self.port.connector_ids)
        ):
            return "Rejected"
        if requested == "BootNotification" and self.registration == Registration.ACCEPTED:
            # Recommended by §5.17: once accepted, a new boot adds nothing.
            return "Rejected"
        return "Accepted"

    def after_trigger(self, requested: str, connector_id: int | None) -> None:
        if self.trigger_status(requested, connector_id) != "Accepted" or self._link is None:
            return
        link = self._link
        if requested == "BootNotification":
            self._boot_now.set()
        elif requested == "Heartbeat":
            self._spawn(self._send_heartbeat(link))
        elif requested == "StatusNotification":
            targets = [connector_id] if connector_id is not None else [0, *self.port.connector_ids]
            for target in targets:
                self._spawn(self._send_status(link, self.port.current_status(target)))
        elif requested == "MeterValues":
            targets = [connector_id] if connector_id else self.port.connector_ids
            for target in targets:
                self._spawn(self._triggered_meter_values(link, target))
        elif requested in ("DiagnosticsStatusNotification", "FirmwareStatusNotification"):
            self._spawn(self._call_quietly(link, self._triggered_management_status(requested)))

    def _triggered_management_status(self, requested: str) -> Any:
        """Idle, unless an update or an upload is under way (§4.4, §4.5)."""
        management = self.firmware_management
        if requested == "DiagnosticsStatusNotification":
            if management is not None:
                return management.triggered_diagnostics_status()
            return call.DiagnosticsStatusNotification(status="Idle")
        if management is not None:
            return management.triggered_firmware_status()
        return call.FirmwareStatusNotification(status="Idle")

    async def _triggered_meter_values(self, link: _Link, connector_id: int) -> None:
        view = self.port.view(connector_id)
        if view.meter is None or "meter" in view.faults:
            return
        measurands = self.keys.get_csl("MeterValuesSampledData")
        payload: dict[str, Any] = {
            "connector_id": connector_id,
            "meter_value": [
                meter_value(
                    self.clock.utc_now(), view.meter, view.offered_current_a, measurands, "Trigger"
                )
            ],
        }
        local_id = self._active_tx.get(connector_id)
        if local_id is not None and local_id in self._csms_tx_ids:
            payload["transaction_id"] = self._csms_tx_ids[local_id]
        await self._call(link, call.MeterValues(**payload))


def _sample_time(message: TxMessage) -> float:
    """When a queued MeterValues was sampled (seconds since the epoch)."""
    try:
        stamp = message.payload["meter_value"][0]["timestamp"]
        moment = _parse_time(str(stamp))
    except (KeyError, IndexError, TypeError):
        moment = None
    return moment.timestamp() if moment is not None else message.queued_at


async def _wait_event(event: asyncio.Event, timeout_s: float | None) -> bool:
    """Wait for ``event``; False on timeout.

    Not asyncio.wait_for: on Python 3.11 it can swallow a cancellation that arrives in the
    same loop step as the event, leaving a task that never ends on shutdown.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await event.wait()
    except TimeoutError:
        return False
    return True


def _first(group: BaseExceptionGroup[Any]) -> Any:
    """The first leaf exception of a (possibly nested) exception group."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def _next_boundary(now: datetime, interval_s: int) -> datetime:
    """The next instant that is a whole number of intervals after midnight UTC."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    elapsed = (now - midnight).total_seconds()
    periods = int(elapsed // interval_s) + 1
    return midnight + timedelta(seconds=periods * interval_s)


def _wire(payload: Any) -> dict[str, Any]:
    """A dataclass payload as a plain dict, for narration."""
    fields = getattr(payload, "__dataclass_fields__", None)
    if fields is None:
        return {}
    return {name: getattr(payload, name) for name in fields if getattr(payload, name) is not None}
