"""Checks run before the first DP update; each failure names the module and what to do instead.

The per-example gradient machinery (opacus hooks) is exact for the layers it supports and silently wrong, or loudly
broken, for some setups (DP_NOTES pitfalls 5, 7, 10, 11, 12). These checks refuse those setups up front, and a
numerical check compares the hooked per-example gradients against plain autograd run on one example at a time.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any

from shared_core.errors import PrivacyError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from shared_core.dp._engine import DPGradientEngine

__all__ = [
    "SUPPORTED_CLIPPING_MODES",
    "check_activation_checkpointing",
    "check_clipping_mode",
    "check_optimizer_covers_trainable",
    "check_per_example_gradients",
    "check_supported_layers",
    "check_tied_parameters",
]

logger = logging.getLogger(__name__)

SUPPORTED_CLIPPING_MODES = ("hooks",)
_GHOST_MODES = ("ghost", "ghost_fsdp", "ghost_tp", "fast_gradient_clipping")


def check_supported_layers(model: nn.Module) -> None:
    """Refuse layers that mix examples (batch norm in training mode) or that opacus cannot treat per example.

    Raises:
        PrivacyError: naming the first offending module and the options.
    """
    from torch import nn

    for name, module in model.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training:
            raise PrivacyError(
                f"module {name or '<root>'!r} ({type(module).__name__}) normalises over the batch, so each example's "
                "gradient depends on the others and per-example clipping does not bound its influence. Replace it with "
                "GroupNorm/LayerNorm, or keep it frozen in eval mode."
            )
        if hasattr(module, "autograd_grad_sample_hooks"):
            raise PrivacyError(
                f"module {name or '<root>'!r} already carries opacus per-sample hooks (GradSampleModule / "
                "make_private). Pass the plain model: TenSafe attaches and owns its own hooks."
            )
        trainable_here = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        buffers = [n for n, _ in module.named_buffers(recurse=False)]
        if trainable_here and buffers:
            raise PrivacyError(
                f"trainable module {name or '<root>'!r} ({type(module).__name__}) has buffers {buffers}; opacus cannot "
                "compute exact per-example gradients for it. Freeze it (train LoRA adapters instead) or replace it."
            )


def check_tied_parameters(model: nn.Module) -> None:
    """Refuse a trainable parameter shared by several modules (tied embeddings, re-used weights)."""
    owners: dict[int, list[str]] = {}
    for module_name, module in model.named_modules(remove_duplicate=False):
        for pname, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                owners.setdefault(id(p), []).append(f"{module_name}.{pname}" if module_name else pname)
    for names in owners.values():
        unique = sorted(set(names))
        if len(unique) > 1:
            raise PrivacyError(
                f"trainable parameter is tied across {', '.join(unique)}; per-example gradients of tied weights are "
                "not verified here. Options: train LoRA adapters and keep the tied weights frozen, or untie them "
                "(e.g. config.tie_word_embeddings=False) before training."
            )


def check_activation_checkpointing(model: nn.Module) -> None:
    """Refuse non-reentrant activation checkpointing, which breaks per-sample hooks (DP_NOTES local check D)."""
    for name, module in model.named_modules():
        if not getattr(module, "gradient_checkpointing", False):
            continue
        func = getattr(module, "_gradient_checkpointing_func", None)
        reentrant = None
        if isinstance(func, functools.partial):
            reentrant = func.keywords.get("use_reentrant")
        if reentrant is not True:
            raise PrivacyError(
                f"module {name or '<root>'!r} uses activation checkpointing with use_reentrant={reentrant!r}; "
                "per-example gradient hooks do not see the recomputed activations, so gradients would be missing. "
                "Options: turn checkpointing off (gradient_checkpointing=False), or enable it with "
                "gradient_checkpointing_kwargs={'use_reentrant': True} (inputs must require grad: "
                "model.enable_input_require_grads())."
            )


def check_clipping_mode(mode: str, *, accumulation_steps: int) -> None:
    """Only the hooks engine is supported; ghost clipping is refused, and under accumulation names the bug.

    Opacus ghost clipping with k accumulated backward passes keeps only the last micro-batch (DP_NOTES check A).
    """
    if mode in _GHOST_MODES and accumulation_steps > 1:
        raise PrivacyError(
            f"clipping mode {mode!r} with gradient accumulation ({accumulation_steps} steps) keeps only the last "
            "micro-batch's gradient; use the hooks engine, or set gradient_accumulation_steps=1"
        )
    if mode not in SUPPORTED_CLIPPING_MODES:
        raise PrivacyError(f"clipping mode {mode!r} is not supported; supported: {', '.join(SUPPORTED_CLIPPING_MODES)}")


def check_optimizer_covers_trainable(
    named_params: Iterable[tuple[str, nn.Parameter]], optimizer_params: Iterable[torch.Tensor]
) -> None:
    """Every trainable parameter must be one of the optimizer's parameters (the same tensor object)."""
    in_opt = {id(p) for p in optimizer_params}
    missing = [n for n, p in named_params if id(p) not in in_opt]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise PrivacyError(
            f"{len(missing)} trainable parameter(s) are not in the optimizer ({shown}); they would get noise but never "
            "be updated, or the optimizer holds stale copies. Create the optimizer after wrapping the model, or "
            "freeze those parameters."
        )


def _rows(batch: Mapping[str, Any], n: int) -> list[dict[str, Any]]:
    import torch

    rows = []
    for i in range(n):
        rows.append(
            {
                k: (v[i : i + 1] if isinstance(v, torch.Tensor) and v.dim() > 0 and v.shape[0] == n else v)
                for k, v in batch.items()
            }
        )
    return rows


def check_per_example_gradients(
    engine: DPGradientEngine,
    *,
    per_example_losses: Callable[[Mapping[str, Any]], torch.Tensor],
    batch: Mapping[str, Any],
    batch_size: int,
    rtol: float = 1e-3,
) -> float:
    """Compare hooked per-example gradients with plain autograd run on each example alone.

    Dropout is switched off (every module without its own trainable parameter goes to eval mode) for the duration,
    so both computations are deterministic; training flags are restored afterwards.

    Args:
        engine: The engine whose hooks are checked.
        per_example_losses: ``fn(batch) -> (batch,)`` the same function the training step uses.
        batch: A collated batch of ``batch_size`` real examples (2-3 is enough).
        batch_size: Number of rows in ``batch``.
        rtol: Largest accepted relative L2 error per example.

    Returns:
        The largest relative error seen.

    Raises:
        PrivacyError: naming the parameter and example whose gradients disagree.
    """
    import torch

    model = engine.model
    flags = {m: m.training for m in model.modules()}
    try:
        for m in model.modules():
            m.training = any(p.requires_grad for p in m.parameters(recurse=False))
        hooked = engine.per_example_gradients(per_example_losses, batch, batch_size)
        worst = 0.0
        for i, row in enumerate(_rows(batch, batch_size)):
            loss = per_example_losses(row)
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
                grads = torch.autograd.grad(loss.sum(), engine.params, allow_unused=True)
            for (name, _), g_ref, g_hook in zip(engine.named_params, grads, hooked, strict=True):
                ref = torch.zeros(()) if g_ref is None else g_ref.float()
                got = torch.zeros(()) if g_hook is None else g_hook[i].float()
                if g_hook is None and g_ref is not None and bool(torch.any(g_ref != 0)):
                    raise PrivacyError(f"parameter {name!r} has a gradient but no per-example gradient")
                err = float((got - ref).norm()) / max(float(ref.norm()), 1e-6)
                if err > rtol and float((got - ref).norm()) > 1e-7:
                    raise PrivacyError(
                        f"per-example gradient check failed for parameter {name!r}, example {i}: relative error "
                        f"{err:.3g} > {rtol:g}. A layer mixes examples in the batch (shared position_ids, batch "
                        "statistics, a batch-wide loss normalisation) or is not handled by the per-sample hooks. "
                        "Freeze that layer, or pass a per_example_loss that reduces within each example."
                    )
                worst = max(worst, err)
        logger.debug("per-example gradient check passed; worst relative error %.3g", worst)
        return worst
    finally:
        for m, flag in flags.items():
            m.training = flag
        for p in engine.params:
            p.grad = None
