"""Every place the Lightning adapter reads Lightning internals (2.6.x), so a host upgrade breaks here first."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import lightning.pytorch as pl

__all__ = ["is_fit_training", "is_fitting", "should_update_logs", "uses_gradient_accumulation_scheduler"]

logger = logging.getLogger(__name__)


def is_fitting(trainer: pl.Trainer) -> bool:
    """Whether the trainer runs ``fit`` (not validate/test/predict)."""
    from lightning.pytorch.trainer.states import TrainerFn

    return trainer.state.fn == TrainerFn.FITTING


def is_fit_training(trainer: pl.Trainer) -> bool:
    """Whether the trainer is inside ``fit`` and in its training stage (the train dataloader is being processed)."""
    from lightning.pytorch.trainer.states import RunningStage, TrainerFn

    return trainer.state.fn == TrainerFn.FITTING and trainer.state.stage == RunningStage.TRAINING


def should_update_logs(trainer: pl.Trainer) -> bool:
    """Whether Lightning flushes logged step metrics to its loggers after the current optimizer step.

    Computing epsilon costs an accountant evaluation, so privacy metrics are only computed on the steps whose logs
    reach a logger. Falls back to ``True`` (compute every step) if the internal attribute moves.
    """
    connector: Any = getattr(trainer, "_logger_connector", None)
    try:
        return bool(connector.should_update_logs)
    except AttributeError:  # pragma: no cover - only on a future Lightning
        return True


def uses_gradient_accumulation_scheduler(trainer: pl.Trainer) -> bool:
    """Whether a ``GradientAccumulationScheduler`` changes the accumulation steps during training."""
    from lightning.pytorch.callbacks import GradientAccumulationScheduler

    callbacks: list[Any] = getattr(trainer, "callbacks", [])
    return any(isinstance(cb, GradientAccumulationScheduler) for cb in callbacks)
