"""W&B and MLflow callbacks for the stock ``transformers.Trainer``: privacy metrics, certificates, registry.

Add them after the DP callback::

    trainer = Trainer(..., callbacks=[TenSafeDPCallback(...), TenSafeWandbCallback(project="tensafe"),
                                      TenSafeMLflowCallback(experiment_name="tensafe")])

They translate Trainer events into ``shared_core.mlops`` calls: only the world process zero talks to a tracker,
the guide's metric keys are published every ``log_frequency`` steps, and at the end of training the certificate,
privacy report, training config and TSSP package that the DP side wrote into ``output_dir`` are published. They
coexist with ``report_to=["wandb", "mlflow"]`` (one run per job) and never stop training because of a tracker.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from shared_core.errors import PrivacyWarning
from shared_core.mlops._mlflow import MLflowPublisher
from shared_core.mlops._wandb import WandbPublisher
from shared_core.mlops.artifacts import RunArtifacts, collect_run_artifacts
from shared_core.mlops.config import TenSafeMLflowConfig, TenSafeWandbConfig, resolve_config
from shared_core.mlops.metrics import LogThrottle, PrivacyHistory, map_trainer_logs
from shared_core.mlops.redaction import is_secret_key, secret_values, secret_values_from_env
from shared_core.mlops.state import find_checkpoint_state, save_tracker_state

logger = logging.getLogger(__name__)

__all__ = ["TenSafeMLflowCallback", "TenSafeMLflowConfig", "TenSafeWandbCallback", "TenSafeWandbConfig"]

_STAGING = ".tensafe_mlops_staging"
_TRAINING_ARGS = "training_args.bin"


def _secret_arg_fields(args: TrainingArguments) -> dict[str, Any]:
    return {
        f.name: getattr(args, f.name, None)
        for f in dataclasses.fields(args)
        if is_secret_key(f.name) and isinstance(getattr(args, f.name, None), str)
    }


def sanitize_training_args_file(folder: str | os.PathLike[str], args: TrainingArguments) -> bool:
    """Rewrite ``folder/training_args.bin`` without the raw token fields (``hub_token`` ...) the Trainer pickled.

    Returns:
        True when the file was rewritten.
    """
    path = Path(folder) / _TRAINING_ARGS
    secrets = _secret_arg_fields(args)
    if not secrets or not path.is_file():
        return False
    import torch

    clean = copy.copy(args)
    for name in secrets:
        object.__setattr__(clean, name, None)
    tmp = path.with_name(f".{_TRAINING_ARGS}.tmp")
    torch.save(clean, tmp)
    with tmp.open("rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)
    logger.info("removed %s from %s", ", ".join(sorted(secrets)), path)
    return True


def _builtin_keys(tracker: str, logs: dict[str, Any]) -> set[str]:
    """The metric keys the built-in ``report_to`` integration logs for ``logs`` (WandbCallback's rewrite_logs)."""
    if tracker != "wandb":
        return set(logs)
    keys = set()
    for key in logs:
        if key.startswith("eval_"):
            keys.add("eval/" + key[len("eval_") :])
        elif key.startswith("test_"):
            keys.add("test/" + key[len("test_") :])
        else:
            keys.add("train/" + key)
    return keys


def _output_dir(args: TrainingArguments) -> Path:
    return Path(args.output_dir or "trainer_output")


class _TrackerCallback(TrainerCallback):
    """Shared Trainer plumbing of the tracker callbacks (rank gating, throttling, resume, artifacts)."""

    tracker = ""

    def __init__(self, config: Any) -> None:
        self.config = config
        self._throttle = LogThrottle(config.log_frequency)
        self._history = PrivacyHistory()
        self._started = False
        self._summary: dict[str, Any] = {}

    # subclass hooks ----------------------------------------------------------------------------------------------
    def _start(self, args: TrainingArguments, resume_run_id: str | None) -> str | None:
        raise NotImplementedError

    def _log(self, metrics: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _run_info(self) -> dict[str, Any]:
        raise NotImplementedError

    def _publish(self, artifacts: RunArtifacts) -> dict[str, Any]:
        raise NotImplementedError

    def _include_adapter(self) -> bool:
        return bool(self.config.log_model)

    # Trainer events ----------------------------------------------------------------------------------------------
    def _ensure_started(self, args: TrainingArguments, state: TrainerState) -> None:
        if self._started:
            return
        self._started = True
        saved = find_checkpoint_state(
            _output_dir(args), global_step=state.global_step, resume_from=getattr(args, "resume_from_checkpoint", None)
        )
        resume_id = saved.get(self.tracker, {}).get("run_id")
        try:
            run_id = self._start(args, resume_id)
        except Exception as exc:  # a tracker must never stop training
            logger.warning("%s tracking is off for this run: %s", self.tracker, exc)
            return
        logger.info("%s run %s%s", self.tracker, run_id, f" (resumed {resume_id})" if resume_id else "")

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if state.is_world_process_zero:
            self._ensure_started(args, state)

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not state.is_world_process_zero or not logs:
            return
        self._ensure_started(args, state)
        metrics = map_trainer_logs(logs, include_privacy=getattr(self.config, "log_privacy_metrics", True))
        if not metrics:
            return
        is_eval = "eval/loss" in metrics
        is_last = bool(state.max_steps) and state.global_step >= state.max_steps
        if not self._throttle.should_log(state.global_step, is_eval=is_eval, is_last=is_last):
            return
        if is_eval:  # the training metrics of this step were published with the training record
            metrics = {k: v for k, v in metrics.items() if k.startswith("eval/")}
        self._history.add(state.global_step, metrics)
        if self.tracker in (args.report_to or []):
            # the built-in integration already logged these very keys to the same run at this step
            shared = _builtin_keys(self.tracker, logs)
            metrics = {k: v for k, v in metrics.items() if k not in shared}
        self._log(metrics, state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any) -> None:
        if not state.is_world_process_zero:
            return
        checkpoint = _output_dir(args) / f"checkpoint-{state.global_step}"
        if not checkpoint.is_dir():
            return
        try:
            sanitize_training_args_file(checkpoint, args)
            info = self._run_info()
            if info:
                save_tracker_state(checkpoint, self.tracker, info)
        except Exception as exc:  # saving ids is best effort; a resume then opens a new run
            logger.warning("could not save %s run ids in %s: %s", self.tracker, checkpoint, exc)

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if not state.is_world_process_zero:
            return
        self._ensure_started(args, state)
        if self.config.publish_on_train_end:
            self.publish_artifacts(_output_dir(args), args=args)
        else:
            sanitize_training_args_file(_output_dir(args), args)

    def publish_artifacts(
        self, output_dir: str | os.PathLike[str], *, args: TrainingArguments | None = None
    ) -> dict[str, Any]:
        """Publish the certificate, report, config and package found in ``output_dir`` to this callback's run.

        ``on_train_end`` calls it; call it again after writing the release (e.g. ``release_adapter``) when the
        certificate is produced after ``trainer.train()`` returns. Call it on the main process only. Never raises.

        Returns:
            The summary (also in :attr:`summary`).
        """
        out = Path(output_dir)
        staging = out / _STAGING / self.tracker
        canaries = [*secret_values_from_env(), *secret_values(dataclasses.asdict(self.config))]
        if args is not None:
            canaries += list(_secret_arg_fields(args).values())
        try:
            if args is not None:
                sanitize_training_args_file(out, args)
            artifacts = collect_run_artifacts(out, staging, include_adapter=self._include_adapter(), canaries=canaries)
            for name in artifacts.missing:
                message = f"{self.tracker}: {name} not found in {out}; not logged"
                warnings.warn(message, UserWarning, stacklevel=2)
            for name, reason in artifacts.refused:
                logger.error("%s: %s NOT uploaded, a secret was found in it (%s)", self.tracker, name, reason)
            self._summary = self._publish(artifacts)
            self._summary["missing"] = list(artifacts.missing)
            self._summary["refused"] = [name for name, _ in artifacts.refused]
        except Exception as exc:  # the run is trained; a publishing failure is reported, not raised
            logger.warning("%s end-of-run publishing failed: %s", self.tracker, exc)
            self._summary = {"error": str(exc)}
        if not self._summary.get("buffered"):
            shutil.rmtree(staging, ignore_errors=True)
            if staging.parent.is_dir() and not any(staging.parent.iterdir()):
                staging.parent.rmdir()
        return dict(self._summary)

    @property
    def summary(self) -> dict[str, Any]:
        """What the end of training published (run id, read-back result, registered version, buffered records)."""
        return dict(self._summary)


class TenSafeWandbCallback(_TrackerCallback):
    """Publishes privacy metrics, the DP certificate and the TSSP package of a Trainer run to Weights & Biases.

    Args:
        config: A :class:`TenSafeWandbConfig`; or pass its fields as keyword arguments instead.
        **kwargs: Fields of :class:`TenSafeWandbConfig` (``project``, ``name``, ``config`` ...).

    Note:
        Reuses ``wandb.run`` when one exists (e.g. from ``report_to=["wandb"]``) and does not finish a run it did
        not start; metrics are logged with ``wandb.run.log`` under the guide's keys plus ``train/global_step``.
        Gradient histograms (``log_gradients``) are never logged: under DP they would leak non-private data.
    """

    tracker = "wandb"

    def __init__(self, config: TenSafeWandbConfig | None = None, **kwargs: Any) -> None:
        super().__init__(resolve_config(TenSafeWandbConfig, config, kwargs))
        self._publisher: WandbPublisher | None = None
        if self.config.log_gradients:
            warnings.warn(
                "TenSafeWandbCallback(log_gradients=True) is ignored: gradient histograms are not private under DP, "
                "so none are logged. Set log_gradients=False to silence this warning.",
                PrivacyWarning,
                stacklevel=2,
            )

    def _start(self, args: TrainingArguments, resume_run_id: str | None) -> str | None:
        if os.environ.get("WANDB_WATCH", "false").lower() in {"gradients", "all"}:
            warnings.warn(
                "WANDB_WATCH logs raw gradient histograms through the built-in WandbCallback; they are outside the "
                "DP guarantee. Unset WANDB_WATCH.",
                PrivacyWarning,
                stacklevel=2,
            )
        self._publisher = WandbPublisher(self.config)
        return self._publisher.start(run_name=args.run_name, resume_run_id=resume_run_id)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._publisher is not None:
            self._publisher.log_metrics(metrics, step=step)

    def _run_info(self) -> dict[str, Any]:
        return self._publisher.run_info() if self._publisher is not None else {}

    def _publish(self, artifacts: RunArtifacts) -> dict[str, Any]:
        if self._publisher is None:
            return {}
        outcome = self._publisher.publish_artifacts(artifacts, self._history)
        outcome.update(self._publisher.run_info(), offline_fallback=self._publisher.offline_fallback)
        return outcome


class TenSafeMLflowCallback(_TrackerCallback):
    """Publishes privacy metrics, the DP certificate and the TSSP package of a Trainer run to MLflow.

    Args:
        config: A :class:`TenSafeMLflowConfig`; or pass its fields as keyword arguments instead.
        **kwargs: Fields of :class:`TenSafeMLflowConfig` (``experiment_name``, ``tracking_uri`` ...).

    Note:
        Captures the run id at train begin (the active run of ``report_to=["mlflow"]`` when there is one) and
        logs through ``MlflowClient`` afterwards, so no ghost run appears after the built-in callback ended its
        run. The certificate is logged synchronously and read back; with ``log_model`` the package is registered
        with version tags ``epsilon``, ``delta``, ``tssp_verified`` and the alias of the config. When the server
        is unreachable, records go to ``output_dir/<buffer_file>`` and are replayed when it is back.
    """

    tracker = "mlflow"

    def __init__(self, config: TenSafeMLflowConfig | None = None, **kwargs: Any) -> None:
        super().__init__(resolve_config(TenSafeMLflowConfig, config, kwargs))
        self._publisher: MLflowPublisher | None = None

    def _start(self, args: TrainingArguments, resume_run_id: str | None) -> str | None:
        self._publisher = MLflowPublisher(self.config, output_dir=_output_dir(args))
        return self._publisher.start(run_name=args.run_name, resume_run_id=resume_run_id)

    def _log(self, metrics: dict[str, float], step: int) -> None:
        if self._publisher is not None:
            self._publisher.log_metrics(metrics, step=step)

    def _run_info(self) -> dict[str, Any]:
        if self._publisher is None or self._publisher.run_id is None:
            return {}
        return {"run_id": self._publisher.run_id, "experiment_name": self.config.experiment_name}

    def _publish(self, artifacts: RunArtifacts) -> dict[str, Any]:
        if self._publisher is None:
            return {}
        outcome = self._publisher.publish_artifacts(artifacts)
        outcome.update(self._publisher.finish())
        return outcome
