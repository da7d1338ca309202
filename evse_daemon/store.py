"""The durable store: one SQLite database in the state directory.

Every call goes to one dedicated worker thread that owns the connection, so the event loop
never waits on the SD card (an fsync there can take tens of milliseconds) and SQLite sees a
single writer. The database runs in WAL mode.

Durability per table: ``kv`` (OCPP configuration values, availability) is written with
``synchronous=FULL`` semantics through an explicit commit per write; these writes are rare
(a technician or the CSMS changes a setting) and losing one to a power cut would silently
revert an operator's decision.
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
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    namespace TEXT NOT NULL,
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
"""


class Store:
    """Async facade over a SQLite database owned by one worker thread."""

    def __init__(self, state_dir: str | os.PathLike[str], filename: str = "evse.sqlite3") -> None:
        self.path = Path(state_dir) / filename
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="evse-store"
        )
        self._db: sqlite3.Connection | None = None
        self.writes = 0  # counted for the storage-wear figures

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

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")
            db.executescript(SCHEMA)
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
