"""IEC 61851-1 duty-cycle rules: every expected value below is worked out by hand.

EVSE side (standards.md §6): 6 A ≤ I ≤ 51 A → D = I / 0.6; 51 A < I ≤ 80 A → D = I / 2.5 + 64.
EV side: 8 % ≤ D < 10 % → 6 A; 10–85 % → 0.6 × D; 85–96 % → 2.5 × (D − 64); 96–97 % → 80 A.
"""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from evse_daemon.iec61851 import current_for_duty, duty_percent_for_current

MIN_OFFER = 6.0  # A: nothing less may be offered

# (current asked, duty by hand, the current the EV reads back from that duty, by hand)
EXACT_DUTIES = [
    (6.0, 10.0, 6.0),  # 6 / 0.6
    (10.0, 50.0 / 3.0, 10.0),  # 16.67 %
    (16.0, 80.0 / 3.0, 16.0),  # 26.67 %
    (32.0, 160.0 / 3.0, 32.0),  # 53.33 %
    (51.0, 85.0, 51.0),  # the top of the first formula
    # Above 51 A the second formula applies even where it lands below 85 %:
    # 51.5 / 2.5 + 64 = 84.6 %, which the EV reads in the first band as 0.6 × 84.6 = 50.76 A.
    # (No duty offers anything between 51 A and 52.5 A: the standard's two bands do not meet.)
    (51.5, 84.6, 50.76),
    (63.0, 89.2, 63.0),  # 25.2 + 64; the EV reads 2.5 × 25.2
    (80.0, 96.0, 80.0),  # 32 + 64
    (80.5, 96.0, 80.0),  # clamped to 80 A
    (125.0, 96.0, 80.0),
]


@pytest.mark.parametrize(("current_a", "duty", "read_back_a"), EXACT_DUTIES)
def test_duty_for_current_follows_the_standard(
    current_a: float, duty: float, read_back_a: float
) -> None:
    got = duty_percent_for_current(current_a)
    assert got == pytest.approx(duty, abs=1e-9)
    assert current_for_duty(got) == pytest.approx(read_back_a, abs=1e-9)
    assert current_for_duty(got) <= current_a + 1e-9


# (current, resolution, duty rounded down by hand)
ROUNDED_DUTIES = [
    (16.0, 1.0, 26.0),  # 26.67 → 26 % = 15.6 A
    (10.0, 1.0, 16.0),  # 16.67 → 16 % = 9.6 A
    (32.0, 1.0, 53.0),  # 53.33 → 53 % = 31.8 A
    (63.0, 1.0, 89.0),  # 89.2 → 89 % = 62.5 A
    (80.0, 1.0, 96.0),
    (51.0, 1.0, 85.0),
    (6.0, 1.0, 10.0),
    (16.0, 0.1, 26.6),
    (16.0, 0.0001, 26.6666),  # a 1 kHz PWM set in ns
    (32.0, 0.0001, 53.3333),
    (6.0, 0.0001, 10.0),  # an exact multiple must not lose a step to float noise
    (10.0, 0.5, 16.5),
    # An 8-bit PWM (1/256 = 0.390625 %): 10 % is not a step; 25 steps = 9.765625 % is still
    # in the 8–10 % band that offers 6 A, and 26 steps (10.156 %) would offer 6.09 A.
    (6.0, 0.390625, 9.765625),
    (16.0, 0.390625, 68 * 0.390625),  # 26.67 / 0.390625 = 68.27 → 68 steps = 26.5625 %
]


@pytest.mark.parametrize(("current_a", "resolution", "duty"), ROUNDED_DUTIES)
def test_duty_rounds_down_to_the_pwm_resolution(
    current_a: float, resolution: float, duty: float
) -> None:
    got = duty_percent_for_current(current_a, resolution)
    assert got == pytest.approx(duty, abs=1e-9)
    offered = current_for_duty(got)
    assert MIN_OFFER <= offered <= current_a + 1e-9


@pytest.mark.parametrize("current_a", [5.99, 0.0, -6.0, math.nan, -math.inf])
def test_less_than_6_a_or_nan_cannot_be_offered(current_a: float) -> None:
    with pytest.raises(ValueError):
        duty_percent_for_current(current_a)
    with pytest.raises(ValueError):
        duty_percent_for_current(current_a, 0.1)


@pytest.mark.parametrize(
    ("duty", "current_a"),
    [
        (0.0, 0.0),
        (5.0, 0.0),  # digital communication, no current
        (7.9, 0.0),  # 7–8 %: invalid
        (8.0, 6.0),
        (9.99, 6.0),
        (10.0, 6.0),
        (50.0, 30.0),
        (85.0, 51.0),
        (85.4, 53.5),  # 2.5 × 21.4
        (90.0, 65.0),
        (96.0, 80.0),
        (96.5, 80.0),
        (97.0, 80.0),
        (97.1, 0.0),
        (100.0, 0.0),  # steady: nothing offered
    ],
)
def test_current_for_duty_table(duty: float, current_a: float) -> None:
    assert current_for_duty(duty) == pytest.approx(current_a, abs=1e-9)


RESOLUTIONS = [0.0, 0.0001, 0.01, 0.1, 0.25, 0.390625, 0.5, 1.0]


@settings(max_examples=400, deadline=None)
@given(
    current_a=st.floats(min_value=6.0, max_value=200.0, allow_nan=False),
    resolution=st.sampled_from(RESOLUTIONS),
)
def test_rounding_never_offers_more_than_asked(current_a: float, resolution: float) -> None:
    duty = duty_percent_for_current(current_a, resolution)
    offered = current_for_duty(duty)
    assert offered <= min(current_a, 80.0) + 1e-9  # never more than asked
    assert offered >= 6.0  # and always a valid offer
    assert 8.0 <= duty <= 96.0 + 1e-9
    if resolution > 0.0:
        steps = duty / resolution
        assert steps == pytest.approx(round(steps), abs=1e-6), "not a step the PWM can make"
        # At most one step lower, within a band (across the 85 % edge the standard leaves a
        # gap: nothing between 51 A and 52.5 A can be offered).
        if current_a <= 51.0:
            assert offered >= current_a - 0.6 * resolution - 1e-6
        elif duty > 85.0:
            assert offered >= min(current_a, 80.0) - 2.5 * resolution - 1e-6
