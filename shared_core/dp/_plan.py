"""The public plan of one DP run (N, B, q, sampler), shared by both adapters, and the ledger it opens.

Each adapter derives a :class:`DPPlan` from its host's settings (the Trainer's arguments, Lightning's
``accumulate_grad_batches``); what the ledger records about the run is then decided here, once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from shared_core.config import DPConfig

__all__ = ["DPPlan"]


@dataclass(frozen=True)
class DPPlan:
    """Public quantities of one run, derived once from the host's settings.

    Attributes:
        num_examples: N, rows of the whole training set.
        expected_batch_size: B, the public expected global logical batch per update.
        sample_rate: q = B / N.
        updates_per_epoch: Logical batches per epoch, ``ceil(N / B)``.
        accumulation_steps: Micro-batches per update (the host's gradient accumulation).
        world_size: Processes.
        rank: This process.
        sampler: ``"poisson"``, or ``"unverified:<what>"`` when the host's sampler had to be kept.
    """

    num_examples: int
    expected_batch_size: int
    sample_rate: float
    updates_per_epoch: int
    accumulation_steps: int
    world_size: int
    rank: int
    sampler: str

    @property
    def sampler_verified(self) -> bool:
        """Whether the accounting covers the sampler that actually runs."""
        return self.sampler == "poisson"

    def ledger_settings(self, dp_config: DPConfig, *, sampling_seed: int | None) -> dict[str, Any]:
        """The :class:`~shared_core.accounting.PrivacyLedger` settings of this run (all but sigma and the horizon).

        Args:
            dp_config: The run's DP settings.
            sampling_seed: The Poisson sampler's seed the adapter was given (``None``: seeded from the OS).
        """
        return {
            "target_epsilon": dp_config.target_epsilon,
            "delta": dp_config.resolve_delta(self.num_examples),
            "accountant": dp_config.accountant,
            "num_examples": self.num_examples,
            "sample_rate": self.sample_rate,
            "max_grad_norm": dp_config.max_grad_norm,
            "expected_batch_size": self.expected_batch_size,
            "sampler": self.sampler,
            "noise_seed_fixed": dp_config.noise_seed is not None,
            "sampling_seed_fixed": sampling_seed is not None,
        }
