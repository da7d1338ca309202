"""IEC 61851-1 control-pilot rules for the EVSE side (sans-I/O).

The duty cycle tells the EV how much current it may draw (IEC 61851-1 Annex A, table A.8):
6 A ≤ I ≤ 51 A → D = I / 0.6 %; 51 A < I ≤ 80 A → D = I / 2.5 + 64 %. Below 6 A nothing may be
offered: the pilot goes to x1 (steady +12 V) instead.
"""

from __future__ import annotations

import math

from drivers.protocols import CpState

MIN_CURRENT_A = 6.0
MAX_CURRENT_A = 80.0

# Seconds the EVSE waits, after switching the PWM off (x2 → x1), for the EV to leave state C
# before it opens the contactor under load (IEC 61851-1:2017 table A.6, sequence 10.2).
X1_OPEN_UNDER_LOAD_S = 6.0

# A connector that is commanded closed but whose auxiliary contact stays open this long has
# failed to close; one that stays closed this long after an open command is welded.
CONTACTOR_FEEDBACK_TIMEOUT_S = 0.1

# A CP reading of -12 V while the EVSE does not drive state F is a fault once it lasts this
# long (shorter: a sample taken before the last pilot change reached the line).
UNEXPECTED_F_FAULT_S = 0.2

# After a fault the EVSE drives state F for at least this long before going back to x1
# (IEC 61851-1:2017 table A.5, as cited by EVerest's ``state_F_after_fault_ms``).
STATE_F_AFTER_FAULT_S = 0.3

# States in which the EV asks for energy.
ENERGY_REQUEST_STATES = frozenset({CpState.C, CpState.D})
# States in which an EV is connected.
EV_PRESENT_STATES = frozenset({CpState.B, CpState.C, CpState.D})


def duty_percent_for_current(current_a: float, resolution_percent: float = 0.0) -> float:
    """The PWM duty cycle that offers ``current_a``, rounded down to what the PWM can resolve.

    Rounding down never offers more than the limit: a duty one step lower offers at most
    0.6 × resolution amperes less. Currents above 80 A are offered as 80 A.
    """
    if not current_a >= MIN_CURRENT_A:  # also rejects NaN
        raise ValueError(f"{current_a} A is below the {MIN_CURRENT_A:g} A minimum of IEC 61851")
    current_a = min(current_a, MAX_CURRENT_A)
    duty = current_a / 0.6 if current_a <= 51.0 else current_a / 2.5 + 64.0
    if resolution_percent > 0.0:
        # The epsilon keeps exact multiples (e.g. 16 A → 26.666… % at 0.0001 %) from
        # dropping a whole step through binary floating-point noise.
        steps = math.floor(duty / resolution_percent + 1e-9)
        duty = steps * resolution_percent
        # Below 10 % the 8–10 % band still offers 6 A; 10 % itself is not a step of every PWM
        # (8-bit: 9.77 % or 10.16 %), and a PWM that rounds it up would offer more than 6 A.
        # Only a PWM too coarse to reach the band at all gets the nominal 10 %.
        if duty < 8.0:
            duty = 10.0
    return duty


def current_for_duty(duty_percent: float) -> float:
    """The current an EV may draw at this duty cycle (0.0 where the duty offers nothing)."""
    d = duty_percent
    if 8.0 <= d < 10.0:
        return 6.0
    if 10.0 <= d <= 85.0:
        return 0.6 * d
    if 85.0 < d <= 96.0:
        return 2.5 * (d - 64.0)
    if 96.0 < d <= 97.0:
        return 80.0
    return 0.0
