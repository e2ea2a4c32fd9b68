"""Noise calibration never overshoots; step limits flip exactly; an overspending plan is refused before training."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core.accounting import (
    calibrate_noise_multiplier,
    check_planned_budget,
    compute_epsilon,
    max_steps_within_budget,
)
from shared_core.errors import ConfigError


@settings(max_examples=8, deadline=None, database=None)
@given(
    target=st.floats(min_value=0.3, max_value=20.0),
    q=st.floats(min_value=1e-3, max_value=0.1),
    steps=st.integers(min_value=10, max_value=20_000),
)
def test_calibration_never_overshoots_and_is_tight(target: float, q: float, steps: int) -> None:
    sigma = calibrate_noise_multiplier(target_epsilon=target, delta=1e-5, sample_rate=q, steps=steps, accountant="rdp")
    eps = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="rdp")
    assert eps <= target
    if sigma > 0.1 * 1.02:  # not clamped at the search floor: 2% less noise must overshoot
        looser = compute_epsilon(
            sample_rate=q, noise_multiplier=sigma / 1.02, steps=steps, delta=1e-5, accountant="rdp"
        )
        assert looser > target


@pytest.mark.parametrize(("accountant", "expected"), [("pld", 3.81), ("prv", 3.85)])
def test_tight_accountants_need_less_noise_than_rdp(accountant: str, expected: float) -> None:
    """DP_NOTES 4: epsilon 1, q 0.01, 1e4 steps needs ~4.13 under RDP, ~3.85 under PRV, ~3.81 under PLD."""
    kw = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.01, "steps": 10_000}
    sigma = calibrate_noise_multiplier(**kw, accountant=accountant)
    assert sigma == pytest.approx(expected, abs=0.02)
    assert sigma < calibrate_noise_multiplier(**kw, accountant="rdp")
    eps = compute_epsilon(sample_rate=0.01, noise_multiplier=sigma, steps=10_000, delta=1e-5, accountant=accountant)
    assert eps <= 1.0


def test_unreachable_target_says_what_to_change() -> None:
    with pytest.raises(ConfigError, match=r"out of reach.*Raise target_epsilon.*fewer steps"):
        calibrate_noise_multiplier(target_epsilon=1e-4, delta=1e-5, sample_rate=1.0, steps=10_000, accountant="rdp")
    with pytest.raises(ConfigError, match="nothing to calibrate"):
        calibrate_noise_multiplier(target_epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=0, accountant="rdp")
    with pytest.raises(ConfigError, match="target_epsilon"):
        calibrate_noise_multiplier(target_epsilon=-1.0, delta=1e-5, sample_rate=0.01, steps=10, accountant="rdp")


@pytest.mark.parametrize("accountant", ["rdp", "pld"])
def test_step_limit_is_the_last_step_within_target(accountant: str) -> None:
    kw = {"sample_rate": 0.02, "noise_multiplier": 1.5, "delta": 1e-5, "accountant": accountant}
    limit = max_steps_within_budget(target_epsilon=1.5, **kw)
    assert compute_epsilon(steps=limit, **kw) <= 1.5 < compute_epsilon(steps=limit + 1, **kw)


def test_step_limit_counts_prior_spend() -> None:
    kw = {"sample_rate": 0.02, "noise_multiplier": 1.5, "delta": 1e-5, "accountant": "rdp"}
    fresh = max_steps_within_budget(target_epsilon=1.5, **kw)
    after_same = max_steps_within_budget(target_epsilon=1.5, prior_segments=[(0.02, 1.5, 100)], **kw)
    assert after_same == fresh - 100
    after_other = max_steps_within_budget(target_epsilon=1.5, prior_segments=[(0.01, 2.0, 50)], **kw)
    assert 0 < after_other < fresh
    assert max_steps_within_budget(target_epsilon=1.5, prior_segments=[(0.5, 0.5, 1000)], **kw) == 0


def test_planned_budget_check() -> None:
    kw = {"target_epsilon": 2.0, "delta": 1e-5, "sample_rate": 0.01, "noise_multiplier": 1.0, "accountant": "rdp"}
    assert check_planned_budget(planned_steps=500, **kw) <= 2.0
    with pytest.raises(ConfigError, match=r"Only 881 updates fit.*raise noise_multiplier to >= 1\.\d+"):
        check_planned_budget(planned_steps=5000, **kw)
