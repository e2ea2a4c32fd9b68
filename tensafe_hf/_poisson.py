"""The Trainer's data path under DP: a plain Poisson DataLoader and the public plan it derives from.

The loader is deliberately NOT passed through ``accelerator.prepare``: accelerate would re-shard a rank-aware batch
sampler and change the real sampling rate (DP_NOTES 1.3, pitfall 2). Inputs are moved to the device by the training
step instead.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shared_core.config import DPConfig
from shared_core.dp import DPPlan, PoissonBatchSampler, collate_or_empty, updates_per_epoch
from shared_core.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader
    from transformers import Trainer

__all__ = ["DPPlan", "build_poisson_dataloader", "make_plan", "poisson_possible"]

logger = logging.getLogger(__name__)


def poisson_possible(trainer: Trainer) -> tuple[bool, str]:
    """Whether a Poisson sampler can replace the host's, and if not, why."""
    import torch

    dataset = trainer.train_dataset
    if dataset is None:
        return False, "no train_dataset"
    if isinstance(dataset, torch.utils.data.IterableDataset):
        return False, "an IterableDataset cannot be sampled per example"
    try:
        len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return False, "the train_dataset has no length"
    return True, ""


def make_plan(trainer: Trainer, dp_config: DPConfig, *, sampler: str) -> DPPlan:
    """Derive N, B, q and the epoch length from the Trainer's arguments and dataset."""
    args = trainer.args
    try:
        n = len(trainer.train_dataset)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError(
            "the train_dataset has no length, so the sampling rate q = B / N cannot be computed; give it __len__"
        ) from None
    if n < 1:
        raise ConfigError("the train_dataset is empty; DP training needs at least one example")
    ga = max(1, int(args.gradient_accumulation_steps))
    world = max(1, int(args.world_size))
    b = dp_config.expected_batch_size or args.per_device_train_batch_size * ga * world
    if b > n:
        raise ConfigError(
            f"the expected batch size B={b} exceeds the {n} training examples; lower per_device_train_batch_size / "
            "gradient_accumulation_steps or DPConfig.expected_batch_size so that B <= N"
        )
    return DPPlan(
        num_examples=n,
        expected_batch_size=int(b),
        sample_rate=b / n,
        updates_per_epoch=updates_per_epoch(num_examples=n, expected_batch_size=b),
        accumulation_steps=ga,
        world_size=world,
        rank=int(args.process_index),
        sampler=sampler,
    )


def build_poisson_dataloader(trainer: Trainer, plan: DPPlan, *, seed: int | None) -> DataLoader:
    """A plain DataLoader whose batch sampler draws a Poisson logical batch per update, split into micro-batches."""
    from torch.utils.data import DataLoader
    from transformers.utils import is_datasets_available

    dataset: Any = trainer.train_dataset
    collator = trainer.data_collator
    if is_datasets_available():
        import datasets

        if isinstance(dataset, datasets.Dataset):
            dataset = trainer._remove_unused_columns(dataset, description="Training")
        else:
            collator = trainer._get_collator_with_removed_columns(collator, description="Training")
    else:
        collator = trainer._get_collator_with_removed_columns(collator, description="Training")
    sampler = PoissonBatchSampler(
        num_examples=plan.num_examples,
        sample_rate=plan.sample_rate,
        num_updates=plan.updates_per_epoch,
        micro_batches_per_update=plan.accumulation_steps,
        rank=plan.rank,
        world_size=plan.world_size,
        seed=seed,
    )
    args = trainer.args
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_or_empty(collator),
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
    )
