"""Diagnostics: what goes into the archive (secrets out, the time window kept), and the runner
uploading it to a real HTTP server with retries."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import stat
import tarfile
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from evse_daemon.clock import FakeClock
from evse_daemon.config import DiagnosticsConfig
from evse_daemon.diagnostics import (
    DiagnosticsRequest,
    DiagnosticsRunner,
    DiagnosticsStatus,
    collect,
    file_name,
    filter_log,
    redact_config,
)
from evse_daemon.transfer import TransferSettings
from tests.file_servers import http_files

T0 = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def _members(archive: Path) -> dict[str, bytes]:
    with tarfile.open(archive) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


async def _snapshot(start: datetime | None, stop: datetime | None) -> dict[str, Any]:
    return {"status.json": {"station": "CP-1", "window": [str(start), str(stop)]}}


def test_secrets_do_not_leave_the_charger() -> None:
    text = (
        "[ocpp]\n"
        'basic_auth_password = "0123456789abcdef"\n'
        '# basic_auth_password = "an old one"\n'
        'csms_url = "wss://csms.example/ocpp"\n'
        "[ocpp.config]\n"
        'AuthorizationKey = "deadbeefdeadbeef"\n'
        "[firmware]\n"
        'pip_options = ["--index-url", "https://user:pw@mirror.example/simple"]\n'
        'client_key_file = "/etc/evse-daemon/client.key"\n'
    )
    redacted = redact_config(text)
    for secret in ("0123456789abcdef", "an old one", "deadbeef", "user:pw"):
        assert secret not in redacted
    assert 'basic_auth_password = "<redacted>"' in redacted
    assert "https://<redacted>@mirror.example/simple" in redacted
    assert 'csms_url = "wss://csms.example/ocpp"' in redacted  # nothing else changes
    assert 'client_key_file = "/etc/evse-daemon/client.key"' in redacted


def test_log_lines_are_kept_by_their_time_with_their_continuation_lines() -> None:
    def local(moment: datetime) -> str:
        return moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")

    text = (
        f"{local(T0 - timedelta(hours=2))},001 INFO old\n"
        f"{local(T0)},001 ERROR boom\n"
        "Traceback (most recent call last):\n"
        f"{local(T0 + timedelta(hours=2))},001 INFO later\n"
    )
    kept = filter_log(text, T0 - timedelta(hours=1), T0 + timedelta(hours=1))
    assert kept.splitlines()[0].endswith("ERROR boom")
    assert kept.splitlines()[1] == "Traceback (most recent call last):"
    assert len(kept.splitlines()) == 2
    assert filter_log(text, None, None) == text


async def test_the_archive_holds_state_config_journal_and_logs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A journalctl of our own on the PATH, recording how it was asked.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    journalctl = bin_dir / "journalctl"
    journalctl.write_text(f'#!/bin/sh\necho "$@" > {tmp_path}/journal-args\necho "journal line"\n')
    journalctl.chmod(journalctl.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config = tmp_path / "evse.toml"
    config.write_text('[ocpp]\nbasic_auth_password = "0123456789abcdef"\n')
    daemon_log = tmp_path / "daemon.log"
    daemon_log.write_text("no timestamp here\n")
    settings = DiagnosticsConfig(log_files=(str(daemon_log), str(tmp_path / "missing.log")))
    name = file_name("CP/1", T0)
    assert name == "diagnostics-CP_1-20260501T120000Z.tar.gz"

    archive = await collect(
        tmp_path / "out" / name,
        settings=settings,
        config_path=str(config),
        snapshot=_snapshot,
        start=T0 - timedelta(days=1),
        stop=T0,
        now=T0,
    )
    members = _members(archive)
    assert set(members) == {
        "manifest.json",
        "status.json",
        "evse.toml",
        "journal.txt",
        "logs/0-daemon.log",
    }
    assert b"0123456789abcdef" not in members["evse.toml"]
    assert members["journal.txt"] == b"journal line\n"
    args = (tmp_path / "journal-args").read_text().split()
    assert args[args.index("-u") + 1] == "evse-daemon.service"
    assert "--since" in args and "--until" in args
    manifest = json.loads(members["manifest.json"])
    assert manifest["start_time"] == (T0 - timedelta(days=1)).isoformat()
    assert "missing.log" in manifest["missing"]["logs/1-missing.log"]
    assert json.loads(members["status.json"])["station"] == "CP-1"


@contextlib.asynccontextmanager
async def _runner(tmp_path: Path) -> AsyncIterator[tuple[DiagnosticsRunner, list[str]]]:
    config = tmp_path / "evse.toml"
    config.write_text("[station]\n")
    runner = DiagnosticsRunner(
        DiagnosticsConfig(journal_unit=""),
        directory=tmp_path / "diagnostics",
        config_path=str(config),
        station_id="CP-1",
        clock=FakeClock(T0),
        snapshot=_snapshot,
        transfer=TransferSettings(timeout_s=10),
    )
    reported: list[str] = []

    class Reporter:
        def diagnostics_status(self, status: DiagnosticsStatus) -> None:
            reported.append(status.value)

    runner.reporter = Reporter()
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    try:
        yield runner, reported
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _settled(runner: DiagnosticsRunner) -> None:
    assert runner._current is not None
    await asyncio.wait({runner._current})


async def test_the_runner_uploads_and_retries_retries_times(tmp_path: Path) -> None:
    async with _runner(tmp_path) as (runner, reported):
        with http_files() as server:
            server.upload_statuses = [503]
            name = runner.request(DiagnosticsRequest(server.url("diag"), 2, 0))
            await _settled(runner)
            assert reported == ["Uploading", "Uploaded"]
            assert server.upload_attempts == 2
            (uploaded,) = server.uploads
            assert uploaded.path == f"/diag/{name}"
            server.upload_statuses = [500, 500, 500]
            runner.request(DiagnosticsRequest(server.url("diag"), 3, 0))
            await _settled(runner)
            assert reported[2:] == ["Uploading", "UploadFailed"]
            assert server.upload_attempts == 5
    assert list((tmp_path / "diagnostics").iterdir()) == []  # nothing left on the card
