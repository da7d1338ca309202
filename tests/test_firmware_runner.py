"""The firmware runner on an injected clock, with a stand-in app and reporter: it waits for the
retrieve time by that clock, and checks a signature only once the clock is trusted."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from evse_daemon import firmware_runner
from evse_daemon.certs import CertificateUse, roots_dir
from evse_daemon.clock import FakeClock
from evse_daemon.config import FirmwareConfig
from evse_daemon.firmware import FirmwareJob, FirmwareStatus
from evse_daemon.firmware_install import CommandInstaller
from evse_daemon.firmware_runner import FirmwareRunner, RequestResult
from evse_daemon.store import Store
from evse_daemon.transfer import TransferSettings
from tests.file_servers import HttpFiles, http_files
from tests.firmware_kit import (
    build_wheel,
    install_root,
    manufacturer_root,
    sign,
    signing_certificate,
)

T0 = datetime(2026, 6, 1, 8, 0, tzinfo=UTC)


class StandIn:
    """The app's side (FirmwarePort) and the adapter's side (FirmwareReporter)."""

    def __init__(self) -> None:
        self.statuses: list[str] = []
        self.events: list[str] = []
        self.held: list[bool] = []
        self.changed = asyncio.Event()

    def set_maintenance(self, held: bool) -> None:
        self.held.append(held)

    def ready_to_install(self) -> bool:
        return True

    def restart_for_firmware(self) -> None:
        self.statuses.append("<restart>")
        self.changed.set()

    async def wait_registered(self) -> None:
        return None

    def firmware_status(self, job: FirmwareJob, status: FirmwareStatus) -> None:
        self.statuses.append(status.value)
        self.changed.set()

    async def security_event(self, event_type: str, tech_info: str) -> None:
        self.events.append(event_type)

    async def flush(self, timeout_s: float | None) -> bool:
        return True

    async def until(self, status: str) -> None:
        async with asyncio.timeout(10):
            while status not in self.statuses:
                self.changed.clear()
                await self.changed.wait()


@contextlib.asynccontextmanager
async def _running(
    tmp_path: Path, clock: FakeClock
) -> AsyncIterator[tuple[FirmwareRunner, StandIn, HttpFiles]]:
    store = Store(tmp_path / "state")
    await store.open()
    stand_in = StandIn()
    settings = FirmwareConfig(install_command=("true",))
    runner = FirmwareRunner(
        settings,
        store=store,
        clock=clock,
        installer=CommandInstaller(settings, "/etc/evse.toml"),
        directory=tmp_path / "state" / "firmware",
        roots_dir=roots_dir(tmp_path / "state", CertificateUse.MANUFACTURER_ROOT),
        port=stand_in,
        transfer=TransferSettings(timeout_s=10),
    )
    runner.reporter = stand_in
    await runner.load()
    task = asyncio.create_task(runner.run())
    try:
        with http_files() as server:
            yield runner, stand_in, server
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await store.close()


async def test_the_retrieve_time_is_the_injected_clocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(firmware_runner, "WALL_CLOCK_RECHECK_S", 0.01)
    clock = FakeClock(T0)
    async with _running(tmp_path, clock) as (runner, stand_in, server):
        wheel = build_wheel(tmp_path)
        served = server.serve(wheel.name, wheel.read_bytes())
        job = FirmwareJob(server.url(wheel.name), T0 + timedelta(hours=1), 1, 0)
        runner.request(job)
        for _ in range(20):  # many looks at the clock, each finding it early
            await asyncio.sleep(0.02)
        assert served.hits == 0 and stand_in.statuses == []
        clock.advance(3600)
        await stand_in.until("<restart>")
        assert stand_in.statuses == ["Downloading", "Downloaded", "Installing", "<restart>"]
        assert served.hits == 1
        assert stand_in.held == [True]  # held from the download on, until the restart


async def test_a_signature_is_checked_once_the_clock_is_trusted(tmp_path: Path) -> None:
    clock = FakeClock(datetime.now(UTC), trusted=False)
    root = manufacturer_root()
    signer = signing_certificate(root)
    install_root(tmp_path / "state", root)
    async with _running(tmp_path, clock) as (runner, stand_in, server):
        wheel = build_wheel(tmp_path)
        server.serve(wheel.name, wheel.read_bytes())
        job = FirmwareJob(
            server.url(wheel.name),
            clock.utc_now(),
            1,
            0,
            signed=True,
            request_id=5,
            signing_certificate=signer.pem,
            signature=sign(wheel.read_bytes(), signer),
        )
        runner.request(job)
        await stand_in.until("Downloaded")
        await asyncio.sleep(2.5 * firmware_runner.IDLE_POLL_S)
        assert "SignatureVerified" not in stand_in.statuses
        clock.trusted = True
        await stand_in.until("InstallRebooting")
        assert stand_in.statuses[:3] == ["Downloading", "Downloaded", "SignatureVerified"]
        assert stand_in.events == []


async def test_an_accepted_request_is_on_the_card_before_it_is_answered(tmp_path: Path) -> None:
    """``request_durably`` returns only once the job is stored, whatever the runner's own
    task is doing (here it is not even running): the CSMS is answered after that, so a
    restart right after the answer resumes the update."""
    store = Store(tmp_path / "state")
    await store.open()
    try:
        settings = FirmwareConfig(install_command=("true",))
        runner = FirmwareRunner(
            settings,
            store=store,
            clock=FakeClock(T0),
            installer=CommandInstaller(settings, "/etc/evse.toml"),
            directory=tmp_path / "state" / "firmware",
            roots_dir=roots_dir(tmp_path / "state", CertificateUse.MANUFACTURER_ROOT),
            port=StandIn(),
            transfer=TransferSettings(timeout_s=10),
        )
        job = FirmwareJob("http://127.0.0.1:9/fw.whl", T0 + timedelta(days=1), 1, 0)
        assert await runner.request_durably(job) is RequestResult.ACCEPTED
        stored = (await store.get_all("firmware"))["job"]
        assert FirmwareJob.from_dict(stored).location == job.location
    finally:
        await store.close()
