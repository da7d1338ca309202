"""One offered current per connector, from every limit that applies to it (sans-I/O).

Each connector has limits of its own (its rating from the config, the cable's rating from the
proximity pilot, the OCPP Tx/TxDefault composite limit, a thermal derating) and shares two
budgets with the other connectors: the ChargePointMaxProfile limit (OCPP: the whole charge
point) and the site limit from the config (the grid connection). All are amperes per phase.

Sharing is fair: a budget is divided equally between the connectors that are charging, and
what a connector cannot use (its own limit is lower) goes to the others (water-filling). A
share below the 6 A minimum of IEC 61851 would pause every car, so when the budget cannot
give each charging connector 6 A, the connectors whose transactions started last are left
out (paused, SuspendedEVSE) until the others fit, rather than all of them stopping.

A budget counts every connector on every phase: a single-phase connector is not known to sit
on any particular line, so it is assumed to load the busiest one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from .iec61851 import MIN_CURRENT_A

# Names of the limits, as `evsectl status` shows them.
RATING = "rating"
CABLE = "cable"
OCPP = "ocpp"
DERATING = "derating"
CHARGE_POINT_MAX = "charge_point_max"
SITE = "site"


# Thermal derating begins this far below a connector's max_temperature_c (where the
# overtemperature fault opens the contactor) and brings the current down linearly to 6 A at
# the limit: a hot relay or socket is relieved before it trips the session.
DERATE_SPAN_C = 10.0


def thermal_derating_a(
    temperature_c: float, max_temperature_c: float, rating_a: float
) -> float | None:
    """The current a connector may carry at ``temperature_c`` (None: no derating)."""
    start_c = max_temperature_c - DERATE_SPAN_C
    if temperature_c <= start_c:
        return None
    fraction = min(1.0, (temperature_c - start_c) / DERATE_SPAN_C)
    derated_a = rating_a - (rating_a - MIN_CURRENT_A) * fraction
    return math.floor(max(MIN_CURRENT_A, derated_a) * 10) / 10  # never round up


@dataclass(frozen=True, slots=True)
class ConnectorLimits:
    """What limits one connector by itself (None: that limit does not apply)."""

    rating_a: float
    cable_a: float | None = None
    ocpp_a: float | None = None
    derating_a: float | None = None
    # Competes for the shared budgets: a transaction runs with an EV connected.
    charging: bool = False
    # Order of the transaction start (lower = earlier); decides who pauses first.
    started_order: int = 0

    def own_limits(self) -> dict[str, float]:
        limits = {RATING: self.rating_a}
        for name, value in (
            (CABLE, self.cable_a),
            (OCPP, self.ocpp_a),
            (DERATING, self.derating_a),
        ):
            if value is not None and not math.isinf(value):
                limits[name] = value
        return limits


@dataclass(frozen=True, slots=True)
class LimitDecision:
    """The current a connector may be offered, every limit that applies, and the binding one."""

    limit_a: float
    binding: str
    limits: Mapping[str, float] = field(default_factory=dict)


def _water_fill(caps: Mapping[int, float], budget_a: float) -> dict[int, float]:
    """Divide ``budget_a`` equally, giving no connector more than its cap."""
    shares: dict[int, float] = {}
    remaining = budget_a
    pending = sorted(caps, key=lambda c: caps[c])
    while pending:
        equal = remaining / len(pending)
        connector_id = pending[0]
        if caps[connector_id] <= equal:
            shares[connector_id] = caps[connector_id]
            remaining -= caps[connector_id]
            pending.pop(0)
        else:
            for other in pending:
                shares[other] = equal
            break
    return shares


def _fair_shares(
    caps: Mapping[int, float], order: Mapping[int, int], budget_a: float
) -> dict[int, float]:
    """Water-filling with the IEC 61851 minimum: connectors are left out, the latest started
    first, until every one still in gets at least 6 A (or none is left)."""
    included = sorted(caps, key=lambda c: order[c])
    while included:
        shares = _water_fill({c: caps[c] for c in included}, budget_a)
        if all(shares[c] >= MIN_CURRENT_A or shares[c] >= caps[c] for c in included):
            return {c: shares.get(c, 0.0) for c in caps}
        included.pop()
    return dict.fromkeys(caps, 0.0)


def offered_currents(
    connectors: Mapping[int, ConnectorLimits],
    *,
    charge_point_max_a: float | None = None,
    site_max_a: float | None = None,
) -> dict[int, LimitDecision]:
    """The limit of every connector: the minimum of its own limits and its share of each
    budget. A connector that is not charging gets its own limits and the budgets whole (what
    it would be offered if it were the only one), so that it can start at once."""
    budgets = {
        name: value
        for name, value in ((CHARGE_POINT_MAX, charge_point_max_a), (SITE, site_max_a))
        if value is not None and not math.isinf(value)
    }
    own = {cid: c.own_limits() for cid, c in connectors.items()}
    caps = {cid: min(limits.values()) for cid, limits in own.items()}
    # A connector whose own limit is under 6 A is paused anyway: it draws nothing to share.
    charging = {
        cid: c for cid, c in connectors.items() if c.charging and caps[cid] >= MIN_CURRENT_A
    }
    order = {cid: c.started_order for cid, c in charging.items()}
    decisions: dict[int, LimitDecision] = {}
    shares_by_budget = {
        name: _fair_shares({cid: caps[cid] for cid in charging}, order, budget_a)
        for name, budget_a in budgets.items()
    }
    for cid in connectors:
        limits = dict(own[cid])
        for name, budget_a in budgets.items():
            shares = shares_by_budget[name]
            limits[name] = shares[cid] if cid in shares else budget_a
        binding = min(limits, key=lambda name: limits[name])
        decisions[cid] = LimitDecision(max(0.0, limits[binding]), binding, limits)
    return decisions
