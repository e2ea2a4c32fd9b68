"""Poisson sampling of logical batches, split into the host's micro-batches.

Each optimizer update draws a fresh logical batch: every example of this rank's shard joins independently with
probability ``q``. Ranks hold disjoint shards (``rank::world_size``) and independent generators, so the global batch is
exactly a Poisson sample of the whole training set with rate ``q`` (DP_NOTES pitfalls 1-3). The logical batch is split
into ``micro_batches_per_update`` micro-batches, some possibly empty; an empty one is still yielded (as an empty index
list) so that every rank runs the same number of micro-steps and an empty draw still becomes a noisy, counted update.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from shared_core.errors import ConfigError

__all__ = ["EMPTY_BATCH_KEY", "PoissonBatchSampler", "collate_or_empty", "is_empty_batch", "updates_per_epoch"]

EMPTY_BATCH_KEY = "_tensafe_empty_batch"


def updates_per_epoch(*, num_examples: int, expected_batch_size: float) -> int:
    """Number of logical batches that make one epoch in expectation: ``ceil(N / B)``."""
    return max(1, math.ceil(num_examples / expected_batch_size))


def is_empty_batch(batch: Any) -> bool:
    """True for the marker batch that stands for an empty Poisson micro-batch."""
    return isinstance(batch, dict) and EMPTY_BATCH_KEY in batch


def collate_or_empty(collate_fn: Callable[[list[Any]], Any]) -> Callable[[list[Any]], Any]:
    """Wrap a collator so an empty index list yields the empty-batch marker (collators fail on empty lists)."""

    def _collate(items: list[Any]) -> Any:
        if len(items) == 0:
            return {EMPTY_BATCH_KEY: True}
        return collate_fn(items)

    return _collate


class PoissonBatchSampler:
    """Batch sampler for ``torch.utils.data.DataLoader(batch_sampler=...)``.

    Note:
        Sampling is Poisson with rate ``sample_rate`` over the whole dataset (all ranks together). The length is
        ``num_updates * micro_batches_per_update`` so a host that derives its horizon from ``len(dataloader)`` runs
        ``num_updates`` optimizer updates per epoch.

    Args:
        num_examples: Size N of the full training set (all ranks).
        sample_rate: Inclusion probability q of each example in each logical batch.
        num_updates: Logical batches (optimizer updates) per epoch.
        micro_batches_per_update: Micro-batches each logical batch is split into (the host's accumulation steps).
        rank: This process' rank; its shard is ``range(rank, N, world_size)``.
        world_size: Number of processes.
        seed: Seed for tests; ``None`` seeds each rank's generator independently from ``os.urandom``.
    """

    def __init__(
        self,
        *,
        num_examples: int,
        sample_rate: float,
        num_updates: int,
        micro_batches_per_update: int = 1,
        rank: int = 0,
        world_size: int = 1,
        seed: int | None = None,
    ) -> None:
        import torch

        if num_examples < 1:
            raise ConfigError(f"the training set is empty (N={num_examples}); DP training needs at least one row")
        if not (0 < sample_rate <= 1):
            raise ConfigError(
                f"sample rate q must lie in (0, 1], got {sample_rate!r}; the expected batch size may not exceed the "
                "number of training examples"
            )
        if num_updates < 1 or micro_batches_per_update < 1:
            raise ConfigError("num_updates and micro_batches_per_update must be >= 1")
        if not (0 <= rank < world_size):
            raise ConfigError(f"rank {rank} is outside world_size {world_size}")
        self.num_examples = num_examples
        self.sample_rate = float(sample_rate)
        self.num_updates = num_updates
        self.micro_batches_per_update = micro_batches_per_update
        self.rank = rank
        self.world_size = world_size
        self.seeded_from_os = seed is None
        self._shard = torch.arange(rank, num_examples, world_size)
        self._generator = torch.Generator()
        if seed is None:
            self._generator.manual_seed(int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1))
        else:
            # Distinct, deterministic streams per rank (identical streams would correlate inclusions across shards).
            self._generator.manual_seed(int(seed) * 1_000_003 + rank)

    def __len__(self) -> int:
        return self.num_updates * self.micro_batches_per_update

    def draw_logical_batch(self) -> list[int]:
        """Draw one logical batch of this rank's shard: each index kept independently with probability q."""
        import torch

        keep = torch.rand(self._shard.shape[0], generator=self._generator) < self.sample_rate
        return self._shard[keep].tolist()

    def __iter__(self) -> Iterator[list[int]]:
        for _ in range(self.num_updates):
            yield from _split(self.draw_logical_batch(), self.micro_batches_per_update)


def _split(indices: Sequence[int], parts: int) -> Iterator[list[int]]:
    """Split into ``parts`` contiguous chunks whose sizes differ by at most one (some may be empty)."""
    n = len(indices)
    base, extra = divmod(n, parts)
    start = 0
    for i in range(parts):
        size = base + (1 if i < extra else 0)
        yield list(indices[start : start + size])
        start += size
