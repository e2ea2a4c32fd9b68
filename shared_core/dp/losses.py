"""Per-example losses: one scalar per example that depends on that example only (DP_NOTES pitfall 5).

A host's batch loss (a mean over the batch, or over all tokens of a whole accumulation window, across ranks) lets one
example change another's gradient, so the DP step never uses it. These functions reduce within each example only and
return a 1-D tensor; the engine sums it before backward.

A model family these do not cover plugs in a function with the signature of :data:`PerExampleLossFn`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from shared_core.errors import ConfigError

if TYPE_CHECKING:
    import torch

__all__ = [
    "IGNORE_INDEX",
    "PerExampleLossFn",
    "causal_lm_per_example_loss",
    "sequence_classification_per_example_loss",
]

IGNORE_INDEX = -100

#: ``fn(logits, labels) -> 1-D tensor`` with one loss per example.
PerExampleLossFn = Callable[[Any, Any], "torch.Tensor"]


def causal_lm_per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Own-token mean of the shifted next-token cross-entropy of each example, ignoring ``-100`` labels.

    Args:
        logits: ``(batch, seq, vocab)``.
        labels: ``(batch, seq)``; position t is predicted from positions < t (the usual shift by one).

    Returns:
        ``(batch,)`` float32 losses; an example with no label token gets loss 0 (and a zero gradient).
    """
    import torch.nn.functional as F

    if logits.dim() != 3 or labels.dim() != 2 or logits.shape[:2] != labels.shape:
        raise ConfigError(
            f"causal-LM per-example loss needs logits (batch, seq, vocab) and labels (batch, seq); got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}. Pass per_example_loss= for other model outputs."
        )
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    token_loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]),
        shift_labels.reshape(-1),
        ignore_index=IGNORE_INDEX,
        reduction="none",
    ).view(shift_labels.shape)
    mask = (shift_labels != IGNORE_INDEX).to(token_loss.dtype)
    counts = mask.sum(dim=1)
    return (token_loss * mask).sum(dim=1) / counts.clamp(min=1.0)


def sequence_classification_per_example_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-example loss of a sequence classifier.

    Integer labels: cross-entropy. Float labels with one output: squared error (regression). Float labels of the
    logits' shape: binary cross-entropy averaged over the example's labels (multi-label).

    Returns:
        ``(batch,)`` float32 losses.
    """
    import torch.nn.functional as F

    logits = logits.float()
    if labels.dtype.is_floating_point:
        if logits.shape[-1] == 1 and labels.dim() == 1:
            return (logits.view(-1) - labels.float()).pow(2)
        if labels.shape == logits.shape:
            per_label = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
            return per_label.reshape(per_label.shape[0], -1).mean(dim=1)
        raise ConfigError(
            f"float labels of shape {tuple(labels.shape)} do not match logits {tuple(logits.shape)}; "
            "pass per_example_loss= for this model"
        )
    if logits.dim() != 2 or labels.dim() != 1:
        raise ConfigError(
            f"sequence-classification loss needs logits (batch, classes) and labels (batch,); got "
            f"{tuple(logits.shape)} and {tuple(labels.shape)}. Pass per_example_loss= for other model outputs."
        )
    return F.cross_entropy(logits, labels, reduction="none")
