"""The one DP settings object shared by every adapter."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal

from shared_core.errors import ConfigError

__all__ = ["ACCOUNTANTS", "DPConfig"]

ACCOUNTANTS = ("prv", "rdp", "pld")
Accountant = Literal["prv", "rdp", "pld"]


@dataclass(frozen=True, kw_only=True)
class DPConfig:
    """Settings of DP-SGD for one training run.

    Give ``target_epsilon`` (the noise multiplier is then calibrated to the run's real horizon), or
    ``noise_multiplier`` (epsilon is then reported; a ``target_epsilon`` given as well acts as the budget stop).

    Note:
        Neighbouring datasets differ by adding or removing one example; batches are Poisson-sampled with
        rate ``q = expected_batch_size / N``; ``delta`` defaults to at most ``1 / (10 N)``.

    Args:
        noise_multiplier: Gaussian noise std as a multiple of ``max_grad_norm`` (sigma).
        max_grad_norm: Per-example clip norm C over all trainable parameters together.
        target_epsilon: Privacy budget; training stops before an update would exceed it.
        target_delta: Delta of the (epsilon, delta) guarantee; ``None`` means ``1 / (10 N)``.
        accountant: Accountant whose epsilon is reported and certified (``prv``, ``rdp`` or ``pld``).
        expected_batch_size: Public expected logical (global) batch per optimizer update, ``B = q N``.
            ``None`` takes the host's per-device batch x accumulation x world size.
        poisson_sampling: Replace the host's sampler with Poisson sampling (the only sampler accounted for).
        allow_unverified_sampler: Opt in to training when Poisson sampling cannot be put in place; every
            report then says that its epsilon does not hold for the sampler used.
        noise_seed: Fixed seed for the noise generator (tests only); ``None`` seeds from the OS.
        preflight: Check per-example gradients numerically and refuse unsupported layers before step one.
    """

    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    target_epsilon: float | None = None
    target_delta: float | None = None
    accountant: Accountant = "prv"
    expected_batch_size: int | None = None
    poisson_sampling: bool = True
    allow_unverified_sampler: bool = False
    noise_seed: int | None = None
    preflight: bool = True

    def __post_init__(self) -> None:
        if self.noise_multiplier is None and self.target_epsilon is None:
            raise ConfigError(
                "DPConfig needs target_epsilon (to calibrate the noise) or noise_multiplier (to report epsilon); "
                "both are None. Example: DPConfig(target_epsilon=8.0, max_grad_norm=1.0)"
            )
        if self.noise_multiplier is not None and not (
            math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0
        ):
            raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {self.noise_multiplier!r}")
        if not (math.isfinite(self.max_grad_norm) and self.max_grad_norm > 0):
            raise ConfigError(
                f"max_grad_norm must be a finite number > 0 (the per-example clip norm C), got {self.max_grad_norm!r}"
            )
        if self.target_epsilon is not None and not (math.isfinite(self.target_epsilon) and self.target_epsilon > 0):
            raise ConfigError(f"target_epsilon must be a finite number > 0, got {self.target_epsilon!r}")
        if self.target_delta is not None and not (0 < self.target_delta < 1):
            raise ConfigError(
                f"target_delta must lie in (0, 1), got {self.target_delta!r}; leave it None for 1/(10 N)"
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {self.accountant!r}")
        if self.expected_batch_size is not None and self.expected_batch_size < 1:
            raise ConfigError(f"expected_batch_size must be a positive integer, got {self.expected_batch_size!r}")
        if not self.poisson_sampling and not self.allow_unverified_sampler:
            raise ConfigError(
                "poisson_sampling=False voids the accounted guarantee; set allow_unverified_sampler=True to train "
                "anyway (every report will say its epsilon does not hold), or keep poisson_sampling=True"
            )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DPConfig:
        """Build from a dict, refusing unknown keys by name."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown DPConfig key(s): {', '.join(unknown)}; known keys: {', '.join(sorted(known))}")
        return cls(**data)

    def resolve_delta(self, num_examples: int) -> float:
        """Delta to use for ``num_examples`` training rows: the configured one or ``1 / (10 N)``."""
        if num_examples < 1:
            raise ConfigError(f"the training set is empty (N={num_examples}); DP training needs at least one row")
        if self.target_delta is not None:
            return self.target_delta
        return 1.0 / (10.0 * num_examples)
