"""The installers, for real in a temporary directory: a venv per version built with pip from a
tiny wheel, the symlink switched and rolled back; and installers of one's own (commands)."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from evse_daemon.config import FirmwareConfig
from evse_daemon.firmware_install import (
    CommandInstaller,
    InstallError,
    WheelInstaller,
    run_command,
    wheel_version,
)
from tests.firmware_kit import build_wheel


def _layout(tmp_path: Path) -> tuple[FirmwareConfig, Path]:
    """/opt/evse-daemon as installed: venvs/1.0 and the symlink venv pointing to it."""
    base = tmp_path / "opt"
    (base / "venvs" / "1.0" / "bin").mkdir(parents=True)
    (base / "venv").symlink_to("venvs/1.0")
    return FirmwareConfig(install_dir=str(base)), base


def _firmware(tmp_path: Path, version: str = "9.9.9", exit_code: int = 0) -> Path:
    downloads = tmp_path / "state" / "firmware"
    downloads.mkdir(parents=True, exist_ok=True)
    return build_wheel(downloads, version, exit_code=exit_code)


async def test_wheel_installed_beside_switched_to_and_rolled_back(tmp_path: Path) -> None:
    settings, base = _layout(tmp_path)
    installer = WheelInstaller(settings, str(tmp_path / "evse.toml"))
    state = await installer.prepare(_firmware(tmp_path))
    assert state == {
        "installer": "wheel",
        "version": "9.9.9",
        "target": "venvs/9.9.9",
        "previous": "venvs/1.0",
    }
    assert os.readlink(base / "venv") == "venvs/1.0"  # nothing that runs has changed yet
    assert (base / "venvs" / "9.9.9" / "bin" / "evse-daemon").exists()
    assert sorted(p.name for p in (tmp_path / "state" / "firmware").iterdir()) == [
        "evse_daemon-9.9.9-py3-none-any.whl"
    ]  # the unpacked copy is gone

    await installer.switch(state)
    assert os.readlink(base / "venv") == "venvs/9.9.9"
    assert os.readlink(base / "venv.previous") == "venvs/1.0"
    assert await run_command([str(base / "venv" / "bin" / "evse-daemon")], 30) == (
        0,
        "probe 9.9.9",
    )

    assert await installer.roll_back(state) is True
    assert os.readlink(base / "venv") == "venvs/1.0"
    assert await installer.roll_back(state) is False  # already back: nothing to restart


async def test_a_bundle_of_wheels_installs_offline_and_replaces_older_venvs(
    tmp_path: Path,
) -> None:
    settings, base = _layout(tmp_path)
    (base / "venvs" / "0.9").mkdir()  # two versions back: pruned at the switch
    wheel = _firmware(tmp_path, "2.0")
    bundle = wheel.with_name("evse-daemon-2.0.tar.gz")
    with tarfile.open(bundle, "w:gz") as archive:
        archive.add(wheel, arcname=f"wheels/{wheel.name}")
        notes = b"release notes"
        info = tarfile.TarInfo("../../README")  # never written anywhere
        info.size = len(notes)
        archive.addfile(info, io.BytesIO(notes))
    wheel.unlink()
    installer = WheelInstaller(settings, "/etc/evse.toml")
    state = await installer.prepare(bundle)
    await installer.switch(state)
    assert sorted(p.name for p in (base / "venvs").iterdir()) == ["1.0", "2.0"]
    assert not (tmp_path / "README").exists()


async def test_a_new_version_whose_check_fails_is_not_switched_to(tmp_path: Path) -> None:
    settings, base = _layout(tmp_path)
    installer = WheelInstaller(settings, "/etc/evse.toml")
    with pytest.raises(InstallError, match="could not check it") as failure:
        await installer.prepare(_firmware(tmp_path, exit_code=1))
    assert not failure.value.verification
    assert "probe 9.9.9" in str(failure.value)  # its output says why
    assert os.readlink(base / "venv") == "venvs/1.0"
    assert sorted(p.name for p in (base / "venvs").iterdir()) == ["1.0"]


async def test_what_is_not_an_evse_daemon_wheel_fails_verification(tmp_path: Path) -> None:
    settings, base = _layout(tmp_path)
    installer = WheelInstaller(settings, "/etc/evse.toml")
    junk = tmp_path / "firmware.bin"
    junk.write_bytes(b"\x7fELF not a wheel")
    with pytest.raises(InstallError, match="neither a wheel") as failure:
        await installer.prepare(junk)
    assert failure.value.verification
    fake = tmp_path / "evse_daemon-3.0-py3-none-any.whl"
    fake.write_bytes(b"not a zip")
    with pytest.raises(InstallError, match="not a wheel") as failure:
        await installer.prepare(fake)
    assert failure.value.verification
    assert os.readlink(base / "venv") == "venvs/1.0"


async def test_the_built_in_installer_refuses_a_venv_that_is_not_a_symlink(
    tmp_path: Path,
) -> None:
    base = tmp_path / "opt"
    (base / "venv").mkdir(parents=True)
    installer = WheelInstaller(FirmwareConfig(install_dir=str(base)), "/etc/evse.toml")
    with pytest.raises(InstallError, match="is not a symlink"):
        await installer.prepare(_firmware(tmp_path))


async def test_install_and_rollback_commands(tmp_path: Path) -> None:
    log = tmp_path / "log"
    script = (
        "import sys; open(sys.argv[1], 'a').write(' '.join(sys.argv[2:]) + '\\n'); "
        "sys.exit(int(sys.argv[2]))"
    )
    settings = FirmwareConfig(
        install_command=(sys.executable, "-c", script, str(log), "0", "{file}", "{version}"),
        rollback_command=(sys.executable, "-c", script, str(log), "0", "rollback", "{config}"),
    )
    installer = CommandInstaller(settings, "/etc/evse.toml")
    wheel = _firmware(tmp_path, "4.1")
    state = await installer.prepare(wheel)
    await installer.switch(state)
    assert await installer.roll_back(state) is True
    assert log.read_text().splitlines() == [f"0 {wheel} 4.1", "0 rollback /etc/evse.toml"]

    failing = CommandInstaller(
        replace(settings, install_command=(sys.executable, "-c", script, str(log), "3")),
        "/etc/evse.toml",
    )
    with pytest.raises(InstallError, match="exit status 3"):
        await failing.prepare(wheel)
    missing = CommandInstaller(
        replace(settings, install_command=(str(tmp_path / "nope"),)), "/etc/evse.toml"
    )
    with pytest.raises(InstallError, match="exit status 127"):
        await missing.prepare(wheel)
    # Without a rollback command there is nothing to undo.
    assert (
        await CommandInstaller(FirmwareConfig(install_command=("x",)), "c").roll_back(state)
        is False
    )


def test_wheel_file_names() -> None:
    assert wheel_version(Path("evse_daemon-1.2.3-py3-none-any.whl")) == ("evse_daemon", "1.2.3")
    assert wheel_version(Path("Evse.Daemon-2.0-1-py3-none-any.whl")) == ("evse_daemon", "2.0")
    assert wheel_version(Path("firmware.bin")) is None
