"""systemd integration: sd_notify over a real NOTIFY_SOCKET datagram socket, and the real
daemon as a subprocess telling it READY, STATUS, WATCHDOG and STOPPING."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import secrets
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from drivers.protocols import CpState, PilotOutput
from evse_daemon import ctl
from evse_daemon.bench.csms import BenchCsms
from evse_daemon.charger import ConnectorView, ErrorCode, Status
from evse_daemon.config import DriverConfig
from evse_daemon.control import KNOWN_COMMANDS, ControlError
from evse_daemon.logsetup import ID_TAG_KEY_FILE
from evse_daemon.service import Notifier, notify_address, status_text, watchdog_interval_s
from tests.harness import DaemonProcess, bench, write_config

# --- sd_notify -------------------------------------------------------------------------------


def _datagram_socket(address: str | bytes) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(10)
    return sock


def test_notify_reaches_a_socket_path(tmp_path: Path) -> None:
    path = str(tmp_path / "notify.sock")
    with _datagram_socket(path) as receiver:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
        assert notifier.send("READY=1", "STATUS=OCPP Accepted; 1: Available")
        assert receiver.recv(4096) == b"READY=1\nSTATUS=OCPP Accepted; 1: Available"


def test_notify_reaches_an_abstract_socket() -> None:
    name = f"evse-daemon-test-{secrets.token_hex(8)}"
    with _datagram_socket(b"\0" + name.encode()) as receiver:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.send("WATCHDOG=1")
        assert receiver.recv(4096) == b"WATCHDOG=1"


def test_notify_without_systemd_is_a_no_op(tmp_path: Path) -> None:
    assert not Notifier.from_environment({}).send("READY=1")
    assert notify_address({"NOTIFY_SOCKET": "vsock:2:1234"}) is None
    # A socket that nobody listens on: the notification is lost, the daemon carries on.
    gone = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
    assert not gone.send("READY=1")


def test_watchdog_interval() -> None:
    pid = os.getpid()
    assert watchdog_interval_s({"WATCHDOG_USEC": "30000000"}, pid) == 30.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": str(pid)}, pid) == 0.5
    # Meant for another process (inherited from a watched parent), absent, or nonsense.
    assert watchdog_interval_s({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, pid) is None
    assert watchdog_interval_s({}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "0"}, pid) is None
    assert watchdog_interval_s({"WATCHDOG_USEC": "soon"}, pid) is None


def _view(
    connector_id: int,
    status: Status,
    offered_a: float = 0.0,
    error: ErrorCode = ErrorCode.NO_ERROR,
) -> ConnectorView:
    return ConnectorView(
        connector_id=connector_id,
        status=status,
        error_code=error,
        info=None,
        cp_state=CpState.C if status is Status.CHARGING else CpState.A,
        pilot_output=PilotOutput.PWM if offered_a else PilotOutput.STEADY,
        duty_percent=offered_a / 0.6,
        contactor_closed=status is Status.CHARGING,
        offered_current_a=offered_a,
        max_current_a=32.0,
        phases=3,
        operative=True,
        scheduled_operative=None,
        faults=(),
        transaction_local_id=None,
        transaction_id_tag=None,
        authorized_id_tag=None,
        meter=None,
    )


def test_status_line_for_systemctl_status() -> None:
    online = {"connected": True, "registration": "Accepted", "queue_depth": 0}
    views = [_view(1, Status.CHARGING, 16.0), _view(2, Status.AVAILABLE)]
    assert status_text(online, views) == "OCPP Accepted; 1: Charging 16.0 A, 2: Available"
    offline = {"connected": False, "registration": "Accepted", "queue_depth": 3}
    faulted = [_view(1, Status.FAULTED, error=ErrorCode.GROUND_FAILURE)]
    assert status_text(offline, faulted) == "OCPP offline (3 queued); 1: Faulted (GroundFailure)"
    connecting = {"connected": True, "registration": "None", "queue_depth": 0}
    paused = [_view(1, Status.SUSPENDED_EVSE)]
    assert status_text(connecting, paused) == "OCPP connecting; 1: SuspendedEVSE"


# --- the daemon under a (simulated) service manager ---------------------------------------------


class NotifyListener:
    """What systemd would receive on NOTIFY_SOCKET: every datagram, in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.datagrams: list[str] = []
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(path))
        self._sock.setblocking(False)

    async def receive(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.datagrams.append((await loop.sock_recv(self._sock, 4096)).decode())

    def close(self) -> None:
        self._sock.close()

    def mark(self) -> int:
        return len(self.datagrams)

    def find(self, predicate: Callable[[str], bool], after: int = 0) -> int | None:
        for index in range(after, len(self.datagrams)):
            if predicate(self.datagrams[index]):
                return index
        return None

    async def wait_for(
        self, predicate: Callable[[str], bool], *, after: int = 0, timeout_s: float = 30.0
    ) -> int:
        """The index of the first datagram from ``after`` on that matches."""
        deadline = time.monotonic() + timeout_s
        while (index := self.find(predicate, after)) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no such datagram; received: {self.datagrams[after:]}")
            await asyncio.sleep(0.02)
        return index


def _lines(datagram: str) -> list[str]:
    return datagram.split("\n")


def watchdog(datagram: str) -> bool:
    return "WATCHDOG=1" in _lines(datagram)


def status_matching(pattern: str) -> Callable[[str], bool]:
    return lambda d: any(
        line.startswith("STATUS=") and re.search(pattern, line) for line in _lines(d)
    )


@contextlib.asynccontextmanager
async def listening(path: Path) -> AsyncIterator[NotifyListener]:
    listener = NotifyListener(path)
    task = asyncio.create_task(listener.receive())
    try:
        yield listener
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        listener.close()


async def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


async def _evsectl(control: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return await _run("evse_daemon.ctl", "--socket", str(control), *args)


WATCHDOG_USEC = 1_000_000  # a ping every 0.5 s
SECRET_TAG = "SECRET-TAG-0451"


async def test_daemon_tells_systemd_ready_status_watchdog_and_stopping(tmp_path: Path) -> None:
    async with BenchCsms() as csms, listening(tmp_path / "notify.sock") as systemd:
        config = write_config(tmp_path, csms.url)
        control = tmp_path / "control.sock"
        daemon = DaemonProcess(
            config,
            env={"NOTIFY_SOCKET": str(systemd.path), "WATCHDOG_USEC": str(WATCHDOG_USEC)},
        )
        try:
            # READY=1 once the hardware is safe and the safety loop runs; then the pings.
            ready = await systemd.wait_for(lambda d: "READY=1" in _lines(d))
            assert systemd.find(watchdog) is None or systemd.find(watchdog) > ready
            await systemd.wait_for(watchdog, after=ready)
            await systemd.wait_for(status_matching(r"^STATUS=OCPP Accepted; 1: Available$"))

            assert (await _evsectl(control, "plug", "1")).returncode == 0
            assert (await _evsectl(control, "swipe", SECRET_TAG)).returncode == 0
            await systemd.wait_for(
                status_matching(r"^STATUS=OCPP Accepted; 1: Charging \d+\.\d A$")
            )

            # The safety loop stalls while the rest of the daemon runs on: no more pings.
            stall = await _evsectl(control, "debug", "stall-safety-loop", "600")
            assert stall.returncode == 0, stall.stderr
            stalled = await systemd.wait_for(status_matching("watchdog ping withheld"))
            await asyncio.sleep(3 * WATCHDOG_USEC / 1e6)  # a window of several ping intervals
            status = await _evsectl(control, "status")  # the event loop itself still answers
            assert status.returncode == 0, status.stderr
            released = systemd.mark()
            assert (await _evsectl(control, "debug", "stall-safety-loop", "0")).returncode == 0
            assert not any(watchdog(d) for d in systemd.datagrams[stalled:released])
            # Released: the pings and the connector status come back.
            await systemd.wait_for(watchdog, after=released)
            await systemd.wait_for(status_matching(r"1: Charging"), after=released)

            daemon.proc.send_signal(signal.SIGTERM)
            await systemd.wait_for(lambda d: "STOPPING=1" in _lines(d))
            assert await asyncio.to_thread(daemon.proc.wait, 30) == 0
        finally:
            daemon.kill()
        log = daemon.log()
        assert "watchdog ping withheld" in log
        # [logging] id_tag defaults to "hash": the card is in the log, correlatable, but its
        # idTag is not, anywhere.
        assert re.search(r"transaction 1 started for #[0-9a-f]{12}\b", log), log
        assert SECRET_TAG not in log
        # ...and a technician with the card in hand can find it.
        hashed = await _run("evse_daemon", "id-tag-hash", "--config", str(config), SECRET_TAG)
        assert hashed.returncode == 0, hashed.stderr
        assert f"transaction 1 started for {hashed.stdout.strip()}" in log
        key = tmp_path / "state" / ID_TAG_KEY_FILE
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


async def test_stalling_the_safety_loop_is_a_bench_command(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        # The same daemon, as if its card reader were a real one.
        reader = DriverConfig("rdm6300", {"device": "/dev/serial0"})
        b.app.config = dataclasses.replace(b.app.config, rfid=reader)
        request = {"cmd": "debug", "what": "stall-safety-loop", "seconds": 5.0}
        with pytest.raises(ControlError, match="bench command: this daemon runs real drivers"):
            await b.app.handle_control(request)
    assert ctl.main(["debug", "stall-safety-loop", "601"]) == 2  # argparse: out of range


@pytest.mark.parametrize("seconds", [-1, 601, "10", True])
def test_control_socket_checks_the_stall_request(seconds: object) -> None:
    with pytest.raises(ControlError, match="seconds"):
        KNOWN_COMMANDS["debug"]({"cmd": "debug", "what": "stall-safety-loop", "seconds": seconds})
    with pytest.raises(ControlError, match="what"):
        KNOWN_COMMANDS["debug"]({"cmd": "debug", "what": "crash", "seconds": 1})
