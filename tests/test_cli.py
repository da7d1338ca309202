"""The commands as a user runs them: evse-daemon (run, check-config, demo) and evsectl, as
subprocesses, against a real CSMS on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path

from evse_daemon.bench.csms import BenchCsms
from tests.harness import DaemonProcess, write_config

EXAMPLE = Path(__file__).resolve().parent.parent / "systemd" / "evse.toml.example"


def _evse_daemon(*args: str, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "evse_daemon.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


async def _evsectl(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "evse_daemon.ctl",
        "--socket",
        str(socket),
        *args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 20)
    assert process.returncode is not None
    return subprocess.CompletedProcess(args, process.returncode, out.decode(), err.decode())


def test_check_config_accepts_the_example() -> None:
    result = _evse_daemon("check-config", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_check_config_reports_every_error_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        "[station]\n"
        'id = "CP1"\n'
        'vendor = "V"\n'
        'model = "M"\n'
        "[ocpp]\n"
        'csms_url = "http://example.org/ocpp"\n'
        "[[connector]]\n"
        "id = 1\n"
        "max_current_a = 100\n"
        "phases = 2\n"
        'pilot = { driver = "mock" }\n'
        'contactor = { driver = "mock" }\n'
        'meter = { driver = "mokc" }\n'
    )
    result = _evse_daemon("check-config", str(bad))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert any(line.startswith(f"{bad}:6: ocpp.csms_url: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:9: connector[0].max_current_a: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:10: connector[0].phases: ") for line in lines), lines
    assert any(line.startswith(f"{bad}:13: connector[0].meter.driver: ") for line in lines), lines


def test_run_refuses_a_bad_config_before_touching_anything(tmp_path: Path) -> None:
    config = write_config(tmp_path, "ws://127.0.0.1:9/ocpp")
    text = config.read_text().replace("phases = 3", "phases = 5")
    config.write_text(text)
    result = _evse_daemon("run", "--config", str(config))
    assert result.returncode == 2
    assert "connector[0].phases" in result.stderr
    # Nothing was created: no state directory, no control socket.
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "control.sock").exists()


def test_demo_runs_a_session_and_exits_zero() -> None:
    result = _evse_daemon("demo", "--speed", "2", timeout_s=90)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    for expected in (
        "BootNotification",
        "StartTransaction",
        "MeterValues",
        "RemoteStopTransaction",
        "StopTransaction",
        "contactor CLOSED",
    ):
        assert expected in out, expected
    assert "Wh delivered" in out


async def test_daemon_subprocess_session_via_evsectl_and_sigterm(tmp_path: Path) -> None:
    async with BenchCsms() as csms:
        config = write_config(tmp_path, csms.url)
        socket = tmp_path / "control.sock"
        daemon = DaemonProcess(config)
        try:
            await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1, timeout_s=20)
            status = await _evsectl(socket, "status")
            assert status.returncode == 0, status.stderr
            snapshot = json.loads(status.stdout)
            assert snapshot["ocpp"]["registration"] == "Accepted"
            assert snapshot["connectors"][0]["status"] == "Available"
            assert snapshot["connectors"][0]["contactor"] == "open"

            assert (await _evsectl(socket, "plug", "1")).returncode == 0
            assert (await _evsectl(socket, "swipe", "TAG-SUBPROCESS")).returncode == 0
            start = await csms.wait_for("StartTransaction", timeout_s=10)
            assert start.payload["idTag"] == "TAG-SUBPROCESS"
            await csms.wait_for("StatusNotification", lambda p: p["status"] == "Charging")
            charging = json.loads((await _evsectl(socket, "status")).stdout)
            assert charging["connectors"][0]["contactor"] == "closed"
            assert charging["connectors"][0]["pilot_state"] == "C"

            bad = await _evsectl(socket, "fault", "1", "no-such-fault")
            assert bad.returncode == 1
            assert bad.stderr.startswith("evsectl: ") and len(bad.stderr.strip().splitlines()) == 1

            # SIGTERM: a clean stop that still reports the transaction.
            assert await asyncio.to_thread(daemon.terminate) == 0
            stop = await csms.wait_for("StopTransaction", timeout_s=5)
            assert stop.payload["reason"] == "Reboot"
            assert not socket.exists()
        finally:
            daemon.kill()
