"""A charger that boots without network and without an RTC: its clock is years off until the
CSMS tells the time. Transactions made meanwhile reach the CSMS with true timestamps, also
across a restart of the daemon in between (same boot: the monotonic clock carries on)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from tests.harness import (
    RATING_A,
    SLACK,
    STALE,
    bench,
    charging_profile,
    local_status,
    queued_actions,
    set_charging_profile,
    stale_clock,
    tx_messages,
    utc_time,
)


async def test_offline_transaction_made_with_a_stale_clock_is_reported_at_the_true_time(
    tmp_path: Path,
) -> None:
    config = {
        "LocalAuthorizeOffline": True,
        "AllowOfflineTxForUnknownId": True,
        "MeterValueSampleInterval": 1,
    }
    async with bench(tmp_path, ocpp_config=config, clock_factory=stale_clock) as b:
        await b.booted()
        await b.go_offline()
        # The board restarts with no network: nobody has told this run the time.
        await b.restart_app()
        assert not b.app.clock.trusted
        assert abs(b.app.clock.utc_now() - (datetime.now(UTC) - STALE)) < SLACK

        started_at = datetime.now(UTC)
        b.ev(1).plug()
        b.swipe("TAG-OFF")
        await b.wait_until(lambda: local_status(b) == "Charging", what="charging offline")
        await b.wait_until(lambda: "MeterValues" in queued_actions(b), what="a meter value queued")
        b.swipe("TAG-OFF")
        await b.wait_until(lambda: local_status(b) == "Finishing", what="stopped offline")
        stopped_at = datetime.now(UTC)
        b.ev(1).unplug()
        await b.wait_until(lambda: queued_actions(b)[-1] == "StopTransaction", what="Stop queued")

        # The daemon restarts once more before the network is back: the stamps are on the
        # card with the messages.
        await b.restart_app()
        mark = await b.go_online()
        await b.csms.wait_for("StopTransaction", after=mark)
        sent = tx_messages(b.csms, mark)
        start, stop = sent[0], sent[-1]
        assert (start.action, stop.action) == ("StartTransaction", "StopTransaction")

        start_time = utc_time(start.payload["timestamp"])
        stop_time = utc_time(stop.payload["timestamp"])
        assert started_at - SLACK <= start_time <= started_at + SLACK
        assert stopped_at - SLACK <= stop_time <= stopped_at + SLACK
        sample_times = [
            utc_time(value["timestamp"]) for m in sent[1:-1] for value in m.payload["meterValue"]
        ]
        assert sample_times
        assert all(start_time <= t <= stop_time for t in sample_times)
        assert sample_times == sorted(sample_times)
        # The daemon's clock is now the CSMS's.
        assert b.app.clock.trusted
        assert abs(b.app.clock.utc_now() - datetime.now(UTC)) < SLACK


async def test_a_schedule_follows_the_time_the_csms_tells_at_once(tmp_path: Path) -> None:
    """A profile valid from an hour ago (true time) is, by the stale clock of a board that
    restarted offline, three years in the future: not applied. When the CSMS tells the time,
    the limits are planned again at once, not at their next periodic check (60 s)."""
    async with bench(tmp_path, clock_factory=stale_clock) as b:
        await b.booted()
        hour_ago = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
        profile = charging_profile(
            7,
            "TxDefaultProfile",
            [(0, 10.0)],
            start=hour_ago,
            valid_from=hour_ago,
            valid_to=hour_ago + timedelta(days=1),
        )
        assert await set_charging_profile(b, 1, profile) == "Accepted"
        await b.wait_until(lambda: b.app.limit_decisions[1].limit_a == 10.0, what="10 A")

        await b.go_offline()
        await b.restart_app()
        await b.wait_until(lambda: 1 in b.app.limit_decisions, what="limits after restart")
        assert b.app.limit_decisions[1].limit_a == RATING_A  # not valid yet by this clock

        await b.go_online()
        await b.wait_until(
            lambda: b.app.limit_decisions[1].limit_a == 10.0, timeout_s=10.0, what="10 A again"
        )
