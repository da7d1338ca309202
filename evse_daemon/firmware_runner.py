"""Carries out firmware updates: the I/O around the sans-I/O ``FirmwareUpdate``.

The runner asks the update for its next step, takes it (a wait on the injected clock, a
download, a signature check in a worker thread, waiting for the transactions to end, the
installer), tells the update what happened, stores the job, and hands the statuses to the
reporter (the OCPP adapter's side). It holds the connectors through the charger while the
update says so, and asks the app to restart the daemon into a new version.

Nothing here blocks the event loop or waits on it for long: downloads and hashing run in
threads, pip in subprocesses, and the safety path never awaits any of it.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import secrets
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from .clock import Clock
from .config import FirmwareConfig
from .firmware import FirmwareJob, FirmwareStatus, FirmwareUpdate, Phase, StepKind
from .firmware_install import Installer, InstallError
from .store import Store
from .transfer import TransferError, TransferSettings, download, file_name, redact_url

log = logging.getLogger(__name__)

STORE_NAMESPACE = "firmware"
STORE_KEY = "job"
# How often the wait for transactions to end looks again.
IDLE_POLL_S = 1.0
# A wait for a wall-clock time wakes at least this often: the clock of a board without an
# RTC may be stepped (NTP, the CSMS's time), which a monotonic sleep would not notice.
WALL_CLOCK_RECHECK_S = 60.0
# Before the daemon restarts, the statuses reported so far get this long to reach the CSMS.
REPORT_BEFORE_RESTART_S = 10.0


class FirmwarePort(Protocol):
    """What the runner needs from the app."""

    def set_maintenance(self, held: bool) -> None:
        """Hold free connectors Unavailable (running transactions go on), or release them."""

    def ready_to_install(self) -> bool:
        """No transaction runs, and the daemon is not stopping (an install begun now would
        only be cut short)."""

    def restart_for_firmware(self) -> None:
        """End this run of the daemon so that the (new) version installed starts."""

    async def wait_registered(self) -> None:
        """Return once the daemon is registered with the CSMS (BootNotification Accepted)."""


class FirmwareReporter(Protocol):
    """Where statuses go (the OCPP adapter's side)."""

    def firmware_status(self, job: FirmwareJob, status: FirmwareStatus) -> None: ...

    async def security_event(self, event_type: str, tech_info: str) -> None:
        """Logged in the security log and delivered to the CSMS durably (offline too)."""

    async def flush(self, timeout_s: float | None) -> bool:
        """Wait until everything reported so far is delivered (or given up); False on
        timeout."""


class RequestResult(enum.StrEnum):
    ACCEPTED = "Accepted"
    ACCEPTED_CANCELED = "AcceptedCanceled"  # L01.FR.26: the update under way is called off
    REJECTED = "Rejected"  # L01.FR.27: installing already, it cannot be called off


async def _until_cancelled() -> None:
    """Wait until the task is cancelled (the app stopping around a restart, or shutdown)."""
    await asyncio.Event().wait()


class FirmwareRunner:
    def __init__(
        self,
        settings: FirmwareConfig,
        *,
        store: Store,
        clock: Clock,
        installer: Installer,
        directory: Path,
        roots_dir: Path,
        port: FirmwarePort,
        transfer: TransferSettings,
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self.installer = installer
        self.directory = directory
        self.roots_dir = roots_dir
        self.port = port
        self.transfer = transfer
        self.reporter: FirmwareReporter | None = None
        self.update: FirmwareUpdate | None = None
        self._held = False
        self._saved: dict[str, Any] | None = None
        self._group: asyncio.TaskGroup | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def job(self) -> FirmwareJob | None:
        return self.update.job if self.update is not None else None

    def status_info(self) -> dict[str, Any] | None:
        """For ``evsectl status``."""
        job = self.job
        if job is None:
            return None
        return {
            "location": redact_url(job.location),
            "signed": job.signed,
            "request_id": job.request_id,
            "phase": job.phase.value,
            "status": job.last_status.value if job.last_status else None,
            "reason": job.reason,
            "failed_attempts": job.failed_attempts,
            "history": job.history,
        }

    # --- lifecycle -------------------------------------------------------------------------

    async def load(self) -> None:
        """Take over the update a previous run stored; call before the connectors report
        their status, so that held connectors come up Unavailable."""
        raw = (await self.store.get_all(STORE_NAMESPACE)).get(STORE_KEY)
        if raw is not None:
            try:
                job = FirmwareJob.from_dict(raw)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("dropping an unreadable stored firmware update: %s", exc)
                await self.store.delete(STORE_NAMESPACE, STORE_KEY)
                job = None
            if job is not None and job.phase is Phase.DONE:
                self.update = FirmwareUpdate(job)  # what triggers report about
            elif job is not None:
                self.update = FirmwareUpdate.resume(
                    job, max_unconfirmed_starts=self.settings.max_unconfirmed_starts
                )
                log.warning(
                    "continuing the firmware update of %s (%s)", redact_url(job.location), job.phase
                )
                self._hold(self.update.holds_connectors)
        keep = self.job.id if self.job is not None and self.job.phase is not Phase.DONE else None
        await asyncio.to_thread(self._remove_downloads, keep)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                if self.update is not None and self.update.job.phase is not Phase.DONE:
                    self._start()
                await _until_cancelled()
            finally:
                self._group = None

    # --- requests --------------------------------------------------------------------------

    async def signing_certificate_problem(self, pem: str) -> str | None:
        """Why ``pem`` is not a certificate to accept firmware from (it must chain to an
        installed manufacturer root), or None."""
        now = self.clock.utc_now()

        def check() -> str | None:
            from . import firmware_signature as signing  # cryptography: only when needed

            try:
                signing.check_signing_certificate(pem, signing.load_roots(self.roots_dir), now)
            except signing.CertificateInvalid as exc:
                return str(exc)
            return None

        return await asyncio.to_thread(check)

    def request(self, job: FirmwareJob) -> RequestResult:
        """Start ``job``, calling off the update under way if there is one and it can be."""
        current = self.update
        if current is not None and current.busy and not current.cancellable:
            log.warning(
                "firmware update refused: %s is being installed", redact_url(current.job.location)
            )
            return RequestResult.REJECTED
        canceled = current is not None and current.busy
        if canceled:
            assert current is not None
            log.warning(
                "firmware update of %s called off for a new one", redact_url(current.job.location)
            )
        if self._task is not None:
            self._task.cancel()  # its own clean-up removes its download
        job.id = job.id or secrets.token_hex(4)
        self.update = FirmwareUpdate.start(job, self.clock.utc_now())
        self._start()
        return RequestResult.ACCEPTED_CANCELED if canceled else RequestResult.ACCEPTED

    async def request_durably(self, job: FirmwareJob) -> RequestResult:
        """``request``, and the job on the card before the CSMS is answered: an update the
        CSMS was told is accepted survives a restart that comes right after the answer."""
        result = self.request(job)
        if result is not RequestResult.REJECTED and self.update is not None:
            await self._save(self.update)
        return result

    def _start(self) -> None:
        if self._group is None or self.update is None:
            return  # run() starts it
        self._task = self._group.create_task(self._drive(self.update))

    # --- the steps -------------------------------------------------------------------------

    async def _drive(self, update: FirmwareUpdate) -> None:
        try:
            await self._steps(update)
        except Exception:
            # A bug: logged, and the job stays stored as it was (a restart resumes it); the
            # app's other tasks must not go down with it.
            log.exception("firmware update of %s stopped", redact_url(update.job.location))
            # The charger serves again meanwhile: held connectors must not stay Unavailable
            # until a restart.
            self._hold(False)
        finally:
            if self.update is not update:  # called off: its files go, the new one decides
                with contextlib.suppress(OSError):
                    await asyncio.to_thread(shutil.rmtree, self._job_dir(update.job), True)

    async def _steps(self, update: FirmwareUpdate) -> None:
        while True:
            await self._settle(update)
            step = update.advance(self.clock.utc_now())
            await self._settle(update)
            kind = step.kind
            if kind is StepKind.WAIT:
                assert step.until is not None
                await self._sleep_until(step.until)
            elif kind is StepKind.DOWNLOAD:
                await self._download(update)
            elif kind is StepKind.VERIFY:
                await self._verify(update)
            elif kind is StepKind.WAIT_FOR_IDLE:
                await self._transactions_ended()
                update.sessions_ended()
            elif kind is StepKind.INSTALL:
                await self._install(update)
            elif kind is StepKind.RESTART:
                await self._restart(update, "the new version")
            elif kind is StepKind.AWAIT_CONFIRMATION:
                await self._await_confirmation(update)
            elif kind is StepKind.ROLL_BACK:
                await self._roll_back(update)
            elif kind is StepKind.REPORT:
                await self._flush(None)
                update.reported()
            else:
                await self._settle(update)
                await asyncio.to_thread(shutil.rmtree, self._job_dir(update.job), True)
                return

    async def _settle(self, update: FirmwareUpdate) -> None:
        """Report the statuses the update queued, hold or release the connectors as it says,
        and store the job if it changed."""
        for status in update.drain():
            log.info("firmware update of %s: %s", redact_url(update.job.location), status.value)
            if self.reporter is not None:
                self.reporter.firmware_status(update.job, status)
        self._hold(update.holds_connectors)
        await self._save(update)

    async def _save(self, update: FirmwareUpdate) -> None:
        raw = update.job.to_dict()
        if raw != self._saved:
            await self.store.put(STORE_NAMESPACE, STORE_KEY, raw)
            self._saved = raw

    def _hold(self, held: bool) -> None:
        if held != self._held:
            self._held = held
            log.warning(
                "connectors %s for the firmware update",
                "held Unavailable" if held else "released",
            )
            self.port.set_maintenance(held)

    async def _transactions_ended(self) -> None:
        # Looked at once a second: a session lasts hours, and the hold (already applied)
        # keeps new ones from starting, so nothing is gained by an event per transaction.
        while True:
            if self.port.ready_to_install():
                return
            await asyncio.sleep(IDLE_POLL_S)

    async def _sleep_until(self, moment: datetime) -> None:
        delay_s = (moment - self.clock.utc_now()).total_seconds()
        await asyncio.sleep(min(max(delay_s, 0.0), WALL_CLOCK_RECHECK_S))

    def _job_dir(self, job: FirmwareJob) -> Path:
        return self.directory / (job.id or "job")

    def _remove_downloads(self, keep: str | None) -> None:
        """Remove what older jobs left in the download directory (and unfinished parts)."""
        if not self.directory.is_dir():
            return
        for entry in self.directory.iterdir():
            if entry.name == keep:
                for part in entry.glob(".*.part"):
                    part.unlink(missing_ok=True)
            elif entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)

    async def _download(self, update: FirmwareUpdate) -> None:
        job = update.job
        target = self._job_dir(job) / file_name(job.location, "firmware.bin")
        attempt = job.failed_attempts + 1
        log.info(
            "downloading %s (attempt %d of %d)",
            redact_url(job.location),
            attempt,
            job.attempts_allowed,
        )
        try:
            size = await download(
                job.location,
                target,
                max_bytes=self.settings.max_download_bytes,
                settings=self.transfer,
            )
        except TransferError as exc:
            log.warning("firmware download from %s failed: %s", redact_url(job.location), exc)
            update.download_failed(self.clock.utc_now(), str(exc))
            return
        log.info("firmware downloaded: %s (%d bytes)", target, size)
        update.downloaded(str(target), self.clock.utc_now())

    async def _verify(self, update: FirmwareUpdate) -> None:
        job = update.job
        # Certificates are valid between two dates: judged by a board's guess of the time
        # (no RTC, NTP not synced yet), a good one may look expired. The CSMS's time or NTP
        # comes within a minute of the link coming up.
        while True:
            if self.clock.trusted:
                break
            await asyncio.sleep(IDLE_POLL_S)
        now = self.clock.utc_now()

        def check() -> str | None:
            from . import firmware_signature as signing  # cryptography: only when needed

            try:
                certificate = signing.check_signing_certificate(
                    job.signing_certificate or "", signing.load_roots(self.roots_dir), now
                )
            except signing.CertificateInvalid as exc:
                return f"signing certificate: {exc}"
            file = Path(job.file or "")
            if not signing.signature_valid(file, job.signature or "", certificate):
                return "the signature does not verify over the downloaded file"
            return None

        problem = await asyncio.to_thread(check)
        update.signature_checked(problem is None, now, problem)
        if problem is not None:
            log.error("firmware from %s refused: %s", redact_url(job.location), problem)
            if self.reporter is not None:
                await self.reporter.security_event("InvalidFirmwareSignature", problem)

    async def _install(self, update: FirmwareUpdate) -> None:
        job = update.job
        try:
            state = await self.installer.prepare(Path(job.file or ""))
            update.prepared(state)
            await self._settle(update)  # stored before anything that runs changes
            await self.installer.switch(state)
        except InstallError as exc:
            log.error("firmware from %s not installed: %s", redact_url(job.location), exc)
            update.install_failed(str(exc), verification=exc.verification)
            return
        except OSError as exc:
            log.error("could not switch to the new firmware: %s", exc)
            with contextlib.suppress(Exception):
                await self.installer.roll_back(job.install_state)
            update.install_failed(f"could not switch to the new version: {exc}")
            return
        update.installed()

    async def _restart(self, update: FirmwareUpdate, into: str) -> None:
        await self._settle(update)
        await self._flush(REPORT_BEFORE_RESTART_S)
        log.warning("restarting the daemon into %s", into)
        self.port.restart_for_firmware()
        await _until_cancelled()

    async def _await_confirmation(self, update: FirmwareUpdate) -> None:
        timeout_s = self.settings.confirm_timeout_s
        try:
            async with asyncio.timeout(timeout_s):
                await self.port.wait_registered()
        except TimeoutError:
            log.error("the new firmware did not register with the CSMS within %g s", timeout_s)
            update.confirmation_timed_out(timeout_s)
            return
        log.warning("the new firmware is up and registered: update confirmed")
        update.confirmed()
        if self.reporter is not None:
            # Security whitepaper §8: a critical event, pushed to the CSMS.
            await self.reporter.security_event(
                "FirmwareUpdated", f"installed from {redact_url(update.job.location)}"
            )

    async def _roll_back(self, update: FirmwareUpdate) -> None:
        job = update.job
        try:
            changed = await self.installer.roll_back(job.install_state)
        except Exception:
            log.exception("rolling back the firmware failed")
            changed = False
        log.error("firmware update of %s failed: %s", redact_url(job.location), job.reason)
        update.rolled_back()
        if not changed:
            return  # this version stays: it reports the failure itself
        await self._settle(update)
        if await self._flush(REPORT_BEFORE_RESTART_S):
            update.reported()  # out already: the previous version need not send it again
        await self._restart(update, "the previous version")

    async def _flush(self, timeout_s: float | None) -> bool:
        if self.reporter is None:
            return True
        return await self.reporter.flush(timeout_s)
