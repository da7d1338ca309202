"""The SQLite store: a corrupted database is moved aside, never a crash loop."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from evse_daemon.store import Store
from tests.harness import bench


async def test_corrupted_database_is_moved_aside_and_recorded(tmp_path: Path) -> None:
    path = tmp_path / "evse.sqlite3"
    path.write_bytes(b"this is not a database, the SD card ate it" * 100)
    store = Store(tmp_path)
    await store.open()
    try:
        assert store.corrupt_moved_to is not None
        assert store.corrupt_moved_to.read_bytes().startswith(b"this is not a database")
        events = await store.events()
        assert [kind for _, kind, _ in events] == ["StateDatabaseCorrupted"]
        assert store.corrupt_moved_to.name in events[0][2]
        # The new database works.
        await store.put("ocpp_config", "HeartbeatInterval", "60")
        assert await store.get_all("ocpp_config") == {"HeartbeatInterval": "60"}
    finally:
        await store.close()


async def test_daemon_starts_on_a_corrupted_database(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "evse.sqlite3").write_bytes(b"\x00garbage" * 512)
    async with bench(tmp_path) as b:
        await b.booted()
        assert b.app.store.corrupt_moved_to is not None
        assert list(state.glob("evse.sqlite3.corrupt-*"))


async def test_a_queue_from_before_the_clock_column_is_taken_over(tmp_path: Path) -> None:
    """A database written by a version without ``tx_queue.clock``: opened, it gains the column
    and its queued messages load with no clock stamp (their timestamps are sent as they are)."""
    db = sqlite3.connect(tmp_path / "evse.sqlite3")
    db.execute(
        "CREATE TABLE tx_queue (seq INTEGER PRIMARY KEY AUTOINCREMENT, action TEXT NOT NULL, "
        "local_id INTEGER NOT NULL, connector_id INTEGER NOT NULL, payload TEXT NOT NULL)"
    )
    db.execute(
        "INSERT INTO tx_queue (action, local_id, connector_id, payload) VALUES (?, ?, ?, ?)",
        ("StopTransaction", 4, 1, json.dumps({"meter_stop": 10})),
    )
    db.commit()
    db.close()
    store = Store(tmp_path)
    await store.open()
    try:
        [row] = await store.load_queue()
        assert (row.action, row.local_id, row.payload, row.clock) == (
            "StopTransaction",
            4,
            {"meter_stop": 10},
            None,
        )
        made = {"wall": "2023-01-01T00:00:00+00:00", "monotonic": 5.0, "boot": "b"}
        seq = await store.enqueue("MeterValues", 4, 1, {"meter_value": []}, clock=made)
        assert (await store.load_queue())[-1].clock == made
        await store.rewrite(seq, {"meter_value": [1]})
        assert (await store.load_queue())[-1][4:] == ({"meter_value": [1]}, None)
    finally:
        await store.close()
