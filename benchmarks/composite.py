"""Cost of the smart-charging evaluation on this machine, printed.

The worst case the configuration keys allow (defaults of ProfileLimits): 32 profiles
installed (MaxChargingProfilesInstalled), 24 periods each (ChargingScheduleMaxPeriods),
stack levels 0..7, spread over the purposes and connectors of a two-connector charge point:
8 ChargePointMaxProfiles, 8 connector-0 TxDefaultProfiles, 8 connector-1 TxDefaultProfiles
and 8 TxProfiles for the transaction on connector 1. Kinds are mixed (Absolute, Daily and
Weekly Recurring, Relative) and the higher levels have durations, so evaluation falls
through the stack. Each run evaluates at another instant of a week.

Figures: median and p99 in microseconds of one ``limit_at`` (connector 1 and connector 0)
and of one 24 h ``composite_schedule`` (connector 1, in A and in W).

Usage: .venv/bin/python benchmarks/composite.py [--runs N]
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._stats import percentile
from evse_daemon.profiles import (
    ChargingProfile,
    ChargingSchedule,
    InstalledProfile,
    ProfileKind,
    ProfileLimits,
    ProfilePurpose,
    ProfileSet,
    RateUnit,
    RecurrencyKind,
    SchedulePeriod,
    composite_schedule,
    limit_at,
)

T0 = datetime(2026, 11, 21, tzinfo=UTC)
TX_START = T0 - timedelta(hours=1)
TX_ID = 42


def build(rng: random.Random) -> ProfileSet:
    limits = ProfileLimits()
    profiles = ProfileSet(limits, [0, 1, 2])
    layout = [
        (0, ProfilePurpose.CHARGE_POINT_MAX),
        (0, ProfilePurpose.TX_DEFAULT),
        (1, ProfilePurpose.TX_DEFAULT),
        (1, ProfilePurpose.TX),
    ]
    kinds = [
        (ProfileKind.ABSOLUTE, None),
        (ProfileKind.RECURRING, RecurrencyKind.DAILY),
        (ProfileKind.RECURRING, RecurrencyKind.WEEKLY),
        (ProfileKind.RELATIVE, None),
    ]
    entries: list[InstalledProfile] = []
    profile_id = 0
    per_group = limits.max_installed // len(layout)
    for connector_id, purpose in layout:
        for stack in range(min(per_group, limits.max_stack_level + 1)):
            kind, recurrency = kinds[(stack + profile_id) % len(kinds)]
            if purpose is ProfilePurpose.CHARGE_POINT_MAX and kind is ProfileKind.RELATIVE:
                kind = ProfileKind.ABSOLUTE
            span_s = 7 * 86_400 if recurrency is RecurrencyKind.WEEKLY else 86_400
            # The top levels stop after a third of their span, so lower levels show
            # through; every period falls within the duration, so every one is executed.
            duration_s = span_s // 3 if stack > 0 else None
            starts = sorted(rng.sample(range(1, duration_s or span_s), limits.max_periods - 1))
            unit = RateUnit.AMPS if stack % 2 else RateUnit.WATTS
            periods = tuple(
                SchedulePeriod(
                    start_s,
                    rng.randrange(60, 320) / 10
                    if unit is RateUnit.AMPS
                    else float(rng.randrange(14, 220) * 100),
                    rng.choice([None, 1, 3]),
                )
                for start_s in [0, *starts]
            )
            profile_id += 1
            entries.append(
                InstalledProfile(
                    connector_id,
                    ChargingProfile(
                        profile_id=profile_id,
                        stack_level=stack,
                        purpose=purpose,
                        kind=kind,
                        schedule=ChargingSchedule(
                            rate_unit=unit,
                            periods=periods,
                            duration_s=duration_s,
                            start_schedule=None
                            if kind is ProfileKind.RELATIVE
                            else T0 - timedelta(seconds=rng.randrange(0, 3 * 86_400)),
                        ),
                        recurrency_kind=recurrency,
                        transaction_id=TX_ID if purpose is ProfilePurpose.TX else None,
                    ),
                )
            )
    dropped = profiles.load(entries)
    assert not dropped, dropped
    assert len(profiles.installed()) == limits.max_installed
    return profiles


def measure(fn: Callable[[datetime], object], instants: list[datetime]) -> list[float]:
    costs: list[float] = []
    for instant in instants:
        begin = time.perf_counter()
        fn(instant)
        costs.append((time.perf_counter() - begin) * 1e6)
    return costs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5000)
    args = parser.parse_args()
    rng = random.Random(1)
    profiles = build(rng)
    instants = [T0 + timedelta(seconds=rng.randrange(0, 7 * 86_400)) for _ in range(args.runs)]
    electrics: dict[str, Any] = {"nominal_voltage_v": 230.0, "connector_phases": 3}
    tx: dict[str, Any] = {"transaction_start": TX_START, "transaction_id": TX_ID}
    no_tx: dict[str, Any] = {"transaction_start": None, "transaction_id": None}

    def live_1(at: datetime) -> object:
        return limit_at(profiles, 1, at, **electrics, **tx)

    def live_0(at: datetime) -> object:
        return limit_at(profiles, 0, at, **electrics, **no_tx)

    def day(unit: RateUnit) -> Callable[[datetime], list[Any]]:
        def run(at: datetime) -> list[Any]:
            return composite_schedule(profiles, 1, at, 86_400, unit=unit, **electrics, **tx)

        return run

    composite_runs = instants[: max(1, args.runs // 2)]
    lengths = [len(day(RateUnit.AMPS)(at)) for at in composite_runs[:50]]
    print(
        f"{len(profiles.installed())} profiles installed, "
        f"{ProfileLimits().max_periods} periods each; "
        f"24 h composite: {statistics.median(lengths):.0f} periods (median)"
    )
    for name, fn, runs in [
        ("limit_at, connector 1 (Tx/TxDefault chain)", live_1, instants),
        ("limit_at, connector 0 (ChargePointMax)", live_0, instants),
        ("composite_schedule 24 h, connector 1, A", day(RateUnit.AMPS), composite_runs),
        ("composite_schedule 24 h, connector 1, W", day(RateUnit.WATTS), composite_runs),
    ]:
        costs = measure(fn, runs)
        print(
            f"{name:45s} median {statistics.median(costs):8.1f} µs   "
            f"p99 {percentile(costs, 0.99):8.1f} µs   ({len(costs)} runs)"
        )


if __name__ == "__main__":
    main()
