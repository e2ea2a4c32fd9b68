"""Epsilon against Google's dp_accounting computed directly (the golden reference), plus properties."""

from __future__ import annotations

import math

import dp_accounting
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant
from hypothesis import given, settings
from hypothesis import strategies as st

from shared_core.accounting import (
    compute_epsilon,
    compute_epsilon_detailed,
    compute_epsilon_segments,
    epsilon_cross_check,
)
from shared_core.accounting._engines import PRV_EPS_ERROR
from shared_core.errors import ConfigError


def _event(q: float, sigma: float, steps: int) -> dp_accounting.DpEvent:
    return dp_accounting.SelfComposedDpEvent(
        dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(sigma)), steps
    )


def _golden_pld(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = PLDAccountant()
    accountant.compose(_event(q, sigma, steps))
    return float(accountant.get_epsilon(delta))


def _golden_rdp(q: float, sigma: float, steps: int, delta: float) -> float:
    accountant = RdpAccountant()
    accountant.compose(_event(q, sigma, steps))
    return float(accountant.get_epsilon(delta))


# A grid over the practical regime: small to large q, low to high noise, short to long runs, two deltas.
GRID = [
    (0.001, 1.0, 5000, 1e-6),
    (0.01, 1.0, 1000, 1e-5),
    (0.01, 3.0, 5000, 1e-5),
    (0.05, 2.0, 2000, 1e-5),
    (0.1, 5.0, 1000, 1e-7),
    (0.004, 0.8, 3000, 1e-5),
]


@pytest.mark.parametrize(("q", "sigma", "steps", "delta"), GRID)
def test_accountants_agree_with_dp_accounting(q: float, sigma: float, steps: int, delta: float) -> None:
    golden = _golden_pld(q, sigma, steps, delta)
    kw = {"sample_rate": q, "noise_multiplier": sigma, "steps": steps, "delta": delta}
    pld = compute_epsilon(**kw, accountant="pld")
    prv = compute_epsilon(**kw, accountant="prv")
    rdp = compute_epsilon(**kw, accountant="rdp")
    cross = epsilon_cross_check([(q, sigma, steps)], delta=delta)

    assert pld == pytest.approx(golden, rel=1e-12)
    # PRV reports the upper end of its estimate: within its eps_error of the tight PLD figure, never far below.
    assert golden - 1e-3 <= prv <= golden + 2 * PRV_EPS_ERROR
    # RDP is a looser bound: never below PLD.
    assert rdp >= golden
    assert cross == pytest.approx(_golden_rdp(q, sigma, steps, delta), rel=1e-12)
    assert cross >= golden


def test_pinned_values() -> None:
    """Known figures (opacus 1.6.0, dp-accounting 0.6.0) for q=0.01, sigma=1, 1000 steps, delta=1e-5."""
    kw = {"sample_rate": 0.01, "noise_multiplier": 1.0, "steps": 1000, "delta": 1e-5}
    assert compute_epsilon(**kw, accountant="rdp") == pytest.approx(2.10137, abs=1e-4)
    assert compute_epsilon(**kw, accountant="pld") == pytest.approx(1.82824, abs=1e-4)
    assert compute_epsilon(**kw, accountant="prv") == pytest.approx(1.83837, abs=2e-3)


def test_alternating_schedule_composes_fast_and_equals_merged() -> None:
    alternating = [(0.01, 1.0, 1), (0.02, 1.5, 1)] * 2000
    merged = [(0.02, 1.5, 2000), (0.01, 1.0, 2000)]
    for accountant in ("rdp", "prv"):
        a = compute_epsilon_segments(alternating, delta=1e-5, accountant=accountant)
        b = compute_epsilon_segments(merged, delta=1e-5, accountant=accountant)
        assert a == b
    # Heterogeneous composition is tighter than charging every step at the worse setting.
    worse = compute_epsilon(sample_rate=0.02, noise_multiplier=1.0, steps=4000, delta=1e-5, accountant="rdp")
    assert compute_epsilon_segments(merged, delta=1e-5, accountant="rdp") < worse


def test_prv_falls_back_to_rdp_at_extreme_settings_and_says_so() -> None:
    # q = 1 with 1e5 steps: PRV's grid would need ~5e8 points; the figure must still come back, from RDP.
    result = compute_epsilon_detailed([(1.0, 5.0, 100_000)], delta=1e-5, accountant="prv")
    assert result.requested == "prv"
    assert result.accountant == "rdp"
    assert result.fallback_reason is not None
    assert "PRV" in result.fallback_reason
    assert result.epsilon == compute_epsilon(
        sample_rate=1.0, noise_multiplier=5.0, steps=100_000, delta=1e-5, accountant="rdp"
    )
    assert math.isfinite(result.epsilon)


def test_noiseless_step_is_infinite_and_nothing_is_free() -> None:
    assert compute_epsilon(sample_rate=0.01, noise_multiplier=0.0, steps=1, delta=1e-5, accountant="prv") == math.inf
    assert compute_epsilon(sample_rate=0.01, noise_multiplier=1.0, steps=0, delta=1e-5, accountant="prv") == 0.0
    assert compute_epsilon_segments([(0.0, 0.0, 10)], delta=1e-5, accountant="pld") == 0.0


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"sample_rate": float("nan")}, "sample_rate"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"steps": -3}, "steps"),
        ({"steps": 2.5}, "steps"),
        ({"delta": 0.0}, "delta"),
        ({"delta": 1.0}, "delta"),
        ({"accountant": "gdp"}, "prv, rdp, pld"),
    ],
)
def test_bad_input_gets_one_clear_error(kwargs: dict[str, object], needle: str) -> None:
    base: dict[str, object] = {"sample_rate": 0.01, "noise_multiplier": 1.0, "steps": 10, "delta": 1e-5}
    base.update(kwargs)
    with pytest.raises(ConfigError, match=needle):
        compute_epsilon(**base)  # type: ignore[arg-type]


_q = st.floats(min_value=1e-3, max_value=0.2)
_sigma = st.floats(min_value=0.6, max_value=8.0)
_steps = st.integers(min_value=1, max_value=20_000)


@settings(max_examples=15, deadline=None, database=None)
@given(q=_q, sigma=_sigma, steps=_steps, extra=st.integers(min_value=1, max_value=5000))
def test_epsilon_grows_with_steps(q: float, sigma: float, steps: int, extra: int) -> None:
    a = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="rdp")
    b = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps + extra, delta=1e-5, accountant="rdp")
    assert b >= a


@settings(max_examples=15, deadline=None, database=None)
@given(q=_q, sigma=_sigma, steps=_steps, factor=st.floats(min_value=1.05, max_value=4.0))
def test_epsilon_grows_with_q_and_falls_with_sigma(q: float, sigma: float, steps: int, factor: float) -> None:
    base = compute_epsilon(sample_rate=q, noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="rdp")
    more_q = compute_epsilon(
        sample_rate=min(q * factor, 1.0), noise_multiplier=sigma, steps=steps, delta=1e-5, accountant="rdp"
    )
    more_sigma = compute_epsilon(
        sample_rate=q, noise_multiplier=sigma * factor, steps=steps, delta=1e-5, accountant="rdp"
    )
    assert more_q >= base
    assert more_sigma <= base
