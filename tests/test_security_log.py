"""The security log (one line per event, rolling) and where a log upload goes."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from evse_daemon.security_log import SecurityLog
from evse_daemon.upload import UploadStatus, put_file, target_url

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def test_lines_are_one_event_each_and_private(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path / "security.log")
    log.append(T0, "InvalidCentralSystemCertificate", "bad\ncert\x00name")
    log.append(T0 + timedelta(seconds=1), "StartupOfTheDevice")
    assert (tmp_path / "security.log").read_text().splitlines() == [
        "2026-03-01T12:00:00.000Z InvalidCentralSystemCertificate bad cert name",
        "2026-03-01T12:00:01.000Z StartupOfTheDevice",
    ]
    assert stat.S_IMODE((tmp_path / "security.log").stat().st_mode) == 0o600


def test_the_log_rolls_and_exports_in_order_within_a_period(tmp_path: Path) -> None:
    log = SecurityLog(tmp_path / "security.log", max_bytes=200)
    for minute in range(12):
        log.append(T0 + timedelta(minutes=minute), "ResetOrReboot", f"#{minute}")
    assert (tmp_path / "security.log.1").exists()
    assert (tmp_path / "security.log").stat().st_size <= 200
    exported = log.export().decode().splitlines()
    minutes = [int(line.rsplit("#", 1)[1]) for line in exported]
    assert minutes == sorted(minutes) and minutes[-1] == 11
    window = log.export(T0 + timedelta(minutes=9), T0 + timedelta(minutes=10)).decode()
    assert [line.rsplit("#", 1)[1] for line in window.splitlines()] == ["9", "10"]


def test_upload_target_appends_the_file_name_to_a_directory() -> None:
    assert target_url("http://h/logs/", "a b.log") == "http://h/logs/a%20b.log"
    assert target_url("https://h:8443", "x.log") == "https://h:8443/x.log"
    assert target_url("http://h/upload/here.log?token=1", "x.log") == (
        "http://h/upload/here.log?token=1"
    )


def test_upload_outcomes_without_a_server() -> None:
    assert put_file("ftp://h/x", b"") is UploadStatus.NOT_SUPPORTED_OPERATION
    # Nothing listens on port 1 of loopback.
    assert put_file("http://127.0.0.1:1/x", b"", timeout_s=5) is UploadStatus.UPLOAD_FAILURE
