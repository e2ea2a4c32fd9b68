"""The DP-SGD mechanism: Poisson batches, per-example clipping, one Gaussian noise draw per update.

Framework-free (torch and opacus only): the Hugging Face and Lightning adapters translate their host's events into
calls on :class:`DPGradientEngine` and :class:`PoissonBatchSampler`. Accounting lives in ``shared_core.accounting``.
"""

from __future__ import annotations

from shared_core.dp._engine import DPGradientEngine, UpdateResult
from shared_core.dp._plan import DPPlan
from shared_core.dp._sampler import (
    EMPTY_BATCH_KEY,
    PoissonBatchSampler,
    collate_or_empty,
    is_empty_batch,
    updates_per_epoch,
)
from shared_core.dp.losses import (
    IGNORE_INDEX,
    PerExampleLossFn,
    causal_lm_per_example_loss,
    sequence_classification_per_example_loss,
)

__all__ = [
    "EMPTY_BATCH_KEY",
    "IGNORE_INDEX",
    "DPGradientEngine",
    "DPPlan",
    "PerExampleLossFn",
    "PoissonBatchSampler",
    "UpdateResult",
    "causal_lm_per_example_loss",
    "collate_or_empty",
    "is_empty_batch",
    "sequence_classification_per_example_loss",
    "updates_per_epoch",
]
