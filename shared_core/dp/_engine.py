"""The DP-SGD gradient engine: per-example gradients, clipping, one noise draw per update.

One optimizer update, in named stages (DESIGN.md "One DP step")::

    for each micro-batch:   capture() -> forward -> accumulate(per_example_losses)
                                backward of the SUM of per-example losses with per-example hooks live,
                                clip each example over ALL trainable parameters to C,
                                add the clipped gradients into fp32 running sums, drop non-finite examples
    once per update:        release_update()
                                all-reduce the sums across ranks (SUM), add N(0, sigma^2 C^2) once,
                                divide by the PUBLIC expected batch size B, write p.grad in the param dtype

Nothing per-example survives a micro-batch; ``p.grad`` holds nothing between micro-batches, so anything that reads
``p.grad`` before :meth:`DPGradientEngine.release_update` (a host's gradient-norm logging) sees no private signal.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from shared_core.errors import ConfigError, PrivacyError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["DPGradientEngine", "UpdateResult"]

logger = logging.getLogger(__name__)

# Opacus' flat clipping adds this to the norm so that ||clip(g)|| <= C holds despite rounding.
_NORM_EPS = 1e-6


@dataclass(frozen=True)
class UpdateResult:
    """What one released update is allowed to tell the outside world.

    Attributes:
        update_norm: L2 norm of the noised, normalised update written to ``p.grad`` (post-processing of noised data).
        noise_std: Std of the Gaussian noise added to the sum, ``sigma * C`` (a public setting).
        expected_batch_size: The public divisor B.
    """

    update_norm: float
    noise_std: float
    expected_batch_size: float


def _backward(loss: torch.Tensor) -> None:
    with warnings.catch_warnings():
        # Frozen inputs (token ids into LoRA models) make torch warn on every full backward hook; it is expected.
        warnings.filterwarnings("ignore", message="Full backward hook is firing", category=UserWarning)
        loss.backward()


def _os_seed() -> int:
    return int.from_bytes(os.urandom(8), "little") & ((1 << 63) - 1)


class DPGradientEngine:
    """Per-example clipping and Gaussian noise for the trainable parameters of one model.

    The engine attaches opacus per-sample hooks (``loss_reduction="sum"``) to ``model`` without wrapping it. Hooks are
    live only inside :meth:`capture`; every other forward/backward (evaluation, generation, a reference pass) runs
    through the plain model and leaves no per-sample state behind.

    Note:
        Neighbouring datasets differ by adding or removing one example. The pre-noise sum has sensitivity
        ``max_grad_norm`` because each example is clipped over all trainable parameters together, the loss handed to
        :meth:`accumulate` is a vector with one entry per example (so no example's gradient depends on another), and
        the sum is divided by the public ``expected_batch_size``, never by the realised batch size.

    Args:
        model: The model; only parameters with ``requires_grad`` get per-example gradients and noise.
        max_grad_norm: Clip norm C.
        noise_multiplier: sigma; the noise on the sum has std ``sigma * C``.
        expected_batch_size: Public expected logical (global) batch size B = q N.
        noise_seed: Seed of the noise generator (tests only); ``None`` seeds from ``os.urandom``.
        distributed: All-reduce the sums over ``torch.distributed`` when it is initialised with more than one rank.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_grad_norm: float,
        noise_multiplier: float,
        expected_batch_size: float,
        noise_seed: int | None = None,
        distributed: bool = True,
    ) -> None:
        from opacus.grad_sample import GradSampleHooks

        if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
            raise ConfigError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
        if not (math.isfinite(noise_multiplier) and noise_multiplier >= 0):
            raise ConfigError(f"noise_multiplier must be a finite number >= 0, got {noise_multiplier!r}")
        if not (math.isfinite(expected_batch_size) and expected_batch_size > 0):
            raise ConfigError(f"expected_batch_size must be > 0, got {expected_batch_size!r}")
        self.model = model
        self.max_grad_norm = float(max_grad_norm)
        self.noise_multiplier = float(noise_multiplier)
        self.expected_batch_size = float(expected_batch_size)
        self.noise_seed_from_os = noise_seed is None
        self._seed = _os_seed() if noise_seed is None else int(noise_seed)
        self._distributed = distributed
        self.named_params: list[tuple[str, nn.Parameter]] = [
            (n, p) for n, p in model.named_parameters() if p.requires_grad
        ]
        if not self.named_params:
            raise ConfigError(
                "the model has no trainable parameter (requires_grad=True); wrap it with peft LoRA or unfreeze the "
                "parameters to train before adding DP"
            )
        self._hooks = GradSampleHooks(model, batch_first=True, loss_reduction="sum", strict=True)
        self._hooks.disable_hooks()
        self._generators: dict[str, torch.Generator] = {}
        self._sums: list[torch.Tensor] | None = None
        self._capturing = False
        # Private counters: used for runtime assertions and tests, never logged.
        self._examples_in_update = 0
        self._dropped_in_update = 0
        self.dropped_total = 0
        self.updates_released = 0

    # ---- lifecycle ---------------------------------------------------------------------------------------------

    @property
    def params(self) -> list[nn.Parameter]:
        """Trainable parameters in ``named_parameters`` order (the order noise is drawn in)."""
        return [p for _, p in self.named_params]

    def close(self) -> None:
        """Remove the hooks and every attribute opacus put on the parameters."""
        self._clear_per_sample_state()
        self._hooks.cleanup()

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        """Window in which per-sample hooks are live: run exactly one forward and one :meth:`accumulate` inside."""
        if self._capturing:
            raise PrivacyError("DPGradientEngine.capture() is not re-entrant; one micro-batch at a time")
        self._clear_per_sample_state()
        for p in self.params:
            p.grad = None
        self._capturing = True
        self._hooks.enable_hooks()
        try:
            yield
        finally:
            self._hooks.disable_hooks()
            self._capturing = False
            self._clear_per_sample_state()

    def _clear_per_sample_state(self) -> None:
        for p in self.params:
            p.grad_sample = None  # type: ignore[attr-defined]
            if hasattr(p, "_current_grad_sample"):
                del p._current_grad_sample
            p._forward_counter = 0  # type: ignore[attr-defined]
        for module in self.model.modules():
            # Look in the instance dict only: wrappers such as peft's ModulesToSaveWrapper forward attribute reads.
            module.__dict__.pop("activations", None)
            module.__dict__.pop("max_batch_len", None)

    # ---- stage 1: per-example gradients, clip, accumulate ---------------------------------------------------

    def accumulate(self, per_example_losses: torch.Tensor) -> None:
        """Backward the SUM of ``per_example_losses``, clip each example to C and add it to the fp32 sums.

        Args:
            per_example_losses: 1-D tensor, one loss per example of the micro-batch, each depending on its own
                example only. It is summed (never averaged) before backward, so no scale changes the clip.
        """
        if not self._capturing:
            raise PrivacyError("call accumulate() inside `with engine.capture():` (per-sample hooks are off outside)")
        if per_example_losses.dim() != 1:
            raise PrivacyError(
                f"per-example losses must be a 1-D tensor (one entry per example), got shape "
                f"{tuple(per_example_losses.shape)}; a batch-mean loss would let examples influence each other"
            )
        n = per_example_losses.shape[0]
        if n == 0:
            return
        _backward(per_example_losses.sum())
        grad_samples = self._collect_grad_samples(n)
        self._clip_and_add(grad_samples, n)
        for p in self.params:
            p.grad = None  # the non-private batch gradient must not linger where a host can read it
        self._examples_in_update += n
        del grad_samples

    def per_example_gradients(
        self,
        per_example_losses: Callable[[Mapping[str, Any]], torch.Tensor],
        batch: Mapping[str, Any],
        batch_size: int,
    ) -> list[torch.Tensor | None]:
        """Unclipped per-example gradients of one batch (preflight checks only; never accumulated or released)."""
        with self.capture():
            losses = per_example_losses(batch)
            if losses.dim() != 1 or losses.shape[0] != batch_size:
                raise PrivacyError(f"per-example loss returned shape {tuple(losses.shape)}, expected ({batch_size},)")
            _backward(losses.sum())
            out = [None if g is None else g.detach().clone() for g in self._collect_grad_samples(batch_size)]
        for p in self.params:
            p.grad = None
        return out

    def _collect_grad_samples(self, n: int) -> list[torch.Tensor | None]:
        import torch

        out: list[torch.Tensor | None] = []
        for name, p in self.named_params:
            gs = getattr(p, "grad_sample", None)
            if isinstance(gs, list):
                raise PrivacyError(
                    f"parameter {name!r} collected per-sample gradients from more than one backward pass in one "
                    "micro-batch; run exactly one forward and one backward inside capture()"
                )
            if gs is None:
                if p.grad is not None and bool(torch.any(p.grad != 0)):
                    raise PrivacyError(
                        f"parameter {name!r} received a gradient but no per-example gradient: its layer is not "
                        "covered by the per-sample hooks (activation checkpointing with use_reentrant=False, or a "
                        "functional use of the weight outside its module). Freeze it or run without checkpointing."
                    )
                out.append(None)
                continue
            if gs.shape[0] != n:
                raise PrivacyError(
                    f"parameter {name!r}: per-sample gradient has batch dimension {gs.shape[0]}, expected {n}; "
                    "a layer sees a broadcast batch dimension (e.g. shared position_ids of shape (1, T)). "
                    "Materialise per-row inputs or freeze that layer."
                )
            out.append(gs)
        return out

    def _clip_and_add(self, grad_samples: list[torch.Tensor | None], n: int) -> None:
        import torch

        device = self.params[0].device
        sq = torch.zeros(n, dtype=torch.float32, device=device)
        for gs in grad_samples:
            if gs is not None:
                sq += gs.reshape(n, -1).float().pow(2).sum(dim=1).to(device)
        norms = sq.sqrt()
        finite = torch.isfinite(norms)
        factors = (self.max_grad_norm / (norms + _NORM_EPS)).clamp(max=1.0)
        any_bad = not bool(finite.all())
        if any_bad:
            bad = int((~finite).sum())
            self._dropped_in_update += bad
            self.dropped_total += bad
            factors = torch.where(finite, factors, torch.zeros_like(factors))
            logger.debug("dropped %d example(s) with a non-finite gradient", bad)
        sums = self._ensure_sums()
        for gs, acc in zip(grad_samples, sums, strict=True):
            if gs is None:
                continue
            g = gs.float()
            if any_bad:
                keep = finite.to(g.device).view(-1, *([1] * (g.dim() - 1)))
                g = torch.where(keep, g, torch.zeros((), dtype=g.dtype, device=g.device))
            acc += torch.einsum("i,i...->...", factors.to(g.device), g)

    def _ensure_sums(self) -> list[torch.Tensor]:
        import torch

        if self._sums is None:
            self._sums = [torch.zeros(p.shape, dtype=torch.float32, device=p.device) for p in self.params]
        return self._sums

    # ---- stage 2: noise once, normalise by the public B, hand to the optimizer ------------------------------

    def _generator(self, device: torch.device) -> torch.Generator:
        import torch

        key = str(device)
        gen = self._generators.get(key)
        if gen is None:
            gen = torch.Generator(device=device)
            gen.manual_seed(self._seed)
            self._generators[key] = gen
        return gen

    def release_update(self) -> UpdateResult:
        """Noise the clipped sums once, divide by B, write ``p.grad`` and reset for the next update.

        Under ``torch.distributed`` with several ranks the sums are all-reduced (SUM) with rank 0's noise already
        added, so every rank writes the same update and the total noise std is exactly ``sigma * C``.
        """
        import torch

        sums = self._ensure_sums()
        flat = torch.cat([s.reshape(-1) for s in sums]) if len(sums) > 1 else sums[0].reshape(-1).clone()
        rank, world = self._rank_world()
        std = self.noise_multiplier * self.max_grad_norm
        if rank == 0 and std > 0:
            gen = self._generator(flat.device)
            noise = torch.randn(flat.shape, generator=gen, dtype=torch.float32, device=flat.device)
            flat.add_(noise, alpha=std)
        if world > 1:
            import torch.distributed as dist

            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat.div_(self.expected_batch_size)
        update_norm = float(flat.norm())
        offset = 0
        for p in self.params:
            k = p.numel()
            p.grad = flat[offset : offset + k].view_as(p).to(dtype=p.dtype).clone()
            offset += k
        self.discard_update()
        self.updates_released += 1
        return UpdateResult(update_norm=update_norm, noise_std=std, expected_batch_size=self.expected_batch_size)

    def discard_update(self) -> None:
        """Forget the accumulated sums without releasing anything (used when the budget stops training)."""
        self._sums = None
        self._examples_in_update = 0
        self._dropped_in_update = 0

    def any_rank(self, flag: bool) -> bool:
        """Whether ``flag`` is true on any rank: one all-reduce, so every rank acts on the same decision.

        The budget-stop decision goes through here: ranks hold identical ledgers, but a decision that is not reduced
        could still split (a rank resumed from another checkpoint, floating-point drift) and leave the others waiting
        in the next all-reduce.
        """
        _, world = self._rank_world()
        if world == 1:
            return bool(flag)
        import torch
        import torch.distributed as dist

        vote = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self.params[0].device)
        dist.all_reduce(vote, op=dist.ReduceOp.MAX)
        return bool(vote.item())

    def _rank_world(self) -> tuple[int, int]:
        if not self._distributed:
            return 0, 1
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        return 0, 1

    # ---- introspection for tests and runtime assertions (never logged) ---------------------------------------

    def pending_sums(self) -> list[torch.Tensor]:
        """Copies of the current pre-noise clipped sums (tests and assertions only; private data)."""
        return [s.clone() for s in self._ensure_sums()]

    def state_summary(self) -> dict[str, Any]:
        """Public settings of the engine (safe to log)."""
        return {
            "max_grad_norm": self.max_grad_norm,
            "noise_multiplier": self.noise_multiplier,
            "expected_batch_size": self.expected_batch_size,
            "noise_seed_from_os": self.noise_seed_from_os,
            "trainable_parameters": sum(p.numel() for p in self.params),
        }
