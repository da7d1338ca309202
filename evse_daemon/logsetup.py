"""Where the daemon's log goes: the systemd journal with structured fields, or stderr.

Under systemd, stderr is a stream to the journal (``$JOURNAL_STREAM`` names it): then records
go to journald through systemd-python's JournalHandler (the ``systemd`` extra), which keeps
the fields of :mod:`evse_daemon.logfields` (CONNECTOR=, TRANSACTION_ID=, ID_TAG=) and the
priority. JournalHandler is chosen only when journald's socket exists: without it, it drops
every message without a word. Without systemd-python the stream is used, each line prefixed
with its syslog priority (``<4>``), which journald understands. Anywhere else (a terminal, a
test) lines go to stderr with a timestamp.

Blocking file I/O (the key of hashed idTags): call before the event loop starts.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import secrets
import sys
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TextIO

from .config import Config
from .logfields import IdTagFilter, IdTagPolicy

__all__ = [
    "ID_TAG_KEY_FILE",
    "JOURNAL_SOCKET",
    "PriorityPrefixFormatter",
    "make_handler",
    "read_id_tag_key",
    "setup_logging",
    "stream_is_journal",
]

JOURNAL_SOCKET = "/run/systemd/journal/socket"
#: The per-install key of the idTag hashes, in the state directory.
ID_TAG_KEY_FILE = "log-id-tag.key"
_KEY_BYTES = 32
SYSLOG_IDENTIFIER = "evse-daemon"

log = logging.getLogger(__name__)


def stream_is_journal(environ: Mapping[str, str], stream: TextIO) -> bool:
    """True if ``stream`` is the journal stream systemd connected (``$JOURNAL_STREAM`` is its
    ``device:inode``; a redirected or inherited variable does not match)."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        st = os.fstat(stream.fileno())
        return (st.st_dev, st.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


class PriorityPrefixFormatter(logging.Formatter):
    """Each line prefixed with its syslog priority, e.g. ``<3>`` for an error: journald reads
    it from a service's stream (SyslogLevelPrefix=, on by default)."""

    _PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4))

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in self._PRIORITIES if record.levelno >= level), 6)
        if record.levelno < logging.INFO:
            priority = 7
        text = super().format(record)
        # A traceback is several lines, and journald makes an entry of each.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


JournalHandlerFactory = Callable[..., logging.Handler]


def _journal_handler_class() -> JournalHandlerFactory | None:
    """systemd-python's JournalHandler, if installed (an optional dependency)."""
    try:
        module = importlib.import_module("systemd.journal")
    except ImportError:
        return None
    handler_class: JournalHandlerFactory = module.JournalHandler
    return handler_class


def make_handler(
    environ: Mapping[str, str],
    stream: TextIO,
    *,
    journal_socket: str = JOURNAL_SOCKET,
    journal_handler: JournalHandlerFactory | None = None,
) -> logging.Handler:
    """The handler for this process's situation (see the module's docstring).

    ``journal_handler`` replaces the lookup of systemd-python's JournalHandler (tests).
    """
    if stream_is_journal(environ, stream):
        handler_class = journal_handler or _journal_handler_class()
        if handler_class is not None and os.path.exists(journal_socket):
            handler = handler_class(SYSLOG_IDENTIFIER=SYSLOG_IDENTIFIER)
            handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
            return handler
        # The journal adds the time; the prefix gives the priority.
        stream_handler = logging.StreamHandler(stream)
        stream_handler.setFormatter(PriorityPrefixFormatter("%(name)s: %(message)s"))
        return stream_handler
    stream_handler = logging.StreamHandler(stream)
    stream_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    return stream_handler


def read_id_tag_key(state_dir: str | os.PathLike[str]) -> bytes | None:
    """The per-install key of the idTag hashes, or None if there is none (yet)."""
    try:
        key = (Path(state_dir) / ID_TAG_KEY_FILE).read_bytes()
    except FileNotFoundError:
        return None
    return key if len(key) >= _KEY_BYTES else None


def _create_id_tag_key(state_dir: str | os.PathLike[str]) -> bytes:
    """Read the key, or make one: written to a temporary file and linked into place, so
    that a reader never sees half a key and two starting processes agree on one."""
    existing = read_id_tag_key(state_dir)
    if existing is not None:
        return existing
    directory = Path(state_dir)
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=directory, prefix=".log-id-tag-")
    try:
        with os.fdopen(fd, "wb") as f:  # mkstemp creates it 0600
            f.write(secrets.token_bytes(_KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temporary, directory / ID_TAG_KEY_FILE)
    finally:
        os.unlink(temporary)
    key = read_id_tag_key(state_dir)
    if key is None:
        raise OSError(f"{directory / ID_TAG_KEY_FILE} is not a key")
    return key


def id_tag_filter(config: Config) -> tuple[IdTagFilter, str | None]:
    """The filter for ``[logging] id_tag``, and a warning to log if it had to improvise."""
    policy = IdTagPolicy(config.logging.id_tag)
    if policy is not IdTagPolicy.HASH:
        return IdTagFilter(policy), None
    try:
        return IdTagFilter(policy, _create_id_tag_key(config.storage.state_dir)), None
    except OSError as exc:
        # Never fall back to clear text: a key for this run only still hides the tags, but
        # the same card gets another hash after a restart.
        warning = (
            f"idTag hash key unusable ({exc}): using a key for this run only, "
            "hashes will not match those of other runs"
        )
        return IdTagFilter(policy, secrets.token_bytes(_KEY_BYTES)), warning


def setup_logging(config: Config, environ: Mapping[str, str] | None = None) -> None:
    """Configure the root logger for ``evse-daemon run``."""
    handler = make_handler(os.environ if environ is None else environ, sys.stderr)
    tag_filter, warning = id_tag_filter(config)
    handler.addFilter(tag_filter)
    logging.basicConfig(
        level=getattr(logging, config.logging.level.upper(), logging.INFO),
        handlers=[handler],
        force=True,
    )
    # The ocpp library logs every frame at INFO (idTags included, in clear): far too much for
    # an SD card's journal, and not what [logging] id_tag allows.
    floor = max(logging.WARNING, logging.getLogger().level)
    logging.getLogger("ocpp").setLevel(floor)
    logging.getLogger("websockets").setLevel(floor)
    if warning is not None:
        log.warning("%s", warning)
