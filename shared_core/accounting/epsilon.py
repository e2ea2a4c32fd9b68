"""Epsilon of DP-SGD runs: Poisson-subsampled Gaussian steps composed under one of three accountants.

Note:
    Every figure here assumes the add-or-remove-one neighbouring relation (datasets differ by one example) and
    Poisson sampling with rate ``q`` per optimizer update; ``steps`` counts optimizer updates, not micro-batches.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from shared_core.accounting import _engines
from shared_core.accounting._validate import (
    Segment,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
    merge_segments,
)
from shared_core.errors import ConfigError

__all__ = [
    "ACCOUNTANTS",
    "ACCOUNTANT_INFO",
    "CROSS_CHECK_ACCOUNTANT",
    "EpsilonResult",
    "compute_epsilon",
    "compute_epsilon_detailed",
    "compute_epsilon_segments",
    "epsilon_cross_check",
]

logger = logging.getLogger(__name__)

ACCOUNTANTS = ("prv", "rdp", "pld")
CROSS_CHECK_ACCOUNTANT = "rdp_dp_accounting"
FALLBACK_ACCOUNTANT = "rdp"

_ENGINES: dict[str, Callable[[list[Segment], float], float]] = {
    "prv": _engines.prv_epsilon,
    "rdp": _engines.opacus_rdp_epsilon,
    "pld": _engines.pld_epsilon,
    CROSS_CHECK_ACCOUNTANT: _engines.rdp_dp_accounting_epsilon,
}

# What each accountant is and how far its reported bound may sit from the exact epsilon. ``epsilon_tolerance`` is
# the absolute slack a verifier grants when an independent accountant re-derives the figure.
ACCOUNTANT_INFO: dict[str, dict[str, Any]] = {
    "prv": {
        "name": "PRV",
        "implementation": "opacus.accountants.analysis.prv (Gopi et al. 2021), upper bound of the estimate",
        "numerics": {"eps_error": _engines.PRV_EPS_ERROR, "delta_error": "delta / 1000"},
        "epsilon_tolerance": _engines.PRV_EPS_ERROR,
    },
    "rdp": {
        "name": "RDP",
        "implementation": "opacus.accountants.analysis.rdp, orders 1.1..63, Balle et al. 2020 conversion",
        "numerics": {"orders": "1.1..10.9 step 0.1, 12..63"},
        "epsilon_tolerance": 1e-6,
    },
    "pld": {
        "name": "PLD",
        "implementation": "dp_accounting.pld.PLDAccountant, pessimistic discretisation",
        "numerics": {"value_discretization_interval": _engines.PLD_VALUE_DISCRETIZATION},
        "epsilon_tolerance": 1e-6,
    },
    CROSS_CHECK_ACCOUNTANT: {
        "name": "RDP (dp_accounting)",
        "implementation": "dp_accounting.rdp.RdpAccountant, default orders up to 1024",
        "numerics": {"orders": "dp_accounting default"},
        "epsilon_tolerance": 1e-6,
    },
}


@dataclass(frozen=True)
class EpsilonResult:
    """One epsilon figure and where it came from.

    Attributes:
        epsilon: The (epsilon, delta)-DP bound; ``inf`` when a step ran without noise.
        delta: The delta it holds for.
        accountant: Accountant that produced ``epsilon`` (differs from ``requested`` after a fallback).
        requested: Accountant that was asked for.
        fallback_reason: Why ``requested`` could not answer, or ``None``.
        segments: The merged ``(q, sigma, steps)`` segments that were composed.
    """

    epsilon: float
    delta: float
    accountant: str
    requested: str
    fallback_reason: str | None
    segments: tuple[Segment, ...]

    @property
    def steps(self) -> int:
        """Total optimizer updates composed."""
        return sum(steps for _, _, steps in self.segments)


def _check_accountant(accountant: str, *, allowed: Sequence[str] = ACCOUNTANTS) -> str:
    if accountant not in allowed:
        raise ConfigError(f"accountant must be one of {', '.join(allowed)}; got {accountant!r}")
    return accountant


def compute_epsilon_detailed(segments: Iterable[Segment], *, delta: float, accountant: str = "prv") -> EpsilonResult:
    """Compose ``segments`` and return the epsilon together with the accountant that produced it.

    When PRV or PLD cannot give a finite bound (PRV's grid explodes at extreme settings, e.g. ``q = 1`` with many
    steps), the result falls back to opacus' RDP accountant (always a valid, if looser, bound), logs a warning and
    says so in ``fallback_reason``: a training run never dies of its accountant.

    Args:
        segments: ``(sample_rate, noise_multiplier, steps)`` triples in any order.
        delta: Target delta.
        accountant: ``prv``, ``rdp`` or ``pld`` (or ``rdp_dp_accounting`` for the torch-free RDP cross-check).

    Returns:
        The epsilon with its provenance.

    Raises:
        ConfigError: A segment, delta or the accountant name is invalid.
    """
    _check_accountant(accountant, allowed=(*ACCOUNTANTS, CROSS_CHECK_ACCOUNTANT))
    delta = check_delta(delta)
    merged = merge_segments(segments)
    try:
        value = _ENGINES[accountant](merged, delta)
    except _engines.AccountantFailure as exc:
        if accountant in (FALLBACK_ACCOUNTANT, CROSS_CHECK_ACCOUNTANT):
            raise
        reason = str(exc)
        logger.warning("%s accountant gave no bound (%s); falling back to RDP for this figure", accountant, reason)
        value = _ENGINES[FALLBACK_ACCOUNTANT](merged, delta)
        return EpsilonResult(value, delta, FALLBACK_ACCOUNTANT, accountant, reason, tuple(merged))
    return EpsilonResult(value, delta, accountant, accountant, None, tuple(merged))


def compute_epsilon_segments(
    segments: list[tuple[float, float, int]], *, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon of a run whose updates used several ``(q, sigma)`` settings.

    Steps are summed per distinct ``(q, sigma)`` before composing (composition is commutative), so an alternating
    schedule costs as much as a constant one.

    Args:
        segments: ``(sample_rate, noise_multiplier, steps)`` triples.
        delta: Target delta.
        accountant: ``prv`` (default), ``rdp`` or ``pld``.

    Returns:
        Epsilon (``inf`` if any update ran with ``noise_multiplier == 0``).
    """
    return compute_epsilon_detailed(segments, delta=delta, accountant=accountant).epsilon


def compute_epsilon(
    *, sample_rate: float, noise_multiplier: float, steps: int, delta: float, accountant: str = "prv"
) -> float:
    """Epsilon of ``steps`` DP-SGD updates with Poisson rate ``sample_rate`` and noise multiplier ``noise_multiplier``.

    Example:
        >>> round(compute_epsilon(sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5, accountant="rdp"), 2)
        2.1

    Args:
        sample_rate: Poisson inclusion probability ``q`` per optimizer update.
        noise_multiplier: Noise std over the clip norm (sigma).
        steps: Optimizer updates.
        delta: Target delta.
        accountant: ``prv`` (default), ``rdp`` or ``pld``.

    Returns:
        Epsilon; falls back to RDP (with a logged warning) where the requested accountant fails.
    """
    segment = (
        check_sample_rate(sample_rate),
        check_noise_multiplier(noise_multiplier),
        check_steps(steps),
    )
    return compute_epsilon_detailed([segment], delta=delta, accountant=accountant).epsilon


def epsilon_cross_check(segments: Iterable[Segment], *, delta: float) -> float:
    """Independent RDP bound from ``dp_accounting`` (torch-free): the cross-check recorded beside every claim."""
    return compute_epsilon_detailed(segments, delta=delta, accountant=CROSS_CHECK_ACCOUNTANT).epsilon
