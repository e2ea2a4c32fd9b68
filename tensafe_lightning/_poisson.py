"""The training data path under DP: a plain Poisson DataLoader built from the user's, and the public plan behind it.

Lightning hands every train dataloader to ``Strategy.process_dataloader`` after it may have injected a
``DistributedSampler``; the TenSafe strategies replace the whole loader there with one whose batch sampler is a
rank-aware :class:`~shared_core.dp.PoissonBatchSampler` over the same dataset, so whatever sampler Lightning or the
user put in place is dropped for training (validation and test loaders are left alone).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from shared_core.config import DPConfig
from shared_core.dp import DPPlan, PoissonBatchSampler, collate_or_empty, updates_per_epoch
from shared_core.errors import ConfigError

if TYPE_CHECKING:
    from torch.utils.data import DataLoader

__all__ = ["DPPlan", "build_poisson_dataloader", "make_plan", "poisson_possible"]

logger = logging.getLogger(__name__)


def poisson_possible(dataloader: object) -> tuple[bool, str]:
    """Whether a Poisson sampler can replace the loader's sampler, and if not, why."""
    from torch.utils.data import DataLoader, IterableDataset

    if not isinstance(dataloader, DataLoader):
        return False, f"the train dataloader is a {type(dataloader).__name__}, not a torch DataLoader"
    if isinstance(dataloader.dataset, IterableDataset):
        return False, "an IterableDataset cannot be sampled per example"
    try:
        len(dataloader.dataset)  # type: ignore[arg-type]
    except TypeError:
        return False, "the training dataset has no length"
    return True, ""


def make_plan(
    dataloader: Any,
    dp_config: DPConfig,
    *,
    accumulation_steps: int,
    world_size: int,
    rank: int,
    sampler: str,
) -> DPPlan:
    """Derive N, B, q and the epoch length from the user's train dataloader and the Trainer's settings.

    ``B`` is ``DPConfig.expected_batch_size`` or, when that is ``None``, the loader's ``batch_size`` x
    ``accumulate_grad_batches`` x world size.
    """
    try:
        n = len(dataloader.dataset)
    except (TypeError, AttributeError):
        raise ConfigError(
            "the training dataset has no length, so the sampling rate q = B / N cannot be computed; give it __len__"
        ) from None
    if n < 1:
        raise ConfigError("the training dataset is empty; DP training needs at least one example")
    ga = max(1, int(accumulation_steps))
    world = max(1, int(world_size))
    per_device = getattr(dataloader, "batch_size", None)
    if dp_config.expected_batch_size is None and not per_device:
        raise ConfigError(
            "the train dataloader has no batch_size (a custom batch_sampler?), so the expected batch size cannot be "
            "derived; set DPConfig(expected_batch_size=...) to the public expected global batch per update"
        )
    b = (
        dp_config.expected_batch_size
        if dp_config.expected_batch_size is not None
        else int(per_device or 0) * ga * world
    )
    if b > n:
        raise ConfigError(
            f"the expected batch size B={b} exceeds the {n} training examples; lower the DataLoader batch_size / "
            "accumulate_grad_batches or DPConfig.expected_batch_size so that B <= N"
        )
    return DPPlan(
        num_examples=n,
        expected_batch_size=int(b),
        sample_rate=b / n,
        updates_per_epoch=updates_per_epoch(num_examples=n, expected_batch_size=b),
        accumulation_steps=ga,
        world_size=world,
        rank=int(rank),
        sampler=sampler,
    )


def build_poisson_dataloader(dataloader: DataLoader, plan: DPPlan, *, seed: int | None) -> DataLoader:
    """A DataLoader over the same dataset whose batch sampler draws one Poisson logical batch per update.

    Each logical batch is split into ``plan.accumulation_steps`` micro-batches; an empty one is collated into the
    empty-batch marker (it still takes part in the step). Worker settings and the collate function carry over.
    """
    from torch.utils.data import DataLoader

    sampler = PoissonBatchSampler(
        num_examples=plan.num_examples,
        sample_rate=plan.sample_rate,
        num_updates=plan.updates_per_epoch,
        micro_batches_per_update=plan.accumulation_steps,
        rank=plan.rank,
        world_size=plan.world_size,
        seed=seed,
    )
    workers = int(dataloader.num_workers)
    extra: dict[str, Any] = {}
    if workers > 0:
        extra = {
            "persistent_workers": dataloader.persistent_workers,
            "prefetch_factor": dataloader.prefetch_factor,
            "multiprocessing_context": dataloader.multiprocessing_context,
        }
    return DataLoader(
        dataloader.dataset,
        batch_sampler=sampler,
        collate_fn=collate_or_empty(dataloader.collate_fn),
        num_workers=workers,
        pin_memory=dataloader.pin_memory,
        timeout=dataloader.timeout,
        worker_init_fn=dataloader.worker_init_fn,
        **extra,
    )
