"""Which meter values belong to a transaction: none stamped before its start or after its stop,
and within it, in time order (found by tests/test_torture.py)."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from drivers.protocols import CpState, MeterReading, PilotOutput
from evse_daemon.auth import Authorizer
from evse_daemon.charger import ConnectorView, ErrorCode, Status, TransactionStarted
from evse_daemon.clock import FakeClock
from evse_daemon.config import OcppSection, StationConfig
from evse_daemon.ocpp16.adapter import OcppAdapter16, TxMessage
from evse_daemon.ocpp_keys import OcppConfiguration

T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
READING = MeterReading(1234.5, 7360.0, (32.0,), (230.0,))


class _Port:
    """Just enough of the charger: one connector whose transaction the test sets."""

    def __init__(self) -> None:
        self.local_id: int | None = None
        self.connector_ids = [1]

    def view(self, connector_id: int) -> ConnectorView:
        return ConnectorView(
            connector_id=connector_id,
            status=Status.CHARGING if self.local_id else Status.AVAILABLE,
            error_code=ErrorCode.NO_ERROR,
            info=None,
            cp_state=CpState.C,
            pilot_output=PilotOutput.PWM,
            duty_percent=53.3,
            contactor_closed=True,
            offered_current_a=32.0,
            max_current_a=32.0,
            phases=1,
            operative=True,
            scheduled_operative=None,
            faults=(),
            transaction_local_id=self.local_id,
            transaction_id_tag="TAG" if self.local_id else None,
            authorized_id_tag=None,
            meter=READING,
        )


def _adapter(port: _Port, clock: FakeClock, **keys: Any) -> OcppAdapter16:
    configuration = OcppConfiguration.for_connectors(1)
    for name, value in keys.items():
        configuration.set_initial(name, str(value))
    return OcppAdapter16(
        station=StationConfig(id="CP", vendor="V", model="M"),
        ocpp_section=OcppSection(csms_url="ws://127.0.0.1:1/ocpp"),
        port=port,  # type: ignore[arg-type]  # the sampling asks for views only
        keys=configuration,
        authorizer=Authorizer(clock),
        clock=clock,
    )


async def _start(adapter: OcppAdapter16, port: _Port, at: datetime) -> None:
    port.local_id = 1
    await adapter.transaction_started(TransactionStarted(1, 1, "TAG", at, False), 1234.0, READING)


def _queued(adapter: OcppAdapter16) -> list[TxMessage]:
    return [m for m in adapter._tx_queue if m.action == "MeterValues"]


async def test_a_clock_aligned_instant_before_the_start_is_not_the_transactions() -> None:
    port, clock = _Port(), FakeClock(T0)
    adapter = _adapter(port, clock)
    await _start(adapter, port, T0 + timedelta(milliseconds=100))
    measurands = ("Energy.Active.Import.Register",)
    await adapter._sample(1, 1, "Sample.Clock", measurands, timestamp=T0)
    assert _queued(adapter) == []
    await adapter._sample(1, 1, "Sample.Clock", measurands, timestamp=T0 + timedelta(seconds=1))
    assert len(_queued(adapter)) == 1


async def test_no_sample_for_a_transaction_the_charger_has_stopped() -> None:
    # Between the charger's stop and the StopTransaction (queued once the contactor is open
    # and the meter read), a sampled value would be stamped after the transaction's end.
    port, clock = _Port(), FakeClock(T0)
    adapter = _adapter(port, clock)
    await _start(adapter, port, T0)
    port.local_id = None
    await adapter._sample(1, 1, "Sample.Periodic", ("Energy.Active.Import.Register",))
    assert _queued(adapter) == []


async def test_clock_aligned_values_go_before_sampled_ones_taken_in_the_same_round() -> None:
    port, clock = _Port(), FakeClock(T0 + timedelta(milliseconds=500))
    adapter = _adapter(port, clock, MeterValueSampleInterval=1, ClockAlignedDataInterval=1)
    await _start(adapter, port, clock.utc_now())
    metering = asyncio.create_task(adapter._metering())
    try:
        await asyncio.sleep(0.3)  # the first round learns the next boundary
        assert _queued(adapter) == []
        clock.advance(1.0)  # the boundary has passed, and a sample is due: both next round
        adapter._last_sample[1] = time.monotonic() - 5.0
        await asyncio.sleep(0.3)
    finally:
        metering.cancel()
    queued = _queued(adapter)
    contexts = [m.payload["meter_value"][0]["sampledValue"][0]["context"] for m in queued]
    assert contexts == ["Sample.Clock", "Sample.Periodic"]
    stamps = [m.payload["meter_value"][0]["timestamp"] for m in queued]
    assert stamps == sorted(stamps)
