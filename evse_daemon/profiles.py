"""OCPP 1.6 charging profiles: parsing, the installation rules, and the limits they impose.

Sans-I/O: no clock, no disk, no network. Every instant is passed in as a timezone-aware
datetime; internally instants are integer microseconds since the Unix epoch, so that period
boundaries are exact (a limit changes exactly at startSchedule + startPeriod).

Sources: OCPP 1.6 edition 2 (S16) §3.13 Smart Charging, §5.16 SetChargingProfile, §7.8-7.14
ChargingProfile types; errata sheet v4.0 (E16) 3.7, 3.8, 3.25/3.26, 3.34, 3.38/3.39,
3.41-3.45, 3.56, 3.65/3.66, 3.68, 3.78.

How the limits are combined (S16 §3.13.1-3.13.3):

- ChargePointMaxProfile (connector 0 only) limits the whole charge point.
- For a connector > 0 the profiles form one priority chain: the TxProfiles of the running
  transaction, then the connector's own TxDefaultProfiles, then the connector-0
  TxDefaultProfiles; within each group the highest stackLevel first. At every instant the
  first profile of the chain that is valid (validFrom/validTo) *and* has an active period
  (after its start, before the end of its duration) decides. So a TxProfile overrules the
  defaults while it runs, a connector's own TxDefaultProfile replaces the connector-0 one
  for that connector (§3.13.1), and when a higher stack level's duration ends the next
  lower one applies again (E16 3.43).
- Unconstrained time is ``math.inf``: this module does not know a connector's rating, the
  caller substitutes it (the GetCompositeSchedule answer) or takes the minimum with it.
"""

from __future__ import annotations

import enum
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from itertools import pairwise
from typing import Any, Literal, TypeVar

ErrorCode = Literal[
    "PropertyConstraintViolation",
    "TypeConstraintViolation",
    "OccurenceConstraintViolation",
    "FormationViolation",
]


_E = TypeVar("_E", bound=enum.Enum)


class ProfilePurpose(enum.Enum):
    CHARGE_POINT_MAX = "ChargePointMaxProfile"
    TX_DEFAULT = "TxDefaultProfile"
    TX = "TxProfile"


class ProfileKind(enum.Enum):
    ABSOLUTE = "Absolute"
    RECURRING = "Recurring"
    RELATIVE = "Relative"


class RecurrencyKind(enum.Enum):
    DAILY = "Daily"
    WEEKLY = "Weekly"


class RateUnit(enum.Enum):
    AMPS = "A"
    WATTS = "W"


@dataclass(frozen=True, slots=True)
class SchedulePeriod:
    start_period_s: int
    limit: float
    number_phases: int | None = None


@dataclass(frozen=True, slots=True)
class ChargingSchedule:
    rate_unit: RateUnit
    periods: tuple[SchedulePeriod, ...]
    duration_s: int | None = None
    start_schedule: datetime | None = None
    min_charging_rate: float | None = None


@dataclass(frozen=True, slots=True)
class ChargingProfile:
    profile_id: int
    stack_level: int
    purpose: ProfilePurpose
    kind: ProfileKind
    schedule: ChargingSchedule
    recurrency_kind: RecurrencyKind | None = None
    valid_from: datetime | None = None
    valid_to: datetime | None = None
    transaction_id: int | None = None


class ProfileError(ValueError):
    """A chargingProfile that cannot be taken at all; ``code`` is the OCPP-J CALLERROR code."""

    def __init__(self, code: ErrorCode, message: str | None = None) -> None:
        super().__init__(message or code)
        self.code: ErrorCode = code


@dataclass(frozen=True, slots=True)
class InstalledProfile:
    connector_id: int
    profile: ChargingProfile


@dataclass
class ProfileLimits:
    """The SmartCharging configuration keys (S16 §9.4) the installation rules enforce."""

    max_stack_level: int = 8  # ChargeProfileMaxStackLevel
    max_periods: int = 24  # ChargingScheduleMaxPeriods
    max_installed: int = 32  # MaxChargingProfilesInstalled
    allowed_units: frozenset[RateUnit] = frozenset({RateUnit.AMPS, RateUnit.WATTS})


@dataclass(frozen=True, slots=True)
class CompositePeriod:
    """One period of a composite schedule; ``limit`` is ``math.inf`` where nothing limits."""

    start_period_s: int
    limit: float
    number_phases: int | None = None


# --- OCPP JSON ↔ ChargingProfile ------------------------------------------------------------

_PROFILE_KEYS = frozenset(
    {
        "chargingProfileId",
        "transactionId",
        "stackLevel",
        "chargingProfilePurpose",
        "chargingProfileKind",
        "recurrencyKind",
        "validFrom",
        "validTo",
        "chargingSchedule",
    }
)
_SCHEDULE_KEYS = frozenset(
    {"duration", "startSchedule", "chargingRateUnit", "chargingSchedulePeriod", "minChargingRate"}
)
_PERIOD_KEYS = frozenset({"startPeriod", "limit", "numberPhases"})


def _object(value: object, path: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProfileError("TypeConstraintViolation", f"{path}: an object is required")
    return value


def _check_keys(obj: dict[str, Any], allowed: frozenset[str], path: str) -> None:
    # The 1.6 schemas have additionalProperties: false; the ocpp library reports that as a
    # FormationViolation (not conforming to the PDU structure, OCPP-J §4.2.3).
    extra = sorted(str(k) for k in obj if k not in allowed)
    if extra:
        raise ProfileError("FormationViolation", f"{path}: unknown field(s) {', '.join(extra)}")


def _present(obj: dict[str, Any], key: str, path: str, required: bool) -> Any:
    value = obj.get(key)
    if value is None and required:
        raise ProfileError("OccurenceConstraintViolation", f"{path}.{key} is required")
    return value


def _int(obj: dict[str, Any], key: str, path: str, *, required: bool) -> int | None:
    value = _present(obj, key, path, required)
    if value is None:
        return None
    # bool is an int in Python but not in JSON.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ProfileError("TypeConstraintViolation", f"{path}.{key} must be an integer")
    return value


def _number(obj: dict[str, Any], key: str, path: str, *, required: bool) -> float | None:
    value = _present(obj, key, path, required)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ProfileError("TypeConstraintViolation", f"{path}.{key} must be a number")
    number = float(value)
    if not math.isfinite(number):
        raise ProfileError("PropertyConstraintViolation", f"{path}.{key} must be finite")
    return number


def _enum(obj: dict[str, Any], key: str, cls: type[_E], path: str, *, required: bool) -> _E | None:
    value = _present(obj, key, path, required)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ProfileError("TypeConstraintViolation", f"{path}.{key} must be a string")
    try:
        return cls(value)
    except ValueError:
        # E16 3.38: an invalid enumeration value in a ChargingProfile or ChargingSchedule
        # is a PropertyConstraintViolation.
        allowed = ", ".join(str(m.value) for m in cls)
        raise ProfileError(
            "PropertyConstraintViolation", f"{path}.{key}: {value!r} is not one of {allowed}"
        ) from None


def parse_datetime(value: object) -> datetime:
    """An OCPP dateTime (ISO 8601, with or without fractions and offset) as aware UTC.

    S16 §3.15: receivers must handle fractional seconds and time zone offsets. A time
    without an offset is taken as UTC, the time base the spec recommends (§3.14).
    """
    if not isinstance(value, str):
        raise ProfileError("TypeConstraintViolation", "a dateTime must be a string")
    text = value.strip()
    if text[-1:] in ("z", "Z"):
        text = text[:-1] + "+00:00"
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ProfileError("TypeConstraintViolation", f"{value!r} is not a dateTime") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC)


def format_datetime(moment: datetime) -> str:
    """An OCPP dateTime in UTC with 'Z'; fractions only when there are some (exact round trip)."""
    moment = moment.astimezone(UTC)
    text = moment.strftime("%Y-%m-%dT%H:%M:%S")
    if moment.microsecond:
        text += f".{moment.microsecond:06d}".rstrip("0")
    return text + "Z"


def _datetime(obj: dict[str, Any], key: str, path: str) -> datetime | None:
    value = obj.get(key)
    if value is None:
        return None
    try:
        return parse_datetime(value)
    except ProfileError as exc:
        raise ProfileError(exc.code, f"{path}.{key}: {exc}") from None


def _period_from_ocpp(raw: object, path: str) -> SchedulePeriod:
    obj = _object(raw, path)
    _check_keys(obj, _PERIOD_KEYS, path)
    start = _int(obj, "startPeriod", path, required=True)
    limit = _number(obj, "limit", path, required=True)
    assert start is not None and limit is not None
    return SchedulePeriod(start, limit, _int(obj, "numberPhases", path, required=False))


def _schedule_from_ocpp(raw: object, path: str) -> ChargingSchedule:
    obj = _object(raw, path)
    _check_keys(obj, _SCHEDULE_KEYS, path)
    unit = _enum(obj, "chargingRateUnit", RateUnit, path, required=True)
    raw_periods = _present(obj, "chargingSchedulePeriod", path, True)
    if not isinstance(raw_periods, list):
        raise ProfileError("TypeConstraintViolation", f"{path}.chargingSchedulePeriod: a list")
    if not raw_periods:
        # S16 §7.13: chargingSchedulePeriod is 1..*.
        raise ProfileError(
            "OccurenceConstraintViolation", f"{path}.chargingSchedulePeriod needs a period"
        )
    periods = tuple(
        _period_from_ocpp(p, f"{path}.chargingSchedulePeriod[{i}]")
        for i, p in enumerate(raw_periods)
    )
    assert unit is not None
    return ChargingSchedule(
        rate_unit=unit,
        periods=periods,
        duration_s=_int(obj, "duration", path, required=False),
        start_schedule=_datetime(obj, "startSchedule", path),
        min_charging_rate=_number(obj, "minChargingRate", path, required=False),
    )


def profile_from_ocpp(payload: dict[str, Any]) -> ChargingProfile:
    """A csChargingProfiles / chargingProfile object (OCPP 1.6 JSON, camelCase) → profile.

    Raises ProfileError for what cannot be a ChargingProfile at all (a CALLERROR); the
    rules about values (stack level, periods, units...) are install's, which Rejects.
    """
    path = "chargingProfile"
    if not isinstance(payload, dict):
        raise ProfileError("FormationViolation", f"{path} must be an object")
    _check_keys(payload, _PROFILE_KEYS, path)
    profile_id = _int(payload, "chargingProfileId", path, required=True)
    stack_level = _int(payload, "stackLevel", path, required=True)
    purpose = _enum(payload, "chargingProfilePurpose", ProfilePurpose, path, required=True)
    kind = _enum(payload, "chargingProfileKind", ProfileKind, path, required=True)
    recurrency = _enum(payload, "recurrencyKind", RecurrencyKind, path, required=False)
    schedule = _schedule_from_ocpp(
        _present(payload, "chargingSchedule", path, True), f"{path}.chargingSchedule"
    )
    assert profile_id is not None and stack_level is not None
    assert purpose is not None and kind is not None
    return ChargingProfile(
        profile_id=profile_id,
        stack_level=stack_level,
        purpose=purpose,
        kind=kind,
        schedule=schedule,
        recurrency_kind=recurrency,
        valid_from=_datetime(payload, "validFrom", path),
        valid_to=_datetime(payload, "validTo", path),
        transaction_id=_int(payload, "transactionId", path, required=False),
    )


def profile_to_ocpp(profile: ChargingProfile) -> dict[str, Any]:
    """The inverse of profile_from_ocpp: ``profile_from_ocpp(profile_to_ocpp(p)) == p``."""
    schedule = profile.schedule
    periods: list[dict[str, Any]] = []
    for period in schedule.periods:
        entry: dict[str, Any] = {"startPeriod": period.start_period_s, "limit": period.limit}
        if period.number_phases is not None:
            entry["numberPhases"] = period.number_phases
        periods.append(entry)
    raw_schedule: dict[str, Any] = {}
    if schedule.duration_s is not None:
        raw_schedule["duration"] = schedule.duration_s
    if schedule.start_schedule is not None:
        raw_schedule["startSchedule"] = format_datetime(schedule.start_schedule)
    raw_schedule["chargingRateUnit"] = schedule.rate_unit.value
    raw_schedule["chargingSchedulePeriod"] = periods
    if schedule.min_charging_rate is not None:
        raw_schedule["minChargingRate"] = schedule.min_charging_rate
    raw: dict[str, Any] = {"chargingProfileId": profile.profile_id}
    if profile.transaction_id is not None:
        raw["transactionId"] = profile.transaction_id
    raw["stackLevel"] = profile.stack_level
    raw["chargingProfilePurpose"] = profile.purpose.value
    raw["chargingProfileKind"] = profile.kind.value
    if profile.recurrency_kind is not None:
        raw["recurrencyKind"] = profile.recurrency_kind.value
    if profile.valid_from is not None:
        raw["validFrom"] = format_datetime(profile.valid_from)
    if profile.valid_to is not None:
        raw["validTo"] = format_datetime(profile.valid_to)
    raw["chargingSchedule"] = raw_schedule
    return raw


# --- time as integer microseconds -------------------------------------------------------------

_US_PER_S = 1_000_000
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
# E16 3.78: Daily restarts every 24 h, Weekly every 7 days, at the time (and weekday) of
# startSchedule. Plain UTC arithmetic: no DST (S16 §3.13.7 leaves DST days to the CSMS).
_RECURRENCE_US = {
    RecurrencyKind.DAILY: 86_400 * _US_PER_S,
    RecurrencyKind.WEEKLY: 7 * 86_400 * _US_PER_S,
}
# limit_at looks this many candidate instants ahead for a real change of the limit; past
# that (a schedule whose periods keep repeating the same limit) it returns the last one
# looked at, which is still a correct "re-check then".
_MAX_LOOKAHEAD_STEPS = 1000


def _to_us(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"naive datetime {moment!r}: instants must be timezone-aware")
    return (moment - _EPOCH) // _ONE_US


def _from_us(instant_us: int) -> datetime:
    return _EPOCH + timedelta(microseconds=instant_us)


def _floor_tenth(value: float) -> float:
    """Down to one decimal (S16 §7.14: limits have at most one digit fraction), never up.

    The epsilon absorbs float noise (11000 / 690 * 690 is 10999.999999999998), far below
    anything a meter or a pilot PWM could resolve.
    """
    if math.isinf(value):
        return value
    return math.floor(value * 10 + 1e-6) / 10


# --- installed profiles, compiled for evaluation ---------------------------------------------


@dataclass(slots=True)
class _Compiled:
    """An installed profile with its instants precomputed (microseconds since the epoch)."""

    connector_id: int
    profile: ChargingProfile
    relative: bool
    start_us: int | None  # Absolute and Recurring: startSchedule
    recurrence_us: int | None
    duration_us: int | None  # Recurring: clipped to the recurrence period
    valid_from_us: int | None
    valid_to_us: int | None
    starts_us: tuple[int, ...]
    periods: tuple[SchedulePeriod, ...]
    amps: bool


def _compile(connector_id: int, profile: ChargingProfile) -> _Compiled:
    schedule = profile.schedule
    relative = profile.kind is ProfileKind.RELATIVE
    recurrence_us: int | None = None
    duration_us = schedule.duration_s * _US_PER_S if schedule.duration_s is not None else None
    if profile.kind is ProfileKind.RECURRING:
        assert profile.recurrency_kind is not None
        recurrence_us = _RECURRENCE_US[profile.recurrency_kind]
        # E16 3.43/3.44: a duration (or periods) longer than the recurrence period is cut
        # there, the remainder is never executed; no duration = the whole period.
        duration_us = recurrence_us if duration_us is None else min(duration_us, recurrence_us)
    start = schedule.start_schedule
    return _Compiled(
        connector_id=connector_id,
        profile=profile,
        relative=relative,
        # S16 §7.9: a Relative schedule starts at a point the charge point determines (the
        # transaction start); a startSchedule it may carry is not its anchor.
        start_us=_to_us(start) if start is not None and not relative else None,
        recurrence_us=recurrence_us,
        duration_us=duration_us,
        valid_from_us=_to_us(profile.valid_from) if profile.valid_from is not None else None,
        valid_to_us=_to_us(profile.valid_to) if profile.valid_to is not None else None,
        starts_us=tuple(p.start_period_s * _US_PER_S for p in schedule.periods),
        periods=schedule.periods,
        amps=schedule.rate_unit is RateUnit.AMPS,
    )


def _period_index(c: _Compiled, t: int, anchor: int | None) -> int:
    """The index of ``c``'s period in force at ``t``, or -1 if ``c`` is not active then.

    ``anchor`` is where Relative schedules start; None means "a transaction starting at
    any instant": the first period, always (used for the live limit with no transaction).
    """
    # S16 §7.8: validFrom inclusive, validTo exclusive (the profile "stops to be valid").
    if c.valid_from_us is not None and t < c.valid_from_us:
        return -1
    if c.valid_to_us is not None and t >= c.valid_to_us:
        return -1
    if c.recurrence_us is not None:
        assert c.start_us is not None
        if t < c.start_us:
            return -1  # a recurring schedule starts at its startSchedule
        offset = (t - c.start_us) % c.recurrence_us
    elif c.relative:
        offset = 0 if anchor is None else t - anchor
    else:
        assert c.start_us is not None
        offset = t - c.start_us
    if offset < 0:
        return -1
    # S16 §5.16.4 note / E16 3.43: after the duration the profile has no period, and the
    # next lower stack level (or nothing) applies.
    if c.duration_us is not None and offset >= c.duration_us:
        return -1
    return bisect_right(c.starts_us, offset) - 1


def _next_event(c: _Compiled, t: int, anchor: int | None) -> int | None:
    """The first instant after ``t`` at which ``c``'s state (active, which period) may change."""
    valid_to = c.valid_to_us
    if valid_to is not None and t >= valid_to:
        return None
    if c.valid_from_us is not None and t < c.valid_from_us:
        return c.valid_from_us
    starts = c.starts_us
    duration = c.duration_us
    following: int | None
    if c.recurrence_us is not None:
        assert c.start_us is not None and duration is not None
        if t < c.start_us:
            following = c.start_us
        else:
            base = t - (t - c.start_us) % c.recurrence_us
            offset = t - base
            if offset >= duration:
                following = base + c.recurrence_us
            else:
                i = bisect_right(starts, offset)
                following = base + (
                    starts[i] if i < len(starts) and starts[i] < duration else duration
                )
    else:
        origin = c.start_us
        if c.relative:
            origin = anchor
        if origin is None:
            following = None  # a floating Relative schedule stays in its first period
        else:
            offset = t - origin
            if offset < 0:
                following = origin
            elif duration is not None and offset >= duration:
                following = None
            else:
                i = bisect_right(starts, offset)
                if i < len(starts) and (duration is None or starts[i] < duration):
                    following = origin + starts[i]
                elif duration is not None:
                    following = origin + duration
                else:
                    following = None
    if valid_to is not None and (following is None or following > valid_to):
        following = valid_to
    return following


def _period_amps(
    c: _Compiled, index: int, voltage_v: float, connector_phases: int
) -> tuple[float, int | None]:
    """The period's limit in amps per phase, and its numberPhases.

    S16 §7.12 / E16 3.68: A is per phase; W is the total power, per-phase current =
    W / (nominal voltage × numberPhases), numberPhases 3 when absent. E16 3.34: when the
    profile names more phases than can be used, its limit is used as given for the phases
    that can be: the power is not scaled down, it is spread over the connector's phases.
    """
    period = c.periods[index]
    if c.amps:
        return period.limit, period.number_phases
    phases = 3 if period.number_phases is None else period.number_phases
    return period.limit / (voltage_v * min(phases, connector_phases)), period.number_phases


def _step(
    chain: Sequence[_Compiled], t: int, anchor: int | None, voltage_v: float, phases: int
) -> tuple[float, int | None, int | None]:
    """The chain's limit at ``t`` (amps per phase, numberPhases) and the next instant at
    which it may change: only the winner and the profiles above it can change it."""
    following: int | None = None
    for c in chain:
        event = _next_event(c, t, anchor)
        if event is not None and (following is None or event < following):
            following = event
        index = _period_index(c, t, anchor)
        if index >= 0:
            amps, number_phases = _period_amps(c, index, voltage_v, phases)
            return amps, number_phases, following
    return math.inf, None, following


def _same_transaction(a: int | None, b: int | None) -> bool:
    # A TxProfile without a transactionId (one from a RemoteStartTransaction before the
    # CSMS assigned the id) belongs to the transaction running on its connector.
    return a is None or b is None or a == b


class ProfileSet:
    """The installed charging profiles of the charge point, with the OCPP 1.6 installation rules."""

    def __init__(self, limits: ProfileLimits, connector_ids: Sequence[int]) -> None:
        self.limits = limits
        self._connector_ids = frozenset({0, *connector_ids})
        self._entries: dict[int, _Compiled] = {}  # by chargingProfileId
        self._revision = 0
        self._groups: dict[tuple[ProfilePurpose, int], list[_Compiled]] = {}
        self._groups_revision = -1

    @property
    def revision(self) -> int:
        """Moves on every change: callers re-evaluate their limits when it does."""
        return self._revision

    def installed(self) -> list[InstalledProfile]:
        order = list(ProfilePurpose)
        entries = sorted(
            self._entries.values(),
            key=lambda c: (c.connector_id, order.index(c.profile.purpose), c.profile.stack_level),
        )
        return [InstalledProfile(c.connector_id, c.profile) for c in entries]

    def check(self, connector_id: int, profile: ChargingProfile) -> str | None:
        """The rules that depend on the profile and its connector alone: None if it could
        be installed there, else why not. Raises ProfileError for an unknown connector."""
        if connector_id not in self._connector_ids:
            # E16 3.39: an invalid connectorId is a PropertyConstraintViolation.
            raise ProfileError("PropertyConstraintViolation", f"unknown connector {connector_id}")
        return _problem(connector_id, profile, self.limits)

    def check_remote_start(self, profile: ChargingProfile) -> str | None:
        """Why the chargingProfile of a RemoteStartTransaction is refused, or None.

        S16 §5.16.2 / E16 3.41: it must be a TxProfile without a transactionId (TC_060).
        """
        if profile.purpose is not ProfilePurpose.TX:
            return "a RemoteStartTransaction chargingProfile must be a TxProfile"
        if profile.transaction_id is not None:
            return "a RemoteStartTransaction chargingProfile must not carry a transactionId"
        connector_id = min((c for c in self._connector_ids if c > 0), default=1)
        return _problem(connector_id, profile, self.limits)

    def install(
        self, connector_id: int, profile: ChargingProfile, *, transaction_id: int | None
    ) -> str | None:
        """SetChargingProfile: None if Accepted, else a short reason for Rejected.

        ``transaction_id`` is the CSMS transactionId of the transaction running on the
        connector (None: none runs). Raises ProfileError for an unknown connector.
        """
        problem = self.check(connector_id, profile)
        if problem is not None:
            return problem
        if profile.purpose is ProfilePurpose.TX:
            # S16 §3.13.1 / 5.16.4 note: no TxProfile without a transaction (TC_058_1).
            if transaction_id is None:
                return f"TxProfile: no transaction runs on connector {connector_id}"
            # S16 §5.16 note: the transactionId ties the profile to one transaction (TC_058_2).
            if profile.transaction_id is not None and profile.transaction_id != transaction_id:
                return (
                    f"TxProfile: transactionId {profile.transaction_id} is not the transaction "
                    f"on connector {connector_id}"
                )
        return self._put(connector_id, profile)

    def install_remote_start(
        self, connector_id: int, profile: ChargingProfile, transaction_id: int | None
    ) -> str | None:
        """The chargingProfile of a RemoteStartTransaction, for the transaction it started.

        S16 §5.16.2 / E16 3.41-3.42: a TxProfile applied to the new transaction; stored
        with ``transaction_id`` (None while the CSMS has not yet assigned one). A later
        SetChargingProfile for the transaction with the same stackLevel replaces it.
        """
        if connector_id not in self._connector_ids or connector_id == 0:
            return f"no transaction can run on connector {connector_id}"
        problem = self.check_remote_start(profile) or _problem(connector_id, profile, self.limits)
        if problem is not None:
            return problem
        return self._put(connector_id, replace(profile, transaction_id=transaction_id))

    def clear(
        self,
        *,
        profile_id: int | None = None,
        connector_id: int | None = None,
        purpose: ProfilePurpose | None = None,
        stack_level: int | None = None,
    ) -> bool:
        """ClearChargingProfile: True if anything was removed (Accepted), else False (Unknown).

        E16 3.25/3.26: no field clears every profile; with an id only that profile is
        cleared and the other fields are ignored; otherwise the profiles matching every
        given field (logical AND).
        """
        if profile_id is not None:
            doomed = [profile_id] if profile_id in self._entries else []
        else:
            doomed = [
                pid
                for pid, c in self._entries.items()
                if (connector_id is None or c.connector_id == connector_id)
                and (purpose is None or c.profile.purpose is purpose)
                and (stack_level is None or c.profile.stack_level == stack_level)
            ]
        return self._remove(doomed)

    def end_transaction(self, connector_id: int) -> None:
        """The transaction on the connector ended: its TxProfiles cease (S16 §7.10)."""
        self._remove(
            [
                pid
                for pid, c in self._entries.items()
                if c.connector_id == connector_id and c.profile.purpose is ProfilePurpose.TX
            ]
        )

    def load(self, profiles: Iterable[InstalledProfile]) -> list[InstalledProfile]:
        """Restore the installed profiles after a restart (E16 3.37: they persist).

        Replaces the current set. Returns the profiles it dropped: on an unknown
        connector, breaking a rule under the current limits, or over the count limit.
        """
        self._entries.clear()
        dropped: list[InstalledProfile] = []
        for entry in profiles:
            connector_id, profile = entry.connector_id, entry.profile
            if (
                connector_id not in self._connector_ids
                or _problem(connector_id, profile, self.limits) is not None
                or self._put(connector_id, profile, bump=False) is not None
            ):
                dropped.append(entry)
        self._revision += 1
        return dropped

    def _put(self, connector_id: int, profile: ChargingProfile, *, bump: bool = True) -> str | None:
        # S16 §3.13.2 / §5.16.3-5.16.4: the same chargingProfileId, or the same stackLevel and
        # purpose on the connector, replaces the installed profile. For TxProfiles the
        # stack belongs to one transaction (E16 3.42).
        doomed = [
            pid
            for pid, c in self._entries.items()
            if pid == profile.profile_id
            or (
                c.connector_id == connector_id
                and c.profile.purpose is profile.purpose
                and c.profile.stack_level == profile.stack_level
                and (
                    profile.purpose is not ProfilePurpose.TX
                    or _same_transaction(c.profile.transaction_id, profile.transaction_id)
                )
            )
        ]
        if len(self._entries) - len(doomed) + 1 > self.limits.max_installed:
            return f"MaxChargingProfilesInstalled ({self.limits.max_installed}) reached"
        for pid in doomed:
            del self._entries[pid]
        self._entries[profile.profile_id] = _compile(connector_id, profile)
        if bump:
            self._revision += 1
        return None

    def _remove(self, profile_ids: Iterable[int]) -> bool:
        removed = False
        for pid in profile_ids:
            removed = self._entries.pop(pid, None) is not None or removed
        if removed:
            self._revision += 1
        return removed

    def _group(self, purpose: ProfilePurpose, connector_id: int) -> list[_Compiled]:
        """The profiles of one purpose on one connector, highest stackLevel first."""
        if self._groups_revision != self._revision:
            groups: dict[tuple[ProfilePurpose, int], list[_Compiled]] = {}
            for c in self._entries.values():
                groups.setdefault((c.profile.purpose, c.connector_id), []).append(c)
            for members in groups.values():
                members.sort(key=lambda c: -c.profile.stack_level)
            self._groups = groups
            self._groups_revision = self._revision
        return self._groups.get((purpose, connector_id), [])

    def _chain(
        self, connector_id: int, *, transaction: bool, transaction_id: int | None
    ) -> list[_Compiled]:
        """The priority chain deciding a connector's limit (see the module docstring)."""
        if connector_id not in self._connector_ids:
            raise ProfileError("PropertyConstraintViolation", f"unknown connector {connector_id}")
        if connector_id == 0:
            return self._group(ProfilePurpose.CHARGE_POINT_MAX, 0)
        chain: list[_Compiled] = []
        if transaction:
            chain.extend(
                c
                for c in self._group(ProfilePurpose.TX, connector_id)
                if _same_transaction(c.profile.transaction_id, transaction_id)
            )
        chain.extend(self._group(ProfilePurpose.TX_DEFAULT, connector_id))
        chain.extend(self._group(ProfilePurpose.TX_DEFAULT, 0))
        return chain


def _problem(connector_id: int, profile: ChargingProfile, limits: ProfileLimits) -> str | None:
    """Why ``profile`` cannot be installed on ``connector_id`` (rules independent of any
    transaction and of the other profiles), or None."""
    purpose, schedule = profile.purpose, profile.schedule
    if purpose is ProfilePurpose.CHARGE_POINT_MAX:
        if connector_id != 0:
            return "ChargePointMaxProfile is only allowed on connector 0"  # S16 §3.13.1
        if profile.kind is ProfileKind.RELATIVE:
            # Relative means "from the start of the transaction" (§7.9); the charge point
            # as a whole has none to start from.
            return "a ChargePointMaxProfile cannot be Relative"
    if purpose is ProfilePurpose.TX and connector_id == 0:
        return "TxProfile is only allowed on a connector > 0"  # S16 §3.13.1
    if purpose is not ProfilePurpose.TX and profile.transaction_id is not None:
        return "transactionId is only valid in a TxProfile"  # S16 §7.8
    if not 0 <= profile.stack_level <= limits.max_stack_level:
        return f"stackLevel {profile.stack_level} is outside 0..{limits.max_stack_level}"
    if schedule.rate_unit not in limits.allowed_units:
        # E16 3.86: ChargingScheduleAllowedChargingRateUnit lists the units accepted.
        return f"chargingRateUnit {schedule.rate_unit.value} is not supported"
    periods = schedule.periods
    if not 1 <= len(periods) <= limits.max_periods:
        return f"{len(periods)} periods, ChargingScheduleMaxPeriods is {limits.max_periods}"
    if periods[0].start_period_s != 0:
        return "the first startPeriod must be 0"  # E16 3.45 / 3.69
    for before, after in pairwise(periods):
        if after.start_period_s <= before.start_period_s:
            return "startPeriods must increase"
    for period in periods:
        if not (math.isfinite(period.limit) and period.limit >= 0):
            return f"limit {period.limit} is not >= 0"
        if period.number_phases is not None and not 1 <= period.number_phases <= 3:
            return f"numberPhases {period.number_phases} is outside 1..3"
    if schedule.duration_s is not None and schedule.duration_s <= 0:
        return f"duration {schedule.duration_s} is not > 0"
    if schedule.min_charging_rate is not None and not schedule.min_charging_rate >= 0:
        return f"minChargingRate {schedule.min_charging_rate} is not >= 0"
    if profile.kind is ProfileKind.RECURRING:
        # Errata 3.78: the recurrence repeats "at the same time (and weekday) as in the
        # startSchedule": without both there is nothing to repeat from.
        if profile.recurrency_kind is None:
            return "a Recurring profile needs a recurrencyKind"
        if schedule.start_schedule is None:
            return "a Recurring profile needs a startSchedule"
    # E16 3.56: recurrencyKind belongs to Recurring profiles. On another kind it is the
    # CSMS's slip, not a reason to refuse the profile: it is kept (round trip) and ignored.
    # S16 §7.9: Absolute periods are "relative to a fixed point in time defined in the
    # schedule"; without startSchedule there is no such point. (§7.13's "if absent, relative
    # to the start of charging" is what Relative is for.) EVerest libocpp rejects it too.
    if profile.kind is ProfileKind.ABSOLUTE and schedule.start_schedule is None:
        return "an Absolute profile needs a startSchedule"
    if (
        profile.valid_from is not None
        and profile.valid_to is not None
        and profile.valid_to <= profile.valid_from
    ):
        return "validTo is not after validFrom"
    return None


# --- evaluation ---------------------------------------------------------------------------


def _check_electrics(nominal_voltage_v: float, connector_phases: int) -> None:
    if not nominal_voltage_v > 0:
        raise ValueError(f"nominal_voltage_v {nominal_voltage_v} must be > 0")
    if connector_phases < 1:
        raise ValueError(f"connector_phases {connector_phases} must be >= 1")


def limit_at(
    profiles: ProfileSet,
    connector_id: int,
    at: datetime,
    *,
    nominal_voltage_v: float,
    connector_phases: int,
    transaction_start: datetime | None,
    transaction_id: int | None,
) -> tuple[float, datetime | None]:
    """The live limit in amps per phase, rounded down to 0.1 A, and when it next changes.

    Connector 0: the ChargePointMaxProfile limit (for the whole charge point; the caller
    shares it between connectors). Connector > 0: its TxProfile/TxDefaultProfile chain
    alone. ``math.inf`` where no profile limits. The instant is the first one after ``at``
    at which the (rounded) limit differs; None if it never will.

    A transaction runs when ``transaction_start`` or ``transaction_id`` is given; Relative
    schedules start at ``transaction_start``. Without it, a Relative schedule is in its
    first period (what a transaction starting now would get), whatever the time.
    """
    _check_electrics(nominal_voltage_v, connector_phases)
    running = transaction_start is not None or transaction_id is not None
    chain = profiles._chain(connector_id, transaction=running, transaction_id=transaction_id)
    anchor = _to_us(transaction_start) if transaction_start is not None else None
    amps, _, following = _step(chain, _to_us(at), anchor, nominal_voltage_v, connector_phases)
    limit_a = _floor_tenth(amps)
    for _ in range(_MAX_LOOKAHEAD_STEPS):
        if following is None:
            return limit_a, None
        later_a, _, later = _step(chain, following, anchor, nominal_voltage_v, connector_phases)
        if _floor_tenth(later_a) != limit_a:
            return limit_a, _from_us(following)
        following = later
    return limit_a, _from_us(following) if following is not None else None


def _segments(
    chain: Sequence[_Compiled],
    start_us: int,
    end_us: int,
    anchor: int | None,
    voltage_v: float,
    phases: int,
) -> list[tuple[int, float, int | None]]:
    """The chain's limit over [start, end): (instant, amps, numberPhases) at each change."""
    out: list[tuple[int, float, int | None]] = []
    t = start_us
    while True:
        amps, number_phases, following = _step(chain, t, anchor, voltage_v, phases)
        if not out or out[-1][1] != amps or out[-1][2] != number_phases:
            out.append((t, amps, number_phases))
        if following is None or following >= end_us:
            return out
        t = following


def _minimum(
    a: list[tuple[int, float, int | None]], b: list[tuple[int, float, int | None]]
) -> list[tuple[int, float, int | None]]:
    """The lower of two piecewise limits (both starting at the same instant) at all times.

    S16 §3.13.3: the composite is the minimum of the purposes' limits in every interval.
    """
    times = sorted({s[0] for s in a} | {s[0] for s in b})
    out: list[tuple[int, float, int | None]] = []
    i = j = 0
    for t in times:
        while i + 1 < len(a) and a[i + 1][0] <= t:
            i += 1
        while j + 1 < len(b) and b[j + 1][0] <= t:
            j += 1
        low = a[i] if a[i][1] < b[j][1] else b[j]
        if not out or out[-1][1:] != low[1:]:
            out.append((t, low[1], low[2]))
    return out


def composite_schedule(
    profiles: ProfileSet,
    connector_id: int,
    start: datetime,
    duration_s: int,
    *,
    unit: RateUnit,
    nominal_voltage_v: float,
    connector_phases: int,
    transaction_start: datetime | None,
    transaction_id: int | None,
) -> list[CompositePeriod]:
    """The GetCompositeSchedule periods for [start, start + duration_s), in ``unit``.

    S16 §5.7 / E16 3.28-3.30. Connector 0: the ChargePointMaxProfile alone (what the charge
    point may take from the grid). Connector > 0: at every instant the lower of the
    ChargePointMaxProfile limit and the connector's Tx/TxDefault chain. startPeriod counts
    seconds from ``start``; adjacent periods with the same limit and numberPhases are
    merged; limits are rounded down to 0.1 of ``unit``; ``math.inf`` marks unconstrained
    time (the caller substitutes the connector's rating). With no transaction, Relative
    schedules start at ``start``: the schedule a transaction starting now would get.
    A boundary that falls within a second is put where it never offers more: a decrease
    at the second it happens in, an increase at the next whole second.
    """
    _check_electrics(nominal_voltage_v, connector_phases)
    if duration_s <= 0:
        return []
    start_us = _to_us(start)
    end_us = start_us + duration_s * _US_PER_S
    running = transaction_start is not None or transaction_id is not None
    chain = profiles._chain(connector_id, transaction=running, transaction_id=transaction_id)
    volts, phases = nominal_voltage_v, connector_phases
    if connector_id == 0:
        segments = _segments(chain, start_us, end_us, None, volts, phases)
    else:
        anchor = _to_us(transaction_start) if transaction_start is not None else start_us
        cp_max = profiles._chain(0, transaction=False, transaction_id=None)
        segments = _minimum(
            _segments(cp_max, start_us, end_us, None, volts, phases),
            _segments(chain, start_us, end_us, anchor, volts, phases),
        )
    # Each exact piece, in ``unit``, on the whole seconds it touches: [first, end).
    pieces: list[tuple[int, int, float, int | None]] = []
    for k, (instant_us, amps, number_phases) in enumerate(segments):
        if unit is RateUnit.AMPS:
            value = amps
        else:
            used = 3 if number_phases is None else number_phases
            value = amps * volts * min(used, phases)
        end = duration_s
        if k + 1 < len(segments):
            end = -(-(segments[k + 1][0] - start_us) // _US_PER_S)
        first = (instant_us - start_us) // _US_PER_S
        pieces.append((first, end, _floor_tenth(value), number_phases))
    return _on_whole_seconds(pieces, duration_s)


def _on_whole_seconds(
    pieces: list[tuple[int, int, float, int | None]], duration_s: int
) -> list[CompositePeriod]:
    """Whole-second periods from pieces that may begin or end within a second.

    A second shared by pieces (a boundary that is not on a whole second, e.g. a Relative
    schedule anchored at a transaction start with milliseconds) gets the lowest of their
    limits: the reported schedule never offers more than the profiles allow.
    """
    seconds = sorted({p[0] for p in pieces} | {p[1] for p in pieces if p[1] < duration_s})
    periods: list[CompositePeriod] = []
    low = 0
    for second in seconds:
        while pieces[low][1] <= second:
            low += 1
        limit, number_phases = pieces[low][2], pieces[low][3]
        k = low + 1
        while k < len(pieces) and pieces[k][0] <= second:
            if pieces[k][2] < limit:
                limit, number_phases = pieces[k][2], pieces[k][3]
            k += 1
        if periods and (periods[-1].limit, periods[-1].number_phases) == (limit, number_phases):
            continue
        periods.append(CompositePeriod(second, limit, number_phases))
    return periods
