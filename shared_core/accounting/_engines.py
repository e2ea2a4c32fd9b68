"""The accountant back ends: one function per accountant, each composing merged ``(q, sigma, steps)`` segments.

- ``prv``: opacus' PRV accountant (Gopi et al. 2021), driven here from its public analysis pieces so that the
  discretisation grid is sized *before* any memory is allocated. Reports the upper bound of its estimate
  (``eps_error = 0.01``, ``delta_error = delta / 1000`` as in opacus).
- ``rdp``: opacus' RDP accountant (orders 1.1 .. 63).
- ``pld``: Google's ``dp_accounting`` privacy-loss-distribution accountant (pessimistic discretisation).
- ``rdp_dp_accounting``: ``dp_accounting``'s RDP accountant (orders up to 1024), the torch-free cross-check.

opacus imports torch, so the opacus back ends import it on first use only; the ``dp_accounting`` ones never do.
Every back end assumes the add-or-remove-one neighbouring relation and Poisson subsampling.
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any

from shared_core._imports import require
from shared_core.accounting._validate import Segment

__all__ = [
    "PLD_VALUE_DISCRETIZATION",
    "PRV_EPS_ERROR",
    "PRV_MAX_GRID_POINTS",
    "AccountantFailure",
    "dp_accounting_event",
    "opacus_rdp_epsilon",
    "pld_epsilon",
    "prv_epsilon",
    "rdp_dp_accounting_epsilon",
]

logger = logging.getLogger(__name__)

PRV_EPS_ERROR = 0.01
PLD_VALUE_DISCRETIZATION = 1e-4
# Beyond this many grid points the PRV convolution needs several GiB (measured: ~1e6 points ~ 0.4 GB peak).
PRV_MAX_GRID_POINTS = 20_000_000


class AccountantFailure(RuntimeError):
    """An accountant could not produce a finite bound for these settings (the caller falls back)."""


def _has_noiseless_step(segments: list[Segment]) -> bool:
    return any(sigma == 0.0 for _, sigma, _ in segments)


def prv_epsilon(segments: list[Segment], delta: float) -> float:
    """Epsilon upper bound from opacus' PRV accountant; raises :class:`AccountantFailure` when it cannot."""
    if not segments:
        return 0.0
    if _has_noiseless_step(segments):
        return math.inf
    require("opacus", extra="all")
    import numpy as np
    from opacus.accountants.analysis import prv

    eps_error = PRV_EPS_ERROR
    delta_error = delta / 1000.0
    counts = [steps for _, _, steps in segments]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            prvs = [prv.PoissonSubsampledGaussianPRV(q, sigma) for q, sigma, _ in segments]
            half_width = prv.compute_safe_domain_size(
                prvs=prvs, max_self_compositions=counts, eps_error=eps_error, delta_error=delta_error
            )
            mesh = eps_error / math.sqrt(sum(counts) * math.log(12.0 / delta_error) / 2.0)
            if not math.isfinite(half_width) or 2.0 * half_width / mesh > PRV_MAX_GRID_POINTS:
                raise AccountantFailure(
                    f"PRV grid would need {2.0 * half_width / mesh:.3g} points (> {PRV_MAX_GRID_POINTS:.0e}) at these "
                    "settings"
                )
            domain = prv.Domain.create_aligned(-half_width, half_width, mesh)
            truncated = [prv.TruncatedPrivacyRandomVariable(p, domain.t_min, domain.t_max) for p in prvs]
            composed = prv.compose_heterogeneous(
                dprvs=[prv.discretize(t, domain) for t in truncated], num_self_compositions=counts
            )
            _, _, eps_upper = composed.compute_epsilon(delta, delta_error, eps_error)
        except AccountantFailure:
            raise
        except (ArithmeticError, ValueError, MemoryError, RuntimeError) as exc:
            raise AccountantFailure(f"PRV accountant failed: {type(exc).__name__}: {exc}") from exc
    value = float(eps_upper)
    if not np.isfinite(value) or value < 0.0:
        raise AccountantFailure(f"PRV accountant returned {value!r}")
    return value


def opacus_rdp_epsilon(segments: list[Segment], delta: float) -> float:
    """Epsilon from opacus' RDP accountant (its default orders 1.1 .. 63)."""
    if not segments:
        return 0.0
    if _has_noiseless_step(segments):
        return math.inf
    require("opacus", extra="all")
    from opacus.accountants import RDPAccountant
    from opacus.accountants.analysis import rdp as rdp_analysis

    orders = RDPAccountant.DEFAULT_ALPHAS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        total = sum(
            rdp_analysis.compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=orders)
            for q, sigma, steps in segments
        )
        eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=total, delta=delta)
    return float(eps)


def dp_accounting_event(segments: list[Segment]) -> Any:
    """The ``dp_accounting.DpEvent`` of the composed run: Poisson-subsampled Gaussians, self-composed per setting."""
    dpa = require("dp_accounting", extra="all")
    events = [
        dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
        for q, sigma, steps in segments
    ]
    return dpa.ComposedDpEvent(events)


def pld_epsilon(segments: list[Segment], delta: float) -> float:
    """Epsilon from ``dp_accounting``'s PLD accountant (pessimistic estimate, add-or-remove-one)."""
    if not segments:
        return 0.0
    if _has_noiseless_step(segments):
        return math.inf
    require("dp_accounting", extra="all")
    from dp_accounting.pld import PLDAccountant

    accountant = PLDAccountant(value_discretization_interval=PLD_VALUE_DISCRETIZATION)
    try:
        accountant.compose(dp_accounting_event(segments))
        value = float(accountant.get_epsilon(delta))
    except (ArithmeticError, ValueError, MemoryError) as exc:
        raise AccountantFailure(f"PLD accountant failed: {type(exc).__name__}: {exc}") from exc
    if math.isnan(value) or value < 0.0:
        raise AccountantFailure(f"PLD accountant returned {value!r}")
    return value


def rdp_dp_accounting_epsilon(segments: list[Segment], delta: float) -> float:
    """Epsilon from ``dp_accounting``'s RDP accountant (orders up to 1024); torch-free."""
    if not segments:
        return 0.0
    if _has_noiseless_step(segments):
        return math.inf
    require("dp_accounting", extra="all")
    from dp_accounting.rdp import RdpAccountant

    dp_logger = logging.getLogger("absl")
    previous = dp_logger.level
    dp_logger.setLevel(logging.ERROR)
    try:
        accountant = RdpAccountant()
        accountant.compose(dp_accounting_event(segments))
        return float(accountant.get_epsilon(delta))
    finally:
        dp_logger.setLevel(previous)
