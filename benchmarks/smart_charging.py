"""Smart-charging figure on this machine, printed.

From a SetChargingProfile request leaving a loopback CSMS to the new duty cycle commanded at
the pilot driver, with 10 profiles installed on each of two connectors and a transaction
charging on connector 1: p50/p99 over many requests that each move the binding limit.
                                                                     target p99 ≤ 50 ms

(The cost of one composite-schedule evaluation with the most profiles allowed installed is
printed by benchmarks/composite.py.)

Usage: .venv/bin/python benchmarks/smart_charging.py [--requests N]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from ocpp.v16 import call

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stats import percentile
from evse_daemon.app import App
from evse_daemon.bench.csms import BenchCsms
from evse_daemon.clock import iso_utc
from evse_daemon.config import load_config
from evse_daemon.hardware import build_hardware
from evse_daemon.iec61851 import duty_percent_for_current
from tests.harness import write_config

PROFILES_PER_CONNECTOR = 10
TX = "TxProfile"


def profile(
    profile_id: int, stack_level: int, limit_a: float, purpose: str = "TxDefaultProfile"
) -> dict[str, Any]:
    """A profile with a few periods over the day, from an hour ago."""
    start = datetime.now(UTC) - timedelta(hours=1)
    return {
        "chargingProfileId": profile_id,
        "stackLevel": stack_level,
        "chargingProfilePurpose": purpose,
        "chargingProfileKind": "Absolute",
        "chargingSchedule": {
            "startSchedule": iso_utc(start),
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": limit_a},
                {"startPeriod": 6 * 3600, "limit": limit_a + 2},
                {"startPeriod": 12 * 3600, "limit": limit_a + 4},
            ],
        },
    }


async def install(csms: BenchCsms, connector_id: int, payload: dict[str, Any]) -> None:
    result = await csms.call(
        call.SetChargingProfile(connector_id=connector_id, cs_charging_profiles=payload)
    )
    if result.status != "Accepted":
        raise RuntimeError(f"SetChargingProfile {payload['chargingProfileId']}: {result}")


async def measure(requests: int) -> list[float]:
    csms = BenchCsms()
    await csms.start()
    with tempfile.TemporaryDirectory() as tmp:
        config = load_config(write_config(Path(tmp), csms.url, connectors=2))
        hardware = build_hardware(config)
        app = App(config, hardware)
        run = asyncio.create_task(app.run())
        try:
            await csms.wait_for("BootNotification")
            # Per connector: TxDefaultProfiles at every stack level the charger allows (0-8),
            # and, once its transaction runs, a TxProfile: the one the requests replace.
            for connector_id in (1, 2):
                for level in range(PROFILES_PER_CONNECTOR - 1):
                    await install(
                        csms, connector_id, profile(connector_id * 100 + level, level, 20)
                    )
            for connector_id in (1, 2):
                sim = hardware.connectors[connector_id].bench
                assert sim is not None and hardware.bench_reader is not None
                mark = csms.mark()
                sim.plug()
                hardware.bench_reader.swipe(f"BENCH-{connector_id}")
                await csms.wait_for("StartTransaction", after=mark)
                while not sim.contactor.commanded_closed:  # noqa: ASYNC110  # setup only
                    await asyncio.sleep(0.01)
                await install(csms, connector_id, profile(connector_id * 100 + 99, 0, 20, TX))
            assert all(
                len([p for p in app.profiles.installed() if p.connector_id == c])
                == PROFILES_PER_CONNECTOR
                for c in (1, 2)
            )

            pilot = hardware.connectors[1].pilot
            applied: dict[float, float] = {}
            original = pilot.set_pwm

            def recording_set_pwm(duty_percent: float) -> None:
                original(duty_percent)
                applied.setdefault(round(duty_percent, 3), time.perf_counter())

            pilot.set_pwm = recording_set_pwm  # type: ignore[method-assign]
            latencies: list[float] = []
            resolution = pilot.duty_resolution_percent
            for i in range(requests):
                # Replace the top level with a new limit each time: the binding one moves.
                limit_a = 6.0 + (i % 20)
                expected = round(duty_percent_for_current(limit_a, resolution), 3)
                applied.pop(expected, None)
                replacement = profile(1 * 100 + 99, 0, limit_a, TX)
                t0 = time.perf_counter()
                await install(csms, 1, replacement)
                if expected not in applied:
                    raise RuntimeError(f"duty {expected} % for {limit_a} A was never applied")
                latencies.append(applied[expected] - t0)
            return latencies
        finally:
            app.request_stop()
            await run
            await hardware.shutdown()
            await csms.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=500)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    latencies = asyncio.run(measure(args.requests))
    print(
        f"SetChargingProfile → duty at the pilot driver ({PROFILES_PER_CONNECTOR} profiles per "
        f"connector, {len(latencies)} requests): "
        f"p50 {percentile(latencies, 0.5) * 1000:.2f} ms, "
        f"p99 {percentile(latencies, 0.99) * 1000:.2f} ms, "
        f"max {max(latencies) * 1000:.2f} ms   (target p99 ≤ 50 ms)"
    )


if __name__ == "__main__":
    main()
