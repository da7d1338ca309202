"""scripts/install and scripts/uninstall into a temporary root: the tree, the unit as installed
(systemd-analyze verify), the installed venv's commands and the configuration's life cycle."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# pip builds and installs the daemon and its dependencies into a new venv.
INSTALL_TIMEOUT_S = 900


def _run(*command: str | Path, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(part) for part in command],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        cwd="/",  # nothing may come from the checkout by accident
    )


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


@pytest.mark.timeout(2 * INSTALL_TIMEOUT_S)
def test_install_and_uninstall_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _run(REPO / "scripts" / "install", "--root", root, timeout_s=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    # What needs root on a real system is shown, not done.
    for would in ("useradd --system", "chown root:evse", "systemctl daemon-reload"):
        assert f"would run: {would}" in result.stdout, result.stdout

    # The tree.
    venv = root / "opt/evse-daemon/venv"
    config = root / "etc/evse-daemon/evse.toml"
    unit = root / "etc/systemd/system/evse-daemon.service"
    assert config.read_text() == (REPO / "systemd/evse.toml.example").read_text()
    assert _mode(config) == 0o640 and _mode(config.parent) == 0o750
    assert _mode(root / "var/lib/evse-daemon") == 0o750
    assert unit.read_text() == (REPO / "systemd/evse-daemon.service").read_text()
    assert _mode(unit) == 0o644
    for command in ("evse-daemon", "evsectl"):
        link = root / "usr/local/bin" / command
        assert os.readlink(link) == f"/opt/evse-daemon/venv/bin/{command}"
        assert (venv / "bin" / command).is_file()
    assert (root / "opt/evse-daemon/README.md").is_file()  # the unit's Documentation=

    # The unit as installed, with its own program: verify has nothing to say.
    check = _run(REPO / "scripts/check-unit", unit, venv / "bin/evse-daemon")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no warnings" in check.stdout and "OK" in check.stdout

    # The installed daemon runs from the venv, with its hardware data (board profiles and
    # meter maps, which the reference configuration needs) inside the installed package.
    assert _run(venv / "bin/evse-daemon", "--help").returncode == 0
    assert _run(venv / "bin/evsectl", "--help").returncode == 0
    where = _run(venv / "bin/python", "-c", "import evse_daemon; print(evse_daemon.__file__)")
    assert where.stdout.startswith(str(venv)), where.stdout + where.stderr
    for checked in (config, root / "opt/evse-daemon/examples/pi-evse-reference.evse.toml"):
        verdict = _run(venv / "bin/evse-daemon", "check-config", checked)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert ": OK (" in verdict.stdout

    # Installing again (an upgrade) keeps the technician's configuration.
    config.write_text(config.read_text().replace('id = "CP-BENCH-1"', 'id = "CP-FIELD-7"'))
    again = _run(REPO / "scripts" / "install", "--root", root, timeout_s=INSTALL_TIMEOUT_S)
    assert again.returncode == 0, again.stdout + again.stderr
    assert 'id = "CP-FIELD-7"' in config.read_text()
    assert "station CP-FIELD-7" in again.stdout  # and checks it

    # Uninstall keeps the configuration and the state...
    state_file = root / "var/lib/evse-daemon/evse.sqlite3"
    state_file.write_bytes(b"")
    removed = _run(REPO / "scripts/uninstall", "--root", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "would run: systemctl disable --now evse-daemon.service" in removed.stdout
    assert not unit.exists()
    assert not (root / "opt/evse-daemon").exists()
    assert not (root / "usr/local/bin/evsectl").is_symlink()
    assert 'id = "CP-FIELD-7"' in config.read_text()
    assert state_file.exists()
    # ...unless purged.
    purged = _run(REPO / "scripts/uninstall", "--root", root, "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not config.parent.exists()
    assert not state_file.parent.exists()
