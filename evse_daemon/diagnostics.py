"""GetDiagnostics: what the charger knows about itself, in one .tar.gz, uploaded where the CSMS
says (OCPP 1.6 §5.9, §8.2).

The archive holds, under a directory named like the file:

- ``manifest.json``: the request (time window), when and by what it was made, what is missing
- ``status.json``, ``ocpp-configuration.json``, ``events.json``, ``firmware.json``: the
  charger's state as the app hands it over (``evsectl status``, the configuration keys
  without write-only ones, the store's event records, the last firmware update)
- ``evse.toml``: the config file with passwords, secrets and URL credentials redacted
- ``journal.txt``: the unit's journal between startTime and stopTime (``journalctl``)
- ``logs/<name>``: every ``[diagnostics] log_files`` file, lines between the two times

Gathering runs in worker threads and subprocesses; the event loop only awaits them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import io
import json
import logging
import re
import shutil
import tarfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from .clock import Clock
from .commands import run_command
from .config import DiagnosticsConfig
from .transfer import TransferError, TransferSettings, redact_url, upload

log = logging.getLogger(__name__)

JOURNAL_TIMEOUT_S = 60.0
# The most of one log file that goes in (its end: the latest lines).
MAX_LOG_FILE_BYTES = 16 * 1024 * 1024
_SECRET_KEY = re.compile(
    r"^(?P<head>\s*#?\s*[\"']?[\w.-]*(?:password|secret|token|passphrase|authorizationkey)"
    r"[\w.-]*[\"']?\s*=\s*)(?P<value>.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_LOG_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})")
_SAFE = re.compile(r"[^A-Za-z0-9._-]")

Snapshot = Callable[[datetime | None, datetime | None], Awaitable[dict[str, Any]]]


class DiagnosticsStatus(enum.StrEnum):
    IDLE = "Idle"
    UPLOADING = "Uploading"
    UPLOADED = "Uploaded"
    UPLOAD_FAILED = "UploadFailed"


class DiagnosticsReporter(Protocol):
    def diagnostics_status(self, status: DiagnosticsStatus) -> None: ...


@dataclass(frozen=True, slots=True)
class DiagnosticsRequest:
    location: str
    attempts_allowed: int  # 1 + retries (errata 3.50: retries are tries again)
    retry_interval_s: int
    start: datetime | None = None
    stop: datetime | None = None


def file_name(station_id: str, now: datetime) -> str:
    return f"diagnostics-{_SAFE.sub('_', station_id)}-{now.astimezone(UTC):%Y%m%dT%H%M%SZ}.tar.gz"


def redact_config(text: str) -> str:
    """The config file as it may leave the charger: secret values and URL credentials out."""
    text = _SECRET_KEY.sub(lambda m: m["head"] + '"<redacted>"', text)
    return redact_url(text)


def _within(moment: datetime, start: datetime | None, stop: datetime | None) -> bool:
    return (start is None or moment >= start) and (stop is None or moment <= stop)


def filter_log(text: str, start: datetime | None, stop: datetime | None) -> str:
    """The lines of a daemon log between ``start`` and ``stop``. A line is dated by the
    local time it starts with (the daemon's log format); undated lines (tracebacks) go with
    the line before them."""
    if start is None and stop is None:
        return text
    kept: list[str] = []
    keep = True
    for line in text.splitlines(keepends=True):
        match = _LOG_TIME.match(line)
        if match is not None:
            try:
                moment = datetime.fromisoformat(f"{match[1]}T{match[2]}").astimezone(UTC)
            except ValueError:
                pass
            else:
                keep = _within(moment, start, stop)
        if keep:
            kept.append(line)
    return "".join(kept)


def _read_window(path: Path, start: datetime | None, stop: datetime | None) -> str:
    return filter_log(_read_tail(path), start, stop)


def _read_tail(path: Path) -> str:
    with open(path, "rb") as file:
        file.seek(0, 2)
        size = file.tell()
        file.seek(max(0, size - MAX_LOG_FILE_BYTES))
        return file.read().decode("utf-8", "replace")


async def _journal(
    settings: DiagnosticsConfig, start: datetime | None, stop: datetime | None
) -> tuple[str | None, str | None]:
    """(the journal text, or None with why not)."""
    if not settings.journal_unit:
        return None, "no journal_unit configured"
    program = shutil.which("journalctl")
    if program is None:
        return None, "journalctl not found"
    argv = [
        program,
        "--no-pager",
        "--utc",
        "-o",
        "short-iso-precise",
        "-u",
        settings.journal_unit,
        "-n",
        str(settings.max_journal_lines),
    ]
    if start is not None:
        argv += ["--since", f"{start.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"]
    if stop is not None:
        argv += ["--until", f"{stop.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC"]
    result = await run_command(argv, JOURNAL_TIMEOUT_S, merge_stderr=False)
    if result.status != 0:
        problem = f"journalctl exit status {result.status}: {result.stderr[:500]}"
        return result.stdout or None, problem
    return result.stdout, None


def _write_archive(path: Path, root: str, members: dict[str, bytes]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.part")
    now = time.time()
    with tarfile.open(temporary, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{root}/{name}")
            info.size = len(data)
            info.mtime = int(now)
            info.mode = 0o644
            archive.addfile(info, io.BytesIO(data))
    temporary.replace(path)


async def collect(
    path: Path,
    *,
    settings: DiagnosticsConfig,
    config_path: str,
    snapshot: Snapshot,
    start: datetime | None,
    stop: datetime | None,
    now: datetime,
) -> Path:
    """Gather everything into the .tar.gz ``path``."""
    members: dict[str, bytes] = {}
    missing: dict[str, str] = {}
    for name, value in (await snapshot(start, stop)).items():
        members[name] = json.dumps(value, indent=2, default=str).encode()
    try:
        config_text = await asyncio.to_thread(Path(config_path).read_text, "utf-8", "replace")
        members["evse.toml"] = redact_config(config_text).encode()
    except OSError as exc:
        missing["evse.toml"] = str(exc)
    journal, why = await _journal(settings, start, stop)
    if journal is not None:
        members["journal.txt"] = journal.encode()
    if why is not None:
        missing["journal.txt"] = why
    for index, log_file in enumerate(settings.log_files):
        source = Path(log_file)
        name = f"logs/{index}-{_SAFE.sub('_', source.name)}"
        try:
            # Read and filtered in a worker thread: up to 16 MB of text, seconds on a Pi.
            text = await asyncio.to_thread(_read_window, source, start, stop)
        except OSError as exc:
            missing[name] = f"{log_file}: {exc}"
            continue
        members[name] = text.encode()
    manifest = {
        "created": now.astimezone(UTC).isoformat(),
        "start_time": start.isoformat() if start else None,
        "stop_time": stop.isoformat() if stop else None,
        "missing": missing,
    }
    members = {"manifest.json": json.dumps(manifest, indent=2).encode(), **members}
    root = path.name.removesuffix(".tar.gz")
    await asyncio.to_thread(_write_archive, path, root, members)
    return path


class DiagnosticsRunner:
    """Runs one GetDiagnostics at a time: a new request cancels the one under way."""

    def __init__(
        self,
        settings: DiagnosticsConfig,
        *,
        directory: Path,
        config_path: str,
        station_id: str,
        clock: Clock,
        snapshot: Snapshot,
        transfer: TransferSettings,
    ) -> None:
        self.settings = settings
        self.directory = directory
        self.config_path = config_path
        self.station_id = station_id
        self.clock = clock
        self.snapshot = snapshot
        self.transfer = transfer
        self.reporter: DiagnosticsReporter | None = None
        self.last_status: DiagnosticsStatus | None = None
        self.last_file: str | None = None
        self._group: asyncio.TaskGroup | None = None
        self._current: asyncio.Task[None] | None = None
        self._in_progress = False  # requested, and its outcome not yet reported

    @property
    def busy(self) -> bool:
        return self._in_progress

    def request(self, request: DiagnosticsRequest) -> str:
        """Start collecting and uploading; returns the file name (GetDiagnostics.conf)."""
        name = file_name(self.station_id, self.clock.utc_now())
        if self._current is not None and not self._current.done():
            log.warning("GetDiagnostics: the upload of %s is cancelled for a new one", name)
            self._current.cancel()
        if self._group is None:
            raise RuntimeError("the diagnostics runner is not running")
        self.last_file = name
        self._in_progress = True
        self._current = self._group.create_task(self._execute(request, name))
        return name

    async def run(self) -> None:
        async with asyncio.TaskGroup() as group:
            self._group = group
            try:
                await asyncio.Event().wait()  # until cancelled with the app
            finally:
                self._group = None

    def _report(self, status: DiagnosticsStatus) -> None:
        self.last_status = status
        if status in (DiagnosticsStatus.UPLOADED, DiagnosticsStatus.UPLOAD_FAILED):
            self._in_progress = False
        if self.reporter is not None:
            self.reporter.diagnostics_status(status)

    async def _execute(self, request: DiagnosticsRequest, name: str) -> None:
        # What an earlier run left (killed mid-upload) goes first: the card is small.
        await asyncio.to_thread(shutil.rmtree, self.directory, True)
        path = self.directory / name
        outcome = DiagnosticsStatus.UPLOAD_FAILED
        try:
            outcome = await self._upload(request, path, name)
        except Exception:
            # A bug must not take the app's task group down; the CSMS hears it failed.
            log.exception("GetDiagnostics %s failed", name)
        finally:
            # Gone from the card before the outcome is told: nothing is left behind either way.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(path.unlink, True)
        self._report(outcome)

    async def _upload(
        self, request: DiagnosticsRequest, path: Path, name: str
    ) -> DiagnosticsStatus:
        await collect(
            path,
            settings=self.settings,
            config_path=self.config_path,
            snapshot=self.snapshot,
            start=request.start,
            stop=request.stop,
            now=self.clock.utc_now(),
        )
        self._report(DiagnosticsStatus.UPLOADING)
        for attempt in range(1, request.attempts_allowed + 1):
            try:
                await upload(
                    request.location,
                    path,
                    name,
                    http_method=self.settings.http_method,
                    settings=self.transfer,
                )
            except TransferError as exc:
                log.warning(
                    "diagnostics upload %d of %d to %s failed: %s",
                    attempt,
                    request.attempts_allowed,
                    request.location,
                    exc,
                )
                if attempt < request.attempts_allowed:
                    await asyncio.sleep(request.retry_interval_s)
                continue
            log.info("diagnostics %s uploaded to %s", name, redact_url(request.location))
            return DiagnosticsStatus.UPLOADED
        return DiagnosticsStatus.UPLOAD_FAILED
