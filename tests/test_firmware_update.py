"""The firmware update state machine, on an injected clock: every path, and a restart of the
daemon (a job stored and loaded again) at every phase."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from evse_daemon.firmware import (
    FirmwareJob,
    FirmwareStatus,
    FirmwareUpdate,
    Phase,
    Step,
    StepKind,
)

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
S = FirmwareStatus


def _job(**overrides: object) -> FirmwareJob:
    values: dict[str, object] = {
        "location": "https://fw.example/evse_daemon-2.0-py3-none-any.whl",
        "retrieve_at": T0,
        "attempts_allowed": 3,
        "retry_interval_s": 30,
    }
    values.update(overrides)
    return FirmwareJob(**values)  # type: ignore[arg-type]


def _signed(**overrides: object) -> FirmwareJob:
    return _job(signed=True, request_id=7, signing_certificate="PEM", signature="SIG", **overrides)


def _reloaded(update: FirmwareUpdate, max_starts: int = 3) -> FirmwareUpdate:
    """The job as a restarted daemon finds it in the store."""
    return FirmwareUpdate.resume(
        FirmwareJob.from_dict(update.job.to_dict()), max_unconfirmed_starts=max_starts
    )


def test_plain_update_from_retrieve_date_to_installed_after_the_restart() -> None:
    update = FirmwareUpdate.start(_job(retrieve_at=T0 + timedelta(hours=1)), T0)
    assert update.drain() == []  # DownloadScheduled is a signed update's status only
    assert update.advance(T0) == Step(StepKind.WAIT, T0 + timedelta(hours=1))
    assert update.advance(T0 + timedelta(hours=1)) == Step(StepKind.DOWNLOAD)
    assert update.drain() == [S.DOWNLOADING]
    update.downloaded("/state/firmware/fw.whl", T0)
    assert update.drain() == [S.DOWNLOADED]
    assert update.advance(T0) == Step(StepKind.WAIT_FOR_IDLE)
    assert update.holds_connectors  # free connectors Unavailable from here
    update.sessions_ended()
    assert update.drain() == [S.INSTALLING]
    assert update.advance(T0) == Step(StepKind.INSTALL)
    assert not update.cancellable
    update.prepared({"previous": "/opt/evse-daemon/venvs/1.0"})
    update.installed()
    assert update.drain() == []  # InstallRebooting: signed only
    assert update.advance(T0) == Step(StepKind.RESTART)

    restarted = _reloaded(update)
    assert restarted.job.install_state == {"previous": "/opt/evse-daemon/venvs/1.0"}
    assert restarted.job.starts == 1
    assert restarted.holds_connectors
    assert restarted.advance(T0) == Step(StepKind.AWAIT_CONFIRMATION)
    restarted.confirmed()
    assert restarted.drain() == [S.INSTALLED]
    assert not restarted.holds_connectors and not restarted.busy
    assert restarted.advance(T0) == Step(StepKind.REPORT)
    restarted.reported()
    assert restarted.advance(T0) == Step(StepKind.FINISHED)
    assert restarted.job.history == ["Downloading", "Downloaded", "Installing", "Installed"]


def test_signed_update_reports_every_step_of_the_whitepaper() -> None:
    job = _signed(retrieve_at=T0 + timedelta(minutes=5), install_at=T0 + timedelta(hours=2))
    update = FirmwareUpdate.start(job, T0)
    assert update.drain() == [S.DOWNLOAD_SCHEDULED]
    update.advance(T0 + timedelta(minutes=5))
    update.downloaded("/f", T0 + timedelta(minutes=6))
    assert update.advance(T0) == Step(StepKind.VERIFY)
    update.signature_checked(True, T0 + timedelta(minutes=6))
    assert update.advance(T0 + timedelta(minutes=7)) == Step(StepKind.WAIT, T0 + timedelta(hours=2))
    assert not update.holds_connectors  # charging goes on until the install time
    assert update.advance(T0 + timedelta(hours=2)) == Step(StepKind.WAIT_FOR_IDLE)
    update.sessions_ended()
    update.prepared({})
    update.installed()
    assert update.drain() == [
        S.DOWNLOADING,
        S.DOWNLOADED,
        S.SIGNATURE_VERIFIED,
        S.INSTALL_SCHEDULED,
        S.INSTALLING,
        S.INSTALL_REBOOTING,
    ]
    restarted = _reloaded(update)
    restarted.confirmed()
    assert restarted.drain() == [S.INSTALLED]
    assert restarted.job.request_id == 7


def test_a_bad_signature_ends_the_update_before_anything_is_held() -> None:
    update = FirmwareUpdate.start(_signed(), T0)
    update.advance(T0)
    update.downloaded("/f", T0)
    update.signature_checked(False, T0, "the signature does not verify")
    assert update.drain() == [S.DOWNLOADING, S.DOWNLOADED, S.INVALID_SIGNATURE]
    assert update.advance(T0) == Step(StepKind.REPORT)
    assert update.job.reason == "the signature does not verify"
    assert not update.holds_connectors


def test_downloads_are_retried_retry_interval_apart_then_fail() -> None:
    update = FirmwareUpdate.start(_job(attempts_allowed=3, retry_interval_s=30), T0)
    assert update.advance(T0) == Step(StepKind.DOWNLOAD)
    update.download_failed(T0, "HTTP 500")
    assert update.advance(T0 + timedelta(seconds=29)) == Step(
        StepKind.WAIT, T0 + timedelta(seconds=30)
    )
    assert update.drain() == [S.DOWNLOADING]  # once, not per attempt
    # A restart while waiting keeps the time of the retry and the count.
    update = _reloaded(update)
    assert update.advance(T0 + timedelta(seconds=30)) == Step(StepKind.DOWNLOAD)
    update.download_failed(T0 + timedelta(seconds=30), "HTTP 500")
    update.advance(T0 + timedelta(seconds=60))
    update.download_failed(T0 + timedelta(seconds=60), "connection refused")
    assert update.drain() == [S.DOWNLOAD_FAILED]
    assert update.job.failed_attempts == 3
    assert update.job.reason == "connection refused"
    assert update.advance(T0 + timedelta(seconds=90)) == Step(StepKind.REPORT)


def test_a_restart_during_a_download_downloads_again_without_counting_a_failure() -> None:
    update = FirmwareUpdate.start(_job(attempts_allowed=1), T0)
    update.advance(T0)
    update.drain()
    restarted = _reloaded(update)
    assert restarted.advance(T0) == Step(StepKind.DOWNLOAD)
    assert restarted.drain() == []  # the CSMS already knows it is downloading
    restarted.downloaded("/f", T0)
    assert restarted.drain() == [S.DOWNLOADED]


def test_a_restart_between_download_and_install_waits_for_idle_again() -> None:
    update = FirmwareUpdate.start(_job(), T0)
    update.advance(T0)
    update.downloaded("/f", T0)
    assert update.advance(T0) == Step(StepKind.WAIT_FOR_IDLE)
    restarted = _reloaded(update)
    assert restarted.holds_connectors
    assert restarted.advance(T0) == Step(StepKind.WAIT_FOR_IDLE)
    assert restarted.job.file == "/f"


def test_a_failed_install_ends_at_once_and_a_signed_invalid_file_is_a_verification_failure() -> (
    None
):
    plain = FirmwareUpdate.start(_job(), T0)
    plain.advance(T0)
    plain.downloaded("/f", T0)
    plain.sessions_ended()
    plain.install_failed("not a wheel", verification=True)
    assert plain.drain()[-1] is S.INSTALLATION_FAILED
    signed = FirmwareUpdate.start(_signed(), T0)
    signed.advance(T0)
    signed.downloaded("/f", T0)
    signed.signature_checked(True, T0)
    signed.sessions_ended()
    signed.install_failed("not a wheel", verification=True)
    assert signed.drain()[-1] is S.INSTALL_VERIFICATION_FAILED
    assert not signed.holds_connectors


def test_a_restart_while_installing_rolls_back_and_fails() -> None:
    update = FirmwareUpdate.start(_job(), T0)
    update.advance(T0)
    update.downloaded("/f", T0)
    update.sessions_ended()
    update.prepared({"previous": "/old"})
    restarted = _reloaded(update)
    assert restarted.advance(T0) == Step(StepKind.ROLL_BACK)
    assert restarted.job.install_state == {"previous": "/old"}
    restarted.rolled_back()
    assert restarted.drain() == [S.INSTALLATION_FAILED]
    assert restarted.job.reason == "interrupted while installing"


def test_a_new_version_that_does_not_register_is_rolled_back() -> None:
    update = FirmwareUpdate.start(_job(), T0)
    update.advance(T0)
    update.downloaded("/f", T0)
    update.sessions_ended()
    update.prepared({})
    update.installed()
    # By time: it came up but never registered.
    first = _reloaded(update, max_starts=2)
    assert first.advance(T0) == Step(StepKind.AWAIT_CONFIRMATION)
    first.confirmation_timed_out(600)
    assert first.advance(T0) == Step(StepKind.ROLL_BACK)
    # By starts: it keeps dying before it registers.
    second = _reloaded(first, max_starts=2)
    assert second.advance(T0) == Step(StepKind.AWAIT_CONFIRMATION)
    third = _reloaded(second, max_starts=2)
    assert third.job.starts == 3
    assert third.advance(T0) == Step(StepKind.ROLL_BACK)
    assert third.job.reason == "the new version did not register within 2 starts"
    third.rolled_back()
    assert third.drain() == [S.INSTALLATION_FAILED]
    # The previous version, started again, reports it (again: it may not have gone out).
    reported = _reloaded(third)
    assert reported.drain() == [S.INSTALLATION_FAILED]
    assert reported.advance(T0) == Step(StepKind.REPORT)


def test_a_job_stored_by_a_newer_version_is_read_by_the_previous_one() -> None:
    job = _job(phase=Phase.REPORTING, end_status=S.INSTALLATION_FAILED)
    raw = job.to_dict() | {"a_field_of_the_future": [1, 2]}
    assert FirmwareJob.from_dict(raw) == job


@pytest.mark.parametrize("phase", list(Phase))
def test_every_phase_survives_the_store(phase: Phase) -> None:
    job = _signed(install_at=T0, phase=phase, install_state={"a": [1]})
    job.last_status = S.DOWNLOADED
    job.end_status = S.INSTALLED
    job.next_attempt_at = T0 + timedelta(seconds=5)
    assert FirmwareJob.from_dict(job.to_dict()) == job
