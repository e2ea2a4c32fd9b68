"""``TenSafeDPCallback``: DP-SGD for the stock ``transformers.Trainer``.

The callback translates Trainer events into calls on ``shared_core.dp`` (the mechanism) and
``shared_core.accounting`` (the ledger). Because hook arguments do not expose the Trainer, the callback wires itself
in through :meth:`TenSafeDPCallback.attach`, which ``TenSafeTrainer`` calls and which ``on_init_end`` calls for a
callback handed to a plain ``Trainer(callbacks=[...])``. Attaching replaces, on that Trainer instance only:

* ``get_train_dataloader``: a plain Poisson DataLoader (each example joins each logical batch with rate q);
* ``get_batch_samples``: no cross-batch token counting (its count is not used and its collective could deadlock);
* ``training_step``: forward, per-example losses, per-example clipping into fp32 sums (no loss scaling);
* ``log``: drops the host's raw ``grad_norm`` and reports the noised update's norm plus ``privacy/*`` metrics;
* ``floating_point_ops``: 0, since the realised batch sizes it would count are private.

It also sets ``args.max_grad_norm = 0`` (the host's clip of an already noised update only hurts utility).
"""

from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import Trainer, TrainerCallback

from shared_core.config import DPConfig
from shared_core.dp import DPGradientEngine, is_empty_batch
from shared_core.dp import preflight as _preflight
from shared_core.errors import BudgetExhaustedError, ConfigError, LedgerError, PrivacyError, PrivacyWarning
from tensafe_hf._losses import PerExampleLoss, Task, make_per_example_loss
from tensafe_hf._poisson import DPPlan, build_poisson_dataloader, make_plan, poisson_possible

if TYPE_CHECKING:
    import torch
    from torch import nn
    from transformers import TrainerControl, TrainerState, TrainingArguments

__all__ = ["ADAPTER_DIR", "CHECKPOINT_LEDGER_NAME", "PRIVACY_STATE_NAME", "TenSafeDPCallback"]

logger = logging.getLogger(__name__)

CHECKPOINT_LEDGER_NAME = "tensafe_ledger.json"
PRIVACY_STATE_NAME = "privacy_state.json"
ADAPTER_DIR = "adapter"
_PREFLIGHT_EXAMPLES = 3
_RAW_GRADIENT_WATCH = ("gradients", "all")


def _is_tensafe_callback(cb: Any) -> bool:
    module = type(cb).__module__
    return module.startswith(("tensafe_hf", "shared_core", "tensafe_lightning"))


class TenSafeDPCallback(TrainerCallback):
    """Makes a stock ``transformers.Trainer`` run DP-SGD.

    Example:
        >>> trainer = Trainer(model=lora_model, args=args, train_dataset=ds, data_collator=collator,  # doctest: +SKIP
        ...                   callbacks=[TenSafeDPCallback(DPConfig(target_epsilon=8.0, max_grad_norm=1.0))])
        >>> trainer.train()  # doctest: +SKIP

    Note:
        Neighbouring datasets differ by adding or removing one example. Each optimizer update uses a Poisson sample
        with rate ``q = B / N`` (``B`` the public expected global batch), clips every example's gradient over all
        trainable parameters to ``max_grad_norm``, adds ``N(0, sigma^2 C^2)`` once to the sum and divides by ``B``.
        Training losses in the logs are not covered by the guarantee; gradient norms in the logs are those of the
        noised update.

    Args:
        dp_config: The DP settings.
        per_example_loss: ``fn(model, inputs) -> (batch,)`` for models other than causal LMs and sequence
            classifiers; each entry must depend on its own example only.
        task: ``"causal_lm"`` or ``"sequence_classification"`` when it cannot be inferred from the model.
        stop_at_budget: Allow a planned horizon that does not fit ``target_epsilon`` and stop cleanly when the next
            update would exceed it (by default such a run is refused before step one).
        sampling_seed: Seed of the Poisson sampler (tests only); ``None`` seeds every rank from ``os.urandom``.
    """

    def __init__(
        self,
        dp_config: DPConfig,
        *,
        per_example_loss: PerExampleLoss | None = None,
        task: Task | None = None,
        stop_at_budget: bool = False,
        sampling_seed: int | None = None,
    ) -> None:
        if not isinstance(dp_config, DPConfig):
            raise ConfigError(f"TenSafeDPCallback needs a DPConfig, got {type(dp_config).__name__}")
        self.dp_config = dp_config
        self._custom_loss = per_example_loss
        self._task = task
        self._stop_at_budget = stop_at_budget
        self._sampling_seed = sampling_seed
        self._trainer: Trainer | None = None
        self._plan: DPPlan | None = None
        self._engine: DPGradientEngine | None = None
        self._loss_fn: PerExampleLoss | None = None
        self._ledger: Any = None
        self._noise_multiplier: float | None = None
        self._last_update_norm: float | None = None
        self._stop_reason: str | None = None
        self._resume_path: str | None = None
        self._dropped_examples = 0
        self._trainable_names: list[str] = []

    # ---- public surface ---------------------------------------------------------------------------------------

    @property
    def ledger(self) -> Any:
        """The run's ``PrivacyLedger`` (``None`` before training begins)."""
        return self._ledger

    @property
    def plan(self) -> DPPlan | None:
        """The public plan (N, B, q, epoch length, sampler) of the current run."""
        return self._plan

    @property
    def stop_reason(self) -> str | None:
        """Why training stopped early for the budget, or ``None``."""
        return self._stop_reason

    def summary(self) -> dict[str, Any]:
        """Public facts of the run for certificates and reports (settings, ledger metrics, sampler validity)."""
        plan = self._plan
        out: dict[str, Any] = {
            "dp_config": self.dp_config.to_dict(),
            "noise_multiplier": self._noise_multiplier,
            "max_grad_norm": self.dp_config.max_grad_norm,
            "sampler": plan.sampler if plan else None,
            "sampler_verified": plan.sampler_verified if plan else None,
            "sample_rate": plan.sample_rate if plan else None,
            "expected_batch_size": plan.expected_batch_size if plan else None,
            "accumulation_steps": plan.accumulation_steps if plan else None,
            "world_size": plan.world_size if plan else None,
            "noise_seed_from_os": self.dp_config.noise_seed is None,
            "stopped_for_budget": self._stop_reason,
            "trainable_parameters": list(self._trainable_names),
        }
        if self._ledger is not None:
            out["ledger"] = dict(self._ledger.metrics())
            out["steps"] = int(self._ledger.steps)
            out["epsilon_spent"] = float(self._ledger.epsilon_spent)
        return out

    # ---- wiring -----------------------------------------------------------------------------------------------

    def attach(self, trainer: Trainer) -> None:
        """Wire this callback into ``trainer`` (data path, training step, logging). Idempotent per Trainer."""
        if self._trainer is trainer:
            return
        if self._trainer is not None:
            raise ConfigError("this TenSafeDPCallback is already attached to another Trainer; create a new one")
        self._refuse_unsupported(trainer)
        self._trainer = trainer
        handler = trainer.callback_handler
        if self not in handler.callbacks:
            handler.callbacks.append(self)
        self._move_before_other_tensafe_callbacks(trainer)
        args = trainer.args
        if args.max_grad_norm and args.max_grad_norm > 0:
            logger.info("TenSafe: setting max_grad_norm=0 (per-example clipping replaces the host's global clip)")
        args.max_grad_norm = 0.0
        if args.include_num_input_tokens_seen not in ("no", False):
            logger.warning("TenSafe: include_num_input_tokens_seen counts realised (private) batch sizes; turned off")
        args.include_num_input_tokens_seen = "no"
        self._patch(trainer)

    def _refuse_unsupported(self, trainer: Trainer) -> None:
        args = trainer.args
        _refuse_raw_gradient_watch()
        if args.fp16:
            raise ConfigError(
                "fp16 with loss scaling rescales the gradients after DP noise; train in bf16 (bf16=True) or fp32"
            )
        if getattr(trainer, "is_deepspeed_enabled", False) or getattr(trainer, "is_fsdp_enabled", False):
            raise ConfigError("DeepSpeed and FSDP are not supported by TenSafe DP; use DDP (torchrun/accelerate)")
        if getattr(args, "n_gpu", 1) > 1:
            raise ConfigError(
                "torch.nn.DataParallel (several GPUs in one process) is not supported; launch one process per GPU "
                "with torchrun or accelerate launch"
            )

    def _move_before_other_tensafe_callbacks(self, trainer: Trainer) -> None:
        callbacks = trainer.callback_handler.callbacks
        mine = callbacks.index(self)
        first_other = next(
            (i for i, cb in enumerate(callbacks) if cb is not self and _is_tensafe_callback(cb)), len(callbacks)
        )
        if first_other < mine:
            callbacks.remove(self)
            callbacks.insert(first_other, self)

    def _patch(self, trainer: Trainer) -> None:
        original_get_dataloader = trainer.get_train_dataloader
        original_log = trainer.log
        original_train = trainer.train

        def get_train_dataloader() -> Any:
            ok, why = poisson_possible(trainer)
            if ok and self.dp_config.poisson_sampling:
                self._plan = make_plan(trainer, self.dp_config, sampler="poisson")
                return build_poisson_dataloader(trainer, self._plan, seed=self._sampling_seed)
            reason = why or "poisson_sampling=False"
            if not self.dp_config.allow_unverified_sampler:
                raise PrivacyError(
                    f"Poisson sampling cannot be put in place ({reason}); the accounted epsilon would not hold. Use a "
                    "map-style dataset with __len__, or set DPConfig(allow_unverified_sampler=True) to train anyway "
                    "(every report then says its epsilon does not hold for the sampler used)"
                )
            warnings.warn(
                f"training with the host's sampler ({reason}): the reported epsilon is NOT valid for it",
                PrivacyWarning,
                stacklevel=2,
            )
            self._plan = make_plan(trainer, self.dp_config, sampler=f"unverified:{reason}")
            return original_get_dataloader()

        def get_batch_samples(epoch_iterator: Any, num_batches: int, device: Any) -> tuple[list[Any], None]:
            batches: list[Any] = []
            for _ in range(num_batches):
                try:
                    batches.append(next(epoch_iterator))
                except StopIteration:
                    break
            return batches, None

        def training_step(model: nn.Module, inputs: Any, num_items_in_batch: Any = None) -> torch.Tensor:
            return self._training_step(inputs)

        def log(logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
            original_log(self._filter_logs(logs), *args, **kwargs)

        def train(resume_from_checkpoint: str | bool | None = None, *args: Any, **kwargs: Any) -> Any:
            self._resume_path = _resolve_resume(trainer, resume_from_checkpoint)
            return original_train(resume_from_checkpoint, *args, **kwargs)

        trainer.get_train_dataloader = get_train_dataloader  # type: ignore[method-assign]
        trainer.get_batch_samples = get_batch_samples  # type: ignore[method-assign]
        trainer.training_step = training_step  # type: ignore[method-assign]
        trainer.log = log  # type: ignore[method-assign]
        trainer.train = train  # type: ignore[method-assign]
        trainer.floating_point_ops = lambda inputs: 0  # type: ignore[method-assign]
        # Poisson batches are independent draws: fast-forwarding on resume would only waste draws.
        trainer.get_resumed_dataloader = lambda dataloader, num_batches: dataloader  # type: ignore[method-assign]

    # ---- the training step ------------------------------------------------------------------------------------

    def _training_step(self, inputs: Any) -> torch.Tensor:
        import torch

        trainer = self._require_trainer()
        engine = self._engine
        if engine is None or self._loss_fn is None:
            raise PrivacyError("TenSafe DP training step ran before on_train_begin set up the engine")
        device = trainer.args.device
        if is_empty_batch(inputs):
            return torch.zeros((), device=device)
        model = self._model()
        model.train()
        inputs = trainer._prepare_inputs(inputs)
        with engine.capture():
            with trainer.compute_loss_context_manager():
                losses = self._loss_fn(model, inputs)
            engine.accumulate(losses)
        # The host adds up what each micro-batch returns and logs that sum per update: the losses' sum over this
        # rank's public expected share of the logical batch makes it the update's mean loss, as without DP.
        plan = self._plan
        share = plan.expected_batch_size / plan.world_size if plan is not None else float(len(losses))
        return (losses.detach().float().sum() / share).to(device)

    def _filter_logs(self, logs: Mapping[str, Any]) -> dict[str, Any]:
        out = {k: v for k, v in logs.items() if "grad_norm" not in k and k != "train/gradient_norm"}
        if "grad_norm" in logs and self._last_update_norm is not None:
            out["grad_norm"] = self._last_update_norm
            out["train/gradient_norm"] = self._last_update_norm
        if self._ledger is not None:
            out.update(self._ledger.metrics())
        return out

    # ---- Trainer events -----------------------------------------------------------------------------------------

    def on_init_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._trainer is not None:
            return
        trainer = _find_calling_trainer(self)
        if trainer is None:
            raise ConfigError(
                "TenSafeDPCallback could not find the Trainer it was added to; use TenSafeTrainer(..., dp_config=...) "
                "or call callback.attach(trainer) right after creating the Trainer"
            )
        self.attach(trainer)

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        trainer = self._require_trainer()
        _refuse_raw_gradient_watch()
        if self._plan is None:
            raise PrivacyError(
                "the Trainer did not build its train dataloader through TenSafe; was get_train_dataloader overridden?"
            )
        plan = self._plan
        self._stop_reason = None
        self._last_update_norm = None
        horizon = int(state.max_steps)
        if state.global_step > 0:
            self._ledger = self._restore_ledger(args, state, plan)
            self._noise_multiplier = float(self._ledger.noise_multiplier)
        else:
            self._noise_multiplier = self._resolve_noise_multiplier(plan, horizon)
            self._ledger = self._new_ledger(plan, horizon)
        self._check_horizon(horizon, state.global_step)
        if self._engine is not None:
            self._engine.close()
        model = self._model()
        self._loss_fn = self._custom_loss or make_per_example_loss(model, self._task)
        self._run_structural_preflight(model, trainer)
        self._engine = DPGradientEngine(
            model,
            max_grad_norm=self.dp_config.max_grad_norm,
            noise_multiplier=self._noise_multiplier,
            expected_batch_size=plan.expected_batch_size,
            noise_seed=self.dp_config.noise_seed,
        )
        self._trainable_names = [n for n, _ in self._engine.named_params]
        _preflight.check_optimizer_covers_trainable(
            self._engine.named_params, (p for g in _optimizer(trainer).param_groups for p in g["params"])
        )
        if self.dp_config.preflight:
            self._numerical_preflight(trainer)
        logger.info(
            "TenSafe DP-SGD: N=%d, B=%g, q=%.6g, sigma=%.4g, C=%g, planned updates=%d, sampler=%s",
            plan.num_examples,
            plan.expected_batch_size,
            plan.sample_rate,
            self._noise_multiplier,
            self.dp_config.max_grad_norm,
            horizon,
            plan.sampler,
        )

    def on_pre_optimizer_step(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        engine, plan = self._engine, self._plan
        if engine is None or plan is None or self._noise_multiplier is None:
            raise PrivacyError("TenSafe DP update reached before on_train_begin")
        if engine.any_rank(
            self._ledger.would_exceed_budget(sample_rate=plan.sample_rate, noise_multiplier=self._noise_multiplier)
        ):
            engine.discard_update()
            for p in engine.params:
                p.grad = None  # the optimizer skips parameters without a gradient: nothing is applied
            self._stop_for_budget(control, state)
            return
        result = engine.release_update()
        self._ledger.record_step(sample_rate=plan.sample_rate, noise_multiplier=self._noise_multiplier)
        self._last_update_norm = result.update_norm
        self._dropped_examples = engine.dropped_total

    def on_step_end(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        plan, engine = self._plan, self._engine
        if self._ledger is None or plan is None or self._noise_multiplier is None or engine is None:
            return
        wants_stop = (
            not control.should_training_stop
            and state.global_step < state.max_steps
            and self._ledger.would_exceed_budget(sample_rate=plan.sample_rate, noise_multiplier=self._noise_multiplier)
        )
        if engine.any_rank(wants_stop):  # every rank takes part in the vote, whatever it decided locally
            self._stop_for_budget(control, state)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if self._ledger is None or not args.should_save:
            return
        folder = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not folder.is_dir():
            raise LedgerError(
                f"checkpoint folder {folder} does not exist after on_save; the privacy ledger cannot be stored with it"
            )
        self._ledger.save(folder / CHECKPOINT_LEDGER_NAME)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        self._require_trainer()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
        if self._ledger is None or not state.is_world_process_zero:
            return
        out = Path(str(args.output_dir))
        out.mkdir(parents=True, exist_ok=True)
        self._ledger.save(out / PRIVACY_STATE_NAME)
        _save_adapter_atomically(self._model(), out / ADAPTER_DIR)
        logger.info(
            "TenSafe: %d DP updates, epsilon %.4g; wrote %s and %s/",
            self._ledger.steps,
            self._ledger.epsilon_spent,
            PRIVACY_STATE_NAME,
            ADAPTER_DIR,
        )

    # ---- helpers --------------------------------------------------------------------------------------------------

    def _model(self) -> nn.Module:
        model = self._require_trainer().model
        if model is None:
            raise ConfigError("the Trainer has no model")
        return model

    def _require_trainer(self) -> Trainer:
        if self._trainer is None:
            raise ConfigError("TenSafeDPCallback is not attached; use TenSafeTrainer or call attach(trainer)")
        return self._trainer

    def _stop_for_budget(self, control: TrainerControl, state: TrainerState) -> None:
        control.should_training_stop = True
        self._stop_reason = (
            f"stopped after {self._ledger.steps} of {state.max_steps} planned DP updates: the next update would take "
            f"epsilon past the target {self.dp_config.target_epsilon} (spent {self._ledger.epsilon_spent:.4g}). "
            "Raise target_epsilon or noise_multiplier, or plan fewer steps."
        )
        logger.warning("TenSafe: %s", self._stop_reason)

    def _resolve_noise_multiplier(self, plan: DPPlan, horizon: int) -> float:
        if self.dp_config.noise_multiplier is not None:
            return float(self.dp_config.noise_multiplier)
        from shared_core.accounting import calibrate_noise_multiplier

        assert self.dp_config.target_epsilon is not None  # guaranteed by DPConfig
        return float(
            calibrate_noise_multiplier(
                target_epsilon=self.dp_config.target_epsilon,
                delta=self.dp_config.resolve_delta(plan.num_examples),
                sample_rate=plan.sample_rate,
                steps=horizon,
                accountant=self.dp_config.accountant,
            )
        )

    def _new_ledger(self, plan: DPPlan, horizon: int) -> Any:
        from shared_core.accounting.ledger import PrivacyLedger

        assert self._noise_multiplier is not None
        return PrivacyLedger(
            **plan.ledger_settings(self.dp_config, sampling_seed=self._sampling_seed),
            noise_multiplier=self._noise_multiplier,
            planned_steps=horizon,
        )

    def _check_horizon(self, horizon: int, done: int) -> None:
        if self.dp_config.target_epsilon is None or self._stop_at_budget or horizon <= done:
            return
        try:
            self._ledger.check_plan(horizon)
        except ConfigError as exc:
            raise BudgetExhaustedError(
                f"{exc} (or pass stop_at_budget=True to TenSafeDPCallback to stop cleanly when the budget is spent)"
            ) from None

    def _restore_ledger(self, args: TrainingArguments, state: TrainerState, plan: DPPlan) -> Any:
        from shared_core.accounting.ledger import PrivacyLedger

        folder = (
            Path(self._resume_path)
            if self._resume_path
            else Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        )
        path = folder / CHECKPOINT_LEDGER_NAME
        if not path.is_file():
            raise LedgerError(
                f"resuming at step {state.global_step} but {path} is missing: the privacy spent so far is unknown, so "
                "training refuses to continue (epsilon must never restart at 0). Resume from a checkpoint written by "
                "TenSafe, or start a new run."
            )
        settings = plan.ledger_settings(self.dp_config, sampling_seed=self._sampling_seed)
        if self.dp_config.noise_multiplier is not None:
            settings["noise_multiplier"] = self.dp_config.noise_multiplier
        return PrivacyLedger.resume(path, global_step=int(state.global_step), **settings)

    def _run_structural_preflight(self, model: nn.Module, trainer: Trainer) -> None:
        _preflight.check_clipping_mode("hooks", accumulation_steps=int(trainer.args.gradient_accumulation_steps))
        _preflight.check_supported_layers(model)
        _preflight.check_tied_parameters(model)
        _preflight.check_activation_checkpointing(model)

    def _numerical_preflight(self, trainer: Trainer) -> None:
        assert self._engine is not None
        assert self._loss_fn is not None
        dataset: Any = trainer.train_dataset
        try:
            k = min(_PREFLIGHT_EXAMPLES, len(dataset))
            items = [dataset[i] for i in range(k)]
        except (TypeError, KeyError, IndexError):
            logger.warning("TenSafe: per-example gradient check skipped (the dataset cannot be indexed)")
            return
        collator = trainer._get_collator_with_removed_columns(trainer.data_collator, description="Training")
        batch = trainer._prepare_inputs(collator(items))
        loss_fn, model = self._loss_fn, self._model()
        dtype = next(p for p in model.parameters() if p.requires_grad).dtype
        import torch

        rtol = 1e-3 if dtype == torch.float32 or dtype == torch.float64 else 5e-2
        _preflight.check_per_example_gradients(
            self._engine,
            per_example_losses=lambda b: loss_fn(model, b),
            batch=batch,
            batch_size=k,
            rtol=rtol,
        )


def _optimizer(trainer: Trainer) -> Any:
    if trainer.optimizer is None:
        raise PrivacyError("the Trainer has no optimizer at train begin; TenSafe cannot check its parameters")
    return trainer.optimizer


def _refuse_raw_gradient_watch() -> None:
    watch = os.environ.get("WANDB_WATCH", "false").strip().lower()
    if watch in _RAW_GRADIENT_WATCH:
        raise ConfigError(
            f"WANDB_WATCH={watch!r} would log raw (non-private) gradients to W&B; unset it or use "
            "WANDB_WATCH=parameters"
        )


def _resolve_resume(trainer: Trainer, resume: str | bool | None) -> str | None:
    if resume is None or resume is False:
        return None
    if resume is True:
        from transformers.trainer_utils import get_last_checkpoint

        return get_last_checkpoint(trainer.args.output_dir)
    return str(resume)


def _find_calling_trainer(callback: TenSafeDPCallback) -> Trainer | None:
    frame = inspect.currentframe()
    try:
        while frame is not None:
            candidate = frame.f_locals.get("self")
            if isinstance(candidate, Trainer):
                handler = getattr(candidate, "callback_handler", None)
                if handler is not None and any(cb is callback for cb in handler.callbacks):
                    return candidate
            frame = frame.f_back
        return None
    finally:
        del frame


def _save_adapter_atomically(model: nn.Module, target: Path) -> None:
    """``model.save_pretrained`` into a temporary sibling folder, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        save = getattr(model, "save_pretrained", None)
        if not callable(save):
            raise ConfigError(f"{type(model).__name__} has no save_pretrained(); use a transformers/peft model")
        save(str(tmp))
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            if old.exists():
                shutil.rmtree(old)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
