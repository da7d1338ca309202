"""The outbound transaction-message queue on its own: durable order, bound and thinning."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from pathlib import Path

from evse_daemon.auth import Authorizer
from evse_daemon.clock import FakeClock, iso_utc
from evse_daemon.config import OcppSection, StationConfig
from evse_daemon.ocpp16.adapter import OcppAdapter16, TxMessage
from evse_daemon.ocpp_keys import OcppConfiguration
from evse_daemon.store import Store

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def _adapter(store: Store, bound: int) -> OcppAdapter16:
    return OcppAdapter16(
        station=StationConfig(id="CP", vendor="V", model="M"),
        ocpp_section=OcppSection(csms_url="ws://127.0.0.1:1/ocpp"),
        port=None,  # type: ignore[arg-type]  # the queue never asks the charger
        keys=OcppConfiguration.for_connectors(1),
        authorizer=Authorizer(FakeClock()),
        clock=FakeClock(),
        store=store,
        max_queued_messages=bound,
    )


def _meter_values(local_id: int, minute: int) -> TxMessage:
    stamp = iso_utc(T0 + timedelta(minutes=minute))
    payload = {
        "connector_id": 1,
        "meter_value": [
            {"timestamp": stamp, "sampledValue": [{"value": str(minute * 100), "unit": "Wh"}]}
        ],
    }
    return TxMessage("MeterValues", local_id, 1, payload)


def _minutes(adapter: OcppAdapter16) -> list[int]:
    return [
        int(m.payload["meter_value"][0]["sampledValue"][0]["value"]) // 100
        for m in adapter._tx_queue
        if m.action == "MeterValues"
    ]


async def test_full_queue_thins_intermediate_meter_values_only(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        adapter = _adapter(store, bound=10)
        start = {"connector_id": 1, "id_tag": "T", "meter_start": 0, "timestamp": iso_utc(T0)}
        await adapter._enqueue(
            TxMessage("StartTransaction", 1, 1, start),
            started={"id_tag": "T", "started_at": iso_utc(T0), "meter_start_wh": 0.0},
        )
        for minute in range(1, 21):
            await adapter._enqueue(_meter_values(1, minute))
        stop = {
            "meter_stop": 2100,
            "timestamp": iso_utc(T0 + timedelta(minutes=21)),
            "reason": "Local",
        }
        await adapter._enqueue(TxMessage("StopTransaction", 1, 1, stop), stopped=True)

        actions = [m.action for m in adapter._tx_queue]
        # Start + 9 meter values fill the bound; each of the 11 later samples thins one; the
        # Stop is never refused, so the queue ends one over the bound.
        assert len(actions) == 11
        assert actions[0] == "StartTransaction" and actions[-1] == "StopTransaction"
        assert adapter.thinned_meter_values == 11
        minutes = _minutes(adapter)
        assert minutes[0] == 1 and minutes[-1] == 20  # first and last sample kept
        assert minutes == sorted(minutes)
        gaps = [b - a for a, b in itertools.pairwise(minutes)]
        assert max(gaps) <= 4  # thinned evenly, not a hole in one place
        assert adapter.status_info()["thinned_meter_values"] == 11

        # The store holds exactly what memory holds, in the same order.
        stored = await store.load_queue()
        assert [row[1] for row in stored] == actions
        reloaded = _adapter(store, bound=10)
        await reloaded.load()
        assert [m.action for m in reloaded._tx_queue] == actions
        assert _minutes(reloaded) == minutes
    finally:
        await store.close()


async def test_start_and_stop_are_never_dropped_even_past_the_bound(tmp_path: Path) -> None:
    store = Store(tmp_path)
    await store.open()
    try:
        adapter = _adapter(store, bound=10)
        for local_id in range(1, 9):  # 8 short offline sessions: 16 messages, bound 10
            stamp = iso_utc(T0 + timedelta(minutes=local_id))
            await adapter._enqueue(
                TxMessage(
                    "StartTransaction",
                    local_id,
                    1,
                    {"connector_id": 1, "id_tag": "T", "meter_start": local_id, "timestamp": stamp},
                ),
                started={"id_tag": "T", "started_at": stamp, "meter_start_wh": local_id},
            )
            await adapter._enqueue(
                TxMessage(
                    "StopTransaction", local_id, 1, {"meter_stop": local_id, "timestamp": stamp}
                ),
                stopped=True,
            )
        assert len(adapter._tx_queue) == 16
        assert adapter.thinned_meter_values == 0
        assert len(await store.transactions()) == 8
    finally:
        await store.close()


async def test_a_wall_clock_step_never_reorders_the_queue(tmp_path: Path) -> None:
    """Messages made while the clock is untrusted, with the wall clock stepped back and forth
    between them, stay in the order they were made (the store's sequence, not timestamps),
    and each carries the stamp that will correct its timestamps."""
    store = Store(tmp_path)
    await store.open()
    try:
        clock = FakeClock(T0, trusted=False)
        adapter = _adapter(store, bound=100)
        adapter.clock = clock
        made = []
        for minute, step_s in enumerate([0.0, -7200.0, 86400.0, -3600.0], start=1):
            clock.step_wall(step_s)
            clock.advance(60)
            message = _meter_values(1, minute)
            await adapter._enqueue(message)
            assert message.made is not None
            made.append(message.made)
        reloaded = _adapter(store, bound=100)
        await reloaded.load()
        assert _minutes(reloaded) == [1, 2, 3, 4]
        assert [m.made for m in reloaded._tx_queue] == made
    finally:
        await store.close()
