"""Installing a downloaded firmware, switching to it, and switching back.

An installer works in three moves, so that the runner can store what it needs to undo the
install before anything that runs is changed:

1. ``prepare(file)``: put the new version beside the running one (nothing that runs changes);
   returns the state needed to switch and to roll back (plain JSON, stored by the runner).
2. ``switch(state)``: make the new version the one that starts (one atomic step).
3. ``roll_back(state)``: make the previous version the one that starts again; True if that
   changed anything (the daemon must then restart into it).

``WheelInstaller`` (the default) installs a wheel of evse-daemon, or a .tar.gz / .zip holding
it and the wheels it depends on, into a new venv ``<install_dir>/venvs/<version>``, runs a
check in it, and switches the symlink ``<install_dir>/venv`` (which the systemd unit starts
from) by renaming a new symlink over it. ``scripts/install`` lays out the first version the
same way, and gives the daemon's user write access to ``<install_dir>`` for this.
``CommandInstaller`` runs the commands of ``[firmware] install_command`` /
``rollback_command`` instead.

File work runs in worker threads, commands as asyncio subprocesses: the event loop never
waits on pip or the SD card.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import re
import secrets
import shutil
import sys
import tarfile
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from . import commands
from .config import FirmwareConfig

log = logging.getLogger(__name__)

# How much of a failed command's output goes into the log and the job's reason.
OUTPUT_TAIL_CHARS = 2000
_DISTRIBUTION = "evse_daemon"
_WHEEL_NAME = re.compile(r"^(?P<name>[^-]+)-(?P<version>[^-]+)(-[^-]+)?-[^-]+-[^-]+-[^-]+\.whl$")
_SAFE_VERSION = re.compile(r"[^A-Za-z0-9._+-]")


class InstallError(Exception):
    """The install did not happen; the running version is untouched.

    ``verification``: the file itself is not an installable firmware (not a wheel, no
    evse-daemon in it), as opposed to a failure while installing it.
    """

    def __init__(self, reason: str, *, verification: bool = False) -> None:
        super().__init__(reason)
        self.verification = verification


class Installer(Protocol):
    async def prepare(self, file: Path) -> dict[str, Any]: ...

    async def switch(self, state: Mapping[str, Any]) -> None: ...

    async def roll_back(self, state: Mapping[str, Any] | None) -> bool: ...


def build_installer(settings: FirmwareConfig, config_path: str) -> Installer:
    if settings.install_command:
        return CommandInstaller(settings, config_path)
    return WheelInstaller(settings, config_path)


async def run_command(argv: Sequence[str], timeout_s: float) -> tuple[int, str]:
    """Run ``argv``: (exit status, the tail of its output and errors) for logs and reasons."""
    result = await commands.run_command(argv, timeout_s)
    text = (result.stdout + result.stderr).strip()
    return result.status, text[-OUTPUT_TAIL_CHARS:]


def _expand(argv: Sequence[str], values: Mapping[str, str]) -> list[str]:
    return [arg.format_map(values) for arg in argv]


# --- the built-in installer: a venv per version and a symlink --------------------------------


def wheel_version(path: Path) -> tuple[str, str] | None:
    """(normalized distribution name, version) from a wheel's file name (PEP 427)."""
    match = _WHEEL_NAME.match(path.name)
    if match is None:
        return None
    return match["name"].lower().replace(".", "_"), match["version"]


def _unpack_wheels(file: Path, directory: Path) -> list[Path]:
    """The wheels the firmware file holds, as files in ``directory``: the file itself if it
    is a wheel, else the *.whl members of a .tar.gz or .zip bundle (flattened: member paths
    are never used as paths, so a hostile archive cannot write outside ``directory``)."""
    directory.mkdir(parents=True)
    if file.name.endswith(".whl"):
        target = directory / file.name
        shutil.copyfile(file, target)
        return [target]
    wheels: list[Path] = []
    try:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                for info in archive.infolist():
                    name = Path(info.filename).name
                    if not info.is_dir() and name.endswith(".whl"):
                        with archive.open(info) as source, open(directory / name, "wb") as out:
                            shutil.copyfileobj(source, out)
                        wheels.append(directory / name)
        elif tarfile.is_tarfile(file):
            with tarfile.open(file) as archive:
                for member in archive.getmembers():
                    name = Path(member.name).name
                    extracted = archive.extractfile(member) if member.isfile() else None
                    if extracted is None or not name.endswith(".whl"):
                        continue
                    with extracted, open(directory / name, "wb") as out:
                        shutil.copyfileobj(extracted, out)
                    wheels.append(directory / name)
        else:
            raise InstallError(
                f"{file.name} is neither a wheel nor a .tar.gz/.zip of wheels", verification=True
            )
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise InstallError(f"{file.name} cannot be unpacked: {exc}", verification=True) from exc
    return wheels


def _main_wheel(wheels: list[Path]) -> tuple[Path, str]:
    """The evse-daemon wheel among ``wheels`` (or the only wheel) and its version."""
    named = [(w, wheel_version(w)) for w in wheels]
    ours = [(w, v[1]) for w, v in named if v is not None and v[0] == _DISTRIBUTION]
    if not ours and len(named) == 1 and named[0][1] is not None:
        ours = [(named[0][0], named[0][1][1])]
    if len(ours) != 1:
        found = ", ".join(w.name for w in wheels) or "no wheel"
        raise InstallError(
            f"no single evse-daemon wheel in the firmware ({found})", verification=True
        )
    wheel, version = ours[0]
    try:
        with zipfile.ZipFile(wheel) as archive:
            if not any(n.endswith(".dist-info/WHEEL") for n in archive.namelist()):
                raise InstallError(f"{wheel.name} has no .dist-info/WHEEL", verification=True)
    except zipfile.BadZipFile as exc:
        raise InstallError(f"{wheel.name} is not a wheel: {exc}", verification=True) from exc
    return wheel, version


def _file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(1024 * 1024):
            digest.update(block)
    return digest.hexdigest()


def _point(link: Path, target: str) -> None:
    """Make ``link`` a symlink to ``target`` in one step: a new symlink renamed over it."""
    temporary = link.with_name(f".{link.name}.{secrets.token_hex(4)}")
    os.symlink(target, temporary)
    try:
        os.replace(temporary, link)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        raise
    fd = os.open(link.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself is on the card before the daemon restarts
    finally:
        os.close(fd)


class WheelInstaller:
    """A new venv per version under ``<install_dir>/venvs``, and the symlink
    ``<install_dir>/venv`` switched to it; the previous target is kept for rolling back (and
    as ``venv.previous`` for a technician)."""

    def __init__(
        self, settings: FirmwareConfig, config_path: str, *, python: str = sys.executable
    ) -> None:
        self.settings = settings
        self.config_path = config_path
        self.python = python
        self.base = Path(settings.install_dir)
        self.link = self.base / "venv"
        self.venvs = self.base / "venvs"

    async def prepare(self, file: Path) -> dict[str, Any]:
        previous = await asyncio.to_thread(self._current_target)
        work = file.parent / f".unpacked-{secrets.token_hex(4)}"
        try:
            wheels = await asyncio.to_thread(_unpack_wheels, file, work)
            wheel, version = await asyncio.to_thread(_main_wheel, wheels)
            venv = await asyncio.to_thread(self._new_venv_dir, version, file)
            try:
                await self._build(venv, wheel, work)
            except BaseException:
                await asyncio.to_thread(shutil.rmtree, venv, True)
                raise
        finally:
            await asyncio.to_thread(shutil.rmtree, work, True)
        log.info("firmware %s installed in %s (switching from %s)", version, venv, previous)
        return {
            "installer": "wheel",
            "version": version,
            # Relative when it is ours: the install directory may be moved as a whole.
            "target": str(venv.relative_to(self.base)),
            "previous": previous,
        }

    def _current_target(self) -> str | None:
        if self.link.is_symlink():
            return os.readlink(self.link)
        if self.link.exists():
            raise InstallError(
                f"{self.link} is not a symlink: the built-in installer switches a symlink "
                "(set [firmware] install_command to install otherwise)"
            )
        return None  # the first install through this installer

    def _new_venv_dir(self, version: str, file: Path) -> Path:
        self.venvs.mkdir(parents=True, exist_ok=True)
        venv = self.venvs / _SAFE_VERSION.sub("_", version)
        running = self.link.resolve() if self.link.is_symlink() else None
        if running is not None and venv.resolve() == running:
            # The same version again (a rebuilt wheel): never touch the running venv.
            venv = venv.with_name(f"{venv.name}-{_file_digest(file)[:8]}")
        if venv.exists():
            shutil.rmtree(venv)  # a leftover of an install that did not finish
        return venv

    async def _build(self, venv: Path, wheel: Path, wheels_dir: Path) -> None:
        timeout_s = self.settings.install_timeout_s
        steps: list[tuple[str, list[str]]] = [
            # Made like scripts/install makes the first one. --system-site-packages: the
            # board's libraries come from the OS (python3-lgpio, python3-spidev,
            # python3-systemd on Raspberry Pi OS), not from the firmware file. With its own
            # pip: once switched to, this venv runs the daemon, and the next update runs
            # from it; installing with that pip now proves it works before the switch.
            (
                "create the venv",
                [self.python, "-m", "venv", "--system-site-packages", str(venv)],
            ),
            (
                "install the wheel",
                [
                    str(venv / "bin" / "python"),
                    "-m",
                    "pip",
                    "install",
                    "--no-input",
                    "--no-cache-dir",
                    "--disable-pip-version-check",
                    "--find-links",
                    str(wheels_dir),
                    # Offline unless told where an index is: the firmware file is the source.
                    *(self.settings.pip_options or ("--no-index",)),
                    str(wheel),
                ],
            ),
        ]
        if self.settings.check_command:
            values = {"venv": str(venv), "config": self.config_path}
            steps.append(("check it", _expand(self.settings.check_command, values)))
        for what, argv in steps:
            status, output = await run_command(argv, timeout_s)
            if status != 0:
                raise InstallError(f"could not {what} (exit status {status}): {output}")

    async def switch(self, state: Mapping[str, Any]) -> None:
        await asyncio.to_thread(self._switch, str(state["target"]), state.get("previous"))

    def _switch(self, target: str, previous: str | None) -> None:
        if previous is not None:
            _point(self.base / "venv.previous", previous)
        _point(self.link, target)
        log.warning("switched %s to %s (previous: %s)", self.link, target, previous)
        self._prune({target, previous})

    def _prune(self, keep: set[str | None]) -> None:
        """Remove the venvs neither running nor kept to roll back to (storage is small)."""
        kept = {(self.base / k).resolve() for k in keep if k is not None}
        for venv in self.venvs.iterdir() if self.venvs.is_dir() else ():
            if venv.resolve() not in kept and venv.is_dir():
                log.info("removing old firmware venv %s", venv)
                shutil.rmtree(venv, ignore_errors=True)

    async def roll_back(self, state: Mapping[str, Any] | None) -> bool:
        if not state or state.get("installer") != "wheel":
            return False
        return await asyncio.to_thread(self._roll_back, state.get("previous"))

    def _roll_back(self, previous: str | None) -> bool:
        if previous is None:
            log.error("no previous version to roll back to: %s stays", self.link)
            return False
        if self.link.is_symlink() and os.readlink(self.link) == previous:
            return False  # never switched, or already back
        _point(self.link, previous)
        log.warning("rolled %s back to %s", self.link, previous)
        return True


# --- an installer of one's own ----------------------------------------------------------------


class CommandInstaller:
    """``[firmware] install_command`` does the whole install (exit status 0: installed);
    ``rollback_command``, if set, undoes it when the new version does not come up."""

    def __init__(self, settings: FirmwareConfig, config_path: str) -> None:
        self.settings = settings
        self.config_path = config_path

    async def prepare(self, file: Path) -> dict[str, Any]:
        parsed = wheel_version(file)
        values = {
            "file": str(file),
            "version": parsed[1] if parsed else "",
            "config": self.config_path,
        }
        argv = _expand(self.settings.install_command, values)
        status, output = await run_command(argv, self.settings.install_timeout_s)
        if status != 0:
            raise InstallError(f"{argv[0]} failed (exit status {status}): {output}")
        log.info("firmware installed by %s: %s", argv[0], output[-200:])
        return {"installer": "command"}

    async def switch(self, state: Mapping[str, Any]) -> None:
        return None  # the command has done it

    async def roll_back(self, state: Mapping[str, Any] | None) -> bool:
        if not self.settings.rollback_command or not state:
            return False
        argv = _expand(self.settings.rollback_command, {"config": self.config_path})
        status, output = await run_command(argv, self.settings.install_timeout_s)
        if status != 0:
            log.error("%s failed (exit status %d): %s", argv[0], status, output)
            return False
        return True
