"""The durable store: one SQLite database in the state directory.

Every call goes to one dedicated worker thread that owns the connection, so the event loop
never waits on the SD card (an fsync there can take tens of milliseconds) and SQLite sees a
single writer. The database runs in WAL mode.

Durability per table (the connection runs ``synchronous=FULL``: a commit is on the card when
the call returns):

- ``kv`` (OCPP configuration values, availability, counters): FULL. Rare writes (a
  technician or the CSMS changes a setting); losing one would silently revert a decision.
- ``tx_queue`` and ``transactions``: inserts FULL. A transaction message is on the card
  before the daemon acts as if it was sent. Deletes after the CSMS's answer run without
  fsync: losing one to a power cut only means that message is sent again (OCPP 1.6's
  at-least-once window), and a killed daemon loses nothing, as the page cache survives it.
- ``events``: FULL; rare records of what went wrong with the store itself.
- ``auth_list`` (the Local Authorization List, its version in ``kv``): FULL, list and version
  in one SQLite transaction: a list that does not match the version the CSMS was told would
  never be corrected (the CSMS only sends differences from that version).
- ``auth_cache``: without fsync. A cache entry lost to a power cut only means an idTag is
  asked online again or judged on the older entry; writing one per Authorize/Start/Stop
  answer with fsync would cost the card more than it protects. Unchanged entries are not
  written at all.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""

# The outbound transaction-message queue and the transactions it belongs to. A row exists
# before the daemon acts as if the message was sent (synchronous=FULL: the commit is on the
# card when the call returns), and goes only once the CSMS has answered.
TX_SCHEMA = """
CREATE TABLE IF NOT EXISTS tx_queue (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    local_id INTEGER NOT NULL,
    connector_id INTEGER NOT NULL,
    payload TEXT NOT NULL,
    clock TEXT
);
CREATE TABLE IF NOT EXISTS transactions (
    local_id INTEGER PRIMARY KEY,
    connector_id INTEGER NOT NULL,
    id_tag TEXT NOT NULL,
    started_at TEXT NOT NULL,
    meter_start_wh REAL NOT NULL,
    csms_id INTEGER,
    stopped INTEGER NOT NULL DEFAULT 0
);
"""


# The Local Authorization List and the authorization cache (OCPP 1.6 §3.5). ``id_key`` is the
# case-folded idTag (IdToken is case-insensitive); ``seq`` orders the cache by age, for
# eviction. Times are ISO 8601 strings as the CSMS sent them, parsed when loaded.
AUTH_SCHEMA = """
CREATE TABLE IF NOT EXISTS auth_list (
    id_key TEXT PRIMARY KEY,
    id_tag TEXT NOT NULL,
    status TEXT NOT NULL,
    expiry TEXT,
    parent TEXT
);
CREATE TABLE IF NOT EXISTS auth_cache (
    id_key TEXT PRIMARY KEY,
    id_tag TEXT NOT NULL,
    status TEXT NOT NULL,
    expiry TEXT,
    parent TEXT,
    seq INTEGER NOT NULL
);
"""


class QueuedRow(NamedTuple):
    """One message of the stored transaction-message queue."""

    seq: int
    action: str
    local_id: int
    connector_id: int
    payload: dict[str, Any]
    clock: dict[str, Any] | None  # its ClockStamp (JSON), if made before the time was trusted


# One stored authorization entry: (id_key, idTag, status, expiryDate or None, parentIdTag).
AuthRow = tuple[str, str, str, str | None, str | None]


# Columns added after a table was first shipped: a database from an older version gets them
# on open. ``tx_queue.clock``: the ClockStamp (JSON) of a message made before the wall clock
# was trusted, so that its timestamps can be corrected once it is; NULL otherwise.
ADDED_COLUMNS = (("tx_queue", "clock", "TEXT"),)


def _add_missing_columns(db: sqlite3.Connection) -> None:
    for table, column, kind in ADDED_COLUMNS:
        present = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        if column not in present:
            db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")


class Store:
    """Async facade over a SQLite database owned by one worker thread."""

    def __init__(self, state_dir: str | os.PathLike[str], filename: str = "evse.sqlite3") -> None:
        self.path = Path(state_dir) / filename
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="evse-store"
        )
        self._db: sqlite3.Connection | None = None
        self.writes = 0  # counted for the storage-wear figures
        self.corrupt_moved_to: Path | None = None

    # -- lifecycle ---------------------------------------------------------------------

    async def open(self) -> None:
        await self._run(self._open)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as exc:
            # A database the card corrupted must not put the daemon in a crash loop: move
            # it aside, say so loudly, start empty.
            aside = self.path.with_name(f"{self.path.name}.corrupt-{int(time.time())}")
            log.error("state database %s is unreadable (%s); moved to %s", self.path, exc, aside)
            for suffix in ("", "-wal", "-shm"):
                src = Path(str(self.path) + suffix)
                if src.exists():
                    src.rename(Path(str(aside) + suffix))
            self._db = self._connect()
            # The SecurityEvent-style record: kept in the new database, so that it can be
            # reported (and an operator can find the moved file).
            self._db.execute(
                "INSERT INTO events (at, kind, detail) VALUES (?, ?, ?)",
                (time.time(), "StateDatabaseCorrupted", f"{exc}; moved to {aside.name}"),
            )
            self.corrupt_moved_to = aside

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
            db.executescript(TX_SCHEMA)
            db.executescript(AUTH_SCHEMA)
            _add_missing_columns(db)
            db.execute("SELECT count(*) FROM kv").fetchone()
        except sqlite3.DatabaseError:
            db.close()
            raise
        return db

    async def close(self) -> None:
        await self._run(self._close)
        self._executor.shutdown(wait=True)

    def _close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, fn, *args)

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise RuntimeError("store is not open")
        return self._db

    # -- key/value ---------------------------------------------------------------------

    async def events(self) -> list[tuple[float, str, str]]:
        """Records of what went wrong with the store itself: (unix time, kind, detail)."""

        def read() -> list[tuple[float, str, str]]:
            rows = self._conn().execute("SELECT at, kind, detail FROM events ORDER BY id")
            return [(float(a), str(k), str(d)) for a, k, d in rows]

        return await self._run(read)

    async def get_all(self, namespace: str) -> dict[str, Any]:
        def read() -> dict[str, Any]:
            rows = self._conn().execute(
                "SELECT key, value FROM kv WHERE namespace = ?", (namespace,)
            )
            return {key: json.loads(value) for key, value in rows}

        return await self._run(read)

    async def put(self, namespace: str, key: str, value: Any) -> None:
        encoded = json.dumps(value)

        def write() -> None:
            self._conn().execute(
                "INSERT INTO kv (namespace, key, value) VALUES (?, ?, ?) "
                "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                (namespace, key, encoded),
            )
            self.writes += 1

        await self._run(write)

    async def delete(self, namespace: str, key: str) -> None:
        def write() -> None:
            self._conn().execute("DELETE FROM kv WHERE namespace = ? AND key = ?", (namespace, key))
            self.writes += 1

        await self._run(write)

    # -- transactions and their messages -------------------------------------------------

    async def last_local_id(self) -> int:
        def read() -> int:
            db = self._conn()
            row = db.execute(
                "SELECT value FROM kv WHERE namespace = 'tx' AND key = 'last_local_id'"
            ).fetchone()
            stored = int(json.loads(row[0])) if row else 0
            (highest,) = db.execute(
                "SELECT coalesce(max(local_id), 0) FROM transactions"
            ).fetchone()
            return max(stored, int(highest))

        return await self._run(read)

    async def load_queue(self) -> list[QueuedRow]:
        """Every queued message, oldest first."""

        def read() -> list[QueuedRow]:
            rows = self._conn().execute(
                "SELECT seq, action, local_id, connector_id, payload, clock FROM tx_queue "
                "ORDER BY seq"
            )
            return [
                QueuedRow(seq, a, lid, cid, json.loads(p), json.loads(c) if c else None)
                for seq, a, lid, cid, p, c in rows
            ]

        return await self._run(read)

    async def rewrite(self, seq: int, payload: dict[str, Any]) -> None:
        """Replace a queued message's payload (its timestamps corrected) and drop its clock
        stamp, in one FULL commit: a restart must not correct it a second time."""
        encoded = json.dumps(payload, separators=(",", ":"), default=str)

        def write() -> None:
            db = self._conn()
            with _transaction(db):
                db.execute(
                    "UPDATE tx_queue SET payload = ?, clock = NULL WHERE seq = ?", (encoded, seq)
                )
            self.writes += 1

        await self._run(write)

    async def transactions(self) -> list[dict[str, Any]]:
        """Every transaction whose StopTransaction has not been answered yet."""

        def read() -> list[dict[str, Any]]:
            rows = self._conn().execute(
                "SELECT local_id, connector_id, id_tag, started_at, meter_start_wh, csms_id, "
                "stopped FROM transactions ORDER BY local_id"
            )
            keys = (
                "local_id",
                "connector_id",
                "id_tag",
                "started_at",
                "meter_start_wh",
                "csms_id",
                "stopped",
            )
            return [dict(zip(keys, row, strict=True)) for row in rows]

        return await self._run(read)

    async def enqueue(
        self,
        action: str,
        local_id: int,
        connector_id: int,
        payload: dict[str, Any],
        *,
        started: dict[str, Any] | None = None,
        stopped: bool = False,
        seq: int | None = None,
        clock: dict[str, Any] | None = None,
    ) -> int:
        """Queue a message durably; with ``started`` also record the new transaction, with
        ``stopped`` mark it finished, in the same SQLite transaction. ``clock`` is the
        message's ClockStamp (JSON) if it was made before the time was trusted."""
        encoded = json.dumps(payload, separators=(",", ":"), default=str)
        encoded_clock = None if clock is None else json.dumps(clock, separators=(",", ":"))

        def write() -> int:
            db = self._conn()
            with _transaction(db):
                if started is not None:
                    db.execute(
                        "INSERT OR REPLACE INTO transactions (local_id, connector_id, id_tag, "
                        "started_at, meter_start_wh) VALUES (?, ?, ?, ?, ?)",
                        (
                            local_id,
                            connector_id,
                            started["id_tag"],
                            started["started_at"],
                            started["meter_start_wh"],
                        ),
                    )
                    db.execute(
                        "INSERT INTO kv (namespace, key, value) VALUES ('tx', 'last_local_id', ?) "
                        "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value "
                        "WHERE CAST(excluded.value AS INTEGER) > CAST(kv.value AS INTEGER)",
                        (json.dumps(local_id),),
                    )
                if stopped:
                    db.execute(
                        "UPDATE transactions SET stopped = 1 WHERE local_id = ?", (local_id,)
                    )
                # An explicit seq places a message before others already queued (a sample that
                # was being sent directly when the link failed).
                cursor = db.execute(
                    "INSERT INTO tx_queue (seq, action, local_id, connector_id, payload, clock) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (seq, action, local_id, connector_id, encoded, encoded_clock),
                )
            self.writes += 1
            return int(cursor.lastrowid or 0)

        return await self._run(write)

    async def delivered(
        self,
        seq: int,
        *,
        started_local_id: int | None = None,
        csms_id: int | None = None,
        finished_local_id: int | None = None,
    ) -> None:
        """The CSMS answered message ``seq``: drop it, and in the same SQLite transaction record
        the transactionId a StartTransaction got, or forget a transaction whose
        StopTransaction went through."""

        def write() -> None:
            db = self._conn()
            # Without fsync: a lost delete only means the message is sent again after a power
            # cut (the at-least-once window of OCPP 1.6, which has no message id); a kill of
            # the daemon loses nothing (the page cache survives it). The next FULL commit, an
            # enqueue, makes it durable. This keeps a backlog draining at the CSMS's pace
            # instead of the card's.
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                with _transaction(db):
                    db.execute("DELETE FROM tx_queue WHERE seq = ?", (seq,))
                    if started_local_id is not None and csms_id is not None:
                        db.execute(
                            "UPDATE transactions SET csms_id = ? WHERE local_id = ?",
                            (csms_id, started_local_id),
                        )
                    if finished_local_id is not None:
                        db.execute(
                            "DELETE FROM transactions WHERE local_id = ?", (finished_local_id,)
                        )
            finally:
                db.execute("PRAGMA synchronous=FULL")
            self.writes += 1

        await self._run(write)

    # -- the Local Authorization List and the authorization cache ---------------------------

    async def load_authorization(self) -> tuple[int, list[AuthRow], list[tuple[AuthRow, int]]]:
        """(list version, list entries, cache entries with their age)."""

        def read() -> tuple[int, list[AuthRow], list[tuple[AuthRow, int]]]:
            db = self._conn()
            row = db.execute(
                "SELECT value FROM kv WHERE namespace = 'auth' AND key = 'list_version'"
            ).fetchone()
            version = int(json.loads(row[0])) if row else 0
            entries: list[AuthRow] = [
                (str(k), str(t), str(s), e, p)
                for k, t, s, e, p in db.execute(
                    "SELECT id_key, id_tag, status, expiry, parent FROM auth_list"
                )
            ]
            cache: list[tuple[AuthRow, int]] = [
                ((str(k), str(t), str(s), e, p), int(q))
                for k, t, s, e, p, q in db.execute(
                    "SELECT id_key, id_tag, status, expiry, parent, seq FROM auth_cache"
                )
            ]
            return version, entries, cache

        return await self._run(read)

    async def write_local_list(
        self, version: int, *, full: bool, upserts: list[AuthRow], removals: list[str]
    ) -> None:
        """Store a SendLocalList: a Full one replaces the list; the list and its version
        change together or not at all."""

        def write() -> None:
            db = self._conn()
            with _transaction(db):
                if full:
                    db.execute("DELETE FROM auth_list")
                db.executemany("DELETE FROM auth_list WHERE id_key = ?", [(k,) for k in removals])
                db.executemany(
                    "INSERT OR REPLACE INTO auth_list (id_key, id_tag, status, expiry, parent) "
                    "VALUES (?, ?, ?, ?, ?)",
                    upserts,
                )
                db.execute(
                    "INSERT INTO kv (namespace, key, value) VALUES ('auth', 'list_version', ?) "
                    "ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value",
                    (json.dumps(version),),
                )
            self.writes += 1

        await self._run(write)

    def write_auth_cache(
        self, entry: AuthRow, seq: int, evicted: list[str]
    ) -> asyncio.Future[None]:
        """One cache entry written (and the ones evicted to make room for it).

        Handed to the worker thread at once, so it keeps its place before every store call
        made after it (a ClearCache cannot be overtaken by an older entry), without making
        the caller wait: an answer to a transaction message must not gain a wait, or a link
        lost during it would send that message again.
        """

        def write() -> None:
            db = self._conn()
            # Without fsync (see the module docstring): the cache is a hint, not a record.
            db.execute("PRAGMA synchronous=NORMAL")
            try:
                with _transaction(db):
                    db.executemany(
                        "DELETE FROM auth_cache WHERE id_key = ?", [(k,) for k in evicted]
                    )
                    db.execute(
                        "INSERT OR REPLACE INTO auth_cache "
                        "(id_key, id_tag, status, expiry, parent, seq) VALUES (?, ?, ?, ?, ?, ?)",
                        (*entry, seq),
                    )
            finally:
                db.execute("PRAGMA synchronous=FULL")
            self.writes += 1

        return asyncio.get_running_loop().run_in_executor(self._executor, write)

    async def clear_auth_cache(self) -> None:
        def write() -> None:
            # FULL: a ClearCache answered Accepted must not be undone by a power cut.
            self._conn().execute("DELETE FROM auth_cache")
            self.writes += 1

        await self._run(write)


class _transaction:
    """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error) on an autocommit connection."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
