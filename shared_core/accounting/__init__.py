"""Privacy accounting: epsilon of DP-SGD runs, noise calibration, the per-job privacy ledger and the budget.

Nothing here imports torch at import time; the opacus accountants (``prv``, ``rdp``) load it on first use, the
``dp_accounting`` ones (``pld`` and the RDP cross-check) never do.

Note:
    Neighbouring datasets differ by adding or removing one example; batches are Poisson-sampled with rate ``q``
    per optimizer update; ``delta`` defaults to ``1 / (10 N)``.
"""

from __future__ import annotations

from shared_core.accounting.calibration import (
    calibrate_noise_multiplier,
    check_planned_budget,
    max_steps_within_budget,
)
from shared_core.accounting.epsilon import (
    ACCOUNTANTS,
    EpsilonResult,
    compute_epsilon,
    compute_epsilon_detailed,
    compute_epsilon_segments,
    epsilon_cross_check,
)
from shared_core.accounting.ledger import PrivacyLedger, default_delta

__all__ = [
    "ACCOUNTANTS",
    "EpsilonResult",
    "PrivacyLedger",
    "calibrate_noise_multiplier",
    "check_planned_budget",
    "compute_epsilon",
    "compute_epsilon_detailed",
    "compute_epsilon_segments",
    "default_delta",
    "epsilon_cross_check",
    "max_steps_within_budget",
]
