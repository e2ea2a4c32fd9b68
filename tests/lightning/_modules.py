"""Tiny real LightningModules, data and recorders for the Lightning adapter tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as L
import torch
from lightning.pytorch.loggers import Logger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tensafe_lightning  # noqa: F401  (registers the strategy names)
from shared_core.dp import is_empty_batch

QUIET: dict[str, Any] = {
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "logger": False,
    "enable_checkpointing": False,
    "num_sanity_val_steps": 0,
}


def regression_data(n: int = 24, d: int = 6, seed: int = 0) -> TensorDataset:
    """``(x, y, index)`` rows; the index lets tests see which examples a Poisson batch drew."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    y = torch.randn(n, generator=g) * 3
    return TensorDataset(x, y, torch.arange(n))


def make_net(d: int = 6, hidden: int = 8, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, hidden), nn.Tanh(), nn.Linear(hidden, 1))


def squared_errors(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (net(x).squeeze(-1) - y) ** 2


class PerExampleModule(L.LightningModule):
    """Implements ``per_example_loss(batch)``; ``training_step`` returns the batch mean and logs it."""

    def __init__(self, *, lr: float = 0.1, d: int = 6, hidden: int = 8, seed: int = 0, zero_grad: bool = False):
        super().__init__()
        self.net = make_net(d, hidden, seed)
        self.lr = lr
        self.zero_grad_loss = zero_grad

    def per_example_loss(self, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        losses = squared_errors(self.net, x, y)
        return losses * 0.0 if self.zero_grad_loss else losses

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss = self.per_example_loss(batch).mean()
        self.log("user/train_loss", loss)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr)


class DictOutputModule(PerExampleModule):
    """Returns ``{"loss", "per_example_loss"}`` from ``training_step`` (no ``per_example_loss`` method)."""

    per_example_loss = None  # type: ignore[assignment]

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        x, y, _ = batch
        losses = squared_errors(self.net, x, y)
        return {"loss": losses.mean(), "per_example_loss": losses}


class MeanOnlyModule(PerExampleModule):
    """The stock Lightning shape: only a batch-mean loss."""

    per_example_loss = None  # type: ignore[assignment]

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y, _ = batch
        return squared_errors(self.net, x, y).mean()


class StepRecorder(L.Callback):
    """Records, per training batch, the example indices, the parameters before, and the update the optimizer saw."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.before: list[list[torch.Tensor]] = []
        self.updates: list[list[torch.Tensor]] = []
        self.after_backward_grads: list[torch.Tensor | None] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, idx: int) -> None:
        self.batches.append([] if is_empty_batch(batch) else [int(i) for i in batch[-1]])
        self.before.append([p.detach().clone() for p in pl_module.parameters()])

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.after_backward_grads.extend(p.grad for p in pl_module.parameters())

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        self.updates.append([p.grad.detach().clone() for p in pl_module.parameters()])


class RecordingLogger(Logger):
    """A real Lightning logger that keeps every metric it is given."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[tuple[int | None, dict[str, float]]] = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> str:
        return "0"

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        self.records.append((step, dict(metrics)))

    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        pass

    def keys(self) -> set[str]:
        return {k for _, m in self.records for k in m}

    def last(self, key: str) -> float:
        return [m[key] for _, m in self.records if key in m][-1]


def loader(dataset: TensorDataset, batch_size: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=True)


def naive_update(
    net_factory: Callable[[], nn.Module],
    params: list[torch.Tensor],
    rows: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    clip: float,
    expected_batch: float,
    noise: torch.Tensor | None,
) -> list[torch.Tensor]:
    """The DP update by its definition: per example autograd, clip over all params, sum, add noise, divide by B."""
    net = net_factory()
    with torch.no_grad():
        for p, v in zip(net.parameters(), params, strict=True):
            p.copy_(v)
    total = [torch.zeros_like(p, dtype=torch.float64) for p in params]
    for x, y in rows:
        loss = squared_errors(net, x.unsqueeze(0), y.unsqueeze(0)).sum()
        grads = torch.autograd.grad(loss, list(net.parameters()))
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads))
        factor = min(1.0, clip / (float(norm) + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += g.double() * factor
    flat = torch.cat([t.reshape(-1) for t in total])
    if noise is not None:
        flat = flat + noise.double()
    flat = flat / expected_batch
    out, offset = [], 0
    for p in params:
        out.append(flat[offset : offset + p.numel()].view_as(p).float())
        offset += p.numel()
    return out
