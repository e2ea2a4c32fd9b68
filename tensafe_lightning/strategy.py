"""DP-SGD strategies for the Lightning ``Trainer``: ``strategy="tensafe_dp"`` and ``strategy="tensafe_ddp"``.

The strategies translate Lightning events into calls on ``shared_core.dp`` (the mechanism) and
``shared_core.accounting`` (the ledger); nothing private is computed here. What each Lightning hook does:

* ``process_dataloader`` (train loader, during ``fit``): replaced by a Poisson DataLoader over the same dataset
  (each example joins each logical batch with rate q; each rank draws its own stream over its shard ``rank::world``),
  so the ``DistributedSampler`` Lightning may have injected is dropped;
* ``on_train_start``: builds the public plan's ledger (new, or restored from the checkpoint and checked), calibrates
  the noise multiplier to the run's horizon when only ``target_epsilon`` is given, runs the preflight checks and
  attaches the per-example gradient engine;
* ``training_step``: one forward with per-example hooks live, per-example losses, per-example clipping into fp32 sums;
* ``backward``: no backward of the batch loss (its callbacks still fire; they see no gradient);
* ``optimizer_step``: after the last micro-batch of a logical batch, noise once, divide by the public B, write
  ``p.grad`` (all-reduced across ranks first under DDP), record the update in the ledger, then the optimizer steps;
  training stops cleanly when the next update would exceed ``target_epsilon``;
* ``save_checkpoint`` / ``load_checkpoint``: the ledger travels in every checkpoint; resuming from one without it
  fails with :class:`~shared_core.errors.LedgerError`.

Privacy metrics (``privacy/epsilon_spent``, ``privacy/delta``, ``privacy/noise_multiplier``,
``privacy/steps_remaining``) and ``train/gradient_norm`` (the norm of the noised update) go through
``LightningModule.log`` to every attached logger, on the steps Lightning flushes logs, and once more at the end of
training.

Note:
    The strategies are registered in ``lightning.pytorch``'s ``StrategyRegistry`` when ``tensafe_lightning`` is
    imported. ``pytorch_lightning`` is a separate copy of Lightning with its own registry and base classes; it is not
    supported.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.strategies import DDPStrategy, SingleDeviceStrategy, Strategy, StrategyRegistry
from typing_extensions import override

from shared_core.config import DPConfig
from shared_core.dp import DPGradientEngine, is_empty_batch
from shared_core.dp import preflight as _preflight
from shared_core.errors import BudgetExhaustedError, ConfigError, LedgerError, PrivacyError, PrivacyWarning
from tensafe_lightning import _compat
from tensafe_lightning._losses import (
    as_mapping,
    check_per_example_losses,
    detached_output,
    has_per_example_loss,
    losses_from_output,
)
from tensafe_lightning._poisson import DPPlan, build_poisson_dataloader, make_plan, poisson_possible
from tensafe_lightning._state import CheckpointPrivacyState, read_checkpoint, write_checkpoint

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.fabric.plugins import CheckpointIO
    from lightning.pytorch.accelerators import Accelerator
    from lightning.pytorch.plugins.precision import Precision
    from torch.optim import Optimizer

    from shared_core.accounting.ledger import PrivacyLedger

__all__ = [
    "DEFAULT_DP_CONFIG",
    "STRATEGY_NAMES",
    "TenSafeDDPStrategy",
    "TenSafeDPStrategy",
    "register_strategies",
]

logger = logging.getLogger(__name__)

DEFAULT_DP_CONFIG = DPConfig(target_epsilon=8.0, max_grad_norm=1.0)
"""Settings used by the registered names when neither the strategy nor the module carries a ``DPConfig``."""

STRATEGY_NAMES = ("tensafe_ddp", "tensafe_dp")
_PREFLIGHT_EXAMPLES = 3
_DDP_WRAPPER_OPTIONS = ("find_unused_parameters", "static_graph", "gradient_as_bucket_view", "bucket_cap_mb")


class _TenSafeDPMixin:
    """The DP translation shared by the single-device and the DDP strategy (see the module docstring)."""

    _tensafe_distributed = False

    def _init_tensafe(self, dp_config: DPConfig | None, *, stop_at_budget: bool, sampling_seed: int | None) -> None:
        if dp_config is not None and not isinstance(dp_config, DPConfig):
            raise ConfigError(
                f"{type(self).__name__} needs a shared_core.config.DPConfig, got {type(dp_config).__name__}"
            )
        self._given_dp_config = dp_config
        self._dp_config: DPConfig = dp_config or DEFAULT_DP_CONFIG
        self._stop_at_budget = bool(stop_at_budget)
        self._sampling_seed = sampling_seed
        self._plan: DPPlan | None = None
        self._source_loader: Any = None
        self._engine: DPGradientEngine | None = None
        self._ledger: PrivacyLedger | None = None
        self._noise_multiplier: float | None = None
        self._horizon: int | None = None
        self._micro_batches = 0
        self._skipped_updates = 0
        self._last_update_norm: float | None = None
        self._logged_at_steps = -1
        self._stop_reason: str | None = None
        self._needs_numerical_preflight = False
        self._trainable_names: list[str] = []
        self._loaded_from: str | None = None
        self._loaded_state: CheckpointPrivacyState | None = None

    # ---- public surface ---------------------------------------------------------------------------------------

    @property
    def dp_config(self) -> DPConfig:
        """The DP settings in force (explicit, from the module's ``dp_config`` attribute, or the default)."""
        return self._dp_config

    @property
    def ledger(self) -> PrivacyLedger | None:
        """The run's ``PrivacyLedger`` (``None`` before training starts)."""
        return self._ledger

    @property
    def plan(self) -> DPPlan | None:
        """The public plan (N, B, q, epoch length, sampler) of the current run."""
        return self._plan

    @property
    def noise_multiplier(self) -> float | None:
        """Noise multiplier sigma of the run (calibrated when only ``target_epsilon`` was given)."""
        return self._noise_multiplier

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped early for the budget, or ``None``."""
        return self._stop_reason

    @property
    def trainable_parameter_names(self) -> list[str]:
        """Names of the parameters that received per-example clipping and noise."""
        return list(self._trainable_names)

    def summary(self) -> dict[str, Any]:
        """Public facts of the run for certificates and reports (settings, ledger metrics, sampler validity)."""
        plan = self._plan
        out: dict[str, Any] = {
            "dp_config": self._dp_config.to_dict(),
            "noise_multiplier": self._noise_multiplier,
            "max_grad_norm": self._dp_config.max_grad_norm,
            "sampler": plan.sampler if plan else None,
            "sampler_verified": plan.sampler_verified if plan else None,
            "sample_rate": plan.sample_rate if plan else None,
            "expected_batch_size": plan.expected_batch_size if plan else None,
            "accumulation_steps": plan.accumulation_steps if plan else None,
            "world_size": plan.world_size if plan else None,
            "noise_seed_from_os": self._dp_config.noise_seed is None,
            "stopped_for_budget": self._stop_reason,
            "trainable_parameters": list(self._trainable_names),
        }
        if self._ledger is not None:
            out["ledger"] = dict(self._ledger.metrics())
            out["steps"] = int(self._ledger.steps)
            out["epsilon_spent"] = float(self._ledger.epsilon_spent)
        return out

    # ---- helpers every hook uses ------------------------------------------------------------------------------

    def _host(self) -> Strategy:
        assert isinstance(self, Strategy)
        return self

    def _module(self) -> pl.LightningModule:
        module = self._host().lightning_module
        if module is None:
            raise ConfigError(f"{type(self).__name__} has no LightningModule connected; call trainer.fit(module)")
        return module

    def _trainer(self) -> pl.Trainer:
        return self._module().trainer

    def _require_engine(self) -> DPGradientEngine:
        if self._engine is None:
            raise PrivacyError("TenSafe DP training step ran before on_train_start set up the engine")
        return self._engine

    # ---- Lightning hooks ----------------------------------------------------------------------------------------

    def connect(self, model: pl.LightningModule) -> None:
        super().connect(model)  # type: ignore[misc]
        self._loaded_from = None
        self._loaded_state = None
        module_config = getattr(model, "dp_config", None)
        if self._given_dp_config is None and isinstance(module_config, DPConfig):
            self._dp_config = module_config
        elif self._given_dp_config is None:
            logger.info(
                "TenSafe: no DPConfig given to the strategy or as module.dp_config; using %s", DEFAULT_DP_CONFIG
            )

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        checkpoint: dict[str, Any] = super().load_checkpoint(checkpoint_path, weights_only=weights_only)  # type: ignore[misc]
        self._loaded_from = str(checkpoint_path)
        self._loaded_state = read_checkpoint(checkpoint, source=str(checkpoint_path))
        return checkpoint

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any | None = None) -> None:
        if self._ledger is not None:
            write_checkpoint(checkpoint, self._ledger, skipped_updates=self._skipped_updates)
        super().save_checkpoint(checkpoint, filepath, storage_options=storage_options)  # type: ignore[misc]

    def setup(self, trainer: pl.Trainer) -> None:
        super().setup(trainer)  # type: ignore[misc]
        if _compat.is_fitting(trainer):
            self._refuse_unsupported(trainer)

    def process_dataloader(self, dataloader: object) -> object:
        dataloader = super().process_dataloader(dataloader)  # type: ignore[misc]
        trainer = self._trainer()
        if not _compat.is_fit_training(trainer):
            return dataloader
        cfg = self._dp_config
        accumulation, world, rank = int(trainer.accumulate_grad_batches), trainer.world_size, trainer.global_rank
        ok, why = poisson_possible(dataloader)
        self._source_loader = dataloader
        if ok and cfg.poisson_sampling:
            self._plan = make_plan(
                dataloader, cfg, accumulation_steps=accumulation, world_size=world, rank=rank, sampler="poisson"
            )
            return build_poisson_dataloader(dataloader, self._plan, seed=self._sampling_seed)  # type: ignore[arg-type]
        reason = why or "poisson_sampling=False"
        if not cfg.allow_unverified_sampler:
            raise PrivacyError(
                f"Poisson sampling cannot be put in place ({reason}); the accounted epsilon would not hold. Use a "
                "map-style dataset with __len__ in a torch DataLoader, or set DPConfig(allow_unverified_sampler=True) "
                "to train anyway (every report then says its epsilon does not hold for the sampler used)"
            )
        warnings.warn(
            f"training with the host's sampler ({reason}): the reported epsilon is NOT valid for it",
            PrivacyWarning,
            stacklevel=2,
        )
        self._plan = make_plan(
            dataloader,
            cfg,
            accumulation_steps=accumulation,
            world_size=world,
            rank=rank,
            sampler=f"unverified:{reason}",
        )
        return dataloader

    def on_train_start(self) -> None:
        super().on_train_start()  # type: ignore[misc]
        trainer = self._trainer()
        plan = self._plan
        if plan is None:
            raise PrivacyError(
                "the train dataloader did not pass through the TenSafe strategy (Strategy.process_dataloader); "
                "was process_dataloader overridden or the train dataloader disabled?"
            )
        self._check_loop_settings(trainer, plan)
        self._stop_reason = None
        self._last_update_norm = None
        self._micro_batches = 0
        self._horizon = _planned_updates(trainer)
        restored = self._restore_ledger(trainer, plan)
        if restored is not None:
            self._ledger, self._skipped_updates = restored
            self._noise_multiplier = float(self._ledger.noise_multiplier)
        else:
            self._skipped_updates = 0
            self._noise_multiplier = self._resolve_noise_multiplier(plan)
            self._ledger = self._new_ledger(plan)
        self._check_horizon(trainer)
        self._attach_engine(trainer, plan)
        logger.info(
            "TenSafe DP-SGD: N=%d, B=%d, q=%.6g, sigma=%.4g, C=%g, planned updates=%s, sampler=%s, world=%d",
            plan.num_examples,
            plan.expected_batch_size,
            plan.sample_rate,
            self._noise_multiplier,
            self._dp_config.max_grad_norm,
            self._horizon,
            plan.sampler,
            plan.world_size,
        )
        if self._require_engine().any_rank(
            self._ledger.would_exceed_budget(sample_rate=plan.sample_rate, noise_multiplier=self._noise_multiplier)
        ):
            self._stop_for_budget(trainer)

    def training_step(self, *args: Any, **kwargs: Any) -> Any:
        module = self._module()
        engine = self._require_engine()
        host = self._host()
        batch = args[0] if args else kwargs.get("batch")
        if self._needs_numerical_preflight:
            self._needs_numerical_preflight = False
            self._numerical_preflight(module, engine)
        self._micro_batches += 1
        if is_empty_batch(batch):
            # An empty Poisson draw still takes part in the update (noise, accounting, the all-reduce); no forward.
            return torch.zeros((), device=host.root_device)
        with host.precision_plugin.train_step_context():
            if has_per_example_loss(module):
                with engine.capture():
                    losses = check_per_example_losses(
                        module.per_example_loss(batch),  # type: ignore[operator]
                        where=f"{type(module).__name__}.per_example_loss(batch)",
                    )
                    engine.accumulate(losses)
                with torch.no_grad():  # the module's own step, for its logging and the progress-bar loss only
                    output = module.training_step(*args, **kwargs)
            else:
                with engine.capture():
                    output = module.training_step(*args, **kwargs)
                    losses = losses_from_output(output)
                    engine.accumulate(losses)
        return detached_output(output, losses)

    def backward(self, closure_loss: torch.Tensor, optimizer: Optimizer | None, *args: Any, **kwargs: Any) -> Any:
        # The per-example gradients were taken in training_step. Back-propagating the batch loss would put the raw,
        # unclipped batch gradient into p.grad, so it is not done; the hooks around it still run and see no gradient.
        host, module = self._host(), self._module()
        closure_loss = host.precision_plugin.pre_backward(closure_loss, module)
        return host.precision_plugin.post_backward(closure_loss, module)

    def optimizer_step(
        self,
        optimizer: Optimizer,
        closure: Callable[[], Any],
        model: Any = None,
        **kwargs: Any,
    ) -> Any:
        def dp_closure() -> Any:
            result = closure()  # the last micro-batch of the logical batch: training_step (accumulate) + backward
            self._release_update()
            return result

        output = super().optimizer_step(optimizer, dp_closure, model, **kwargs)  # type: ignore[misc]
        self._after_update()
        return output

    def on_train_end(self) -> None:
        super().on_train_end()  # type: ignore[misc]
        self._log_final_metrics()

    def teardown(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        super().teardown()  # type: ignore[misc]

    # ---- the update -------------------------------------------------------------------------------------------

    def _release_update(self) -> None:
        engine, plan, ledger, sigma = self._require_engine(), self._plan, self._ledger, self._noise_multiplier
        if plan is None or ledger is None or sigma is None:
            raise PrivacyError("TenSafe DP update reached before on_train_start")
        trainer = self._trainer()
        if plan.sampler_verified and self._micro_batches != plan.accumulation_steps:
            raise PrivacyError(
                f"a DP update followed {self._micro_batches} micro-batches, but each Poisson logical batch is split "
                f"into {plan.accumulation_steps}; the update would mix logical batches. Keep limit_train_batches a "
                "multiple of accumulate_grad_batches and resume only from checkpoints saved after an optimizer step"
            )
        self._micro_batches = 0
        if engine.any_rank(ledger.would_exceed_budget(sample_rate=plan.sample_rate, noise_multiplier=sigma)):
            engine.discard_update()
            for p in engine.params:
                p.grad = None  # the optimizer skips parameters without a gradient: nothing is applied
            self._skipped_updates += 1
            self._stop_for_budget(trainer)
            return
        result = engine.release_update()
        ledger.record_step(sample_rate=plan.sample_rate, noise_multiplier=sigma)
        self._last_update_norm = result.update_norm

    def _after_update(self) -> None:
        trainer, plan, ledger, sigma = self._trainer(), self._plan, self._ledger, self._noise_multiplier
        if plan is None or ledger is None or sigma is None:
            return
        more_planned = self._horizon is None or ledger.steps < self._horizon
        wants_stop = (
            not trainer.should_stop
            and more_planned
            and ledger.would_exceed_budget(sample_rate=plan.sample_rate, noise_multiplier=sigma)
        )
        if self._require_engine().any_rank(wants_stop):  # every rank takes part in the vote
            self._stop_for_budget(trainer)
        if _compat.should_update_logs(trainer) or trainer.should_stop:
            self._log_step_metrics()

    def _privacy_metrics(self) -> dict[str, float]:
        assert self._ledger is not None
        metrics = dict(self._ledger.metrics())
        if self._last_update_norm is not None:
            metrics["train/gradient_norm"] = float(self._last_update_norm)
        return metrics

    def _log_step_metrics(self) -> None:
        if self._ledger is None:
            return
        module = self._module()
        metrics = self._privacy_metrics()
        eps = metrics.pop("privacy/epsilon_spent")
        module.log("privacy/epsilon_spent", eps, on_step=True, on_epoch=False, prog_bar=True, rank_zero_only=True)
        module.log_dict(metrics, on_step=True, on_epoch=False, prog_bar=False, rank_zero_only=True)
        self._logged_at_steps = self._ledger.steps

    def _log_final_metrics(self) -> None:
        """Hand the final figures to every logger directly (``LightningModule.log`` is closed at train end)."""
        trainer = self._trainer()
        if self._ledger is None or self._logged_at_steps == self._ledger.steps or not trainer.is_global_zero:
            return
        metrics = self._privacy_metrics()
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=trainer.global_step)
        self._logged_at_steps = self._ledger.steps

    def _stop_for_budget(self, trainer: pl.Trainer) -> None:
        assert self._ledger is not None
        trainer.should_stop = True
        if self._stop_reason is None:
            self._stop_reason = (
                f"stopped after {self._ledger.steps} of {self._horizon} planned DP updates: the next update would take "
                f"epsilon past the target {self._dp_config.target_epsilon} (spent {self._ledger.epsilon_spent:.4g}). "
                "Raise target_epsilon or noise_multiplier, or plan fewer steps."
            )
            if trainer.is_global_zero:
                logger.warning("TenSafe: %s", self._stop_reason)

    # ---- set-up -----------------------------------------------------------------------------------------------

    def _refuse_unsupported(self, trainer: pl.Trainer) -> None:
        host, module = self._host(), self._module()
        if not module.automatic_optimization:
            raise ConfigError(
                "manual optimization (automatic_optimization=False) bypasses the TenSafe DP step; use automatic "
                "optimization with per_example_loss(batch) or a training_step returning 'per_example_loss'"
            )
        if getattr(host.precision_plugin, "scaler", None) is not None:
            raise ConfigError(
                "fp16 mixed precision scales the loss before backward and unscales the noised update; train with "
                "precision='bf16-mixed' or '32-true'"
            )
        if len(host.optimizers) != 1:
            raise ConfigError(
                f"TenSafe DP needs exactly one optimizer, configure_optimizers gave {len(host.optimizers)}"
            )
        if isinstance(host.optimizers[0], torch.optim.LBFGS):
            raise ConfigError("LBFGS evaluates its closure several times per step; use SGD/Adam/AdamW with TenSafe DP")
        if getattr(trainer, "overfit_batches", 0):
            raise ConfigError("overfit_batches replaces the sampler with a fixed one; unset it for DP training")
        if _compat.uses_gradient_accumulation_scheduler(trainer):
            raise ConfigError(
                "GradientAccumulationScheduler changes the micro-batches per update during training; use a fixed "
                "Trainer(accumulate_grad_batches=k) with TenSafe DP"
            )
        if trainer.gradient_clip_val:
            logger.warning(
                "TenSafe: gradient_clip_val=%s clips the already noised update (privacy-safe post-processing that only "
                "costs utility); per-example clipping is DPConfig.max_grad_norm",
                trainer.gradient_clip_val,
            )
        _refuse_raw_gradient_watch(module)

    def _check_loop_settings(self, trainer: pl.Trainer, plan: DPPlan) -> None:
        batches = trainer.num_training_batches
        if plan.sampler_verified and math.isfinite(batches) and int(batches) % plan.accumulation_steps != 0:
            raise ConfigError(
                f"the epoch has {int(batches)} micro-batches, not a multiple of accumulate_grad_batches="
                f"{plan.accumulation_steps}: the last update would mix Poisson logical batches. Remove "
                "limit_train_batches or make it a multiple of accumulate_grad_batches"
            )

    def _resolve_noise_multiplier(self, plan: DPPlan) -> float:
        cfg = self._dp_config
        if cfg.noise_multiplier is not None:
            return float(cfg.noise_multiplier)
        if self._horizon is None:
            raise ConfigError(
                "target_epsilon needs a finite horizon to calibrate the noise: set Trainer(max_steps=...) or "
                "max_epochs, or give DPConfig(noise_multiplier=...)"
            )
        from shared_core.accounting import calibrate_noise_multiplier

        assert cfg.target_epsilon is not None  # guaranteed by DPConfig
        return float(
            calibrate_noise_multiplier(
                target_epsilon=cfg.target_epsilon,
                delta=cfg.resolve_delta(plan.num_examples),
                sample_rate=plan.sample_rate,
                steps=self._horizon,
                accountant=cfg.accountant,
            )
        )

    def _new_ledger(self, plan: DPPlan) -> PrivacyLedger:
        from shared_core.accounting.ledger import PrivacyLedger

        assert self._noise_multiplier is not None
        return PrivacyLedger(
            **plan.ledger_settings(self._dp_config, sampling_seed=self._sampling_seed),
            noise_multiplier=self._noise_multiplier,
            planned_steps=self._horizon,
        )

    def _restore_ledger(self, trainer: pl.Trainer, plan: DPPlan) -> tuple[PrivacyLedger, int] | None:
        done = int(trainer.global_step)
        if self._loaded_from is not None:
            if self._loaded_state is None:
                raise LedgerError(
                    f"checkpoint {self._loaded_from} carries no TenSafe privacy ledger: the privacy spent on its "
                    "weights is unknown, so training refuses to continue (epsilon must never restart at 0). Resume "
                    "from a checkpoint saved by a TenSafe strategy, or start a new run from the initial weights."
                )
            ledger, skipped = self._loaded_state.ledger, self._loaded_state.skipped_updates
        elif self._ledger is not None and done > 0:
            ledger, skipped = self._ledger, self._skipped_updates  # a further fit() on the same Trainer
        elif done > 0:
            raise LedgerError(
                f"training resumes at step {done} without a privacy ledger; epsilon must never restart at 0. Resume "
                "with fit(ckpt_path=...) from a checkpoint saved by a TenSafe strategy, or start a new run."
            )
        else:
            return None
        settings = plan.ledger_settings(self._dp_config, sampling_seed=self._sampling_seed)
        if self._dp_config.noise_multiplier is not None:
            settings["noise_multiplier"] = self._dp_config.noise_multiplier
        ledger.check_resume(global_step=done - skipped, **settings)
        return ledger, skipped

    def _check_horizon(self, trainer: pl.Trainer) -> None:
        assert self._ledger is not None
        done = self._ledger.steps
        if self._dp_config.target_epsilon is None or self._stop_at_budget or self._horizon is None:
            return
        if self._horizon <= done:
            return
        try:
            self._ledger.check_plan(self._horizon)
        except ConfigError as exc:
            raise BudgetExhaustedError(
                f"{exc} (or pass stop_at_budget=True to the TenSafe strategy to stop cleanly when the budget is spent)"
            ) from None

    def _attach_engine(self, trainer: pl.Trainer, plan: DPPlan) -> None:
        host, module = self._host(), self._module()
        _preflight.check_clipping_mode("hooks", accumulation_steps=plan.accumulation_steps)
        _preflight.check_supported_layers(module)
        _preflight.check_tied_parameters(module)
        _preflight.check_activation_checkpointing(module)
        if self._engine is not None:
            self._engine.close()
        assert self._noise_multiplier is not None
        self._engine = DPGradientEngine(
            module,
            max_grad_norm=self._dp_config.max_grad_norm,
            noise_multiplier=self._noise_multiplier,
            expected_batch_size=plan.expected_batch_size,
            noise_seed=self._dp_config.noise_seed,
            distributed=self._tensafe_distributed,
        )
        self._trainable_names = [n for n, _ in self._engine.named_params]
        _preflight.check_optimizer_covers_trainable(
            self._engine.named_params, (p for g in host.optimizers[0].param_groups for p in g["params"])
        )
        self._needs_numerical_preflight = self._dp_config.preflight

    def _numerical_preflight(self, module: pl.LightningModule, engine: DPGradientEngine) -> None:
        """Hooked per-example gradients against plain autograd on the first rows of the training set."""
        loader = self._source_loader
        dataset = getattr(loader, "dataset", None)
        try:
            k = min(_PREFLIGHT_EXAMPLES, len(dataset))  # type: ignore[arg-type]
            items = [dataset[i] for i in range(k)]  # type: ignore[index]
        except (TypeError, KeyError, IndexError):
            logger.warning("TenSafe: per-example gradient check skipped (the dataset cannot be indexed)")
            return
        host = self._host()
        batch = host.batch_to_device(loader.collate_fn(items))
        mapping, rebuild = as_mapping(batch)
        if has_per_example_loss(module):
            where = f"{type(module).__name__}.per_example_loss(batch)"

            def losses(b: Mapping[str, Any]) -> torch.Tensor:
                return check_per_example_losses(module.per_example_loss(rebuild(b)), where=where)  # type: ignore[operator]

        else:

            def losses(b: Mapping[str, Any]) -> torch.Tensor:
                return losses_from_output(module.training_step(rebuild(b), 0))

        dtype = engine.params[0].dtype
        rtol = 1e-3 if dtype in (torch.float32, torch.float64) else 5e-2
        with host.precision_plugin.train_step_context():
            _preflight.check_per_example_gradients(
                engine, per_example_losses=losses, batch=mapping, batch_size=k, rtol=rtol
            )


def _planned_updates(trainer: pl.Trainer) -> int | None:
    """The run's horizon in optimizer updates (all of it, including updates before a resume), or ``None``."""
    estimated = trainer.estimated_stepping_batches
    if not math.isfinite(estimated):
        return None
    return max(1, int(estimated))


def _refuse_raw_gradient_watch(module: torch.nn.Module) -> None:
    for name, sub in module.named_modules():
        hooks = getattr(sub, "_wandb_hook_names", None) or []
        if any(str(h).startswith("gradients/") for h in hooks):
            raise ConfigError(
                f"wandb.watch(log='gradients'|'all') is on for {name or 'the module'}: it logs raw, non-private batch "
                "gradients. Call WandbLogger.watch(model, log='parameters') or do not watch the model"
            )


class TenSafeDPStrategy(_TenSafeDPMixin, SingleDeviceStrategy):
    """DP-SGD in one process; registered as ``Trainer(strategy="tensafe_dp")``.

    Example:
        >>> strategy = TenSafeDPStrategy(DPConfig(target_epsilon=8.0))
        >>> trainer = L.Trainer(strategy=strategy, max_steps=100)  # doctest: +SKIP
        >>> trainer.fit(module)  # module implements per_example_loss(batch)  # doctest: +SKIP

    Note:
        Neighbouring datasets differ by adding or removing one example. Each optimizer update uses a Poisson sample
        with rate ``q = B / N`` (``B`` the public expected batch), clips every example's gradient over all
        trainable parameters to ``max_grad_norm``, adds ``N(0, sigma^2 C^2)`` once to the sum and divides by ``B``.
        Training losses in the logs are not covered by the guarantee; gradient norms in the logs are those of the
        noised update. With the registered name, the settings come from ``module.dp_config`` (a ``DPConfig``) if the
        module has one, else :data:`DEFAULT_DP_CONFIG`.

    Args:
        dp_config: The DP settings; ``None`` takes ``module.dp_config`` or :data:`DEFAULT_DP_CONFIG`.
        stop_at_budget: Allow a planned horizon that does not fit ``target_epsilon`` and stop cleanly when the next
            update would exceed it (by default such a run is refused before step one).
        sampling_seed: Seed of the Poisson sampler (tests only); ``None`` seeds from ``os.urandom``.
        device: The device; ``None`` takes the Trainer's (``accelerator``/``devices``).
        accelerator: Passed to Lightning.
        checkpoint_io: Passed to Lightning.
        precision_plugin: Passed to Lightning (fp16 with a loss scaler is refused).
    """

    strategy_name = "tensafe_dp"

    def __init__(
        self,
        dp_config: DPConfig | None = None,
        *,
        stop_at_budget: bool = False,
        sampling_seed: int | None = None,
        device: str | torch.device | None = None,
        accelerator: Accelerator | None = None,
        checkpoint_io: CheckpointIO | None = None,
        precision_plugin: Precision | None = None,
    ) -> None:
        super().__init__(
            device=device if device is not None else "cpu",
            accelerator=accelerator,
            checkpoint_io=checkpoint_io,
            precision_plugin=precision_plugin,
        )
        self._device_given = device is not None
        self._parallel_devices: list[torch.device] | None = None
        self._init_tensafe(dp_config, stop_at_budget=stop_at_budget, sampling_seed=sampling_seed)

    @property
    def parallel_devices(self) -> list[torch.device] | None:
        """The Trainer's devices, set by Lightning; the first one is used unless ``device`` was given."""
        return self._parallel_devices

    @parallel_devices.setter
    def parallel_devices(self, devices: list[torch.device] | None) -> None:
        if devices and len(devices) > 1:
            raise ConfigError(
                f"strategy='tensafe_dp' runs in one process but the Trainer asks for {len(devices)} devices; use "
                "strategy='tensafe_ddp' for several devices, or devices=1"
            )
        self._parallel_devices = devices
        if devices and not self._device_given:
            self._root_device = devices[0]

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(strategy_registry, "tensafe_dp", cls, "TenSafe DP-SGD in one process (Poisson sampling, ledger)")


class TenSafeDDPStrategy(_TenSafeDPMixin, DDPStrategy):
    """DP-SGD over several processes; registered as ``Trainer(strategy="tensafe_ddp")``.

    The model is not wrapped in ``DistributedDataParallel``: rank 0's weights are broadcast once, each rank clips
    its own Poisson share, the clipped sums are all-reduced (SUM) with rank 0's noise in them, and every rank applies
    the same update. An empty local batch takes part in the all-reduce like any other. Only rank zero logs and writes
    certificates; the ledger is the same on every rank.

    Example:
        >>> trainer = L.Trainer(accelerator="cpu", devices=2, strategy="tensafe_ddp", max_steps=100)  # doctest: +SKIP

    Note:
        As for :class:`TenSafeDPStrategy`, with ``q`` counting the examples of all ranks: ``B`` is the expected
        global batch (per-device batch x accumulation x world size unless ``DPConfig.expected_batch_size`` is set).

    Args:
        dp_config: The DP settings; ``None`` takes ``module.dp_config`` or :data:`DEFAULT_DP_CONFIG`.
        stop_at_budget: See :class:`TenSafeDPStrategy`.
        sampling_seed: Seed of the Poisson samplers (tests only); each rank derives its own stream from it.
        process_group_backend: ``gloo``/``nccl``; ``None`` picks by device.
        timeout: Collective timeout.
        start_method: Only ``"popen"`` (Lightning's default for ``ddp``): spawned workers would keep the ledger in
            processes that end with the fit.
        **kwargs: Other ``DDPStrategy`` arguments (accelerator, parallel_devices, cluster_environment, ...);
            options of the ``DistributedDataParallel`` wrapper are refused, since the model is not wrapped.
    """

    strategy_name = "tensafe_ddp"
    _tensafe_distributed = True

    def __init__(
        self,
        dp_config: DPConfig | None = None,
        *,
        stop_at_budget: bool = False,
        sampling_seed: int | None = None,
        process_group_backend: str | None = None,
        timeout: timedelta | None = None,
        start_method: str = "popen",
        **kwargs: Any,
    ) -> None:
        if start_method != "popen":
            raise ConfigError(
                f"start_method={start_method!r} keeps the privacy ledger in worker processes that end with the fit; "
                "TenSafe DDP supports start_method='popen' (strategy='tensafe_ddp', run as a script)"
            )
        wrapper = sorted(k for k in kwargs if k in _DDP_WRAPPER_OPTIONS or k.startswith("ddp_comm"))
        if wrapper or "model_averaging_period" in kwargs:
            raise ConfigError(
                f"{', '.join(wrapper or ['model_averaging_period'])}: TenSafe DDP does not wrap the model in "
                "DistributedDataParallel (the DP update is all-reduced by the engine); remove these options"
            )
        extra: dict[str, Any] = {"timeout": timeout} if timeout is not None else {}
        super().__init__(process_group_backend=process_group_backend, start_method="popen", **extra, **kwargs)
        self._init_tensafe(dp_config, stop_at_budget=stop_at_budget, sampling_seed=sampling_seed)

    @override
    def configure_ddp(self) -> None:
        """Keep the module unwrapped and start every rank from rank 0's parameters and buffers."""
        import torch.distributed as dist

        assert self.model is not None
        if dist.is_available() and dist.is_initialized():
            for tensor in [*self.model.parameters(), *self.model.buffers()]:
                dist.broadcast(tensor.data, src=0)

    @classmethod
    @override
    def register_strategies(cls, strategy_registry: Any) -> None:
        _register(
            strategy_registry,
            "tensafe_ddp",
            cls,
            "TenSafe DP-SGD over DDP processes (per-rank Poisson shards, clipped sums all-reduced, noise once)",
        )


def _register(registry: Any, name: str, cls: type, description: str) -> None:
    if name in registry:  # registry.get() would instantiate the strategy; read the entry instead
        owner = getattr(registry[name]["strategy"], "__module__", "")
        if not str(owner).startswith("tensafe_lightning"):
            raise ConfigError(f"strategy name {name!r} is already registered by {owner}; TenSafe cannot take it")
    registry.register(name, cls, description=description, override=True)


def register_strategies(registry: Any = None) -> None:
    """Register ``tensafe_dp`` and ``tensafe_ddp`` in ``lightning.pytorch``'s ``StrategyRegistry`` (idempotent).

    Runs when ``tensafe_lightning`` is imported; the Trainer reads the registry when it is constructed, and DDP child
    processes re-run the script, so importing ``tensafe_lightning`` in the script is all that is needed.
    """
    registry = StrategyRegistry if registry is None else registry
    TenSafeDPStrategy.register_strategies(registry)
    TenSafeDDPStrategy.register_strategies(registry)
