"""Charging profiles (OCPP 1.6 §3.13, §5.16, §7.8-7.14 and errata): parsing, installation
rules, composite schedules and live limits, with property tests against a plain oracle."""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evse_daemon.profiles import (
    ChargingProfile,
    ChargingSchedule,
    CompositePeriod,
    InstalledProfile,
    ProfileError,
    ProfileKind,
    ProfileLimits,
    ProfilePurpose,
    ProfileSet,
    RateUnit,
    RecurrencyKind,
    SchedulePeriod,
    composite_schedule,
    limit_at,
    parse_datetime,
    profile_from_ocpp,
    profile_to_ocpp,
)

T0 = datetime(2026, 11, 21, tzinfo=UTC)  # a Saturday, 00:00 UTC
H = 3600
DAY = 86_400
CP_MAX = ProfilePurpose.CHARGE_POINT_MAX
TX_DEFAULT = ProfilePurpose.TX_DEFAULT
TX = ProfilePurpose.TX
ABSOLUTE = ProfileKind.ABSOLUTE
RELATIVE = ProfileKind.RELATIVE
RECURRING = ProfileKind.RECURRING
ELECTRICS: dict[str, Any] = {"nominal_voltage_v": 230.0, "connector_phases": 3}
NO_TX: dict[str, Any] = {"transaction_start": None, "transaction_id": None}
PROPERTY = settings(max_examples=200, deadline=None)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make(
    profile_id: int = 1,
    *,
    stack: int = 0,
    purpose: ProfilePurpose = TX_DEFAULT,
    kind: ProfileKind = ABSOLUTE,
    periods: Sequence[tuple[int, float] | tuple[int, float, int | None]] | None = None,
    unit: RateUnit = RateUnit.AMPS,
    start: datetime | None = T0,
    duration_s: int | None = None,
    recurrency: RecurrencyKind | None = None,
    valid_from: datetime | None = None,
    valid_to: datetime | None = None,
    transaction_id: int | None = None,
    min_rate: float | None = None,
) -> ChargingProfile:
    raw_periods = periods if periods is not None else [(0, 16.0)]
    return ChargingProfile(
        profile_id=profile_id,
        stack_level=stack,
        purpose=purpose,
        kind=kind,
        schedule=ChargingSchedule(
            rate_unit=unit,
            periods=tuple(SchedulePeriod(*p) for p in raw_periods),
            duration_s=duration_s,
            start_schedule=None if kind is RELATIVE else start,
            min_charging_rate=min_rate,
        ),
        recurrency_kind=recurrency,
        valid_from=valid_from,
        valid_to=valid_to,
        transaction_id=transaction_id,
    )


def new_set(limits: ProfileLimits | None = None) -> ProfileSet:
    return ProfileSet(limits or ProfileLimits(), [0, 1, 2])


def composite(
    profiles: ProfileSet,
    connector_id: int = 1,
    start: datetime = T0,
    duration_s: int = DAY,
    unit: RateUnit = RateUnit.AMPS,
    **kwargs: Any,
) -> list[tuple[int, float]]:
    kw = {**ELECTRICS, **NO_TX, **kwargs}
    periods = composite_schedule(profiles, connector_id, start, duration_s, unit=unit, **kw)
    return [(p.start_period_s, p.limit) for p in periods]


def live(profiles: ProfileSet, connector_id: int, when: datetime, **kwargs: Any) -> Any:
    return limit_at(profiles, connector_id, when, **{**ELECTRICS, **NO_TX, **kwargs})


INF = math.inf

# --- parsing and round trip ---------------------------------------------------------------

# The example of S16 §3.13.7: a daily default of 6 kW between 08:00 and 20:00.
SPEC_EXAMPLE: dict[str, Any] = {
    "chargingProfileId": 100,
    "stackLevel": 0,
    "chargingProfilePurpose": "TxDefaultProfile",
    "chargingProfileKind": "Recurring",
    "recurrencyKind": "Daily",
    "chargingSchedule": {
        "duration": 86400,
        "startSchedule": "2013-01-01T00:00:00Z",
        "chargingRateUnit": "W",
        "chargingSchedulePeriod": [
            {"startPeriod": 0, "limit": 11000.0, "numberPhases": 3},
            {"startPeriod": 28800, "limit": 6000.0, "numberPhases": 3},
            {"startPeriod": 72000, "limit": 11000.0, "numberPhases": 3},
        ],
    },
}


def test_the_spec_example_parses_and_round_trips() -> None:
    profile = profile_from_ocpp(SPEC_EXAMPLE)
    assert profile.profile_id == 100
    assert profile.purpose is TX_DEFAULT
    assert profile.kind is RECURRING
    assert profile.recurrency_kind is RecurrencyKind.DAILY
    assert profile.schedule.rate_unit is RateUnit.WATTS
    assert profile.schedule.start_schedule == datetime(2013, 1, 1, tzinfo=UTC)
    assert profile.schedule.periods[1] == SchedulePeriod(28800, 6000.0, 3)
    assert profile_to_ocpp(profile) == SPEC_EXAMPLE
    assert profile_from_ocpp(profile_to_ocpp(profile)) == profile


def test_every_optional_field_round_trips() -> None:
    payload: dict[str, Any] = {
        "chargingProfileId": 7,
        "transactionId": 42,
        "stackLevel": 3,
        "chargingProfilePurpose": "TxProfile",
        "chargingProfileKind": "Relative",
        "validFrom": "2026-11-21T10:00:00Z",
        "validTo": "2026-11-22T10:00:00.25Z",
        "chargingSchedule": {
            "duration": 7200,
            "chargingRateUnit": "A",
            "chargingSchedulePeriod": [
                {"startPeriod": 0, "limit": 6.5},
                {"startPeriod": 600, "limit": 16.0, "numberPhases": 1},
            ],
            "minChargingRate": 4.2,
        },
    }
    profile = profile_from_ocpp(payload)
    assert profile.transaction_id == 42
    assert profile.schedule.min_charging_rate == 4.2
    assert profile.valid_to == datetime(2026, 11, 22, 10, 0, 0, 250_000, tzinfo=UTC)
    assert profile_to_ocpp(profile) == payload


def test_minimum_charging_rate_is_carried_through_installation() -> None:
    profiles = new_set()
    profile = make(min_rate=6.0)
    assert profiles.install(1, profile, transaction_id=None) is None
    (installed,) = profiles.installed()
    assert installed.profile.schedule.min_charging_rate == 6.0
    assert profile_to_ocpp(installed.profile)["chargingSchedule"]["minChargingRate"] == 6.0
    assert profiles.install(1, make(2, stack=1, min_rate=-1), transaction_id=None) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-21T10:00:00Z", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T10:00:00.5Z", datetime(2026, 11, 21, 10, 0, 0, 500_000, tzinfo=UTC)),
        ("2026-11-21T10:00:00.1234567Z", datetime(2026, 11, 21, 10, 0, 0, 123_456, tzinfo=UTC)),
        ("2026-11-21T11:30:00+01:30", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T05:00:00.000-05:00", datetime(2026, 11, 21, 10, tzinfo=UTC)),
        ("2026-11-21T10:00:00", datetime(2026, 11, 21, 10, tzinfo=UTC)),
    ],
)
def test_ocpp_datetimes_become_aware_utc(text: str, expected: datetime) -> None:
    parsed = parse_datetime(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)


def _broken(path: list[str | int], value: Any) -> dict[str, Any]:
    """SPEC_EXAMPLE with the field at ``path`` set to ``value`` (deleted if value is ...)."""
    payload: Any = profile_to_ocpp(profile_from_ocpp(SPEC_EXAMPLE))
    target = payload
    for key in path[:-1]:
        target = target[key]
    if value is ...:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    assert isinstance(payload, dict)
    return payload


@pytest.mark.parametrize(
    ("path", "value", "code"),
    [
        # E16 3.38: an invalid enumeration value is a PropertyConstraintViolation.
        (["chargingProfilePurpose"], "TxDefault", "PropertyConstraintViolation"),
        (["chargingProfileKind"], "Sometimes", "PropertyConstraintViolation"),
        (["recurrencyKind"], "Monthly", "PropertyConstraintViolation"),
        (["chargingSchedule", "chargingRateUnit"], "kW", "PropertyConstraintViolation"),
        (
            ["chargingSchedule", "chargingSchedulePeriod", 0, "limit"],
            math.nan,
            "PropertyConstraintViolation",
        ),
        (["stackLevel"], "1", "TypeConstraintViolation"),
        (["stackLevel"], True, "TypeConstraintViolation"),
        (["stackLevel"], 1.5, "TypeConstraintViolation"),
        (["chargingProfilePurpose"], 3, "TypeConstraintViolation"),
        (["chargingSchedule"], 5, "TypeConstraintViolation"),
        (
            ["chargingSchedule", "chargingSchedulePeriod"],
            {"startPeriod": 0},
            "TypeConstraintViolation",
        ),
        (["chargingSchedule", "chargingSchedulePeriod", 0], 16, "TypeConstraintViolation"),
        (
            ["chargingSchedule", "chargingSchedulePeriod", 0, "limit"],
            "16",
            "TypeConstraintViolation",
        ),
        (["chargingSchedule", "startSchedule"], "yesterday", "TypeConstraintViolation"),
        (["validFrom"], 1700000000, "TypeConstraintViolation"),
        (["chargingProfileId"], ..., "OccurenceConstraintViolation"),
        (["stackLevel"], None, "OccurenceConstraintViolation"),
        (["chargingSchedule"], ..., "OccurenceConstraintViolation"),
        (["chargingSchedule", "chargingRateUnit"], ..., "OccurenceConstraintViolation"),
        (["chargingSchedule", "chargingSchedulePeriod"], [], "OccurenceConstraintViolation"),
        (
            ["chargingSchedule", "chargingSchedulePeriod", 0, "startPeriod"],
            ...,
            "OccurenceConstraintViolation",
        ),
        (
            ["chargingSchedule", "chargingSchedulePeriod", 0, "limit"],
            ...,
            "OccurenceConstraintViolation",
        ),
        (["connectorId"], 1, "FormationViolation"),
        (["chargingSchedule", "limit"], 16, "FormationViolation"),
        (["chargingSchedule", "chargingSchedulePeriod", 0, "phases"], 3, "FormationViolation"),
    ],
)
def test_malformed_profiles_raise_the_ocpp_error_code(
    path: list[str | int], value: Any, code: str
) -> None:
    with pytest.raises(ProfileError) as caught:
        profile_from_ocpp(_broken(path, value))
    assert caught.value.code == code


def test_a_payload_that_is_not_an_object_is_a_formation_violation() -> None:
    with pytest.raises(ProfileError) as caught:
        profile_from_ocpp([SPEC_EXAMPLE])  # type: ignore[arg-type]
    assert caught.value.code == "FormationViolation"
    assert isinstance(caught.value, ValueError)


_datetimes = st.integers(-10 * DAY, 10 * DAY).map(lambda s: T0 + timedelta(microseconds=s * 1000))


@st.composite
def any_profile(draw: st.DrawFn) -> ChargingProfile:
    n = draw(st.integers(1, 5))
    starts = [0, *sorted(draw(st.sets(st.integers(1, 10 * DAY), min_size=n - 1, max_size=n - 1)))]
    periods = tuple(
        SchedulePeriod(
            s,
            draw(st.integers(0, 100_000)) / 10,
            draw(st.none() | st.integers(1, 3)),
        )
        for s in starts
    )
    return ChargingProfile(
        profile_id=draw(st.integers(-(2**31), 2**31 - 1)),
        stack_level=draw(st.integers(0, 100)),
        purpose=draw(st.sampled_from(ProfilePurpose)),
        kind=draw(st.sampled_from(ProfileKind)),
        schedule=ChargingSchedule(
            rate_unit=draw(st.sampled_from(RateUnit)),
            periods=periods,
            duration_s=draw(st.none() | st.integers(1, 10 * DAY)),
            start_schedule=draw(st.none() | _datetimes),
            min_charging_rate=draw(st.none() | st.integers(0, 1000).map(lambda x: x / 10)),
        ),
        recurrency_kind=draw(st.none() | st.sampled_from(RecurrencyKind)),
        valid_from=draw(st.none() | _datetimes),
        valid_to=draw(st.none() | _datetimes),
        transaction_id=draw(st.none() | st.integers(-1, 2**31 - 1)),
    )


@PROPERTY
@given(any_profile())
def test_property_profiles_round_trip_through_ocpp_json(profile: ChargingProfile) -> None:
    assert profile_from_ocpp(profile_to_ocpp(profile)) == profile


# --- installation rules -----------------------------------------------------------------------


def test_an_unknown_connector_is_a_property_constraint_violation() -> None:
    profiles = new_set()
    with pytest.raises(ProfileError) as caught:
        profiles.install(3, make(), transaction_id=None)
    assert caught.value.code == "PropertyConstraintViolation"
    with pytest.raises(ProfileError):
        profiles.install(-1, make(), transaction_id=None)


def test_charge_point_max_profile_only_on_connector_zero() -> None:
    profiles = new_set()
    assert profiles.install(1, make(purpose=CP_MAX), transaction_id=None) is not None
    assert profiles.install(0, make(purpose=CP_MAX), transaction_id=None) is None
    # Relative means "from the transaction start": the charge point as a whole has none.
    assert profiles.install(0, make(2, stack=1, purpose=CP_MAX, kind=RELATIVE), transaction_id=None)


def test_tx_default_profile_on_connector_zero_and_on_a_connector() -> None:
    profiles = new_set()
    assert profiles.install(0, make(1), transaction_id=None) is None
    assert profiles.install(2, make(2), transaction_id=None) is None
    assert [p.connector_id for p in profiles.installed()] == [0, 2]


def test_tc_058_1_tx_profile_without_a_transaction_is_rejected() -> None:
    profiles = new_set()
    reason = profiles.install(1, make(purpose=TX), transaction_id=None)
    assert reason is not None and "no transaction" in reason
    assert profiles.installed() == []


def test_tc_058_2_tx_profile_for_another_transaction_is_rejected() -> None:
    profiles = new_set()
    reason = profiles.install(1, make(purpose=TX, transaction_id=99), transaction_id=42)
    assert reason is not None and "99" in reason
    assert profiles.install(1, make(purpose=TX, transaction_id=42), transaction_id=42) is None
    assert profiles.install(1, make(2, stack=1, purpose=TX), transaction_id=42) is None
    assert len(profiles.installed()) == 2


def test_tx_profile_never_on_connector_zero() -> None:
    assert new_set().install(0, make(purpose=TX), transaction_id=42) is not None


def test_transaction_id_only_in_a_tx_profile() -> None:
    assert new_set().install(1, make(transaction_id=42), transaction_id=42) is not None


@pytest.mark.parametrize(("stack", "accepted"), [(0, True), (8, True), (9, False), (-1, False)])
def test_stack_level_within_charge_profile_max_stack_level(stack: int, accepted: bool) -> None:
    assert (new_set().install(1, make(stack=stack), transaction_id=None) is None) == accepted


def test_period_count_within_charging_schedule_max_periods() -> None:
    profiles = new_set(ProfileLimits(max_periods=3))
    three = [(0, 6.0), (60, 8.0), (120, 10.0)]
    assert profiles.install(1, make(1, periods=three), transaction_id=None) is None
    four = [*three, (180, 12.0)]
    assert profiles.install(1, make(2, stack=1, periods=four), transaction_id=None) is not None
    assert profiles.install(1, make(3, stack=2, periods=[]), transaction_id=None) is not None


@pytest.mark.parametrize(
    "periods",
    [
        [(60, 16.0)],  # E16 3.45: the first startPeriod is 0
        [(0, 16.0), (600, 8.0), (600, 6.0)],  # not strictly increasing
        [(0, 16.0), (600, 8.0), (300, 6.0)],
        [(0, -1.0)],
        [(0, 16.0, 0)],
        [(0, 16.0, 4)],
    ],
)
def test_malformed_schedules_are_rejected(periods: list[tuple[int, float, int | None]]) -> None:
    profiles = new_set()
    assert profiles.install(1, make(periods=periods), transaction_id=None) is not None
    assert profiles.revision == 0


def test_rate_unit_must_be_allowed() -> None:
    profiles = new_set(ProfileLimits(allowed_units=frozenset({RateUnit.AMPS})))
    assert profiles.install(1, make(unit=RateUnit.WATTS), transaction_id=None) is not None
    assert profiles.install(1, make(unit=RateUnit.AMPS), transaction_id=None) is None


def test_kinds_need_their_start_fields() -> None:
    profiles = new_set()
    daily = RecurrencyKind.DAILY
    assert profiles.install(1, make(kind=RECURRING), transaction_id=None) is not None
    assert profiles.install(
        1, make(kind=RECURRING, recurrency=daily, start=None), transaction_id=None
    )
    # S16 §7.9: Absolute periods count from a fixed point in time, startSchedule.
    assert profiles.install(1, make(kind=ABSOLUTE, start=None), transaction_id=None) is not None
    assert profiles.install(1, make(1, kind=RELATIVE), transaction_id=None) is None
    assert (
        profiles.install(1, make(2, stack=1, kind=RECURRING, recurrency=daily), transaction_id=None)
        is None
    )


def test_valid_to_after_valid_from_and_a_positive_duration() -> None:
    profiles = new_set()
    window: dict[str, Any] = {"valid_from": at(H), "valid_to": at(H)}
    assert profiles.install(1, make(**window), transaction_id=None) is not None
    assert profiles.install(1, make(duration_s=0), transaction_id=None) is not None
    assert (
        profiles.install(1, make(valid_from=at(H), valid_to=at(H + 1)), transaction_id=None) is None
    )


def test_same_id_replaces_wherever_it_was() -> None:
    profiles = new_set()
    profiles.install(0, make(5, purpose=CP_MAX, stack=2), transaction_id=None)
    profiles.install(2, make(5, stack=0, periods=[(0, 10.0)]), transaction_id=None)
    assert [(p.connector_id, p.profile.purpose) for p in profiles.installed()] == [(2, TX_DEFAULT)]


def test_same_purpose_and_stack_level_on_a_connector_replaces() -> None:
    profiles = new_set()
    profiles.install(1, make(1, stack=1, periods=[(0, 10.0)]), transaction_id=None)
    profiles.install(1, make(2, stack=1, periods=[(0, 12.0)]), transaction_id=None)
    profiles.install(2, make(3, stack=1), transaction_id=None)  # another connector: stacks
    profiles.install(1, make(4, stack=2), transaction_id=None)  # another level: stacks
    assert sorted(p.profile.profile_id for p in profiles.installed()) == [2, 3, 4]


def test_remote_start_profile_is_bound_and_then_replaced_at_the_same_level() -> None:
    profiles = new_set()
    assert profiles.install_remote_start(1, make(1, stack=1, purpose=TX), None) is None
    assert profiles.install_remote_start(2, make(2, stack=1, purpose=TX), 43) is None
    (first, second) = profiles.installed()
    assert first.profile.transaction_id is None
    assert second.profile.transaction_id == 43
    # E16 3.42: the same stackLevel for this transaction replaces, another one stacks.
    profiles.install(1, make(3, stack=1, purpose=TX, transaction_id=42), transaction_id=42)
    profiles.install(1, make(4, stack=2, purpose=TX, transaction_id=42), transaction_id=42)
    on_one = [p.profile.profile_id for p in profiles.installed() if p.connector_id == 1]
    assert on_one == [3, 4]


def test_remote_start_profile_must_be_a_tx_profile_without_transaction_id() -> None:
    profiles = new_set()
    assert profiles.install_remote_start(1, make(purpose=TX_DEFAULT), 42) is not None
    assert profiles.install_remote_start(1, make(purpose=TX, transaction_id=5), 42) is not None
    assert profiles.install_remote_start(0, make(purpose=TX), 42) is not None
    assert profiles.install_remote_start(9, make(purpose=TX), 42) is not None
    assert profiles.check_remote_start(make(purpose=TX, stack=99)) is not None
    assert profiles.check_remote_start(make(purpose=TX)) is None
    assert profiles.installed() == []


def test_max_installed_counts_after_replacement() -> None:
    profiles = new_set(ProfileLimits(max_installed=2))
    assert profiles.install(1, make(1, stack=0), transaction_id=None) is None
    assert profiles.install(1, make(2, stack=1), transaction_id=None) is None
    assert profiles.install(1, make(3, stack=2), transaction_id=None) is not None
    assert profiles.install(1, make(3, stack=1), transaction_id=None) is None  # replaces 2
    assert profiles.install(1, make(1, stack=5), transaction_id=None) is None  # replaces 1
    assert sorted(p.profile.profile_id for p in profiles.installed()) == [1, 3]


def test_revision_moves_on_every_change_only() -> None:
    profiles = new_set()
    assert profiles.revision == 0
    profiles.install(1, make(1), transaction_id=None)
    assert profiles.revision == 1
    profiles.install(1, make(2, stack=99), transaction_id=None)
    assert profiles.revision == 1
    assert not profiles.clear(profile_id=2)
    assert profiles.revision == 1
    profiles.end_transaction(1)
    assert profiles.revision == 1
    assert profiles.clear()
    assert profiles.revision == 2


def _clearing_set() -> ProfileSet:
    profiles = new_set()
    profiles.install(0, make(1, purpose=CP_MAX, stack=1), transaction_id=None)
    profiles.install(0, make(2, stack=1), transaction_id=None)
    profiles.install(1, make(3, stack=1), transaction_id=None)
    profiles.install(1, make(4, stack=2), transaction_id=None)
    profiles.install(1, make(5, stack=1, purpose=TX), transaction_id=42)
    return profiles


def _ids(profiles: ProfileSet) -> list[int]:
    return sorted(p.profile.profile_id for p in profiles.installed())


def test_clear_without_fields_clears_everything() -> None:
    profiles = _clearing_set()
    assert profiles.clear()
    assert profiles.installed() == []
    assert not profiles.clear()


def test_clear_by_id_ignores_the_other_fields() -> None:
    # E16 3.26: with an id, the other fields are ignored.
    profiles = _clearing_set()
    assert profiles.clear(profile_id=3, connector_id=2, purpose=CP_MAX, stack_level=7)
    assert _ids(profiles) == [1, 2, 4, 5]
    assert not profiles.clear(profile_id=3)


def test_clear_matches_every_given_field() -> None:
    # E16 3.25: logical AND of the fields given.
    profiles = _clearing_set()
    assert profiles.clear(connector_id=1, stack_level=1, purpose=TX_DEFAULT)
    assert _ids(profiles) == [1, 2, 4, 5]
    assert profiles.clear(stack_level=1)
    assert _ids(profiles) == [4]
    assert not profiles.clear(connector_id=0)
    assert profiles.clear(purpose=TX_DEFAULT)
    assert profiles.installed() == []


def test_end_of_transaction_removes_only_that_connectors_tx_profiles() -> None:
    profiles = new_set()
    profiles.install(1, make(1, purpose=TX), transaction_id=42)
    profiles.install(2, make(2, purpose=TX), transaction_id=43)
    profiles.install(1, make(3), transaction_id=None)
    profiles.end_transaction(1)
    assert _ids(profiles) == [2, 3]


def test_load_restores_and_drops_what_breaks_the_rules() -> None:
    profiles = new_set(ProfileLimits(max_stack_level=3))
    kept = [InstalledProfile(0, make(1, purpose=CP_MAX)), InstalledProfile(1, make(2))]
    broken = [InstalledProfile(1, make(3, stack=4)), InstalledProfile(7, make(4, stack=1))]
    dropped = profiles.load([*kept, *broken])
    assert dropped == broken
    assert profiles.installed() == kept
    assert profiles.revision == 1
    assert profiles.load([]) == []
    assert profiles.installed() == []


# --- composite schedules ----------------------------------------------------------------------


def test_nothing_installed_is_unconstrained() -> None:
    profiles = new_set()
    assert composite(profiles) == [(0, INF)]
    assert live(profiles, 1, T0) == (INF, None)
    assert live(profiles, 0, T0) == (INF, None)


def test_absolute_profile_with_duration() -> None:
    profiles = new_set()
    profile = make(start=at(H), periods=[(0, 10.0), (1800, 20.0)], duration_s=H)
    profiles.install(1, profile, transaction_id=None)
    assert composite(profiles, duration_s=3 * H) == [
        (0, INF),
        (H, 10.0),
        (H + 1800, 20.0),
        (2 * H, INF),
    ]
    # No duration: the last period holds for ever.
    profiles.install(1, make(start=at(H), periods=[(0, 10.0), (1800, 20.0)]), transaction_id=None)
    assert composite(profiles, duration_s=3 * H) == [(0, INF), (H, 10.0), (H + 1800, 20.0)]


def test_relative_profile_starts_at_the_transaction_start() -> None:
    profiles = new_set()
    profile = make(purpose=TX, kind=RELATIVE, periods=[(0, 6.0), (1200, 16.0)], duration_s=H)
    profiles.install(1, profile, transaction_id=42)
    started = at(-600)
    result = composite(profiles, duration_s=2 * H, transaction_start=started, transaction_id=42)
    assert result == [(0, 6.0), (600, 16.0), (3000, INF)]
    assert live(profiles, 1, T0, transaction_start=started, transaction_id=42) == (6.0, at(600))


def test_relative_default_without_a_transaction_is_what_one_starting_now_would_get() -> None:
    profiles = new_set()
    profiles.install(0, make(kind=RELATIVE, periods=[(0, 6.0), (1200, 16.0)]), transaction_id=None)
    assert composite(profiles, duration_s=H) == [(0, 6.0), (1200, 16.0)]
    # Live, with no transaction, the first period; it moves only once a transaction starts.
    assert live(profiles, 1, at(5000)) == (6.0, None)


def test_tx_profile_needs_its_transaction() -> None:
    profiles = new_set()
    profiles.install(
        1, make(1, purpose=TX, periods=[(0, 8.0)], transaction_id=42), transaction_id=42
    )
    profiles.install(1, make(2, periods=[(0, 20.0)]), transaction_id=None)
    assert composite(profiles) == [(0, 20.0)]
    assert composite(profiles, transaction_start=at(-60), transaction_id=42) == [(0, 8.0)]
    tx_profile = make(3, purpose=TX, stack=1, periods=[(0, 6.0)], transaction_id=42)
    profiles.install(1, tx_profile, transaction_id=42)
    assert composite(profiles, transaction_start=at(-60), transaction_id=42) == [(0, 6.0)]
    # A TxProfile that names another transaction does not apply to this one.
    assert composite(profiles, transaction_start=at(-60), transaction_id=43) == [(0, 20.0)]
    # Not yet confirmed by the CSMS (no id yet): the connector's TxProfiles are its own.
    assert composite(profiles, transaction_start=at(-60)) == [(0, 6.0)]


def test_daily_recurring_across_midnight() -> None:
    profiles = new_set()
    # 22:00 to 06:00 limited to 8 A, otherwise 16 A; day starts at 22:00.
    start = datetime(2026, 11, 1, 22, tzinfo=UTC)
    profile = make(
        kind=RECURRING,
        recurrency=RecurrencyKind.DAILY,
        start=start,
        periods=[(0, 8.0), (8 * H, 16.0)],
    )
    profiles.install(0, profile, transaction_id=None)
    assert composite(profiles, start=at(-2 * H), duration_s=DAY) == [(0, 8.0), (8 * H, 16.0)]
    assert composite(profiles, start=at(-3 * H), duration_s=DAY) == [
        (0, 16.0),
        (H, 8.0),
        (9 * H, 16.0),
    ]
    assert live(profiles, 1, at(5 * H)) == (8.0, at(6 * H))
    assert live(profiles, 1, at(6 * H)) == (16.0, at(22 * H))


def test_weekly_recurring_across_the_week_boundary() -> None:
    profiles = new_set()
    monday = datetime(2026, 11, 2, tzinfo=UTC)
    assert monday.strftime("%A") == "Monday"
    # 10 A Monday to Saturday, 20 A on Sundays.
    profile = make(
        kind=RECURRING,
        recurrency=RecurrencyKind.WEEKLY,
        start=monday,
        periods=[(0, 10.0), (6 * DAY, 20.0)],
    )
    profiles.install(1, profile, transaction_id=None)
    sunday_23h = datetime(2026, 11, 22, 23, tzinfo=UTC)
    assert sunday_23h.strftime("%A") == "Sunday"
    assert composite(profiles, start=sunday_23h, duration_s=2 * H) == [(0, 20.0), (H, 10.0)]
    assert live(profiles, 1, sunday_23h) == (20.0, datetime(2026, 11, 23, tzinfo=UTC))
    assert live(profiles, 1, T0) == (10.0, datetime(2026, 11, 22, tzinfo=UTC))


def test_recurring_profile_does_not_run_before_its_start_schedule() -> None:
    profiles = new_set()
    profile = make(kind=RECURRING, recurrency=RecurrencyKind.DAILY, start=at(DAY + H))
    profiles.install(1, profile, transaction_id=None)
    assert composite(profiles, duration_s=2 * DAY) == [(0, INF), (DAY + H, 16.0)]


def test_periods_beyond_the_recurrence_are_never_executed() -> None:
    # E16 3.44: periods and duration longer than the recurrence period are cut there.
    profiles = new_set()
    profile = make(
        kind=RECURRING,
        recurrency=RecurrencyKind.DAILY,
        periods=[(0, 10.0), (20 * H, 12.0), (25 * H, 30.0)],
        duration_s=2 * DAY,
    )
    profiles.install(1, profile, transaction_id=None)
    assert composite(profiles, duration_s=2 * DAY) == [
        (0, 10.0),
        (20 * H, 12.0),
        (DAY, 10.0),
        (DAY + 20 * H, 12.0),
    ]


def test_valid_from_and_valid_to_bound_a_profile() -> None:
    profiles = new_set()
    profiles.install(1, make(1, stack=0, periods=[(0, 16.0)]), transaction_id=None)
    window = make(2, stack=1, periods=[(0, 6.0)], valid_from=at(2 * H), valid_to=at(5 * H))
    profiles.install(1, window, transaction_id=None)
    assert composite(profiles, duration_s=8 * H) == [(0, 16.0), (2 * H, 6.0), (5 * H, 16.0)]
    assert live(profiles, 1, at(H)) == (16.0, at(2 * H))
    assert live(profiles, 1, at(3 * H)) == (6.0, at(5 * H))


def test_duration_shorter_than_recurrence_falls_back_to_the_lower_stack_level() -> None:
    # E16 3.43: after the duration, the next lower stack level applies, or nothing.
    profiles = new_set()
    morning = make(
        2,
        stack=1,
        kind=RECURRING,
        recurrency=RecurrencyKind.DAILY,
        start=at(8 * H),
        duration_s=2 * H,
        periods=[(0, 6.0)],
    )
    profiles.install(1, morning, transaction_id=None)
    assert composite(profiles, start=at(DAY), duration_s=DAY) == [
        (0, INF),
        (8 * H, 6.0),
        (10 * H, INF),
    ]
    profiles.install(1, make(1, stack=0, periods=[(0, 16.0)]), transaction_id=None)
    assert composite(profiles, start=at(DAY), duration_s=DAY) == [
        (0, 16.0),
        (8 * H, 6.0),
        (10 * H, 16.0),
    ]


def test_highest_level_without_duration_hides_lower_levels_for_ever() -> None:
    # E16 3.7: stacking without a duration on the highest level never falls back.
    profiles = new_set()
    profiles.install(1, make(1, stack=0, periods=[(0, 6.0)]), transaction_id=None)
    profiles.install(1, make(2, stack=3, periods=[(0, 20.0), (H, 24.0)]), transaction_id=None)
    assert composite(profiles, duration_s=3 * H) == [(0, 20.0), (H, 24.0)]
    assert live(profiles, 1, at(2 * H)) == (24.0, None)


def test_stacking_order_across_purposes_and_connectors() -> None:
    profiles = new_set()
    profiles.install(0, make(1, stack=5, periods=[(0, 30.0)]), transaction_id=None)
    assert composite(profiles) == [(0, 30.0)]
    # A connector's own TxDefaultProfile replaces the connector-0 one there (S16 §3.13.1),
    # whatever the stack levels.
    profiles.install(1, make(2, stack=0, periods=[(0, 25.0)]), transaction_id=None)
    assert composite(profiles, connector_id=1) == [(0, 25.0)]
    assert composite(profiles, connector_id=2) == [(0, 30.0)]
    # The TxProfile overrules the defaults for its transaction, even with a higher limit.
    profiles.install(1, make(3, purpose=TX, periods=[(0, 28.0)]), transaction_id=42)
    tx: dict[str, Any] = {"transaction_start": at(-60), "transaction_id": 42}
    assert composite(profiles, **tx) == [(0, 28.0)]
    # ChargePointMaxProfile caps everything.
    profiles.install(
        0, make(4, purpose=CP_MAX, periods=[(0, 32.0), (H, 20.0)]), transaction_id=None
    )
    assert composite(profiles, duration_s=2 * H, **tx) == [(0, 28.0), (H, 20.0)]
    assert composite(profiles, connector_id=0, duration_s=2 * H, **tx) == [(0, 32.0), (H, 20.0)]
    assert live(profiles, 0, T0) == (32.0, at(H))
    assert live(profiles, 1, T0, **tx) == (28.0, None)


def test_tx_profile_falls_back_to_the_default_after_its_duration() -> None:
    profiles = new_set()
    profiles.install(0, make(1, periods=[(0, 16.0)]), transaction_id=None)
    tx_profile = make(2, purpose=TX, kind=RELATIVE, periods=[(0, 8.0)], duration_s=H)
    profiles.install(1, tx_profile, transaction_id=42)
    tx: dict[str, Any] = {"transaction_start": T0, "transaction_id": 42}
    assert composite(profiles, duration_s=2 * H, **tx) == [(0, 8.0), (H, 16.0)]


@pytest.mark.parametrize(
    ("number_phases", "connector_phases", "amps"),
    [
        (3, 3, 16.0),  # 11040 W / (230 V × 3)
        (None, 3, 16.0),  # S16 §7.12: absent means 3
        (1, 3, 48.0),  # 11040 W / 230 V
        (3, 1, 48.0),  # E16 3.34: the limit as given, on the phase that can be used
        (None, 1, 48.0),
        (2, 3, 24.0),
    ],
)
def test_watts_to_amps_per_phase(
    number_phases: int | None, connector_phases: int, amps: float
) -> None:
    profiles = new_set()
    profile = make(unit=RateUnit.WATTS, periods=[(0, 11040.0, number_phases)])
    profiles.install(1, profile, transaction_id=None)
    electrics: dict[str, Any] = {"connector_phases": connector_phases}
    assert live(profiles, 1, T0, **electrics) == (amps, None)
    assert composite(profiles, **electrics) == [(0, amps)]
    watts = composite(profiles, unit=RateUnit.WATTS, **electrics)
    assert watts == [(0, 11040.0)]


@pytest.mark.parametrize(
    ("number_phases", "connector_phases", "watts"),
    [(3, 3, 11040.0), (None, 3, 11040.0), (1, 3, 3680.0), (None, 1, 3680.0), (3, 1, 3680.0)],
)
def test_amps_to_watts(number_phases: int | None, connector_phases: int, watts: float) -> None:
    profiles = new_set()
    profiles.install(1, make(periods=[(0, 16.0, number_phases)]), transaction_id=None)
    periods = composite_schedule(
        profiles,
        1,
        T0,
        H,
        unit=RateUnit.WATTS,
        **{**ELECTRICS, **NO_TX, "connector_phases": connector_phases},
    )
    assert periods == [CompositePeriod(0, watts, number_phases)]


def test_limits_are_rounded_down_to_one_decimal() -> None:
    profiles = new_set()
    profiles.install(1, make(unit=RateUnit.WATTS, periods=[(0, 11000.0)]), transaction_id=None)
    assert live(profiles, 1, T0)[0] == 15.9  # 15.942 A
    profiles.install(1, make(periods=[(0, 13.37)]), transaction_id=None)
    assert composite(profiles) == [(0, 13.3)]


def test_number_phases_is_reported_and_splits_periods() -> None:
    profiles = new_set()
    profile = make(periods=[(0, 16.0, 3), (H, 16.0, 1), (2 * H, 16.0, 1)])
    profiles.install(1, profile, transaction_id=None)
    periods = composite_schedule(profiles, 1, T0, 3 * H, unit=RateUnit.AMPS, **ELECTRICS, **NO_TX)
    assert periods == [CompositePeriod(0, 16.0, 3), CompositePeriod(H, 16.0, 1)]


def test_a_boundary_within_a_second_never_offers_more() -> None:
    profiles = new_set()
    profile = make(purpose=TX, kind=RELATIVE, periods=[(0, 16.0), (10, 6.0), (20, 16.0)])
    profiles.install(1, profile, transaction_id=42)
    tx: dict[str, Any] = {"transaction_start": at(0.5), "transaction_id": 42}
    # Unconstrained until 0.5 s, 16 A to 10.5 s, 6 A to 20.5 s, then 16 A.
    assert composite(profiles, duration_s=60, **tx) == [(0, 16.0), (10, 6.0), (21, 16.0)]


def test_empty_window_has_no_periods() -> None:
    assert composite(new_set(), duration_s=0) == []


def test_unknown_connector_in_evaluation_raises() -> None:
    with pytest.raises(ProfileError):
        live(new_set(), 5, T0)


# --- live limit: next-change instants -------------------------------------------------------


def test_next_change_is_exactly_at_the_period_boundary() -> None:
    profiles = new_set()
    start = at(H + 0.25)
    profiles.install(
        1, make(start=start, periods=[(0, 10.0), (1800, 20.0)], duration_s=H), transaction_id=None
    )
    assert live(profiles, 1, T0) == (INF, start)
    assert live(profiles, 1, start - timedelta(microseconds=1)) == (INF, start)
    assert live(profiles, 1, start) == (10.0, start + timedelta(seconds=1800))
    just_before = start + timedelta(seconds=1800, microseconds=-1)
    assert live(profiles, 1, just_before) == (10.0, start + timedelta(seconds=1800))
    assert live(profiles, 1, start + timedelta(seconds=1800)) == (
        20.0,
        start + timedelta(seconds=H),
    )
    assert live(profiles, 1, start + timedelta(seconds=H)) == (INF, None)


def test_next_change_skips_boundaries_that_change_nothing() -> None:
    profiles = new_set()
    profiles.install(
        1, make(1, periods=[(0, 10.0), (600, 10.0), (1200, 20.0)]), transaction_id=None
    )
    # A higher level that only starts where it repeats the same limit.
    profiles.install(
        1,
        make(2, stack=1, start=at(1800), periods=[(0, 20.0)], duration_s=600),
        transaction_id=None,
    )
    assert live(profiles, 1, T0) == (10.0, at(1200))
    assert live(profiles, 1, at(1200)) == (20.0, None)


# --- property tests against an oracle -----------------------------------------------------


def _oracle_period(
    profile: ChargingProfile, t: datetime, anchor: datetime
) -> SchedulePeriod | None:
    """The profile's period in force at ``t``, by the text of the spec, with datetimes."""
    if profile.valid_from is not None and t < profile.valid_from:
        return None
    if profile.valid_to is not None and t >= profile.valid_to:
        return None
    schedule = profile.schedule
    end = timedelta(seconds=schedule.duration_s) if schedule.duration_s is not None else None
    if profile.kind is RELATIVE:
        origin = anchor
    else:
        assert schedule.start_schedule is not None
        origin = schedule.start_schedule
    if profile.kind is RECURRING:
        every = timedelta(days=1 if profile.recurrency_kind is RecurrencyKind.DAILY else 7)
        if t < origin:
            return None
        while origin + every <= t:
            origin += every
        end = every if end is None else min(end, every)
    offset = t - origin
    if offset < timedelta(0) or (end is not None and offset >= end):
        return None
    return [p for p in schedule.periods if timedelta(seconds=p.start_period_s) <= offset][-1]


def _oracle_amps(profile: ChargingProfile, period: SchedulePeriod, phases: int) -> float:
    if profile.schedule.rate_unit is RateUnit.AMPS:
        return period.limit
    return period.limit / (230.0 * min(period.number_phases or 3, phases))


def _oracle_chain(
    installed: list[InstalledProfile], connector_id: int, tx_id: int
) -> list[ChargingProfile]:
    def group(purpose: ProfilePurpose, connector: int) -> list[ChargingProfile]:
        members = [
            p.profile
            for p in installed
            if p.profile.purpose is purpose and p.connector_id == connector
        ]
        return sorted(members, key=lambda p: -p.stack_level)

    if connector_id == 0:
        return group(CP_MAX, 0)
    tx = [p for p in group(TX, connector_id) if p.transaction_id in (None, tx_id)]
    return tx + group(TX_DEFAULT, connector_id) + group(TX_DEFAULT, 0)


def _oracle(
    installed: list[InstalledProfile],
    connector_id: int,
    t: datetime,
    anchor: datetime,
    tx_id: int,
    phases: int,
) -> float:
    for profile in _oracle_chain(installed, connector_id, tx_id):
        period = _oracle_period(profile, t, anchor)
        if period is not None:
            return _oracle_amps(profile, period, phases)
    return INF


def _floor_tenth(value: float) -> float:
    return value if math.isinf(value) else math.floor(value * 10 + 1e-6) / 10


def _value_at(periods: list[CompositePeriod], offset_s: float) -> float:
    return [p for p in periods if p.start_period_s <= offset_s][-1].limit


@st.composite
def profile_sets(
    draw: st.DrawFn,
    purposes: tuple[ProfilePurpose, ...] = (CP_MAX, TX_DEFAULT, TX),
    kinds: tuple[ProfileKind, ...] = (ABSOLUTE, RELATIVE, RECURRING),
    recurrencies: tuple[RecurrencyKind, ...] = (RecurrencyKind.DAILY, RecurrencyKind.WEEKLY),
    validity: bool = True,
    start_range: tuple[int, int] = (-3 * DAY, 2 * DAY),
) -> list[InstalledProfile]:
    """Up to six profiles on connectors 0 and 1, on whole seconds around T0."""
    entries = []
    for profile_id in range(draw(st.integers(1, 6))):
        purpose = draw(st.sampled_from(purposes))
        connector = (
            0 if purpose is CP_MAX else 1 if purpose is TX else draw(st.sampled_from([0, 1]))
        )
        kind = draw(
            st.sampled_from([k for k in kinds if not (purpose is CP_MAX and k is RELATIVE)])
        )
        unit = draw(st.sampled_from(RateUnit))
        n = draw(st.integers(1, 4))
        starts = [0, *sorted(draw(st.sets(st.integers(1, 30 * H), min_size=n - 1, max_size=n - 1)))]
        limits = (
            st.integers(0, 640).map(lambda x: x / 10)
            if unit is RateUnit.AMPS
            else st.integers(0, 300).map(lambda x: x * 100.0)
        )
        periods = [(s, draw(limits), draw(st.none() | st.integers(1, 3))) for s in starts]
        valid_from = valid_to = None
        if validity and draw(st.booleans()):
            valid_from = at(draw(st.integers(-DAY, DAY)))
            valid_to = valid_from + timedelta(seconds=draw(st.integers(1, 2 * DAY)))
        profile = make(
            profile_id,
            stack=draw(st.integers(0, 3)),
            purpose=purpose,
            kind=kind,
            unit=unit,
            periods=periods,
            start=at(draw(st.integers(*start_range))),
            duration_s=draw(st.none() | st.integers(60, 40 * H)),
            recurrency=draw(st.sampled_from(recurrencies)) if kind is RECURRING else None,
            valid_from=valid_from,
            valid_to=valid_to,
            transaction_id=draw(st.sampled_from([None, 7, 8])) if purpose is TX else None,
        )
        entries.append(InstalledProfile(connector, profile))
    return entries


def _loaded(entries: list[InstalledProfile]) -> ProfileSet:
    profiles = ProfileSet(ProfileLimits(max_stack_level=3), [0, 1])
    assert profiles.load(entries) == []
    return profiles


TX_START = at(-5000)
TX_CONTEXT: dict[str, Any] = {"transaction_start": TX_START, "transaction_id": 7}


@PROPERTY
@given(
    profile_sets(),
    st.sampled_from([1, 3]),
    st.lists(st.integers(0, 2 * DAY - 1), min_size=5, max_size=5),
)
def test_property_composite_never_above_the_prevailing_profiles(
    entries: list[InstalledProfile], phases: int, samples: list[int]
) -> None:
    profiles = _loaded(entries)
    installed = profiles.installed()
    kw: dict[str, Any] = {"nominal_voltage_v": 230.0, "connector_phases": phases, **TX_CONTEXT}
    periods = composite_schedule(profiles, 1, T0, 2 * DAY, unit=RateUnit.AMPS, **kw)
    cp_periods = composite_schedule(profiles, 0, T0, 2 * DAY, unit=RateUnit.AMPS, **kw)
    for offset in samples:
        t = at(offset)
        cp_max = _oracle(installed, 0, t, TX_START, 7, phases)
        chain = _oracle(installed, 1, t, TX_START, 7, phases)
        assert _value_at(periods, offset) == _floor_tenth(min(cp_max, chain))
        assert _value_at(cp_periods, offset) == _floor_tenth(cp_max)


@PROPERTY
@given(
    profile_sets(purposes=(TX_DEFAULT,)),
    st.lists(st.integers(-DAY, 3 * DAY), min_size=5, max_size=5),
)
def test_property_the_highest_active_stack_level_decides(
    entries: list[InstalledProfile], samples: list[int]
) -> None:
    entries = [InstalledProfile(1, e.profile) for e in entries]
    profiles = _loaded(entries)
    for offset in samples:
        t = at(offset)
        active = [p.profile for p in profiles.installed() if _oracle_period(p.profile, t, TX_START)]
        expected = INF
        if active:
            top = max(active, key=lambda p: p.stack_level)
            period = _oracle_period(top, t, TX_START)
            assert period is not None
            expected = _floor_tenth(_oracle_amps(top, period, 3))
        assert live(profiles, 1, t, **TX_CONTEXT)[0] == expected


@PROPERTY
@given(
    profile_sets(
        kinds=(RECURRING,),
        recurrencies=(RecurrencyKind.DAILY,),
        validity=False,
        start_range=(-3 * DAY, 0),
    ),
    st.integers(0, DAY - 1),
)
def test_property_daily_recurring_profiles_repeat_every_24_hours(
    entries: list[InstalledProfile], offset: int
) -> None:
    profiles = _loaded(entries)
    for connector in (0, 1):
        first = composite(profiles, connector, at(offset), DAY, **TX_CONTEXT)
        second = composite(profiles, connector, at(offset + DAY), DAY, **TX_CONTEXT)
        assert first == second
        now, change = live(profiles, connector, at(offset), **TX_CONTEXT)
        later, later_change = live(profiles, connector, at(offset + DAY), **TX_CONTEXT)
        assert now == later
        if change is None:
            assert later_change is None
        else:
            assert later_change == change + timedelta(days=1)


@PROPERTY
@given(
    st.integers(-DAY, DAY),
    st.lists(st.integers(1, 20 * H), min_size=1, max_size=6, unique=True),
    st.lists(st.integers(0, 320), min_size=7, max_size=7),
)
def test_property_period_boundaries_are_exact(
    start_s: int, starts: list[int], limits: list[int]
) -> None:
    start = at(start_s)
    offsets = [0, *sorted(starts)]
    periods = [(s, limits[i] / 10) for i, s in enumerate(offsets)]
    profiles = new_set()
    profiles.install(1, make(start=start, periods=periods), transaction_id=None)
    second, micro = timedelta(seconds=1), timedelta(microseconds=1)
    previous = INF
    for offset_s, limit in periods:
        boundary = start + timedelta(seconds=offset_s)
        assert live(profiles, 1, boundary - second)[0] == previous
        assert live(profiles, 1, boundary)[0] == limit
        if limit != previous:
            assert live(profiles, 1, boundary - micro)[1] == boundary
            window = composite(profiles, start=boundary - second, duration_s=2)
            assert window == [(0, previous), (1, limit)]
        previous = limit


@PROPERTY
@given(profile_sets())
def test_property_composite_agrees_with_limit_at(entries: list[InstalledProfile]) -> None:
    profiles = _loaded(entries)
    window = 2 * DAY
    for connector in (0, 1):
        periods = composite_schedule(
            profiles, connector, T0, window, unit=RateUnit.AMPS, **ELECTRICS, **TX_CONTEXT
        )
        assert periods[0].start_period_s == 0
        assert all(a.start_period_s < b.start_period_s for a, b in itertools.pairwise(periods))
        assert all(
            a.limit != b.limit or a.number_phases != b.number_phases
            for a, b in itertools.pairwise(periods)
        )
        for k, period in enumerate(periods):
            end = periods[k + 1].start_period_s if k + 1 < len(periods) else window
            for offset in (period.start_period_s, (period.start_period_s + end) // 2, end - 1):
                t = at(offset)
                own, change = live(profiles, connector, t, **TX_CONTEXT)
                expected = (
                    own if connector == 0 else min(own, live(profiles, 0, t, **TX_CONTEXT)[0])
                )
                assert period.limit == expected
                only_own_profiles = connector == 0 or not any(
                    p.connector_id == 0 and p.profile.purpose is CP_MAX
                    for p in profiles.installed()
                )
                if only_own_profiles:
                    # The next change of the live limit is the next composite boundary
                    # with another limit (or later than the window, or never).
                    later = [p.start_period_s for p in periods[k + 1 :] if p.limit != period.limit]
                    if later:
                        assert change == at(later[0])
                    else:
                        assert change is None or change >= at(window)
