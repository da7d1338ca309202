"""OCA OCPP 1.6 compliance test cases: firmware management and diagnostics (charge point side),
and the security whitepaper's secure firmware update.

TC_044_1/2/3 (UpdateFirmware), TC_045_1/2 (GetDiagnostics), TC_080/TC_081 (SignedUpdateFirmware)
follow OCPP 1.6 §4.4, §4.5, §5.9, §5.19, §8 with errata 3.47-3.50 and whitepaper L01. The
charger runs on the bench (mock drivers, a real CSMS over a websocket on loopback); firmware
comes from and diagnostics go to real HTTP servers on loopback, and the built-in installer
installs a tiny real wheel into venvs under the test's directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import os
import sys
import tarfile
import threading
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ocpp.exceptions import (
    NotSupportedError,
    PropertyConstraintViolationError,
    TypeConstraintViolationError,
)
from ocpp.v16 import call

from evse_daemon import firmware_runner
from evse_daemon.app import RunOutcome
from evse_daemon.bench.csms import ReceivedMessage
from tests.file_servers import HttpFiles, http_files, refused_url
from tests.firmware_kit import (
    Issued,
    build_wheel,
    install_root,
    manufacturer_root,
    sign,
    signing_certificate,
)
from tests.harness import Bench, bench

FSN = "FirmwareStatusNotification"
SFSN = "SignedFirmwareStatusNotification"
DSN = "DiagnosticsStatusNotification"
INSTALLED_VERSION = "0.1.0"
# What an UpdateFirmware that works reports, in order (§5.19).
INSTALLED_STEPS = ["Downloading", "Downloaded", "Installing", "Installed"]
WHEEL = "evse_daemon-9.9.9-py3-none-any.whl"


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _now() -> str:
    return _iso(datetime.now(UTC))


def _layout(tmp_path: Path) -> Path:
    """/opt/evse-daemon as installed: venvs/0.1.0 and the symlink venv pointing to it."""
    base = tmp_path / "opt"
    (base / "venvs" / INSTALLED_VERSION / "bin").mkdir(parents=True)
    (base / "venv").symlink_to(f"venvs/{INSTALLED_VERSION}")
    return base


def _firmware_toml(base: Path, **keys: Any) -> str:
    lines = ["[firmware]", f'install_dir = "{base}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in keys.items()]
    return "\n".join(lines)


def _statuses(b: Bench, action: str = FSN, after: int = 0) -> list[str]:
    return [m.payload["status"] for m in b.csms.received[after:] if m.action == action]


async def _status(
    b: Bench, status: str, *, action: str = FSN, after: int = 0, timeout_s: float = 30
) -> ReceivedMessage:
    return await b.csms.wait_for(
        action, lambda p: p["status"] == status, timeout_s=timeout_s, after=after
    )


def _after(b: Bench, message: ReceivedMessage) -> int:
    return b.csms.received.index(message) + 1


def _serve_wheel(server: HttpFiles, tmp_path: Path, version: str = "9.9.9", **kw: Any) -> str:
    wheels = tmp_path / "wheels"
    wheels.mkdir(exist_ok=True)
    wheel = build_wheel(wheels, version, exit_code=kw.pop("exit_code", 0))
    server.serve(wheel.name, wheel.read_bytes(), **kw)
    return server.url(wheel.name)


@contextlib.asynccontextmanager
async def _update_requested(
    tmp_path: Path,
    toml: str,
    *,
    location: str | None = None,
    retries: int | None = None,
    **serve: Any,
) -> AsyncIterator[tuple[Bench, HttpFiles, int]]:
    """A wheel on a loopback HTTP server, the charger booted, UpdateFirmware.req sent (retries
    ``retries`` apart by 0 s) and answered: (the bench, the server, the mark from which the
    update's messages count)."""
    with http_files() as server:
        served = _serve_wheel(server, tmp_path, **serve)
        async with bench(tmp_path, extra_toml=toml) as b:
            await b.booted()
            mark = b.csms.mark()
            request = call.UpdateFirmware(location=location or served, retrieve_date=_now())
            if retries is not None:
                request.retries, request.retry_interval = retries, 0
            assert await b.csms.call(request) is not None  # UpdateFirmware.conf: no fields
            yield b, server, mark


def _hits(server: HttpFiles) -> int:
    return server.files[f"/{WHEEL}"].hits


async def _restarted_into_new_version(b: Bench, after: int, action: str = FSN) -> int:
    """The daemon exits for the new version; the next run registers and reports Installed.
    Returns the index after its BootNotification."""
    assert await b.follow_reset() is RunOutcome.FIRMWARE_UPDATE
    boot = await b.csms.wait_for("BootNotification", after=after, timeout_s=20)
    await _status(b, "Installed", action=action, after=_after(b, boot))
    return _after(b, boot)


# --- TC_044: UpdateFirmware ----------------------------------------------------------------------


async def test_TC_044_1_download_and_install(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    # Steps 1-2: UpdateFirmware.req / .conf.
    async with _update_requested(tmp_path, _firmware_toml(base)) as (b, server, mark):
        # Steps 3-8: Downloading, Downloaded, Installing, each as it happens.
        await _status(b, "Installing", after=mark)
        # Free connectors are Unavailable from the moment the install is due.
        await b.wait_status(1, "Unavailable", after=mark)
        # Steps 9-12: the charger reboots into the new firmware, boots, reports Installed.
        booted = await _restarted_into_new_version(b, mark)
        assert _statuses(b, after=mark) == INSTALLED_STEPS
        assert os.readlink(base / "venv") == "venvs/9.9.9"
        assert os.readlink(base / "venv.previous") == f"venvs/{INSTALLED_VERSION}"
        # Back in service once the new version has proven itself.
        await b.wait_status(1, "Available", after=booted)
        # Errata: after a finished update a triggered notification says Idle.
        trigger = b.csms.mark()
        result = await b.csms.call(call.TriggerMessage(requested_message=FSN))
        assert result.status == "Accepted"
        await _status(b, "Idle", after=trigger)
        await b.wait_until(lambda: b.app.status()["firmware"]["phase"] == "done", what="done")
        assert b.app.status()["firmware"]["status"] == "Installed"
        # The downloaded file goes from the card.
        await b.wait_until(
            lambda: not any((tmp_path / "state" / "firmware").iterdir()), what="clean-up"
        )
        assert _hits(server) == 1


@pytest.mark.parametrize("failure", ["404", "500", "refused"])
async def test_TC_044_2_download_failed_after_the_retries(tmp_path: Path, failure: str) -> None:
    base = _layout(tmp_path)
    refused = refused_url(WHEEL) if failure == "refused" else None
    failures = [] if refused else [int(failure)] * 3
    async with _update_requested(
        tmp_path, _firmware_toml(base), location=refused, retries=2, failures=failures
    ) as (b, server, mark):
        await _status(b, "DownloadFailed", after=mark)
        await b.barrier()
        assert _statuses(b, after=mark) == ["Downloading", "DownloadFailed"]
        # Nothing was held or installed; the connectors never left service.
        assert b.statuses(1, after=mark) == []
        assert os.readlink(base / "venv") == f"venvs/{INSTALLED_VERSION}"
        # retries = 2: the first attempt and two more.
        assert b.app.status()["firmware"]["failed_attempts"] == 3
        assert _hits(server) == (0 if refused else 3)


async def test_TC_044_3_install_failed_keeps_the_running_version(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    # A firmware whose check in its new venv fails: it must never be switched to.
    async with _update_requested(tmp_path, _firmware_toml(base), exit_code=1) as (b, _, mark):
        failed = await _status(b, "InstallationFailed", after=mark)
        assert _statuses(b, after=mark) == [
            "Downloading",
            "Downloaded",
            "Installing",
            "InstallationFailed",
        ]
        assert os.readlink(base / "venv") == f"venvs/{INSTALLED_VERSION}"
        assert sorted(p.name for p in (base / "venvs").iterdir()) == [INSTALLED_VERSION]
        # The charger goes back into service without restarting.
        await b.wait_status(1, "Available", after=_after(b, failed) - 1)
        assert not b.task.done()
        assert "could not check it" in b.app.status()["firmware"]["reason"]


async def test_an_install_command_that_fails_is_installation_failed(tmp_path: Path) -> None:
    script = "import sys; sys.exit(4)"
    toml = _firmware_toml(tmp_path, install_command=[sys.executable, "-c", script, "{file}"])
    async with _update_requested(tmp_path, toml) as (b, _, mark):
        await _status(b, "InstallationFailed", after=mark)
        assert "exit status 4" in b.app.status()["firmware"]["reason"]


async def test_a_new_version_that_does_not_register_is_rolled_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Offline, nothing reaches the CSMS: the restart does not wait long for it.
    monkeypatch.setattr(firmware_runner, "REPORT_BEFORE_RESTART_S", 0.5)
    base = _layout(tmp_path)
    toml = _firmware_toml(base, confirm_timeout_s=1.5)
    async with _update_requested(tmp_path, toml) as (b, _, mark):
        await _status(b, "Installing", after=mark)
        # The new version comes up but never gets through to the CSMS.
        b.csms.accepting = False
        assert await b.follow_reset() is RunOutcome.FIRMWARE_UPDATE
        assert os.readlink(base / "venv") == "venvs/9.9.9"
        # It gives up, switches back and restarts into the previous version...
        assert await b.follow_reset() is RunOutcome.FIRMWARE_UPDATE
        assert os.readlink(base / "venv") == f"venvs/{INSTALLED_VERSION}"
        # ... which reports the failure once the CSMS is reachable.
        back = await b.go_online()
        await _status(b, "InstallationFailed", after=back)
        assert _statuses(b, after=mark) == [
            "Downloading",
            "Downloaded",
            "Installing",
            "InstallationFailed",
        ]
        await b.wait_status(1, "Available", after=back)
        reason = b.app.status()["firmware"]["reason"]
        assert reason == "the new version did not register within 1.5 s"


# --- beyond TC_044 -------------------------------------------------------------------------------


async def test_nothing_is_fetched_before_the_retrieve_date(tmp_path: Path) -> None:
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        async with bench(tmp_path) as b:
            await b.booted()
            mark = b.csms.mark()
            tomorrow = _iso(datetime.now(UTC) + timedelta(days=1))
            await b.csms.call(call.UpdateFirmware(location=location, retrieve_date=tomorrow))
            await b.barrier()
            assert _statuses(b, after=mark) == []  # DownloadScheduled is not a 1.6 status
            assert b.app.status()["firmware"]["phase"] == "scheduled"
            # Not busy yet: a triggered notification says Idle.
            trigger = b.csms.mark()
            await b.csms.call(call.TriggerMessage(requested_message=FSN))
            await _status(b, "Idle", after=trigger)
            # A restart keeps it scheduled.
            await b.restart_app()
            await b.csms.wait_for("BootNotification", after=trigger)
            await b.barrier()
            assert b.app.status()["firmware"]["phase"] == "scheduled"
        assert _hits(server) == 0


async def test_statuses_reached_offline_go_out_in_order_once_back(tmp_path: Path) -> None:
    hold = threading.Event()
    async with _update_requested(
        tmp_path, _firmware_toml(tmp_path), retries=1, failures=[404, 404], holds=[hold]
    ) as (b, server, mark):
        await _status(b, "Downloading", after=mark)
        await b.go_offline()
        hold.set()  # the first attempt fails only now, offline, and so does the second
        await b.wait_until(lambda: _hits(server) == 2, what="both attempts")
        await b.wait_until(lambda: b.app.status()["firmware"]["status"] == "DownloadFailed")
        back = await b.go_online()
        await _status(b, "DownloadFailed", after=back)
        assert _statuses(b, after=mark) == ["Downloading", "DownloadFailed"]


async def test_a_truncated_download_is_retried_not_installed(tmp_path: Path) -> None:
    install = "import sys; open(sys.argv[1], 'w').write(open(sys.argv[2], 'rb').read().hex())"
    record = tmp_path / "installed.hex"
    toml = _firmware_toml(
        tmp_path, install_command=[sys.executable, "-c", install, str(record), "{file}"]
    )
    async with _update_requested(tmp_path, toml, retries=1, truncations=[100]) as (
        b,
        server,
        mark,
    ):
        await _restarted_into_new_version(b, mark)
        assert _statuses(b, after=mark) == INSTALLED_STEPS
        # What was installed is the whole file, from the second attempt.
        assert _hits(server) == 2
        assert bytes.fromhex(record.read_text()) == server.files[f"/{WHEEL}"].body


async def test_the_update_waits_for_the_session_and_holds_free_connectors(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        async with bench(tmp_path, connectors=2, extra_toml=_firmware_toml(base)) as b:
            await b.booted()
            await b.start_charging(1)
            mark = b.csms.mark()
            await b.csms.call(call.UpdateFirmware(location=location, retrieve_date=_now()))
            await _status(b, "Downloaded", after=mark)
            # The free connector is Unavailable; the session goes on.
            await b.wait_status(2, "Unavailable", after=mark)
            await b.barrier()
            assert b.statuses(1, after=mark) == []  # still Charging
            assert "Installing" not in _statuses(b, after=mark)
            # Asked for during the update, the connector's own availability is kept after it.
            result = await b.csms.call(call.ChangeAvailability(connector_id=2, type="Inoperative"))
            assert result.status == "Accepted"
            # While waiting, a triggered notification tells where the update is.
            trigger = b.csms.mark()
            await b.csms.call(call.TriggerMessage(requested_message=FSN))
            assert (await b.csms.wait_for(FSN, after=trigger)).payload["status"] == "Downloaded"
            # A new session cannot start meanwhile.
            refused = await b.csms.call(call.RemoteStartTransaction(id_tag="X", connector_id=2))
            assert refused.status == "Rejected"

            ended = b.csms.mark()
            b.ev(1).unplug()
            await b.csms.wait_for("StopTransaction", after=ended)
            await b.wait_status(1, "Unavailable", after=ended)
            await _status(b, "Installing", after=ended)
            booted = await _restarted_into_new_version(b, mark)
            await b.wait_status(1, "Available", after=booted)
            await b.barrier()
            assert b.statuses(2, after=booted) == ["Unavailable"]  # Inoperative, as asked
            assert b.app.status()["connectors"][1]["operative"] is False


async def test_a_restart_during_the_download_downloads_again(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    stall = threading.Event()
    toml = _firmware_toml(base)
    async with _update_requested(tmp_path, toml, stalls=[stall]) as (b, server, mark):
        await _status(b, "Downloading", after=mark)
        await asyncio.to_thread(server.stalled.wait, 10)  # half of the file is here
        await b.restart_app()  # e.g. the watchdog, in the middle of the download
        stall.set()
        await _restarted_into_new_version(b, mark)
        assert _statuses(b, after=mark) == INSTALLED_STEPS
        assert _hits(server) == 2


async def test_a_restart_between_download_and_install_installs_what_was_downloaded(
    tmp_path: Path,
) -> None:
    base = _layout(tmp_path)
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        async with bench(tmp_path, extra_toml=_firmware_toml(base)) as b:
            await b.booted()
            await b.start_charging(1)
            mark = b.csms.mark()
            await b.csms.call(call.UpdateFirmware(location=location, retrieve_date=_now()))
            await _status(b, "Downloaded", after=mark)
            # A restart ends the session (Reboot); the new run finds the update waiting.
            await b.restart_app()
            await _restarted_into_new_version(b, mark)
            assert _statuses(b, after=mark) == INSTALLED_STEPS
            assert os.readlink(base / "venv") == "venvs/9.9.9"
        assert _hits(server) == 1


async def test_bad_update_and_diagnostics_requests_get_the_callerror_ocpp_j_names(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        with pytest.raises(TypeConstraintViolationError):
            await b.csms.call(call.UpdateFirmware(location="http://h/f", retrieve_date="soon"))
        with pytest.raises(PropertyConstraintViolationError):
            await b.csms.call(call.UpdateFirmware(location="gopher://h/f", retrieve_date=_now()))
        with pytest.raises(PropertyConstraintViolationError):
            await b.csms.call(
                call.UpdateFirmware(location="http://h/f", retrieve_date=_now(), retries=-1)
            )
        later = _iso(datetime.now(UTC) + timedelta(hours=1))
        with pytest.raises(PropertyConstraintViolationError):
            await b.csms.call(
                call.GetDiagnostics(location="http://h/d", start_time=later, stop_time=_now())
            )
        await b.barrier()
        assert _statuses(b) == [] and b.app.status()["firmware"] is None


async def test_with_signed_updates_required_update_firmware_is_not_supported(
    tmp_path: Path,
) -> None:
    async with bench(tmp_path, extra_toml=_firmware_toml(tmp_path, require_signed=True)) as b:
        await b.booted()
        with pytest.raises(NotSupportedError):
            await b.csms.call(call.UpdateFirmware(location="http://h/f", retrieve_date=_now()))


async def test_supported_feature_profiles_and_file_transfer_protocols(tmp_path: Path) -> None:
    async with bench(tmp_path) as b:
        await b.booted()
        result = await b.csms.call(
            call.GetConfiguration(
                key=["SupportedFeatureProfiles", "SupportedFileTransferProtocols"]
            )
        )
        values = {k["key"]: k["value"] for k in result.configuration_key}
        assert "FirmwareManagement" in values["SupportedFeatureProfiles"].split(",")
        assert values["SupportedFileTransferProtocols"] == "FTP,FTPS,HTTP,HTTPS"


# --- TC_045: GetDiagnostics ----------------------------------------------------------------------


def _archive(body: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(body)) as tar:
        return {
            m.name.split("/", 1)[1]: tar.extractfile(m).read()  # type: ignore[union-attr]
            for m in tar.getmembers()
        }


async def test_TC_045_1_get_diagnostics(tmp_path: Path) -> None:
    password = "0123456789abcdef"
    no_journal = '[diagnostics]\njournal_unit = ""'
    with http_files() as server:
        async with bench(
            tmp_path, extra_ocpp={"basic_auth_password": password}, extra_toml=no_journal
        ) as b:
            await b.booted()
            mark = b.csms.mark()
            # Steps 1-2: GetDiagnostics.req / .conf with the name of the file.
            result = await b.csms.call(
                call.GetDiagnostics(location=server.url("diagnostics/"), retries=1)
            )
            assert result.file_name.startswith("diagnostics-CP-TEST-1-")
            assert result.file_name.endswith(".tar.gz")
            # Steps 3-6: Uploading, then Uploaded.
            await _status(b, "Uploaded", action=DSN, after=mark)
            assert _statuses(b, DSN, after=mark) == ["Uploading", "Uploaded"]
            trigger = b.csms.mark()
            await b.csms.call(call.TriggerMessage(requested_message=DSN))
            await _status(b, "Idle", action=DSN, after=trigger)
        (upload,) = server.uploads
        assert (upload.method, upload.path) == ("PUT", f"/diagnostics/{result.file_name}")
        members = _archive(upload.body)
        assert {"manifest.json", "status.json", "evse.toml", "events.json"} <= set(members)
        assert json.loads(members["status.json"])["station"] == "CP-TEST-1"
        keys = {k["key"] for k in json.loads(members["ocpp-configuration.json"])}
        assert "HeartbeatInterval" in keys and "AuthorizationKey" not in keys
        assert password.encode() not in upload.body  # not in the config, nor anywhere
        assert b"basic_auth_password" in members["evse.toml"]
        assert list((tmp_path / "state" / "diagnostics").iterdir()) == []


async def test_TC_045_2_upload_failed_after_the_retries(tmp_path: Path) -> None:
    with http_files() as server:
        server.upload_statuses = [500, 503, 500]
        async with bench(tmp_path, extra_toml='[diagnostics]\njournal_unit = ""') as b:
            await b.booted()
            mark = b.csms.mark()
            result = await b.csms.call(
                call.GetDiagnostics(location=server.url("up"), retries=2, retry_interval=0)
            )
            assert result.file_name
            await _status(b, "UploadFailed", action=DSN, after=mark)
            assert _statuses(b, DSN, after=mark) == ["Uploading", "UploadFailed"]
        assert server.upload_attempts == 3 and server.uploads == []


# --- TC_080 / TC_081: secure firmware update (security whitepaper L01) ---------------------------


def _signer(tmp_path: Path) -> Issued:
    """A firmware signing certificate of a manufacturer root installed on the charger."""
    root = manufacturer_root()
    install_root(tmp_path / "state", root)
    return signing_certificate(root)


def _signed_request(
    location: str, signer_pem: str, signature: str, request_id: int = 42
) -> call.SignedUpdateFirmware:
    return call.SignedUpdateFirmware(
        request_id=request_id,
        retries=0,
        firmware={
            "location": location,
            "retrieveDateTime": _now(),
            "signingCertificate": signer_pem,
            "signature": signature,
        },
    )


async def test_TC_080_secure_firmware_update(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    signer = _signer(tmp_path)
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        body = server.files[f"/{WHEEL}"].body
        async with bench(tmp_path, extra_toml=_firmware_toml(base)) as b:
            await b.booted()
            mark = b.csms.mark()
            result = await b.csms.call(_signed_request(location, signer.pem, sign(body, signer)))
            assert result.status == "Accepted"
            await _status(b, "InstallRebooting", action=SFSN, after=mark)
            await _restarted_into_new_version(b, mark, action=SFSN)
            sent = [m.payload for m in b.csms.received[mark:] if m.action == SFSN]
            assert [p["status"] for p in sent] == [
                "Downloading",
                "Downloaded",
                "SignatureVerified",
                "Installing",
                "InstallRebooting",
                "Installed",
            ]
            # L01.FR.10: every notification carries the request's id.
            assert {p.get("requestId") for p in sent} == {42}
            assert _statuses(b, FSN, after=mark) == []  # not the 1.6 notification
            firmware_events = {"InvalidFirmwareSignature", "InvalidFirmwareSigningCertificate"}
            assert not [
                m
                for m in b.csms.messages("SecurityEventNotification")
                if m.payload["type"] in firmware_events
            ]
            assert os.readlink(base / "venv") == "venvs/9.9.9"


async def test_TC_081_secure_firmware_update_with_an_invalid_signature(tmp_path: Path) -> None:
    base = _layout(tmp_path)
    signer = _signer(tmp_path)
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        async with bench(tmp_path, extra_toml=_firmware_toml(base)) as b:
            await b.booted()
            mark = b.csms.mark()
            # A valid certificate, but the signature is of another file.
            result = await b.csms.call(
                _signed_request(location, signer.pem, sign(b"another firmware", signer))
            )
            assert result.status == "Accepted"
            await _status(b, "InvalidSignature", action=SFSN, after=mark)
            await b.csms.wait_for(
                "SecurityEventNotification",
                lambda p: p["type"] == "InvalidFirmwareSignature",
                after=mark,
            )
            await b.barrier()
            assert _statuses(b, SFSN, after=mark) == [
                "Downloading",
                "Downloaded",
                "InvalidSignature",
            ]
            assert b.statuses(1, after=mark) == []  # never held, never installed
            assert os.readlink(base / "venv") == f"venvs/{INSTALLED_VERSION}"
            # L01.FR.29: an ExtendedTriggerMessage gets the last status sent.
            management = b.app.adapter.firmware_management
            assert management is not None
            triggered = management.triggered_signed_firmware_status()
            assert (triggered.status, triggered.request_id) == ("InvalidSignature", 42)


async def test_a_signing_certificate_of_an_unknown_root_is_refused_before_downloading(
    tmp_path: Path,
) -> None:
    install_root(tmp_path / "state", manufacturer_root())
    stranger = signing_certificate(manufacturer_root("Somebody Else"))
    with http_files() as server:
        location = _serve_wheel(server, tmp_path)
        async with bench(tmp_path) as b:
            await b.booted()
            mark = b.csms.mark()
            result = await b.csms.call(_signed_request(location, stranger.pem, "AAAA"))
            assert result.status == "InvalidCertificate"
            event = await b.csms.wait_for(
                "SecurityEventNotification",
                lambda p: p["type"] == "InvalidFirmwareSigningCertificate",
                after=mark,
            )
            assert "not an installed manufacturer root" in event.payload["techInfo"]
            await b.barrier()
            assert _statuses(b, SFSN, after=mark) == []
        assert _hits(server) == 0


async def test_a_new_signed_update_calls_off_the_one_waiting(tmp_path: Path) -> None:
    signer = _signer(tmp_path)
    async with bench(tmp_path) as b:
        await b.booted()
        mark = b.csms.mark()
        later = _iso(datetime.now(UTC) + timedelta(days=1))
        first = _signed_request("http://127.0.0.1:9/a.whl", signer.pem, "AAAA", request_id=1)
        first.firmware["retrieveDateTime"] = later
        assert (await b.csms.call(first)).status == "Accepted"
        scheduled = await _status(b, "DownloadScheduled", action=SFSN, after=mark)
        assert scheduled.payload["requestId"] == 1
        second = _signed_request("http://127.0.0.1:9/b.whl", signer.pem, "AAAA", request_id=2)
        second.firmware["retrieveDateTime"] = later
        assert (await b.csms.call(second)).status == "AcceptedCanceled"
        assert b.app.status()["firmware"]["request_id"] == 2
