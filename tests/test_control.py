"""The control socket and evsectl against a real ControlServer on a Unix socket."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from evse_daemon import ctl
from evse_daemon.control import (
    MAX_REQUEST_BYTES,
    ControlError,
    ControlServer,
    request,
    request_async,
)

REPO_ROOT = Path(__file__).resolve().parent.parent

STATUS = {
    "ocpp": {"connected": True, "registration": "Accepted", "queue_depth": 0},
    "connectors": [{"id": 1, "status": "Available", "pilot": "A", "offered_a": 0.0}],
}


class FakeHandler:
    """Answers like the daemon would, and remembers what it was asked."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self.release = asyncio.Event()

    async def handle_control(self, request: dict[str, Any]) -> Any:
        self.requests.append(dict(request))
        cmd = request["cmd"]
        if cmd == "status":
            return STATUS
        if cmd == "swipe" and request["tag"] == "REFUSED":
            raise ControlError("bench verbs need mock drivers\n(this daemon runs real ones)")
        if cmd == "fault" and request["kind"] == "bug":
            raise RuntimeError("a bug in the handler")
        if cmd == "fault" and request["kind"] == "unserialisable":
            return {1, 2}
        if cmd == "plug" and request["connector"] == 9:
            # A slow command: holds its own connection, must not hold anyone else's.
            await self.release.wait()
            return None
        if cmd == "swipe":
            return {"authorized": True}
        return None


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # pytest's tmp_path can exceed the 107-byte AF_UNIX path limit with long test names.
    path = Path(tempfile.mkdtemp(prefix="evsectl-", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sock_path(short_dir: Path) -> str:
    # A directory that does not exist yet: the server creates it.
    return str(short_dir / "run" / "control.sock")


@pytest.fixture
def handler() -> FakeHandler:
    return FakeHandler()


@pytest.fixture
async def server(sock_path: str, handler: FakeHandler) -> AsyncIterator[ControlServer]:
    srv = ControlServer(sock_path, handler)
    await srv.start()
    try:
        yield srv
    finally:
        handler.release.set()
        await srv.close()


# Tiny local file-system checks; synchronous helpers keep them out of the async test bodies
# (ruff ASYNC240) without pretending they could block the loop for long.
def exists(path: str) -> bool:
    return os.path.exists(path)


def make_regular_file(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path))
    Path(path).write_text(text)


def read_text(path: str) -> str:
    return Path(path).read_text()


async def raw_exchange(path: str, data: bytes, n_replies: int) -> list[dict[str, Any]]:
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        writer.write(data)
        await writer.drain()
        replies: list[dict[str, Any]] = []
        for _ in range(n_replies):
            line = await asyncio.wait_for(reader.readline(), 5)
            assert line.endswith(b"\n"), f"connection closed early after {replies}"
            replies.append(json.loads(line))
        return replies
    finally:
        writer.close()
        await writer.wait_closed()


async def run_ctl(*argv: str) -> int:
    # evsectl is blocking; run it off the loop so that the server keeps serving.
    return await asyncio.to_thread(ctl.main, list(argv))


# --------------------------------------------------------------------------- server


async def test_status_round_trip(server: ControlServer, sock_path: str) -> None:
    response = await request_async(sock_path, {"cmd": "status"})
    assert response == {"ok": True, "result": STATUS}


async def test_bench_verbs_reach_the_handler_validated(
    server: ControlServer, sock_path: str, handler: FakeHandler
) -> None:
    requests: list[dict[str, Any]] = [
        {"cmd": "plug", "connector": 1},
        {"cmd": "unplug", "connector": 2},
        {"cmd": "ev", "connector": 1, "state": "c"},
        {"cmd": "ev", "connector": 1, "state": "AUTO"},
        {"cmd": "swipe", "tag": "04A2B3C4"},
        {"cmd": "fault", "connector": 1, "kind": "rcd"},
        {"cmd": "clear", "connector": 1, "kind": "rcd"},
    ]
    for req in requests:
        response = await request_async(sock_path, req)
        assert response["ok"] is True, response
    assert handler.requests == [
        {"cmd": "plug", "connector": 1},
        {"cmd": "unplug", "connector": 2},
        {"cmd": "ev", "connector": 1, "state": "C"},
        {"cmd": "ev", "connector": 1, "state": "auto"},
        {"cmd": "swipe", "tag": "04A2B3C4"},
        {"cmd": "fault", "connector": 1, "kind": "rcd"},
        {"cmd": "clear", "connector": 1, "kind": "rcd"},
    ]


async def test_socket_mode_and_directory(server: ControlServer, sock_path: str) -> None:
    st = os.stat(sock_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert stat.S_ISDIR(os.stat(os.path.dirname(sock_path)).st_mode)


async def test_second_server_on_same_path_is_refused(
    server: ControlServer, sock_path: str, handler: FakeHandler
) -> None:
    second = ControlServer(sock_path, handler)
    with pytest.raises(ControlError, match="another daemon is listening on"):
        await second.start()
    # The first one is untouched.
    assert (await request_async(sock_path, {"cmd": "status"}))["ok"] is True


async def test_stale_socket_file_is_replaced(sock_path: str, handler: FakeHandler) -> None:
    os.makedirs(os.path.dirname(sock_path))
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(sock_path)
    stale.close()  # the file stays, nobody listens: what a killed daemon leaves behind
    assert exists(sock_path)
    srv = ControlServer(sock_path, handler)
    await srv.start()
    try:
        assert (await request_async(sock_path, {"cmd": "status"}))["ok"] is True
    finally:
        await srv.close()
    assert not exists(sock_path)


async def test_a_regular_file_is_never_removed(sock_path: str, handler: FakeHandler) -> None:
    make_regular_file(sock_path, "precious\n")
    with pytest.raises(ControlError, match="not a socket"):
        await ControlServer(sock_path, handler).start()
    assert read_text(sock_path) == "precious\n"


async def test_close_removes_socket_and_ends_idle_clients(
    sock_path: str, handler: FakeHandler
) -> None:
    srv = ControlServer(sock_path, handler)
    await srv.start()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    try:
        # One exchange first, so that the server has surely taken the connection.
        writer.write(b'{"cmd": "status"}\n')
        assert json.loads(await reader.readline())["ok"] is True
        await asyncio.wait_for(srv.close(), 2)
        assert not exists(sock_path)
        assert await asyncio.wait_for(reader.read(), 2) == b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    await srv.close()  # idempotent


BAD_REQUESTS: list[tuple[bytes, str]] = [
    (b"this is not json", "invalid JSON"),
    (b"\xff\xfe{}", "not UTF-8"),
    (b"[1, 2, 3]", "expected a JSON object"),
    (b'"status"', "expected a JSON object"),
    (b"{}", "missing 'cmd'"),
    (b'{"cmd": 5}', "missing 'cmd'"),
    (b'{"cmd": ""}', "missing 'cmd'"),
    (b'{"cmd": "reboot"}', "unknown command"),
    (b'{"cmd": "plug"}', "'connector'"),
    (b'{"cmd": "plug", "connector": "1"}', "'connector'"),
    (b'{"cmd": "plug", "connector": 0}', "'connector'"),
    (b'{"cmd": "unplug", "connector": -3}', "'connector'"),
    (b'{"cmd": "plug", "connector": true}', "'connector'"),
    (b'{"cmd": "plug", "connector": 1.0}', "'connector'"),
    (b'{"cmd": "ev", "connector": 1}', "'state'"),
    (b'{"cmd": "ev", "connector": 1, "state": "G"}', "'state'"),
    (b'{"cmd": "ev", "connector": 1, "state": 3}', "'state'"),
    (b'{"cmd": "ev", "state": "B"}', "'connector'"),
    (b'{"cmd": "swipe"}', "'tag'"),
    (b'{"cmd": "swipe", "tag": ""}', "'tag'"),
    (b'{"cmd": "swipe", "tag": 1234}', "'tag'"),
    (b'{"cmd": "swipe", "tag": "123456789012345678901"}', "at most 20"),
    (b'{"cmd": "fault", "connector": 1}', "'kind'"),
    (b'{"cmd": "fault", "connector": 1, "kind": ""}', "'kind'"),
    (b'{"cmd": "clear", "connector": 1, "kind": ["rcd"]}', "'kind'"),
    (b'{"cmd": "clear", "kind": "rcd"}', "'connector'"),
    (b"[" * 100_000, "request longer than"),  # also deeper than the JSON parser goes
    (b"[" * 50_000, "nested too deeply"),
]


async def test_every_bad_request_gets_a_reason_and_the_server_survives(
    server: ControlServer, sock_path: str, handler: FakeHandler
) -> None:
    # All on one connection: a bad request must not cost the client its connection.
    data = b"".join(line + b"\n" for line, _ in BAD_REQUESTS) + b'{"cmd": "status"}\n'
    replies = await raw_exchange(sock_path, data, len(BAD_REQUESTS) + 1)
    for (line, expected), reply in zip(BAD_REQUESTS, replies[:-1], strict=True):
        assert reply["ok"] is False, (line[:60], reply)
        assert expected in reply["error"], (line[:60], reply)
        assert "\n" not in reply["error"]
    assert replies[-1] == {"ok": True, "result": STATUS}
    assert handler.requests == [{"cmd": "status"}]


async def test_over_long_line_is_refused_once_and_the_next_request_works(
    server: ControlServer, sock_path: str
) -> None:
    huge = json.dumps({"cmd": "swipe", "tag": "x" * (MAX_REQUEST_BYTES + 10)}).encode()
    reader, writer = await asyncio.open_unix_connection(sock_path)
    try:
        # Sent in pieces without a newline first, as a slow client would.
        for i in range(0, len(huge), 10_000):
            writer.write(huge[i : i + 10_000])
            await writer.drain()
        writer.write(b'\n{"cmd": "status"}\n')
        await writer.drain()
        first = json.loads(await asyncio.wait_for(reader.readline(), 5))
        second = json.loads(await asyncio.wait_for(reader.readline(), 5))
    finally:
        writer.close()
        await writer.wait_closed()
    assert first["ok"] is False and "longer than" in first["error"]
    assert second == {"ok": True, "result": STATUS}


async def test_control_error_versus_unexpected_exception(
    server: ControlServer, sock_path: str, caplog: pytest.LogCaptureFixture
) -> None:
    refused = await request_async(sock_path, {"cmd": "swipe", "tag": "REFUSED"})
    assert refused == {
        "ok": False,
        "error": "bench verbs need mock drivers (this daemon runs real ones)",
    }
    with caplog.at_level(logging.ERROR, logger="evse_daemon.control"):
        crashed = await request_async(sock_path, {"cmd": "fault", "connector": 1, "kind": "bug"})
    assert crashed == {"ok": False, "error": "internal error: RuntimeError"}
    tracebacks = [r for r in caplog.records if r.exc_info is not None]
    assert tracebacks and "a bug in the handler" in str(tracebacks[0].exc_info[1])  # type: ignore[index]
    unserialisable = await request_async(
        sock_path, {"cmd": "fault", "connector": 1, "kind": "unserialisable"}
    )
    assert unserialisable == {"ok": False, "error": "internal error: TypeError"}
    # Still serving.
    assert (await request_async(sock_path, {"cmd": "status"}))["ok"] is True


async def test_several_requests_on_one_connection(server: ControlServer, sock_path: str) -> None:
    data = (
        b'{"cmd": "status"}\n'
        b'{"cmd": "swipe", "tag": "AB"}\n'
        b"\n"  # blank lines are ignored
        b'{"cmd": "plug", "connector": 1}\n'
    )
    replies = await raw_exchange(sock_path, data, 3)
    assert replies == [
        {"ok": True, "result": STATUS},
        {"ok": True, "result": {"authorized": True}},
        {"ok": True, "result": None},
    ]


async def test_last_request_without_newline_is_answered(
    server: ControlServer, sock_path: str
) -> None:
    reader, writer = await asyncio.open_unix_connection(sock_path)
    writer.write(b'{"cmd": "status"}')
    writer.write_eof()
    reply = json.loads(await asyncio.wait_for(reader.readline(), 5))
    writer.close()
    await writer.wait_closed()
    assert reply == {"ok": True, "result": STATUS}


async def test_slow_or_dead_clients_do_not_block_others(
    server: ControlServer, sock_path: str, handler: FakeHandler
) -> None:
    # A client that sent half a line and went quiet...
    _r1, silent = await asyncio.open_unix_connection(sock_path)
    silent.write(b'{"cmd": "sta')
    await silent.drain()
    # ...and one whose command is still running.
    slow = asyncio.create_task(request_async(sock_path, {"cmd": "plug", "connector": 9}))
    await asyncio.sleep(0.05)
    assert not slow.done()
    response = await request_async(sock_path, {"cmd": "status"}, timeout_s=2)
    assert response["ok"] is True
    handler.release.set()
    assert (await slow)["ok"] is True
    silent.close()
    await silent.wait_closed()


async def test_extra_commands_are_passed_through(sock_path: str, handler: FakeHandler) -> None:
    srv = ControlServer(sock_path, handler, extra_commands={"relay"})
    await srv.start()
    try:
        response = await request_async(sock_path, {"cmd": "relay", "on": True})
    finally:
        await srv.close()
    assert response == {"ok": True, "result": None}
    assert handler.requests == [{"cmd": "relay", "on": True}]


async def test_client_errors_are_control_errors(short_dir: Path) -> None:
    missing = str(short_dir / "nope.sock")
    with pytest.raises(ControlError, match="daemon not running"):
        await request_async(missing, {"cmd": "status"})
    with pytest.raises(ControlError, match="daemon not running"):
        await asyncio.to_thread(request, missing, {"cmd": "status"})


# --------------------------------------------------------------------------- evsectl


async def test_evsectl_status_prints_indented_json(
    server: ControlServer, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_ctl("--socket", sock_path, "status") == 0
    out, err = capsys.readouterr()
    assert json.loads(out) == STATUS
    assert out.startswith("{\n  ")
    assert err == ""


async def test_evsectl_bench_verbs(
    server: ControlServer,
    sock_path: str,
    handler: FakeHandler,
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert await run_ctl("--socket", sock_path, "plug", "1") == 0
    assert capsys.readouterr().out == "ok\n"
    assert await run_ctl("--socket", sock_path, "ev", "2", "c") == 0
    assert capsys.readouterr().out == "ok\n"
    assert await run_ctl("--socket", sock_path, "swipe", "04A2B3C4") == 0
    assert json.loads(capsys.readouterr().out) == {"authorized": True}
    assert await run_ctl("--socket", sock_path, "fault", "1", "rcd") == 0
    assert await run_ctl("--socket", sock_path, "clear", "1", "rcd") == 0
    assert await run_ctl("--socket", sock_path, "unplug", "1") == 0
    assert [r["cmd"] for r in handler.requests] == [
        "plug",
        "ev",
        "swipe",
        "fault",
        "clear",
        "unplug",
    ]
    assert handler.requests[1] == {"cmd": "ev", "connector": 2, "state": "C"}


async def test_evsectl_refused_request_exits_1_with_one_line(
    server: ControlServer, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert await run_ctl("--socket", sock_path, "swipe", "REFUSED") == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "evsectl: bench verbs need mock drivers (this daemon runs real ones)\n"


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["plug"],
        ["plug", "x"],
        ["plug", "0"],
        ["ev", "1", "G"],
        ["fault", "1"],
        ["launch"],
        ["--socket", "/a", "--config", "/b", "status"],
        ["--timeout", "0", "status"],
    ],
)
def test_evsectl_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(argv) == 2
    assert re.search(r"^evsectl[a-z ]*: error: ", capsys.readouterr().err, re.MULTILINE)


def test_evsectl_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert ctl.main(["--help"]) == 0
    assert "status" in capsys.readouterr().out


async def test_evsectl_socket_from_config(
    server: ControlServer, sock_path: str, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = short_dir / "evse.toml"
    config.write_text(f'[station]\nid = "CP-1"\n\n[control]\nsocket = "{sock_path}"\n')
    assert await run_ctl("--config", str(config), "status") == 0
    assert json.loads(capsys.readouterr().out) == STATUS


async def test_evsectl_socket_from_environment(
    server: ControlServer,
    sock_path: str,
    short_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("EVSE_CONTROL_SOCKET", sock_path)
    assert await run_ctl("status") == 0
    assert json.loads(capsys.readouterr().out) == STATUS
    # A config without [control] socket falls through to the environment too.
    config = short_dir / "evse.toml"
    config.write_text('[station]\nid = "CP-1"\n')
    assert await run_ctl("--config", str(config), "status") == 0
    # --socket wins over the environment.
    monkeypatch.setenv("EVSE_CONTROL_SOCKET", str(short_dir / "elsewhere.sock"))
    assert await run_ctl("--socket", sock_path, "status") == 0


def test_evsectl_default_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("EVSE_CONTROL_SOCKET", raising=False)
    seen: list[str] = []

    def fake_request(path: str, req: dict[str, Any], timeout_s: float = 5.0) -> dict[str, Any]:
        seen.append(path)
        return {"ok": True, "result": {}}

    monkeypatch.setattr(ctl, "request", fake_request)
    assert ctl.main(["status"]) == 0
    assert seen == ["/run/evse-daemon/control.sock"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (None, "not found"),
        ("[control\nsocket = 1", "invalid TOML"),
        ("[control]\nsocket = 5\n", "control.socket"),
        ("control = 3\n", "control: must be a table"),
    ],
)
def test_evsectl_bad_config_exits_1(
    content: str | None, expected: str, short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = short_dir / "evse.toml"
    if content is not None:
        config.write_text(content)
    assert ctl.main(["--config", str(config), "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evsectl: ") and err.count("\n") == 1
    assert expected in err


def test_evsectl_no_daemon_exits_1_with_one_line(
    short_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = str(short_dir / "control.sock")
    assert ctl.main(["--socket", path, "status"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"evsectl: daemon not running (no control socket at {path})\n"


def test_evsectl_stale_socket_exits_1(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(short_dir / "control.sock")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(path)
    stale.close()
    assert ctl.main(["--socket", path, "status"]) == 1
    assert capsys.readouterr().err == f"evsectl: daemon not running (nothing listens on {path})\n"


@pytest.mark.skipif(os.geteuid() == 0, reason="root is never denied")
async def test_evsectl_permission_denied_exits_1(
    server: ControlServer, sock_path: str, capsys: pytest.CaptureFixture[str]
) -> None:
    os.chmod(sock_path, 0o600)
    os.chmod(os.path.dirname(sock_path), 0o000)
    try:
        assert await run_ctl("--socket", sock_path, "status") == 1
    finally:
        os.chmod(os.path.dirname(sock_path), 0o755)
    assert "permission denied" in capsys.readouterr().err


def test_evsectl_permission_denied_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Runs also as root (whom no file mode stops): the kernel's EACCES, simulated.
    class DeniedSocket(socket.socket):
        def connect(self, address: Any) -> None:
            raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(socket, "socket", DeniedSocket)
    assert ctl.main(["--socket", "/run/x/control.sock", "status"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("evsectl: permission denied on /run/x/control.sock")
    assert err.count("\n") == 1


async def test_evsectl_timeout_exits_1(short_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = str(short_dir / "mute.sock")
    hold = asyncio.Event()

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A hung daemon: accepts and never answers.
        await hold.wait()
        writer.close()

    mute_server = await asyncio.start_unix_server(mute, path=path)
    try:
        assert await run_ctl("--socket", path, "--timeout", "0.3", "status") == 1
    finally:
        hold.set()
        mute_server.close()
        await mute_server.wait_closed()
    assert capsys.readouterr().err == f"evsectl: no answer from the daemon at {path} within 0.3s\n"


async def test_evsectl_as_a_subprocess(server: ControlServer, sock_path: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evse_daemon.ctl",
        "--socket",
        sock_path,
        "status",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err
    assert json.loads(out) == STATUS

    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evse_daemon.ctl",
        "--socket",
        sock_path + ".missing",
        "plug",
        "1",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=REPO_ROOT,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 1
    assert out == b""
    assert err.decode().startswith("evsectl: daemon not running") and err.count(b"\n") == 1
