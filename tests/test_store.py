"""The SQLite store: a corrupted database is moved aside, never a crash loop."""

from __future__ import annotations

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
