"""scripts/install and scripts/uninstall into a temporary root: the tree (a venv per version
under /opt/evse-daemon/venvs and the symlink venv the unit starts), the unit as installed
(systemd-analyze verify), the installed venv's commands, upgrades, the migration of an older
install's venv directory, the configuration's life cycle, and the daemon's own firmware
updater working on what scripts/install laid out."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# pip builds and installs the daemon and its dependencies into a new venv.
INSTALL_TIMEOUT_S = 900
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
# The version of a second wheel, built from a copy of the source: an upgrade.
NEW_VERSION = "99.0.0"
# What the source tree of a wheel is (as scripts/install copies it).
WHEEL_SOURCES = ("pyproject.toml", "README.md", "evse_daemon", "drivers", "hardware")


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


def _install(root: Path, *arguments: str | Path) -> subprocess.CompletedProcess[str]:
    result = _run(REPO / "scripts/install", "--root", root, *arguments, timeout_s=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def _version(command: Path) -> str:
    """What ``evse-daemon --version`` of that venv says: which version it runs."""
    result = _run(command, "--version")
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout.strip()


def _venvs(app: Path) -> list[str]:
    return sorted(p.name for p in (app / "venvs").iterdir())


@dataclass(frozen=True)
class Wheels:
    current: Path  # this checkout's version
    new: Path  # the same code as NEW_VERSION


def _build_wheel(source: Path, out: Path) -> Path:
    result = _run(
        sys.executable,
        "-m",
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--wheel-dir",
        out,
        source,
        timeout_s=INSTALL_TIMEOUT_S,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("evse_daemon-*.whl")
    return wheel


@pytest.fixture(scope="module")
def wheels(tmp_path_factory: pytest.TempPathFactory) -> Wheels:
    """Two wheels of this checkout, built from copies (a build in the checkout leaves build/
    behind): its own version and NEW_VERSION."""
    built: dict[str, Path] = {}
    for version in (VERSION, NEW_VERSION):
        work = tmp_path_factory.mktemp(f"wheel-{version}")
        source = work / "source"
        source.mkdir()
        for name in WHEEL_SOURCES:
            if (REPO / name).is_dir():
                ignore = shutil.ignore_patterns("__pycache__")
                shutil.copytree(REPO / name, source / name, ignore=ignore)
            else:
                shutil.copyfile(REPO / name, source / name)
        pyproject = source / "pyproject.toml"
        text = pyproject.read_text()
        bumped = text.replace(f'version = "{VERSION}"', f'version = "{version}"', 1)
        assert f'version = "{version}"' in bumped
        pyproject.write_text(bumped)
        built[version] = _build_wheel(source, work / "out")
    assert built[NEW_VERSION].name.startswith(f"evse_daemon-{NEW_VERSION}-")
    return Wheels(current=built[VERSION], new=built[NEW_VERSION])


@pytest.mark.timeout(3 * INSTALL_TIMEOUT_S)
def test_install_and_uninstall_into_a_temporary_root(tmp_path: Path) -> None:
    root = tmp_path / "root"
    result = _install(root)  # the wheel built from this checkout
    app = root / "opt/evse-daemon"
    # What needs root on a real system is shown, not done: the daemon's user may write its
    # install directory (the symlink) and owns the venvs (a firmware update makes new ones
    # and removes old ones).
    for would in (
        "useradd --system",
        f"chown root:evse {app}",
        f"chown -R evse:evse {app}/venvs",
        f"chown root:evse {root}/etc/evse-daemon",
        "systemctl daemon-reload",
    ):
        assert f"would run: {would}" in result.stdout, result.stdout

    # The tree: the venv of this version, and the symlink the unit starts it through.
    venv = app / "venv"
    config = root / "etc/evse-daemon/evse.toml"
    unit = root / "etc/systemd/system/evse-daemon.service"
    assert venv.is_symlink()
    assert os.readlink(venv) == f"venvs/{VERSION}"  # relative, as the firmware updater writes
    assert venv.resolve() == (app / "venvs" / VERSION).resolve()
    assert _venvs(app) == [VERSION]
    assert not (app / "venv.previous").is_symlink()  # nothing to roll back to yet
    assert _mode(app) == 0o775 and _mode(app / "venvs") == 0o755
    assert config.read_text() == (REPO / "systemd/evse.toml.example").read_text()
    assert _mode(config) == 0o640 and _mode(config.parent) == 0o750
    assert _mode(root / "var/lib/evse-daemon") == 0o750
    assert unit.read_text() == (REPO / "systemd/evse-daemon.service").read_text()
    assert "\nReadWritePaths=/opt/evse-daemon\n" in unit.read_text()
    assert _mode(unit) == 0o644
    for command in ("evse-daemon", "evsectl"):
        link = root / "usr/local/bin" / command
        assert os.readlink(link) == f"/opt/evse-daemon/venv/bin/{command}"
        assert (venv / "bin" / command).is_file()
    assert (app / "README.md").is_file()  # the unit's Documentation=

    # The unit as installed, with its own program: verify has nothing to say.
    check = _run(REPO / "scripts/check-unit", unit, venv / "bin/evse-daemon")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "no warnings" in check.stdout and "OK" in check.stdout

    # The installed daemon runs from the venv of its version, with its hardware data (board
    # profiles and meter maps, which the reference configuration needs) inside the package.
    assert _run(venv / "bin/evse-daemon", "--help").returncode == 0
    assert _run(venv / "bin/evsectl", "--help").returncode == 0
    assert _version(venv / "bin/evse-daemon") == f"evse-daemon {VERSION}"
    where = _run(venv / "bin/python", "-c", "import evse_daemon; print(evse_daemon.__file__)")
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).resolve().is_relative_to((app / "venvs" / VERSION).resolve())
    # The commands start the interpreter of their own version, not the one behind the
    # symlink: a running daemon stays on its version while the symlink is switched.
    for command in ("evse-daemon", "evsectl"):
        shebang = (venv / "bin" / command).read_text().splitlines()[0]
        assert shebang == f"#!{app}/venvs/{VERSION}/bin/python"
    for checked in (config, app / "examples/pi-evse-reference.evse.toml"):
        verdict = _run(venv / "bin/evse-daemon", "check-config", checked)
        assert verdict.returncode == 0, verdict.stdout + verdict.stderr
        assert ": OK (" in verdict.stdout

    # Installing the same version again reinstalls into its venv (a file left in it stays;
    # a new venv would not have it), keeps the technician's configuration, and switches
    # nothing.
    marker = app / "venvs" / VERSION / "marker"
    marker.write_text("the same venv")
    config.write_text(config.read_text().replace('id = "CP-BENCH-1"', 'id = "CP-FIELD-7"'))
    again = _install(root)
    assert marker.is_file()
    assert os.readlink(venv) == f"venvs/{VERSION}" and _venvs(app) == [VERSION]
    assert not (app / "venv.previous").is_symlink()
    assert 'id = "CP-FIELD-7"' in config.read_text()
    assert "station CP-FIELD-7" in again.stdout  # and checks it

    # Uninstall removes the venvs and the symlinks, keeps the configuration and the state...
    state_file = root / "var/lib/evse-daemon/evse.sqlite3"
    state_file.write_bytes(b"")
    removed = _run(REPO / "scripts/uninstall", "--root", root)
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert "would run: systemctl disable --now evse-daemon.service" in removed.stdout
    assert not unit.exists()
    assert not app.exists()
    assert not (root / "usr/local/bin/evsectl").is_symlink()
    assert 'id = "CP-FIELD-7"' in config.read_text()
    assert state_file.exists()
    # ...unless purged.
    purged = _run(REPO / "scripts/uninstall", "--root", root, "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not config.parent.exists()
    assert not state_file.parent.exists()


@pytest.mark.timeout(3 * INSTALL_TIMEOUT_S)
def test_a_new_version_gets_a_new_venv_and_the_previous_one_stays(
    tmp_path: Path, wheels: Wheels
) -> None:
    root = tmp_path / "root"
    app = root / "opt/evse-daemon"
    _install(root, "--wheel", wheels.current)
    # A venv two versions back (as a firmware update may leave): removed at the switch.
    (app / "venvs/0.0.1/bin").mkdir(parents=True)
    result = _install(root, "--wheel", wheels.new)

    assert os.readlink(app / "venv") == f"venvs/{NEW_VERSION}"
    assert os.readlink(app / "venv.previous") == f"venvs/{VERSION}"
    assert _venvs(app) == sorted([VERSION, NEW_VERSION])
    assert f"switched {app}/venv to venvs/{NEW_VERSION}" in result.stdout
    # The new version starts through the symlink, and the previous one still works where it
    # is (it was never moved: its commands name its own path).
    assert _version(app / "venv/bin/evse-daemon") == f"evse-daemon {NEW_VERSION}"
    assert _version(app / "venv.previous/bin/evse-daemon") == f"evse-daemon {VERSION}"
    assert (
        os.readlink(root / "usr/local/bin/evse-daemon") == "/opt/evse-daemon/venv/bin/evse-daemon"
    )
    # No temporary symlink is left behind.
    assert sorted(p.name for p in app.iterdir()) == [
        "README.md",
        "examples",
        "venv",
        "venv.previous",
        "venvs",
    ]


@pytest.mark.timeout(2 * INSTALL_TIMEOUT_S)
def test_the_venv_directory_of_an_older_install_is_replaced(tmp_path: Path, wheels: Wheels) -> None:
    root = tmp_path / "root"
    app = root / "opt/evse-daemon"
    # What an older scripts/install made: a real venv directory /opt/evse-daemon/venv.
    legacy = app / "venv"
    made = _run(sys.executable, "-m", "venv", "--without-pip", legacy)
    assert made.returncode == 0, made.stdout + made.stderr
    (legacy / "legacy-marker").write_text("the old install")
    (root / "usr/local/bin").mkdir(parents=True)
    (root / "usr/local/bin/evsectl").symlink_to("/opt/evse-daemon/venv/bin/evsectl")

    _install(root, "--wheel", wheels.current)
    assert legacy.is_symlink() and os.readlink(legacy) == f"venvs/{VERSION}"
    assert _venvs(app) == [VERSION]
    # The old directory is gone, not kept to roll back to: moved, it would not run.
    assert list(app.rglob("legacy-marker")) == []
    assert not (app / "venv.previous").is_symlink()
    assert not any(p.name.startswith(".venv") for p in app.iterdir())
    assert _version(app / "venv/bin/evse-daemon") == f"evse-daemon {VERSION}"
    assert os.readlink(root / "usr/local/bin/evsectl") == "/opt/evse-daemon/venv/bin/evsectl"


# The daemon's firmware installer, as the app builds it (firmware_runner's installer), run by
# an installed interpreter: argv is the configuration, then "install WHEEL" or
# "roll-back STATE"; prints the install's state, or whether the rollback changed anything.
FIRMWARE_UPDATER = """
import asyncio, json, sys
from pathlib import Path
from evse_daemon.config import load_config
from evse_daemon.firmware_install import build_installer

async def main(config_path, action, argument):
    config = load_config(config_path)
    installer = build_installer(config.firmware, config.path)
    if action == "install":
        state = await installer.prepare(Path(argument))
        await installer.switch(state)
        print(json.dumps(state))
    else:
        print(json.dumps(await installer.roll_back(json.loads(argument))))

asyncio.run(main(*sys.argv[1:]))
"""


def _firmware_updater(python: Path, *argv: str | Path) -> object:
    result = _run(python, "-c", FIRMWARE_UPDATER, *argv, timeout_s=INSTALL_TIMEOUT_S)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.timeout(3 * INSTALL_TIMEOUT_S)
def test_the_firmware_updater_installs_and_rolls_back_on_what_install_laid_out(
    tmp_path: Path, wheels: Wheels
) -> None:
    root = tmp_path / "root"
    app = root / "opt/evse-daemon"
    _install(root, "--wheel", wheels.current)
    # The installed configuration, with the install directory under the temporary root. Any
    # pip_options but the default (--no-index): the dependencies come from where pip is set
    # to find them, as for scripts/install (this wheel is not a bundle holding them).
    config = root / "etc/evse-daemon/evse.toml"
    default = '# install_dir = "/opt/evse-daemon"\n'
    assert default in config.read_text()
    config.write_text(
        config.read_text().replace(
            default, f'install_dir = "{app}"\npip_options = ["--quiet"]\n', 1
        )
    )
    downloads = root / "var/lib/evse-daemon/firmware"
    downloads.mkdir(parents=True)
    firmware = downloads / wheels.new.name
    shutil.copyfile(wheels.new, firmware)

    # The installed daemon (its venv's interpreter, as the unit's ExecStart starts it)
    # installs the new version beside itself and switches the symlink.
    running = app / "venvs" / VERSION / "bin/python"
    state = _firmware_updater(running, config, "install", firmware)
    assert state == {
        "installer": "wheel",
        "version": NEW_VERSION,
        "target": f"venvs/{NEW_VERSION}",
        "previous": f"venvs/{VERSION}",
    }
    assert os.readlink(app / "venv") == f"venvs/{NEW_VERSION}"
    assert os.readlink(app / "venv.previous") == f"venvs/{VERSION}"
    assert _venvs(app) == sorted([VERSION, NEW_VERSION])
    assert _version(app / "venv/bin/evse-daemon") == f"evse-daemon {NEW_VERSION}"
    # The new venv is made like the installed one: it sees the board's libraries of the OS,
    # and has a pip of its own, with which the next update runs from it.
    new_python = app / "venvs" / NEW_VERSION / "bin/python"
    assert (
        "include-system-site-packages = true"
        in (app / "venvs" / NEW_VERSION / "pyvenv.cfg").read_text()
    )
    assert _run(new_python, "-m", "pip", "--version").returncode == 0

    # The new version does not come up confirmed: it rolls itself back.
    assert _firmware_updater(new_python, config, "roll-back", json.dumps(state)) is True
    assert os.readlink(app / "venv") == f"venvs/{VERSION}"
    assert _version(app / "venv/bin/evse-daemon") == f"evse-daemon {VERSION}"
    assert _firmware_updater(running, config, "roll-back", json.dumps(state)) is False
