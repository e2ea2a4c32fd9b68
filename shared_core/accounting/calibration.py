"""Searches over the accountant: the noise for a target epsilon, and the number of updates a budget allows.

Both searches evaluate the *same* accountant that reports epsilon during training, so the figures they return
are exactly consistent with what the ledger will report: the calibrated noise multiplier never overshoots the
target, and the step limit is the last step count whose epsilon is still within the target.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

from shared_core.accounting._validate import (
    Segment,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
    merge_segments,
)
from shared_core.accounting.epsilon import compute_epsilon_detailed
from shared_core.errors import ConfigError

__all__ = [
    "MAX_NOISE_MULTIPLIER",
    "MIN_NOISE_MULTIPLIER",
    "STEP_LIMIT",
    "calibrate_noise_multiplier",
    "check_planned_budget",
    "max_steps_within_budget",
]

logger = logging.getLogger(__name__)

MIN_NOISE_MULTIPLIER = 0.1
MAX_NOISE_MULTIPLIER = 1000.0
# Searches for a step limit stop here: a budget that allows more updates than this is, in practice, unbounded.
STEP_LIMIT = 10**9


def _check_target(target_epsilon: float) -> float:
    if isinstance(target_epsilon, bool) or not isinstance(target_epsilon, (int, float)):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    if not (math.isfinite(target_epsilon) and target_epsilon > 0):
        raise ConfigError(f"target_epsilon must be a finite number > 0, got {target_epsilon!r}")
    return float(target_epsilon)


def _epsilon(segments: Sequence[Segment], delta: float, accountant: str) -> float:
    return compute_epsilon_detailed(segments, delta=delta, accountant=accountant).epsilon


def calibrate_noise_multiplier(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "prv",
    rel_tolerance: float = 1e-3,
) -> float:
    """Smallest noise multiplier (up to ``rel_tolerance``) whose epsilon after ``steps`` updates is within the target.

    The search brackets the answer, then narrows it with a safeguarded secant (Illinois) method in log-sigma.
    The returned value is always the upper end of the bracket, i.e. one whose epsilon was *evaluated* to be
    ``<= target_epsilon`` by ``accountant``: calibration never overshoots.

    Example:
        >>> sigma = calibrate_noise_multiplier(
        ...     target_epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=1000, accountant="rdp")
        >>> 1.0 < sigma < 2.0
        True

    Args:
        target_epsilon: Epsilon the run may spend.
        delta: Target delta.
        sample_rate: Poisson rate ``q`` per optimizer update.
        steps: Planned optimizer updates (the real horizon, after accumulation and world size).
        accountant: ``prv`` (default), ``rdp`` or ``pld``.
        rel_tolerance: Stop once the epsilon at the returned sigma is within this fraction below the target.

    Returns:
        The noise multiplier sigma.

    Raises:
        ConfigError: Invalid input, or a target that even ``MAX_NOISE_MULTIPLIER`` cannot meet.
    """
    target = _check_target(target_epsilon)
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    steps = check_steps(steps)
    if q == 0.0 or steps == 0:
        raise ConfigError(
            f"nothing to calibrate: sample_rate={sample_rate!r} and steps={steps!r} spend no privacy; "
            "give the planned number of optimizer updates (> 0) and q = expected batch / N (> 0)"
        )
    if not 0.0 < rel_tolerance < 0.5:
        raise ConfigError(f"rel_tolerance must lie in (0, 0.5), got {rel_tolerance!r}")

    def eps_at(sigma: float) -> float:
        return _epsilon([(q, sigma, steps)], delta, accountant)

    lo, eps_lo, hi, eps_hi = _bracket_sigma(eps_at, target=target, q=q, steps=steps, delta=delta)
    if lo is None:  # even the smallest noise we search meets the target
        return hi
    sigma = _illinois(
        eps_at,
        lo=math.log(lo),
        f_lo=eps_lo - target,
        hi=math.log(hi),
        f_hi=eps_hi - target,
        transform=math.exp,
        done=lambda lo_x, hi_x, f_hi: (-f_hi <= rel_tolerance * target) or (hi_x - lo_x) < 1e-6,
        target=target,
    )
    logger.debug("calibrated sigma=%.6g for eps=%.4g q=%.4g T=%d (%s)", sigma, target, q, steps, accountant)
    return sigma


def _initial_sigma(*, target: float, q: float, steps: int, delta: float) -> float:
    # Moments-accountant rule of thumb: eps ~ q sqrt(T log(1/delta)) / sigma.
    guess = q * math.sqrt(2.0 * steps * math.log(1.0 / delta)) / target
    return min(max(guess, 0.5), 50.0)


def _bracket_sigma(
    eps_at: Callable[[float], float], *, target: float, q: float, steps: int, delta: float
) -> tuple[float | None, float, float, float]:
    """Return ``(lo, eps(lo), hi, eps(hi))`` with ``eps(lo) > target >= eps(hi)``; ``lo is None`` if hi is the floor."""
    sigma = _initial_sigma(target=target, q=q, steps=steps, delta=delta)
    value = eps_at(sigma)
    if value <= target:
        hi, eps_hi = sigma, value
        while True:
            if hi <= MIN_NOISE_MULTIPLIER:
                return None, math.nan, hi, eps_hi
            lo = max(hi / 2.0, MIN_NOISE_MULTIPLIER)
            eps_lo = eps_at(lo)
            if eps_lo > target:
                return lo, eps_lo, hi, eps_hi
            hi, eps_hi = lo, eps_lo
    lo, eps_lo = sigma, value
    while True:
        if lo >= MAX_NOISE_MULTIPLIER:
            raise ConfigError(
                f"target_epsilon={target:g} is out of reach: even noise_multiplier={MAX_NOISE_MULTIPLIER:g} spends "
                f"epsilon={eps_lo:.4g} over {steps} steps at sample_rate={q:g} (delta={delta:g}). "
                "Raise target_epsilon, train fewer steps (fewer epochs) or use a smaller sample rate "
                "(smaller expected batch)"
            )
        hi = min(lo * 2.0, MAX_NOISE_MULTIPLIER)
        eps_hi = eps_at(hi)
        if eps_hi <= target:
            return lo, eps_lo, hi, eps_hi
        lo, eps_lo = hi, eps_hi


def _illinois(
    eps_at: Callable[[float], float],
    *,
    lo: float,
    f_lo: float,
    hi: float,
    f_hi: float,
    transform: Callable[[float], float],
    done: Callable[[float, float, float], bool],
    target: float,
) -> float:
    """Narrow a bracket of a decreasing ``eps(transform(x))``; returns ``transform(hi)`` (the side within target)."""
    side = 0
    w_lo, w_hi = f_lo, f_hi
    while not done(lo, hi, f_hi):
        x = hi - w_hi * (hi - lo) / (w_hi - w_lo) if math.isfinite(w_lo) and w_hi != w_lo else 0.5 * (lo + hi)
        span = hi - lo
        x = min(max(x, lo + 0.01 * span), hi - 0.01 * span)
        f = eps_at(transform(x)) - target
        if f > 0:
            lo, f_lo, w_lo = x, f, f
            if side == -1:
                w_hi /= 2.0
            side = -1
        else:
            hi, f_hi, w_hi = x, f, f
            if side == 1:
                w_lo /= 2.0
            side = 1
    return transform(hi)


def _max_count(
    *,
    others: Sequence[Segment],
    q: float,
    sigma: float,
    target: float,
    delta: float,
    accountant: str,
    hint: int | None = None,
) -> int:
    """Largest ``n`` with ``eps(others + n x (q, sigma)) <= target``; ``-1`` if ``others`` alone exceed it."""
    others = list(others)

    def eps_at(n: int) -> float:
        return _epsilon([*others, (q, sigma, n)], delta, accountant)

    spent_before = _epsilon(others, delta, accountant)
    if spent_before > target:
        return -1
    if q == 0.0:
        return STEP_LIMIT
    if sigma == 0.0:
        return 0
    if hint is None or hint <= 0:
        hint = _rdp_count_hint(others, q=q, sigma=sigma, target=target, delta=delta)
    guess = hint
    guess = min(max(guess, 1), STEP_LIMIT)
    # Bracket: eps(lo) <= target < eps(hi).
    lo, f_lo = 0, spent_before
    value = eps_at(guess)
    if value <= target:
        lo, f_lo = guess, value
        while True:
            if lo >= STEP_LIMIT:
                return STEP_LIMIT
            hi = min(max(lo + 1, int(lo * 1.5)), STEP_LIMIT)
            value = eps_at(hi)
            if value > target:
                break
            lo, f_lo = hi, value
    else:
        hi = guess
        while hi > 1:
            candidate = hi // 2
            candidate_value = eps_at(candidate)
            if candidate_value <= target:
                lo, f_lo = candidate, candidate_value
                break
            hi, value = candidate, candidate_value
    return _integer_boundary(eps_at, lo=lo, f_lo=f_lo - target, hi=hi, f_hi=value - target, target=target)


def _integer_boundary(
    eps_at: Callable[[int], float], *, lo: int, f_lo: float, hi: int, f_hi: float, target: float
) -> int:
    """Last ``n`` in ``[lo, hi)`` with ``eps_at(n) <= target``, given ``f_lo = eps(lo) - target <= 0 < f_hi``."""
    side = 0
    w_lo, w_hi = f_lo, f_hi
    while hi - lo > 1:
        a, b = math.sqrt(lo), math.sqrt(hi)
        if math.isfinite(w_hi) and w_hi != w_lo:
            x = (b - w_hi * (b - a) / (w_hi - w_lo)) ** 2
            mid = min(max(round(x), lo + 1), hi - 1)
        else:
            mid = (lo + hi) // 2
        f = eps_at(mid) - target
        if f > 0:
            hi, f_hi, w_hi = mid, f, f
            if side == 1:
                w_lo /= 2.0
            side = 1
        else:
            lo, f_lo, w_lo = mid, f, f
            if side == -1:
                w_hi /= 2.0
            side = -1
    return lo


def _rdp_count_hint(others: Sequence[Segment], *, q: float, sigma: float, target: float, delta: float) -> int:
    """Cheap first guess for :func:`_max_count`: the step limit under ``dp_accounting``'s RDP (linear in steps)."""
    try:
        import numpy as np
        from dp_accounting.rdp import rdp_privacy_accountant as rdp_mod

        orders = np.asarray(rdp_mod.DEFAULT_RDP_ORDERS, dtype=float)
        per_step = np.asarray(rdp_mod._compute_rdp_poisson_subsampled_gaussian(q, sigma, orders))
        base = sum(
            (
                steps * np.asarray(rdp_mod._compute_rdp_poisson_subsampled_gaussian(oq, osig, orders))
                for oq, osig, steps in others
            ),
            np.zeros_like(orders),
        )
    except (ImportError, AttributeError, ArithmeticError, ValueError):
        return 1000

    def eps(n: int) -> float:
        return float(rdp_mod.compute_epsilon(orders, base + n * per_step, delta)[0])

    lo, hi = 0, 1
    while eps(hi) <= target:
        lo, hi = hi, hi * 2
        if hi > STEP_LIMIT:
            return STEP_LIMIT
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if eps(mid) <= target:
            lo = mid
        else:
            hi = mid
    return max(lo, 1)


def max_steps_within_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    accountant: str = "prv",
    prior_segments: Iterable[Segment] = (),
) -> int:
    """Largest number of further updates at ``(sample_rate, noise_multiplier)`` that keeps epsilon within the target.

    Args:
        target_epsilon: The budget.
        delta: Target delta.
        sample_rate: Poisson rate ``q`` of the further updates.
        noise_multiplier: Noise multiplier of the further updates.
        accountant: ``prv`` (default), ``rdp`` or ``pld``.
        prior_segments: ``(q, sigma, steps)`` already spent.

    Returns:
        The number of further updates (``0`` when none fits, at most ``STEP_LIMIT``).
    """
    target = _check_target(target_epsilon)
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    sigma = check_noise_multiplier(noise_multiplier)
    merged = merge_segments(prior_segments)
    already = sum(n for mq, ms, n in merged if (mq, ms) == (q, sigma))
    others = [(mq, ms, n) for mq, ms, n in merged if (mq, ms) != (q, sigma)]
    limit = _max_count(others=others, q=q, sigma=sigma, target=target, delta=delta, accountant=accountant)
    return max(limit - already, 0)


def check_planned_budget(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    noise_multiplier: float,
    planned_steps: int,
    accountant: str = "prv",
) -> float:
    """Check before training that ``planned_steps`` updates fit in the budget; return the planned epsilon.

    Raises:
        ConfigError: The plan overspends; the message gives the largest step count that fits and the noise
            multiplier that would make the whole plan fit.
    """
    target = _check_target(target_epsilon)
    delta = check_delta(delta)
    q = check_sample_rate(sample_rate)
    sigma = check_noise_multiplier(noise_multiplier)
    planned = check_steps(planned_steps, name="planned_steps")
    planned_eps = _epsilon([(q, sigma, planned)], delta, accountant)
    if planned_eps <= target:
        return planned_eps
    fits = _max_count(others=[], q=q, sigma=sigma, target=target, delta=delta, accountant=accountant)
    try:
        needed = calibrate_noise_multiplier(
            target_epsilon=target, delta=delta, sample_rate=q, steps=planned, accountant=accountant
        )
        noise_hint = f"raise noise_multiplier to >= {needed:.4g}"
    except ConfigError:
        noise_hint = f"no noise_multiplier <= {MAX_NOISE_MULTIPLIER:g} makes the plan fit"
    raise ConfigError(
        f"the planned {planned} optimizer updates at sample_rate={q:g}, noise_multiplier={sigma:g} would spend "
        f"epsilon={planned_eps:.4g} > target_epsilon={target:g} (delta={delta:g}, {accountant}). "
        f"Only {max(fits, 0)} updates fit: train at most {max(fits, 0)} steps (fewer epochs), {noise_hint}, "
        "or raise target_epsilon"
    )
