"""Firmware updates, sans I/O: the job a CSMS request starts, and the decisions of its update.

The update is a state machine over a job that is plain data: the runner stores the job after
every change, so a daemon restarted at any point (power cut, watchdog, the update's own
restart) continues where it was. The machine does nothing itself: it is told the time
(``advance``) and what happened (``downloaded``, ``sessions_ended``, ...), answers with the
next step to take, and queues the statuses to report (``drain``), as the charger does.

The steps and the statuses reported (OCPP 1.6 §5.19 with errata 3.47-3.49; security
whitepaper L01 for a signed update, whose extra statuses a plain update does not report)::

    waiting for retrieveDate            DownloadScheduled (signed, if it is in the future)
    downloading, retries apart          Downloading, then Downloaded or DownloadFailed
    checking the signature (signed)     SignatureVerified or InvalidSignature
    waiting for installDateTime         InstallScheduled (signed, if it is in the future)
    waiting for transactions to end     (free connectors Unavailable from here on)
    installing                          Installing, then InstallationFailed, or
                                        InstallRebooting (signed) and a restart
    the restarted daemon registers      Installed; if it does not within a time and a
                                        number of starts, the previous version is restored
                                        and the update ends InstallationFailed

Retries count as the errata (3.50) and OCPP 2.0.1 define them: how many times to try again
after the first attempt. A download interrupted by a restart is not a failed attempt: it
starts over.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta
from typing import Any


class FirmwareStatus(enum.StrEnum):
    """FirmwareStatus (OCPP 1.6 §7.25) and FirmwareStatusEnumType (security whitepaper)."""

    DOWNLOAD_SCHEDULED = "DownloadScheduled"
    DOWNLOADING = "Downloading"
    DOWNLOADED = "Downloaded"
    DOWNLOAD_FAILED = "DownloadFailed"
    DOWNLOAD_PAUSED = "DownloadPaused"
    SIGNATURE_VERIFIED = "SignatureVerified"
    INVALID_SIGNATURE = "InvalidSignature"
    INSTALL_SCHEDULED = "InstallScheduled"
    INSTALLING = "Installing"
    INSTALL_REBOOTING = "InstallRebooting"
    INSTALLED = "Installed"
    INSTALLATION_FAILED = "InstallationFailed"
    INSTALL_VERIFICATION_FAILED = "InstallVerificationFailed"
    IDLE = "Idle"


class Phase(enum.StrEnum):
    SCHEDULED = "scheduled"  # until retrieve_at
    DOWNLOADING = "downloading"  # an attempt is due or under way
    RETRY_WAIT = "retry-wait"  # until next_attempt_at
    VERIFYING = "verifying"  # the signature of the downloaded file
    INSTALL_SCHEDULED = "install-scheduled"  # until install_at
    WAITING_IDLE = "waiting-idle"  # until no transaction runs
    INSTALLING = "installing"
    ACTIVATING = "activating"  # installed and switched to; the restarted daemon confirms
    REPORTING = "reporting"  # ended: the end status is to reach the CSMS
    DONE = "done"


# From waiting for the transactions to end until the new version has proven itself, a
# connector that is not in use is Unavailable (errata 3.49, L01.FR.07).
HOLDING_PHASES = frozenset({Phase.WAITING_IDLE, Phase.INSTALLING, Phase.ACTIVATING})
# Once installing has begun the update cannot be called off (L01.FR.27).
UNCANCELLABLE_PHASES = frozenset({Phase.INSTALLING, Phase.ACTIVATING})
_SIGNED_ONLY = frozenset(
    {
        FirmwareStatus.DOWNLOAD_SCHEDULED,
        FirmwareStatus.DOWNLOAD_PAUSED,
        FirmwareStatus.SIGNATURE_VERIFIED,
        FirmwareStatus.INVALID_SIGNATURE,
        FirmwareStatus.INSTALL_SCHEDULED,
        FirmwareStatus.INSTALL_REBOOTING,
        FirmwareStatus.INSTALL_VERIFICATION_FAILED,
    }
)


def signed_only(status: FirmwareStatus) -> bool:
    """A status of the security whitepaper that OCPP 1.6's FirmwareStatus does not have."""
    return status in _SIGNED_ONLY


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse_time(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a time: {value!r}")
    return datetime.fromisoformat(value)


@dataclass
class FirmwareJob:
    """One requested update, as stored (``to_dict``) between steps and across restarts."""

    location: str
    retrieve_at: datetime
    attempts_allowed: int  # 1 + retries
    retry_interval_s: int
    id: str = ""  # names the job's download directory
    signed: bool = False
    request_id: int | None = None
    install_at: datetime | None = None
    signing_certificate: str | None = None
    signature: str | None = None
    phase: Phase = Phase.SCHEDULED
    failed_attempts: int = 0
    next_attempt_at: datetime | None = None
    file: str | None = None  # the downloaded file
    # What the installer needs to roll back (e.g. the venv the symlink pointed to); stored
    # before anything is switched, so that an interrupted install can be undone.
    install_state: dict[str, Any] | None = None
    starts: int = 0  # daemon starts since the new version was switched to
    last_status: FirmwareStatus | None = None
    end_status: FirmwareStatus | None = None
    reason: str | None = None  # why it failed, for the log and evsectl status
    history: list[str] = field(default_factory=list)  # every status reported, in order

    def to_dict(self) -> dict[str, Any]:
        raw = asdict(self)
        for key in ("retrieve_at", "install_at", "next_attempt_at"):
            raw[key] = _time(getattr(self, key))
        return raw

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> FirmwareJob:
        """A stored job; ValueError, KeyError or TypeError for one that cannot be read."""
        # Fields this version does not know are left out: after a rollback the previous
        # version reads the job the newer one stored, and must still report its outcome.
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in raw.items() if key in known}
        retrieve_at = _parse_time(values.pop("retrieve_at"))
        if retrieve_at is None:
            raise ValueError("a job without retrieve_at")
        job = cls(retrieve_at=retrieve_at, **values)
        job.install_at = _parse_time(values.get("install_at"))
        job.next_attempt_at = _parse_time(values.get("next_attempt_at"))
        job.phase = Phase(job.phase)
        job.last_status = FirmwareStatus(job.last_status) if job.last_status else None
        job.end_status = FirmwareStatus(job.end_status) if job.end_status else None
        return job


class StepKind(enum.Enum):
    WAIT = "wait"  # until ``Step.until`` (or until told something)
    DOWNLOAD = "download"
    VERIFY = "verify"
    WAIT_FOR_IDLE = "wait-for-idle"  # hold free connectors, wait until no transaction runs
    INSTALL = "install"
    RESTART = "restart"  # the new version is switched to: restart the daemon into it
    AWAIT_CONFIRMATION = "await-confirmation"  # until registered with the CSMS
    ROLL_BACK = "roll-back"
    REPORT = "report"  # deliver the end status
    FINISHED = "finished"


@dataclass(frozen=True, slots=True)
class Step:
    kind: StepKind
    until: datetime | None = None


class FirmwareUpdate:
    """The decisions of one update; the runner carries them out."""

    def __init__(self, job: FirmwareJob) -> None:
        self.job = job
        self._outbox: list[FirmwareStatus] = []
        # Switched to the new version in this run: the next step restarts the daemon. A job
        # in ACTIVATING that was loaded from the store instead waits for confirmation.
        self._switched_here = False
        self._rollback_due = False

    @classmethod
    def start(cls, job: FirmwareJob, now: datetime) -> FirmwareUpdate:
        """A new update, just accepted."""
        update = cls(job)
        if job.signed and job.retrieve_at > now:
            update._emit(FirmwareStatus.DOWNLOAD_SCHEDULED)  # L01.FR.13
        return update

    @classmethod
    def resume(cls, job: FirmwareJob, *, max_unconfirmed_starts: int) -> FirmwareUpdate:
        """A job a previous run of the daemon stored: continue it."""
        update = cls(job)
        if job.phase is Phase.INSTALLING:
            # The daemon died while installing: what was done is undone, and the update
            # fails (a half-installed version is not one to start).
            job.reason = "interrupted while installing"
            update._rollback_due = True
        elif job.phase is Phase.ACTIVATING:
            job.starts += 1
            if job.starts > max_unconfirmed_starts:
                job.reason = f"the new version did not register within {job.starts - 1} starts"
                update._rollback_due = True
        elif job.phase is Phase.REPORTING and job.end_status is not None:
            # It may not have reached the CSMS before the restart: report it (again).
            update._outbox.append(job.end_status)
        elif job.phase is Phase.RETRY_WAIT:
            pass  # the retry keeps its time
        return update

    # --- what the runner reads --------------------------------------------------------------

    def drain(self) -> list[FirmwareStatus]:
        """The statuses to report since the last call, in order."""
        statuses = self._outbox[:]
        self._outbox.clear()
        return statuses

    @property
    def holds_connectors(self) -> bool:
        return self.job.phase in HOLDING_PHASES

    @property
    def busy(self) -> bool:
        """Still downloading or installing (not ended)."""
        return self.job.phase not in (Phase.REPORTING, Phase.DONE)

    @property
    def cancellable(self) -> bool:
        return self.job.phase not in UNCANCELLABLE_PHASES

    def advance(self, now: datetime) -> Step:
        """The clock says ``now``: make the transitions that were waiting for a time, and
        return the next step."""
        job = self.job
        if self._rollback_due:
            return Step(StepKind.ROLL_BACK)
        if job.phase is Phase.SCHEDULED:
            if now < job.retrieve_at:
                return Step(StepKind.WAIT, job.retrieve_at)
            job.phase = Phase.DOWNLOADING
            self._emit(FirmwareStatus.DOWNLOADING)
        if job.phase is Phase.RETRY_WAIT:
            if job.next_attempt_at is not None and now < job.next_attempt_at:
                return Step(StepKind.WAIT, job.next_attempt_at)
            job.phase = Phase.DOWNLOADING
            job.next_attempt_at = None
        if job.phase is Phase.INSTALL_SCHEDULED:
            if job.install_at is not None and now < job.install_at:
                return Step(StepKind.WAIT, job.install_at)
            job.phase = Phase.WAITING_IDLE
        return Step(
            {
                Phase.DOWNLOADING: StepKind.DOWNLOAD,
                Phase.VERIFYING: StepKind.VERIFY,
                Phase.WAITING_IDLE: StepKind.WAIT_FOR_IDLE,
                Phase.INSTALLING: StepKind.INSTALL,
                Phase.ACTIVATING: (
                    StepKind.RESTART if self._switched_here else StepKind.AWAIT_CONFIRMATION
                ),
                Phase.REPORTING: StepKind.REPORT,
                Phase.DONE: StepKind.FINISHED,
            }[job.phase]
        )

    # --- what happened ----------------------------------------------------------------------

    def download_failed(self, now: datetime, reason: str) -> None:
        job = self.job
        job.failed_attempts += 1
        job.reason = reason
        if job.failed_attempts >= job.attempts_allowed:
            self._end(FirmwareStatus.DOWNLOAD_FAILED)
            return
        job.phase = Phase.RETRY_WAIT
        job.next_attempt_at = now + timedelta(seconds=job.retry_interval_s)

    def downloaded(self, file: str, now: datetime) -> None:
        job = self.job
        job.file = file
        job.reason = None
        self._emit(FirmwareStatus.DOWNLOADED)
        if job.signed:
            job.phase = Phase.VERIFYING
        else:
            self._ready_to_install(now)

    def signature_checked(self, valid: bool, now: datetime, reason: str | None = None) -> None:
        if not valid:
            self.job.reason = reason or "the signature does not verify"
            self._end(FirmwareStatus.INVALID_SIGNATURE)
            return
        self._emit(FirmwareStatus.SIGNATURE_VERIFIED)
        self._ready_to_install(now)

    def _ready_to_install(self, now: datetime) -> None:
        job = self.job
        if job.install_at is not None and job.install_at > now:
            job.phase = Phase.INSTALL_SCHEDULED
            self._emit(FirmwareStatus.INSTALL_SCHEDULED)  # L01.FR.16
        else:
            job.phase = Phase.WAITING_IDLE

    def sessions_ended(self) -> None:
        self.job.phase = Phase.INSTALLING
        self._emit(FirmwareStatus.INSTALLING)

    def prepared(self, install_state: dict[str, Any]) -> None:
        """The new version is ready beside the old one; to be stored before switching."""
        self.job.install_state = install_state

    def installed(self) -> None:
        """Switched to the new version: the daemon restarts into it."""
        job = self.job
        job.phase = Phase.ACTIVATING
        job.starts = 0
        self._switched_here = True
        self._emit(FirmwareStatus.INSTALL_REBOOTING)  # L01.FR.15: before rebooting

    def install_failed(self, reason: str, *, verification: bool = False) -> None:
        """Nothing was switched: the running version stays. ``verification``: the file is
        not an installable firmware (InstallVerificationFailed for a signed update)."""
        self.job.reason = reason
        signed_check = verification and self.job.signed
        self._end(
            FirmwareStatus.INSTALL_VERIFICATION_FAILED
            if signed_check
            else FirmwareStatus.INSTALLATION_FAILED
        )

    def confirmed(self) -> None:
        """The restarted daemon registered with the CSMS: the new version works."""
        self.job.reason = None
        self._end(FirmwareStatus.INSTALLED)

    def confirmation_timed_out(self, timeout_s: float) -> None:
        self.job.reason = f"the new version did not register within {timeout_s:g} s"
        self._rollback_due = True

    def rolled_back(self) -> None:
        self._rollback_due = False
        self._end(FirmwareStatus.INSTALLATION_FAILED)

    def reported(self) -> None:
        """The end status reached the CSMS (or was given up on)."""
        self.job.phase = Phase.DONE

    # --- internals --------------------------------------------------------------------------

    def _emit(self, status: FirmwareStatus) -> None:
        if not self.job.signed and signed_only(status):
            return
        self.job.last_status = status
        self.job.history.append(status.value)
        self._outbox.append(status)

    def _end(self, status: FirmwareStatus) -> None:
        self.job.phase = Phase.REPORTING
        self.job.end_status = status
        self._emit(status)
