"""Downloads and uploads against real HTTP and FTP servers on loopback."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from evse_daemon.transfer import (
    TransferError,
    TransferSettings,
    download,
    file_name,
    location_problem,
    upload,
)
from tests.file_servers import FtpFiles, http_files, refused_url

SETTINGS = TransferSettings(timeout_s=10)
BODY = bytes(range(256)) * 1000  # 256 kB: several blocks


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


async def _eventually(condition: Callable[[], bool], what: str) -> None:
    for _ in range(1000):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"never {what}")


async def test_http_download_lands_whole_under_its_name(tmp_path: Path) -> None:
    with http_files() as server:
        server.serve("fw/evse_daemon-1.0-py3-none-any.whl", BODY)
        target = tmp_path / "dl" / "evse_daemon-1.0-py3-none-any.whl"
        size = await download(
            server.url("fw/evse_daemon-1.0-py3-none-any.whl"),
            target,
            max_bytes=10**7,
            settings=SETTINGS,
        )
    assert size == len(BODY)
    assert target.read_bytes() == BODY
    assert _leftovers(target.parent) == [target.name]  # no temporary file left


@pytest.mark.parametrize("status", [404, 500])
async def test_an_http_error_status_fails_the_download(tmp_path: Path, status: int) -> None:
    with http_files() as server:
        server.serve("fw.bin", BODY, failures=[status])
        with pytest.raises(TransferError, match=f"HTTP {status}"):
            await download(
                server.url("fw.bin"), tmp_path / "fw.bin", max_bytes=10**7, settings=SETTINGS
            )
    assert _leftovers(tmp_path) == []


async def test_connection_refused_fails_the_download(tmp_path: Path) -> None:
    with pytest.raises(TransferError, match="cannot reach"):
        await download(refused_url(), tmp_path / "fw.bin", max_bytes=10**7, settings=SETTINGS)


async def test_a_truncated_body_is_a_failed_download_not_a_file(tmp_path: Path) -> None:
    with http_files() as server:
        server.serve("fw.bin", BODY, truncations=[1000])
        with pytest.raises(TransferError, match=f"truncated: 1000 of {len(BODY)} bytes"):
            await download(
                server.url("fw.bin"), tmp_path / "fw.bin", max_bytes=10**7, settings=SETTINGS
            )
    assert _leftovers(tmp_path) == []


async def test_a_file_over_the_limit_is_refused(tmp_path: Path) -> None:
    with http_files() as server:
        server.serve("fw.bin", BODY)
        with pytest.raises(TransferError, match="over the limit"):
            await download(
                server.url("fw.bin"), tmp_path / "fw.bin", max_bytes=1000, settings=SETTINGS
            )
    assert _leftovers(tmp_path) == []


async def test_a_cancelled_download_leaves_nothing_and_frees_the_loop(tmp_path: Path) -> None:
    stall = threading.Event()
    with http_files() as server:
        server.serve("fw.bin", BODY, stalls=[stall])
        task = asyncio.create_task(
            download(server.url("fw.bin"), tmp_path / "fw.bin", max_bytes=10**7, settings=SETTINGS)
        )
        await _eventually(lambda: bool(_leftovers(tmp_path)), "half of the body arrived")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stall.set()  # the thread wakes, sees the cancellation and cleans up
        await _eventually(lambda: not _leftovers(tmp_path), "cleaned up")


async def test_ftp_download_with_credentials_and_a_truncated_one(tmp_path: Path) -> None:
    root = tmp_path / "ftproot"
    (root / "fw").mkdir(parents=True)
    (root / "fw" / "image.bin").write_bytes(BODY)
    server = FtpFiles(root, user="cp", password="s3cret")
    try:
        target = tmp_path / "image.bin"
        size = await download(
            server.url("fw/image.bin"), target, max_bytes=10**7, settings=SETTINGS
        )
        assert size == len(BODY) and target.read_bytes() == BODY
        target.unlink()
        server.truncate["fw/image.bin"] = 5000
        with pytest.raises(TransferError, match=f"truncated: 5000 of {len(BODY)}"):
            await download(server.url("fw/image.bin"), target, max_bytes=10**7, settings=SETTINGS)
        with pytest.raises(TransferError, match="FTP: 550"):
            await download(server.url("fw/missing.bin"), target, max_bytes=10**7, settings=SETTINGS)
    finally:
        server.stop()
    assert not target.exists()


async def test_http_put_and_post_uploads(tmp_path: Path) -> None:
    source = tmp_path / "diag.tar.gz"
    source.write_bytes(BODY)
    with http_files() as server:
        await upload(
            server.url("upload/"), source, "diag.tar.gz", http_method="PUT", settings=SETTINGS
        )
        await upload(
            server.url("upload"), source, "diag.tar.gz", http_method="POST", settings=SETTINGS
        )
        put, post = server.uploads
    assert (put.method, put.path, put.body) == ("PUT", "/upload/diag.tar.gz", BODY)
    assert (post.method, post.path, post.body) == ("POST", "/upload", BODY)
    assert 'filename="diag.tar.gz"' in post.headers["Content-Disposition"]


async def test_an_upload_answered_with_an_error_fails(tmp_path: Path) -> None:
    source = tmp_path / "diag.tar.gz"
    source.write_bytes(b"x")
    with http_files() as server:
        server.upload_statuses = [500]
        with pytest.raises(TransferError, match="HTTP 500"):
            await upload(
                server.url("up"), source, "diag.tar.gz", http_method="PUT", settings=SETTINGS
            )
    with pytest.raises(TransferError, match="cannot reach"):
        await upload(refused_url("up"), source, "d.tgz", http_method="PUT", settings=SETTINGS)


async def test_ftp_upload_goes_into_the_directory(tmp_path: Path) -> None:
    source = tmp_path / "diag.tar.gz"
    source.write_bytes(BODY)
    server = FtpFiles(tmp_path)
    try:
        await upload(
            server.url("incoming/diagnostics/"),
            source,
            "diag.tar.gz",
            http_method="PUT",
            settings=SETTINGS,
        )
    finally:
        server.stop()
    assert server.stored == {"incoming/diagnostics/diag.tar.gz": BODY}


def test_locations_and_file_names() -> None:
    assert location_problem("https://fw.example/a.whl") is None
    assert location_problem("ftp://u:p@fw.example:2121/a") is None
    assert location_problem("gopher://fw.example/a") == (
        "scheme 'gopher' is not supported (only http, https, ftp, ftps)"
    )
    assert location_problem("http:///a") == "has no host"
    assert location_problem("http://h:99999/a") is not None
    assert file_name("https://h/dir/evse_daemon-1.2-py3-none-any.whl?x=1", "f") == (
        "evse_daemon-1.2-py3-none-any.whl"
    )
    assert file_name("https://h/dir/", "firmware.bin") == "firmware.bin"
    assert file_name("https://h/..%2F..%2Fetc%2Fpasswd", "f") == "_.._etc_passwd"
