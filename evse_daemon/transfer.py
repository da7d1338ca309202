"""File transfers for firmware and diagnostics: HTTP(S) and FTP(S) downloads and uploads.

The stdlib clients (``urllib``, ``ftplib``) block, so each transfer runs in a thread of its
own and the event loop only awaits a future. The thread is a daemon thread rather than one of
the loop's default executor: a transfer stuck on a dead link must neither delay the daemon's
exit (the default executor is joined on shutdown) nor hold a worker another task needs. A
cancelled transfer sets a flag the thread checks between blocks; until then the socket
timeout bounds how long it can hang.

A download is streamed to a hidden temporary file next to its destination, fsynced, checked
against the length the server announced (a truncated body is a failed download, never a
firmware), then renamed into place, so the destination either holds a whole file or nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import ftplib
import http.client
import logging
import os
import re
import secrets
import shutil
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

from . import __version__

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMES = ("http", "https", "ftp", "ftps")
BLOCK_BYTES = 64 * 1024
# Space left free on the state directory's file system after a download: the store and the
# journal must keep working.
RESERVE_BYTES = 32 * 1024 * 1024
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._+-]")


# user:password@ in a URL (FTP locations often carry them).
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s\"'@]+@")


def redact_url(text: str) -> str:
    """``text`` with the credentials of every URL in it replaced by ``<redacted>``: for logs,
    ``evsectl status`` and the diagnostics archive."""
    return _URL_CREDENTIALS.sub(lambda m: m["scheme"] + "<redacted>@", text)


class TransferError(Exception):
    """A download or upload failed; the message says why, for the log and the CSMS."""


@dataclass(frozen=True, slots=True)
class TransferSettings:
    # A silent peer fails the attempt after this long (per socket operation).
    timeout_s: float = 30.0
    # Trust anchors for https:// and ftps:// beyond the system store (e.g. the CSMS's CA).
    ca_file: str | None = None

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        if self.ca_file:
            context.load_verify_locations(self.ca_file)
        return context


def location_problem(url: str) -> str | None:
    """Why ``url`` cannot be transferred from or to, or None if it can be tried."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - urlsplit checks the port only when it is read
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme.lower() not in SCHEMES:
        return f"scheme {parts.scheme!r} is not supported (only {', '.join(SCHEMES)})"
    if not parts.hostname:
        return "has no host"
    return None


def file_name(url: str, default: str) -> str:
    """The last path segment of ``url`` as a safe local file name (a wheel's name matters to
    pip), or ``default``."""
    segment = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    name = _SAFE_NAME.sub("_", segment).lstrip(".")
    return name[:200] or default


async def download(
    url: str,
    destination: Path,
    *,
    max_bytes: int,
    settings: TransferSettings,
) -> int:
    """Fetch ``url`` into ``destination`` (whole, fsynced) and return its size in bytes.

    Raises TransferError for anything that went wrong on the way.
    """
    scheme = urlsplit(url).scheme.lower()

    def work(stop: threading.Event) -> int:
        target = _Target(destination, max_bytes, stop)
        try:
            if scheme in ("ftp", "ftps"):
                _ftp_download(url, target, settings)
            elif scheme in ("http", "https"):
                _http_download(url, target, settings)
            else:
                raise TransferError(f"scheme {scheme!r} is not supported")
            return target.commit()
        finally:
            target.discard()

    return await _in_thread(work)


async def upload(
    url: str,
    source: Path,
    name: str,
    *,
    http_method: str,
    settings: TransferSettings,
) -> None:
    """Send ``source`` as ``name`` to the directory ``url`` (FTP: STOR there; HTTP PUT: to
    ``url/name``; HTTP POST: to ``url`` itself, the name in Content-Disposition)."""
    scheme = urlsplit(url).scheme.lower()

    def work(stop: threading.Event) -> None:
        if scheme in ("ftp", "ftps"):
            _ftp_upload(url, source, name, stop, settings)
        elif scheme in ("http", "https"):
            _http_upload(url, source, name, http_method, stop, settings)
        else:
            raise TransferError(f"scheme {scheme!r} is not supported")

    await _in_thread(work)


# --- the thread bridge ---------------------------------------------------------------------


async def _in_thread(work: Callable[[threading.Event], T]) -> T:
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()
    stop = threading.Event()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return  # the awaiting task was cancelled
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        try:
            result = work(stop)
        except BaseException as exc:
            outcome: tuple[T | None, BaseException | None] = (None, _as_transfer_error(exc))
        else:
            outcome = (result, None)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, name="evse-transfer", daemon=True).start()
    try:
        return await future
    finally:
        stop.set()


def _as_transfer_error(exc: BaseException) -> BaseException:
    if isinstance(exc, TransferError):
        return exc
    if isinstance(exc, urllib.error.HTTPError):
        return TransferError(f"HTTP {exc.code} {exc.reason}")
    if isinstance(exc, urllib.error.URLError):
        return TransferError(f"cannot reach the server: {exc.reason}")
    if isinstance(exc, ftplib.Error):
        return TransferError(f"FTP: {str(exc).strip()}")
    if isinstance(exc, http.client.HTTPException):
        return TransferError(f"HTTP: {type(exc).__name__} {exc}")
    if isinstance(exc, OSError | EOFError):
        return TransferError(f"{type(exc).__name__}: {exc}")
    return exc  # a bug: let it be seen as what it is


class _Target:
    """The temporary file a download streams into; committed (renamed) only when whole."""

    def __init__(self, destination: Path, max_bytes: int, stop: threading.Event) -> None:
        self.destination = destination
        self.max_bytes = max_bytes
        self.stop = stop
        destination.parent.mkdir(parents=True, exist_ok=True)
        # Unique per attempt: a thread of a cancelled attempt may still be writing its own.
        self.temporary = destination.with_name(f".{destination.name}.{secrets.token_hex(4)}.part")
        self._file: IO[bytes] | None = None
        self.received = 0
        self.expected: int | None = None

    def expect(self, length: int | None) -> None:
        """The size the server announced, checked against the limit and the free space."""
        self.expected = length
        if length is None:
            return
        if length > self.max_bytes:
            raise TransferError(f"file of {length} bytes is over the limit of {self.max_bytes}")
        free = shutil.disk_usage(self.destination.parent).free
        if length + RESERVE_BYTES > free:
            raise TransferError(f"not enough space for {length} bytes ({free} free)")

    def write(self, block: bytes) -> None:
        if self.stop.is_set():
            raise TransferError("cancelled")
        self.received += len(block)
        if self.received > self.max_bytes:
            raise TransferError(f"more than the limit of {self.max_bytes} bytes")
        if self._file is None:
            self._file = open(self.temporary, "wb")  # closed in commit or discard
        self._file.write(block)

    def commit(self) -> int:
        if self.expected is not None and self.received != self.expected:
            raise TransferError(f"truncated: {self.received} of {self.expected} bytes arrived")
        if self._file is None:
            self._file = open(self.temporary, "wb")  # an empty file is a file too
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        if self.stop.is_set():
            raise TransferError("cancelled")
        os.replace(self.temporary, self.destination)
        _fsync_directory(self.destination.parent)
        return self.received

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        with contextlib.suppress(FileNotFoundError):
            self.temporary.unlink()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- HTTP(S) --------------------------------------------------------------------------------


def _opener(settings: TransferSettings) -> urllib.request.OpenerDirector:
    # No proxy from the environment: a charger talks to its servers directly (as its
    # websocket does), and an environment variable must not redirect its firmware.
    return urllib.request.build_opener(
        urllib.request.ProxyHandler({}),
        urllib.request.HTTPSHandler(context=settings.ssl_context()),
    )


_HEADERS = {"User-Agent": f"evse-daemon/{__version__}"}


def _http_download(url: str, target: _Target, settings: TransferSettings) -> None:
    request = urllib.request.Request(url, headers=_HEADERS)
    with _opener(settings).open(request, timeout=settings.timeout_s) as response:
        length = response.headers.get("Content-Length")
        try:
            target.expect(int(length) if length is not None else None)
        except ValueError:
            raise TransferError(f"bad Content-Length {length!r}") from None
        while block := response.read(BLOCK_BYTES):
            target.write(block)


class _StoppableReader:
    """A file read in blocks that gives up when the transfer is cancelled."""

    def __init__(self, file: IO[bytes], stop: threading.Event) -> None:
        self._file = file
        self._stop = stop

    def read(self, size: int = -1) -> bytes:
        if self._stop.is_set():
            raise TransferError("cancelled")
        return self._file.read(BLOCK_BYTES if size < 0 else min(size, BLOCK_BYTES))


def _http_upload(
    url: str,
    source: Path,
    name: str,
    method: str,
    stop: threading.Event,
    settings: TransferSettings,
) -> None:
    target = url.rstrip("/") + "/" + quote(name) if method == "PUT" else url
    headers = {
        **_HEADERS,
        "Content-Length": str(source.stat().st_size),
        "Content-Type": "application/gzip",
        "Content-Disposition": f'attachment; filename="{name}"',
    }
    with open(source, "rb") as file:
        body: Any = _StoppableReader(file, stop)
        request = urllib.request.Request(target, data=body, headers=headers, method=method)
        with _opener(settings).open(request, timeout=settings.timeout_s) as response:
            response.read()  # 2xx (urllib raises HTTPError for the rest)


# --- FTP(S) ---------------------------------------------------------------------------------


def _ftp_session(url: str, settings: TransferSettings) -> tuple[ftplib.FTP, str]:
    """A logged-in FTP session (passive mode, binary) and the URL's path.

    The path is taken relative to the login directory (RFC 1738), as servers expect.
    """
    parts = urlsplit(url)
    ftp: ftplib.FTP
    if parts.scheme.lower() == "ftps":
        ftp = ftplib.FTP_TLS(context=settings.ssl_context(), timeout=settings.timeout_s)
    else:
        ftp = ftplib.FTP(timeout=settings.timeout_s)
    try:
        ftp.connect(parts.hostname or "", parts.port or 21)
        user = unquote(parts.username) if parts.username else "anonymous"
        password = unquote(parts.password) if parts.password else "evse-daemon@"
        ftp.login(user, password)
        if isinstance(ftp, ftplib.FTP_TLS):
            ftp.prot_p()
        ftp.set_pasv(True)  # the security whitepaper asks for passive FTP
        ftp.voidcmd("TYPE I")
    except BaseException:
        ftp.close()
        raise
    return ftp, unquote(parts.path).lstrip("/")


def _ftp_download(url: str, target: _Target, settings: TransferSettings) -> None:
    ftp, path = _ftp_session(url, settings)
    try:
        try:
            size = ftp.size(path)
        except ftplib.error_perm:
            size = None  # SIZE is an extension (RFC 3659); without it, no length check
        target.expect(size)
        ftp.retrbinary(f"RETR {path}", target.write, blocksize=BLOCK_BYTES)
        with contextlib.suppress(ftplib.Error, OSError):
            ftp.quit()
    finally:
        ftp.close()


def _ftp_upload(
    url: str, source: Path, name: str, stop: threading.Event, settings: TransferSettings
) -> None:
    ftp, directory = _ftp_session(url, settings)
    try:
        if directory:
            ftp.cwd(directory)

        def check(_block: bytes) -> None:
            if stop.is_set():
                raise TransferError("cancelled")

        with open(source, "rb") as file:
            ftp.storbinary(f"STOR {name}", file, blocksize=BLOCK_BYTES, callback=check)
        with contextlib.suppress(ftplib.Error, OSError):
            ftp.quit()
    finally:
        ftp.close()
