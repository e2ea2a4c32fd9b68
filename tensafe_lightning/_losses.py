"""Where the per-example losses of a ``LightningModule`` come from, and the checks on them.

A module opts in one of two documented ways:

* it implements ``per_example_loss(batch) -> Tensor[B]`` (one loss per example, each depending on its own example
  only); its ``training_step`` then still runs, without gradients, for its own logging and the progress-bar loss;
* or its ``training_step`` returns ``{"loss": ..., "per_example_loss": Tensor[B]}`` (one forward per micro-batch).

A ``training_step`` that only returns a batch-mean loss is refused: a mean lets examples influence each other and
cannot be clipped per example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from shared_core.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    import torch

__all__ = [
    "PER_EXAMPLE_KEY",
    "as_mapping",
    "batch_size_of",
    "check_per_example_losses",
    "detached_output",
    "has_per_example_loss",
    "losses_from_output",
]

PER_EXAMPLE_KEY = "per_example_loss"

_HOW_TO = (
    "implement `def per_example_loss(self, batch) -> Tensor` returning one loss per example (shape [batch]), or "
    "return {'loss': loss, 'per_example_loss': per_example_losses} from training_step"
)


def has_per_example_loss(module: Any) -> bool:
    """Whether the module implements ``per_example_loss(batch)``."""
    return callable(getattr(module, PER_EXAMPLE_KEY, None))


def check_per_example_losses(losses: Any, *, where: str) -> torch.Tensor:
    """Refuse anything but a 1-D tensor with one loss per example.

    Raises:
        ConfigError: naming ``where`` the value came from and how to fix it.
    """
    import torch

    if not isinstance(losses, torch.Tensor):
        raise ConfigError(f"{where} must return a torch.Tensor of per-example losses, got {type(losses).__name__}")
    if losses.dim() != 1:
        raise ConfigError(
            f"{where} returned shape {tuple(losses.shape)}; it must be 1-D with one loss per example. A batch-mean "
            f"(0-D) loss lets examples influence each other and cannot be clipped per example: {_HOW_TO}"
        )
    if not losses.requires_grad:
        raise PrivacyError(
            f"{where} returned per-example losses that do not require grad; compute them from the model's output "
            "with gradients enabled (no torch.no_grad / detach)"
        )
    return losses


def losses_from_output(output: Any) -> torch.Tensor:
    """Per-example losses from a ``training_step`` output, or a :class:`ConfigError` that says how to provide them."""
    if isinstance(output, Mapping) and PER_EXAMPLE_KEY in output:
        return check_per_example_losses(output[PER_EXAMPLE_KEY], where="training_step()['per_example_loss']")
    got = type(output).__name__ if not isinstance(output, Mapping) else f"a dict with keys {sorted(output)}"
    raise ConfigError(f"TenSafe DP needs per-example losses, but training_step returned {got}. To fix: {_HOW_TO}")


def detached_output(output: Any, losses: torch.Tensor) -> Any:
    """The step output handed back to Lightning: every tensor detached, ``loss`` filled from the losses if missing.

    The gradients were already taken per example; Lightning's own backward of the returned loss is a no-op.
    """
    import torch

    mean = losses.detach().float().mean()
    if isinstance(output, torch.Tensor):
        return output.detach()
    if isinstance(output, Mapping):
        out = {k: (v.detach() if isinstance(v, torch.Tensor) else v) for k, v in output.items()}
        out["loss"] = out["loss"].detach() if isinstance(out.get("loss"), torch.Tensor) else mean
        return out
    return mean


def as_mapping(batch: Any) -> tuple[Mapping[str, Any], Callable[[Mapping[str, Any]], Any]]:
    """View a collated batch as a mapping (what the per-example gradient check slices), with the way back.

    Tuples, lists and named tuples become ``{"0": ..., "1": ...}``; a bare tensor becomes ``{"0": tensor}``.
    """
    import torch

    if isinstance(batch, Mapping):
        return batch, lambda m: m
    if isinstance(batch, (tuple, list)):
        kind = type(batch)
        keys = [str(i) for i in range(len(batch))]

        def rebuild(m: Mapping[str, Any]) -> Any:
            values = [m[k] for k in keys]
            if isinstance(batch, tuple) and hasattr(batch, "_fields"):
                return kind(*values)
            return kind(values)

        return dict(zip(keys, batch, strict=True)), rebuild
    if isinstance(batch, torch.Tensor):
        return {"0": batch}, lambda m: m["0"]
    raise ConfigError(
        f"cannot check per-example gradients on a batch of type {type(batch).__name__}; collate to a dict, tuple or "
        "tensor, or set DPConfig(preflight=False)"
    )


def batch_size_of(batch: Mapping[str, Any]) -> int:
    """Rows in a collated batch: the leading dimension of its first tensor."""
    import torch

    for value in batch.values():
        if isinstance(value, torch.Tensor) and value.dim() > 0:
            return int(value.shape[0])
    raise ConfigError("the collated batch holds no tensor with a batch dimension; cannot count its examples")
