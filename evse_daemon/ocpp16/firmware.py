"""OCPP 1.6 FirmwareManagement (UpdateFirmware, GetDiagnostics and their notifications) and the
security whitepaper's SignedUpdateFirmware, over the protocol-independent runners.

``FirmwareRoutes`` adds the CSMS's requests to the adapter's link; ``FirmwareManagement16``
checks them (bad input gets the CALLERROR OCPP-J names), hands them to the runners, and
sends what the runners report, in order, once the charger is registered: one CALL at a
time, retried when the link drops, given up after a few CALLERRORs or timeouts.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ocpp.exceptions import (
    NotSupportedError,
    OCPPError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.routing import on
from ocpp.v16 import call, call_result
from ocpp.v16.enums import Action

from ..diagnostics import DiagnosticsRequest, DiagnosticsRunner, DiagnosticsStatus
from ..firmware import FirmwareJob, FirmwareStatus
from ..firmware_runner import FirmwareRunner, RequestResult
from ..transfer import location_problem, redact_url

if TYPE_CHECKING:
    from .adapter import OcppAdapter16

log = logging.getLogger(__name__)

# A notification the CSMS answers with a CALLERROR (or not at all) this often is dropped.
MAX_SEND_ATTEMPTS = 3
SEND_RETRY_S = 5.0
RECONNECT_PAUSE_S = 0.5
# FirmwareStatus of OCPP 1.6 for the statuses of a signed update it does not have, when a
# TriggerMessage asks while a signed update is under way.
_AS_16 = {
    FirmwareStatus.DOWNLOAD_SCHEDULED: FirmwareStatus.IDLE,
    FirmwareStatus.DOWNLOAD_PAUSED: FirmwareStatus.DOWNLOADING,
    FirmwareStatus.SIGNATURE_VERIFIED: FirmwareStatus.DOWNLOADED,
    FirmwareStatus.INSTALL_SCHEDULED: FirmwareStatus.DOWNLOADED,
    FirmwareStatus.INSTALL_REBOOTING: FirmwareStatus.INSTALLING,
}


def _date_time(field: str, value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except (ValueError, AttributeError):
        raise TypeConstraintViolationError(
            description=f"{field}: {value!r} is not a dateTime", details={"field": field}
        ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _optional_date_time(field: str, value: str | None) -> datetime | None:
    return None if value is None else _date_time(field, value)


def _location(field: str, value: str) -> str:
    problem = location_problem(value)
    if problem is not None:
        raise PropertyConstraintViolationError(
            description=f"{field}: {problem}"[:200], details={"field": field}
        )
    return value


def _count(field: str, value: int | None, default: int) -> int:
    if value is None:
        return default
    if value < 0:
        raise PropertyConstraintViolationError(
            description=f"{field} must not be negative", details={"field": field}
        )
    return value


class FirmwareRoutes:
    """The FirmwareManagement requests, as routes of the adapter's link (a mixin of it)."""

    _adapter: OcppAdapter16

    def _management(self) -> FirmwareManagement16:
        management = self._adapter.firmware_management
        if management is None:
            raise NotSupportedError(description="firmware management is not set up")
        return management

    @on(Action.update_firmware, skip_schema_validation=True)
    async def _update_firmware(
        self,
        location: str,
        retrieve_date: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        **_: Any,
    ) -> call_result.UpdateFirmware:
        await self._management().update_firmware(location, retrieve_date, retries, retry_interval)
        return call_result.UpdateFirmware()

    @on(Action.signed_update_firmware, skip_schema_validation=True)
    async def _signed_update_firmware(
        self,
        request_id: int,
        firmware: dict[str, Any],
        retries: int | None = None,
        retry_interval: int | None = None,
        **_: Any,
    ) -> call_result.SignedUpdateFirmware:
        status = await self._management().signed_update_firmware(
            request_id, firmware, retries, retry_interval
        )
        return call_result.SignedUpdateFirmware(status=status)

    @on(Action.get_diagnostics, skip_schema_validation=True)
    def _get_diagnostics(
        self,
        location: str,
        retries: int | None = None,
        retry_interval: int | None = None,
        start_time: str | None = None,
        stop_time: str | None = None,
        **_: Any,
    ) -> call_result.GetDiagnostics:
        name = self._management().get_diagnostics(
            location, retries, retry_interval, start_time, stop_time
        )
        return call_result.GetDiagnostics(file_name=name)


class FirmwareManagement16:
    """Turns the CSMS's requests into runner jobs, and the runners' reports into OCPP 1.6
    notifications (FirmwareStatusNotification, SignedFirmwareStatusNotification,
    DiagnosticsStatusNotification, SecurityEventNotification)."""

    def __init__(
        self,
        adapter: OcppAdapter16,
        firmware: FirmwareRunner,
        diagnostics: DiagnosticsRunner,
        *,
        require_signed: bool = False,
    ) -> None:
        self.adapter = adapter
        self.firmware = firmware
        self.diagnostics = diagnostics
        self.require_signed = require_signed
        firmware.reporter = self
        diagnostics.reporter = self
        self._outbox: deque[Any] = deque()
        self._queued = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        # ExtendedTriggerMessage(FirmwareStatusNotification) is answered by the security
        # extension's handler; the status it sends is this one's, in this outbox's order.
        adapter.security.firmware_status_trigger = self._send_triggered_signed_status

    # --- requests from the CSMS ------------------------------------------------------------

    async def update_firmware(
        self,
        location: str,
        retrieve_date: str,
        retries: int | None,
        retry_interval: int | None,
    ) -> None:
        if self.require_signed:
            # Security whitepaper L01.FR.20: only signed updates.
            raise NotSupportedError(description="only SignedUpdateFirmware is accepted")
        settings = self.firmware.settings
        job = FirmwareJob(
            location=_location("location", location),
            retrieve_at=_date_time("retrieveDate", retrieve_date),
            attempts_allowed=1 + _count("retries", retries, settings.default_retries),
            retry_interval_s=_count(
                "retryInterval", retry_interval, settings.default_retry_interval_s
            ),
        )
        result = await self.firmware.request_durably(job)
        if result is RequestResult.REJECTED:
            # UpdateFirmware.conf has no status: the CSMS sees the installation go on.
            log.warning(
                "UpdateFirmware for %s ignored: installing another version", redact_url(location)
            )

    async def signed_update_firmware(
        self,
        request_id: int,
        firmware: dict[str, Any],
        retries: int | None,
        retry_interval: int | None,
    ) -> str:
        settings = self.firmware.settings
        location = str(firmware["location"])
        retrieve_at = _date_time("firmware.retrieveDateTime", firmware["retrieve_date_time"])
        install_at = _optional_date_time(
            "firmware.installDateTime", firmware.get("install_date_time")
        )
        attempts = 1 + _count("retries", retries, settings.default_retries)
        interval_s = _count("retryInterval", retry_interval, settings.default_retry_interval_s)
        certificate = str(firmware["signing_certificate"])
        # L01.FR.23-24: the certificate is checked before the request is accepted.
        problem = await self.firmware.signing_certificate_problem(certificate)
        if problem is not None:
            log.error(
                "SignedUpdateFirmware %d: signing certificate refused: %s", request_id, problem
            )
            await self.security_event("InvalidFirmwareSigningCertificate", problem)
            return "InvalidCertificate"
        if location_problem(location) is not None:
            log.error("SignedUpdateFirmware %d: %s", request_id, location_problem(location))
            return "Rejected"
        job = FirmwareJob(
            location=location,
            retrieve_at=retrieve_at,
            attempts_allowed=attempts,
            retry_interval_s=interval_s,
            signed=True,
            request_id=request_id,
            install_at=install_at,
            signing_certificate=certificate,
            signature=str(firmware["signature"]),
        )
        return (await self.firmware.request_durably(job)).value

    def get_diagnostics(
        self,
        location: str,
        retries: int | None,
        retry_interval: int | None,
        start_time: str | None,
        stop_time: str | None,
    ) -> str:
        settings = self.diagnostics.settings
        start = _optional_date_time("startTime", start_time)
        stop = _optional_date_time("stopTime", stop_time)
        if start is not None and stop is not None and start > stop:
            raise PropertyConstraintViolationError(
                description="startTime is after stopTime", details={"field": "startTime"}
            )
        request = DiagnosticsRequest(
            location=_location("location", location),
            attempts_allowed=1 + _count("retries", retries, settings.default_retries),
            retry_interval_s=_count(
                "retryInterval", retry_interval, settings.default_retry_interval_s
            ),
            start=start,
            stop=stop,
        )
        return self.diagnostics.request(request)

    # --- TriggerMessage ---------------------------------------------------------------------

    def triggered_firmware_status(self) -> call.FirmwareStatusNotification:
        """FirmwareStatusNotification for a TriggerMessage: Idle unless an update is under
        way (§4.5), then its last status in OCPP 1.6 terms."""
        update = self.firmware.update
        status = FirmwareStatus.IDLE
        if update is not None and update.busy and update.job.last_status is not None:
            status = _AS_16.get(update.job.last_status, update.job.last_status)
        return call.FirmwareStatusNotification(status=status.value)

    def triggered_signed_firmware_status(self) -> call.SignedFirmwareStatusNotification:
        """SignedFirmwareStatusNotification for an ExtendedTriggerMessage: the last status
        sent, or Idle after Installed or when there was none (L01.FR.28-29)."""
        job = self.firmware.job
        last = job.last_status if job is not None and job.signed else None
        if last is None or last is FirmwareStatus.INSTALLED:
            return call.SignedFirmwareStatusNotification(status="Idle", request_id=None)
        assert job is not None
        return call.SignedFirmwareStatusNotification(status=last.value, request_id=job.request_id)

    async def _send_triggered_signed_status(self) -> None:
        self._send(self.triggered_signed_firmware_status())

    def triggered_diagnostics_status(self) -> call.DiagnosticsStatusNotification:
        busy = self.diagnostics.busy
        status = DiagnosticsStatus.UPLOADING if busy else DiagnosticsStatus.IDLE
        return call.DiagnosticsStatusNotification(status=status.value)

    # --- what the runners report --------------------------------------------------------------

    def firmware_status(self, job: FirmwareJob, status: FirmwareStatus) -> None:
        if job.signed:
            self._send(
                call.SignedFirmwareStatusNotification(
                    status=status.value, request_id=job.request_id
                )
            )
        else:
            self._send(call.FirmwareStatusNotification(status=status.value))

    def diagnostics_status(self, status: DiagnosticsStatus) -> None:
        self._send(call.DiagnosticsStatusNotification(status=status.value))

    async def security_event(self, event_type: str, tech_info: str) -> None:
        """To the security log, and to the CSMS through the security events' own queue on
        the card (security whitepaper §8): delivered once the link is up, offline too."""
        await self.adapter.security_event(event_type, tech_info[:255] or None)

    async def flush(self, timeout_s: float | None) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                await self._empty.wait()
        except TimeoutError:
            return False
        return True

    # --- sending ------------------------------------------------------------------------------

    def _send(self, payload: Any) -> None:
        self._outbox.append(payload)
        self._empty.clear()
        self._queued.set()

    async def run(self) -> None:
        """Deliver the notifications in order, whenever the charger is registered."""
        attempts = 0
        while True:
            if not self._outbox:
                self._empty.set()
                self._queued.clear()
                await self._queued.wait()
                continue
            payload = self._outbox[0]
            try:
                await self.adapter.call_when_online(payload)
            except ConnectionError:
                # The link dropped under it: again on the next one (after a pause, so that
                # the adapter gets to see the link is gone before this looks again).
                await asyncio.sleep(RECONNECT_PAUSE_S)
                continue
            except (TimeoutError, OCPPError) as exc:
                attempts += 1
                if attempts < MAX_SEND_ATTEMPTS:
                    log.warning("%s failed (%s): trying again", type(payload).__name__, exc)
                    await asyncio.sleep(SEND_RETRY_S)
                    continue
                log.error(
                    "%s given up after %d attempts: %s", type(payload).__name__, attempts, exc
                )
            attempts = 0
            self._outbox.popleft()
