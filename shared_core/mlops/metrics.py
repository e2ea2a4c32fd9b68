"""What a tracker receives each logging step: the guide's metric keys, mapped from a trainer's log dict.

The trainer side (e.g. the DP callback of ``tensafe_hf``) guarantees that by the time a log dict reaches a tracker
callback it holds ``loss``, ``learning_rate``, ``grad_norm`` (the norm of the *noised* update), ``privacy/*`` and, for
evaluation, ``eval_loss``. Only those are published; every other gradient statistic is dropped on purpose, since
anything not computed from noised quantities is outside the DP guarantee.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "GUIDE_METRIC_KEYS",
    "LogThrottle",
    "PrivacyHistory",
    "map_trainer_logs",
]

# trainer log key -> the guide's key
_TRAIN_KEYS = {
    "loss": "train/loss",
    "learning_rate": "train/learning_rate",
    "grad_norm": "train/gradient_norm",
}
_PRIVACY_KEYS = ("privacy/epsilon_spent", "privacy/delta", "privacy/noise_multiplier", "privacy/steps_remaining")

GUIDE_METRIC_KEYS: tuple[str, ...] = (*_TRAIN_KEYS.values(), *_PRIVACY_KEYS, "eval/loss", "eval/perplexity")
"""Every metric key a TenSafe tracker callback publishes, exactly as the MLOps guide names them."""

_MAX_EXP_ARG = 700.0  # exp(700) ~ 1e304; beyond that perplexity is reported as +inf


def _number(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    item = getattr(value, "item", None)  # 1-element tensors / numpy scalars, without importing torch
    if callable(item) and getattr(value, "numel", lambda: 1)() == 1:
        try:
            result = item()
        except (TypeError, ValueError, RuntimeError):
            return None
        return float(result) if isinstance(result, numbers.Real) and not isinstance(result, bool) else None
    return None


def map_trainer_logs(logs: Mapping[str, Any], *, include_privacy: bool = True) -> dict[str, float]:
    """Translate one trainer log dict into the guide's metric keys.

    Args:
        logs: The dict a trainer hands to its log hook (``loss``, ``learning_rate``, ``grad_norm``,
            ``privacy/*``, ``eval_loss`` ...). Other keys are ignored.
        include_privacy: Publish the ``privacy/*`` keys (``log_privacy_metrics`` of the configs).

    Returns:
        ``{guide key: float}``; ``eval/perplexity`` is ``exp(eval_loss)`` (``inf`` when that overflows). Values that
        are not finite-or-infinite real numbers are dropped.
    """
    out: dict[str, float] = {}
    for src, dst in _TRAIN_KEYS.items():
        value = _number(logs.get(src))
        if value is not None and not math.isnan(value):
            out[dst] = value
    if include_privacy:
        for key in _PRIVACY_KEYS:
            value = _number(logs.get(key))
            if value is not None and not math.isnan(value):
                out[key] = value
    eval_loss = _number(logs.get("eval_loss"))
    if eval_loss is not None and not math.isnan(eval_loss):
        out["eval/loss"] = eval_loss
        out["eval/perplexity"] = math.exp(eval_loss) if eval_loss < _MAX_EXP_ARG else math.inf
    return out


@dataclass
class LogThrottle:
    """Decides on which steps training metrics are published (every ``log_frequency`` steps, plus the last one).

    Evaluation metrics are always published. ``log_frequency`` counts optimizer steps, independently of the
    trainer's own logging interval: a record is published when at least ``log_frequency`` steps have passed since
    the previous published one.
    """

    log_frequency: int
    last_step: int | None = None

    def __post_init__(self) -> None:
        if self.log_frequency < 1:
            from shared_core.errors import ConfigError

            raise ConfigError(f"log_frequency must be a positive number of steps, got {self.log_frequency!r}")

    def should_log(self, step: int, *, is_eval: bool = False, is_last: bool = False) -> bool:
        """Whether to publish the record of ``step``; remembers the step when it says yes to a training record."""
        if is_eval:
            return True
        if step == self.last_step:
            return False  # one training record per step (the Trainer may log several dicts at one step)
        if is_last or self.last_step is None or step - self.last_step >= self.log_frequency or step < self.last_step:
            self.last_step = step
            return True
        return False


@dataclass
class PrivacyHistory:
    """The (step, epsilon, loss) points seen during training, for the privacy-utility plot."""

    points: list[tuple[int, float, float]] = field(default_factory=list)

    def add(self, step: int, metrics: Mapping[str, float]) -> None:
        """Record a point when ``metrics`` carries both ``privacy/epsilon_spent`` and ``train/loss``."""
        eps, loss = metrics.get("privacy/epsilon_spent"), metrics.get("train/loss")
        if eps is not None and loss is not None:
            self.points.append((step, eps, loss))
