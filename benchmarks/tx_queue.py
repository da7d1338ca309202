"""Transaction-queue figures on this machine, printed; ratios measured in this one run.

1. Drain: 10,000 queued transaction messages delivered to a loopback CSMS, against the same
   CSMS's bare request/answer round trip with the same library (a plain ``ocpp`` client
   sending the same MeterValues one after the other).      target: queue ≥ 0.5 × bare rate
2. Storage wear: bytes the daemon writes to storage per transaction message while online
   (measured over many messages), extrapolated to an hour of charging at the default
   MeterValueSampleInterval (60 s).                         target ≤ 256 KiB/h
3. Safety reaction while the queue drains: p50/p99 from a pilot change to the contactor-open
   command.                                                 target p99 ≤ 10 ms

Usage: .venv/bin/python benchmarks/tx_queue.py [--messages N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import websockets
from ocpp.v16 import ChargePoint, call

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stats import percentile
from drivers.mock import MockCardReader, MockConnectorHardware
from evse_daemon.app import App
from evse_daemon.bench.csms import BenchCsms
from evse_daemon.clock import iso_utc
from evse_daemon.config import Config, load_config
from evse_daemon.hardware import ConnectorHardware, Hardware
from evse_daemon.store import Store
from tests.harness import write_config

SAMPLE = {
    "connector_id": 1,
    "meter_value": [
        {
            "timestamp": "2026-01-01T00:00:00.000Z",
            "sampledValue": [
                {"value": "1234.5", "measurand": "Energy.Active.Import.Register", "unit": "Wh"},
                {"value": "7360.0", "measurand": "Power.Active.Import", "unit": "W"},
            ],
        }
    ],
}


def write_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


async def bare_round_trips(csms: BenchCsms, count: int) -> float:
    """Seconds for ``count`` sequential MeterValues with a plain ocpp client."""
    async with websockets.connect(
        csms.url + "/BARE", subprotocols=[websockets.Subprotocol("ocpp1.6")]
    ) as ws:
        client = ChargePoint("BARE", ws)
        reader = asyncio.create_task(client.start())
        await client.call(call.BootNotification(charge_point_model="M", charge_point_vendor="V"))
        started = time.perf_counter()
        for _ in range(count):
            await client.call(call.MeterValues(**SAMPLE, transaction_id=1))
        elapsed = time.perf_counter() - started
        reader.cancel()
    return elapsed


def bench_hardware(config: Config) -> tuple[Hardware, dict[int, MockConnectorHardware]]:
    # No state_dir for the mock meters: their register file is the simulated meter's memory,
    # not a write the daemon makes on a real charger.
    sims = {
        c.id: MockConnectorHardware(c.id, state_dir=None, phases=c.phases, has_lock=True)
        for c in config.connectors
    }
    reader = MockCardReader()
    connectors = {
        cid: ConnectorHardware(
            pilot=sim.pilot,
            contactor=sim.contactor,
            meter=sim.meter,
            lock=sim.lock,
            rcd=sim.rcd,
            temperature=sim.temperature,
            bench=sim,
        )
        for cid, sim in sims.items()
    }
    return Hardware(connectors, reader, reader), sims


async def prefill(state_dir: Path, count: int) -> None:
    store = Store(state_dir)
    await store.open()
    stamp = iso_utc(time_origin())
    await store.enqueue(
        "StartTransaction",
        1,
        1,
        {"connector_id": 1, "id_tag": "Q", "meter_start": 0, "timestamp": stamp},
        started={"id_tag": "Q", "started_at": stamp, "meter_start_wh": 0.0},
    )
    for _ in range(count - 2):
        await store.enqueue("MeterValues", 1, 1, SAMPLE)
    await store.enqueue(
        "StopTransaction",
        1,
        1,
        {"meter_stop": 0, "timestamp": stamp, "reason": "Local"},
        stopped=True,
    )
    await store.close()


def time_origin() -> Any:
    from datetime import UTC, datetime

    return datetime(2026, 1, 1, tzinfo=UTC)


def reaction_sampler(
    sims: dict[int, MockConnectorHardware], stop: threading.Event, latencies: list[float]
) -> None:
    """In a thread: pause and resume the car on connector 2 while the queue drains."""
    sim = sims[2]
    while not stop.is_set():
        if not sim.contactor.commanded_closed:
            time.sleep(0.002)
            continue
        t0 = time.perf_counter()
        sim.set_ev_state("B")
        while sim.contactor.commanded_closed and time.perf_counter() - t0 < 2:
            time.sleep(0.0001)
        latencies.append(time.perf_counter() - t0)
        sim.set_ev_state(None)
        time.sleep(0.01)


async def queue_drain(csms: BenchCsms, count: int, *, react: bool) -> tuple[float, list[float]]:
    with tempfile.TemporaryDirectory() as tmp:
        await prefill(Path(tmp) / "state", count)
        config = load_config(write_config(Path(tmp), csms.url, connectors=2))
        hardware, sims = bench_hardware(config)
        app = App(config, hardware)
        run = asyncio.create_task(app.run())
        await app.started.wait()
        while not app.adapter.online:  # noqa: ASYNC110 - setup
            await asyncio.sleep(0.001)
        started = time.perf_counter()
        if react:
            # Connector 2 charges meanwhile, so the safety path has something to do.
            sims[2].plug()
            assert hardware.bench_reader is not None
            hardware.bench_reader.swipe("REACT")
        stop = threading.Event()
        latencies: list[float] = []
        sampler = threading.Thread(target=reaction_sampler, args=(sims, stop, latencies))
        if react:
            sampler.start()
        # (With react, that session's own Start may be queued behind the backlog.)
        while app.adapter.queue_depth > (1 if react else 0):  # noqa: ASYNC110 - a measurement
            await asyncio.sleep(0.005)
        elapsed = time.perf_counter() - started
        stop.set()
        if react:
            sampler.join()
        app.request_stop()
        await asyncio.wait_for(run, 20)
    return elapsed, latencies


async def wear(messages: int) -> tuple[float, float]:
    """(bytes per queued-and-delivered MeterValues, bytes per session start+stop)."""
    async with BenchCsms() as csms:
        with tempfile.TemporaryDirectory() as tmp:
            config = load_config(
                write_config(Path(tmp), csms.url, ocpp_config={"MeterValueSampleInterval": 1})
            )
            hardware, sims = bench_hardware(config)
            app = App(config, hardware)
            run = asyncio.create_task(app.run())
            await app.started.wait()
            await csms.wait_for("StatusNotification", lambda p: p["connectorId"] == 1)
            before_session = write_bytes()
            sims[1].plug()
            assert hardware.bench_reader is not None
            hardware.bench_reader.swipe("WEAR")
            await csms.wait_for("StartTransaction")
            mark = csms.mark()
            before = write_bytes()
            for _ in range(messages):
                await csms.wait_for("MeterValues", after=mark, timeout_s=5)
                mark = csms.mark()
            per_message = (write_bytes() - before) / messages
            sims[1].unplug()
            await csms.wait_for("StopTransaction")
            await asyncio.sleep(0.5)
            session = write_bytes() - before_session - per_message * messages
            app.request_stop()
            await asyncio.wait_for(run, 20)
    return per_message, session


async def main(count: int, wear_messages: int) -> None:
    import ocpp.messages

    # The daemon validates inline (see the adapter); the bare client gets the same setting.
    ocpp.messages.ASYNC_VALIDATION = False
    async with BenchCsms() as csms:
        bare = await bare_round_trips(csms, count)
    async with BenchCsms() as csms:
        drained, _ = await queue_drain(csms, count, react=False)
    async with BenchCsms() as csms:
        _, latencies = await queue_drain(csms, count, react=True)
    per_message, per_session = await wear(wear_messages)

    bare_rate, queue_rate = count / bare, count / drained
    print(f"bare ocpp round trips:   {count} MeterValues in {bare:.2f} s ({bare_rate:.0f}/s)")
    print(
        f"queue drain:             {count} queued messages in {drained:.2f} s "
        f"({queue_rate:.0f}/s) = {queue_rate / bare_rate:.2f} × bare  (target ≥ 0.5)"
    )
    ms = [x * 1000 for x in latencies]
    if ms:
        print(
            f"pilot C→B → contactor open while draining ({len(ms)} events): "
            f"p50 {percentile(ms, 0.5):.3f} ms, p99 {percentile(ms, 0.99):.3f} ms, "
            f"max {max(ms):.3f} ms  (target p99 ≤ 10)"
        )
    hourly = per_message * 60 + per_session  # default MeterValueSampleInterval = 60 s
    print(
        f"storage writes:          {per_message / 1024:.1f} KiB per sampled MeterValues, "
        f"{per_session / 1024:.1f} KiB per session (start+stop) → "
        f"{hourly / 1024:.0f} KiB per hour of charging at the default 60 s interval "
        f"(target ≤ 256)"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--wear-messages", type=int, default=20)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    asyncio.run(main(args.messages, args.wear_messages))
