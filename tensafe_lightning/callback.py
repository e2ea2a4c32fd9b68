"""``TenSafeReleaseCallback``: the end-of-fit step that writes what a DP run releases, on rank zero only.

At the end of ``fit`` it saves the trained LoRA adapter (``adapter/``) and the privacy ledger
(``privacy_state.json``) into ``output_dir``; when a signing key folder is given it then calls
:func:`shared_core.release.release_adapter`, the same code the Hugging Face adapter uses, which writes the signed
``dp_certificate.json``, ``privacy_report.*``, the redacted ``training_config.json`` and the verified TSSP package
``model.tssp/``. When a ``WandbLogger`` or ``MLFlowLogger`` is attached, the certificate, report and package are
added to its run as artifacts.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning.pytorch as L
from typing_extensions import override

from shared_core.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

    from shared_core.release import Release

__all__ = ["ADAPTER_DIR", "PRIVACY_STATE_NAME", "TenSafeReleaseCallback"]

logger = logging.getLogger(__name__)

ADAPTER_DIR = "adapter"
PRIVACY_STATE_NAME = "privacy_state.json"


class TenSafeReleaseCallback(L.Callback):
    """Write the adapter, the ledger and (with a key folder) the certificate and signed package after ``fit``.

    Example:
        >>> release = TenSafeReleaseCallback("out/", key_dir="keys/", base_model="gpt2")  # doctest: +SKIP
        >>> L.Trainer(strategy="tensafe_dp", callbacks=[release]).fit(module, loader)  # doctest: +SKIP
        >>> release.release.package_path  # doctest: +SKIP

    Args:
        output_dir: Folder for ``adapter/``, ``privacy_state.json`` and the released artifacts.
        key_dir: Folder with the Ed25519 + ML-DSA-65 signing keys (``tensafe keygen``); ``None`` skips the
            certificate and package.
        base_model: Base model the adapter applies to (a Hub id, ideally with revision); required with ``key_dir``.
        model_name: Name of the released model; defaults to the name of ``output_dir``.
        passphrase_env: Environment variable holding the private-key passphrase, if the keys are protected.
        training_config: Configuration recorded (secrets redacted) in ``training_config.json``; by default the DP
            settings and the Trainer's loop settings.
        adapter: ``fn(module) -> model`` returning the peft model to save; by default the first submodule of the
            LightningModule that has ``peft_config`` and ``save_pretrained``.
        log_artifacts: Add the released files to attached W&B / MLflow loggers' runs.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike[str],
        *,
        key_dir: str | os.PathLike[str] | None = None,
        base_model: str | None = None,
        model_name: str | None = None,
        passphrase_env: str | None = None,
        training_config: dict[str, Any] | None = None,
        adapter: Callable[[L.LightningModule], nn.Module] | None = None,
        log_artifacts: bool = True,
    ) -> None:
        if key_dir is not None and not base_model:
            raise ConfigError(
                "TenSafeReleaseCallback(key_dir=...) needs base_model= (the model the adapter applies to)"
            )
        self.output_dir = Path(output_dir)
        self.key_dir = None if key_dir is None else Path(key_dir)
        self.base_model = base_model
        self.model_name = model_name or self.output_dir.resolve().name
        self.passphrase_env = passphrase_env
        self.training_config = training_config
        self._adapter = adapter
        self.log_artifacts = log_artifacts
        self.release: Release | None = None
        self.adapter_dir: Path | None = None

    @override
    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        from tensafe_lightning.strategy import _TenSafeDPMixin

        strategy = trainer.strategy
        if not isinstance(strategy, _TenSafeDPMixin):
            raise ConfigError(
                "TenSafeReleaseCallback needs a TenSafe strategy: Trainer(strategy='tensafe_dp' or 'tensafe_ddp')"
            )
        ledger = strategy.ledger
        if ledger is None or ledger.steps == 0:
            logger.warning("TenSafe: no DP update was made; nothing to release")
            return
        if not trainer.is_global_zero:
            return
        self.output_dir.mkdir(parents=True, exist_ok=True)
        model = self._adapter(pl_module) if self._adapter is not None else _find_peft_model(pl_module)
        self.adapter_dir = self.output_dir / ADAPTER_DIR
        _save_adapter_atomically(model, self.adapter_dir)
        ledger.save(self.output_dir / PRIVACY_STATE_NAME)
        logger.info(
            "TenSafe: %d DP updates, epsilon %.4g; wrote %s", ledger.steps, ledger.epsilon_spent, self.output_dir
        )
        if self.key_dir is None:
            return
        self.release = self._release(trainer, strategy, ledger)
        if self.log_artifacts:
            _log_to_loggers(trainer, self.release, trusted_keys=str(self.key_dir), model_name=self.model_name)

    def _release(self, trainer: L.Trainer, strategy: Any, ledger: Any) -> Release:
        from shared_core.release import release_adapter

        assert self.key_dir is not None
        assert self.adapter_dir is not None
        assert self.base_model is not None
        passphrase = os.environ.get(self.passphrase_env) if self.passphrase_env else None
        optimizer = strategy.optimizers[0] if strategy.optimizers else None
        training_parameters: dict[str, Any] = {"gradient_accumulation_steps": int(trainer.accumulate_grad_batches)}
        if optimizer is not None:
            training_parameters["learning_rate"] = float(optimizer.param_groups[0]["lr"])
        config = self.training_config or {
            "dp": strategy.dp_config.to_dict(),
            "trainer": {
                "max_steps": trainer.max_steps,
                "max_epochs": trainer.max_epochs,
                "accumulate_grad_batches": int(trainer.accumulate_grad_batches),
                "precision": str(trainer.precision),
                "world_size": trainer.world_size,
            },
            "strategy": type(strategy).__name__,
        }
        return release_adapter(
            adapter_dir=self.adapter_dir,
            output_dir=self.output_dir,
            ledger=ledger,
            key_dir=self.key_dir,
            passphrase=passphrase,
            model_name=self.model_name,
            base_model=self.base_model,
            parameters_under_dp=strategy.trainable_parameter_names,
            training_parameters=training_parameters,
            training_config=config,
        )


def _find_peft_model(module: L.LightningModule) -> nn.Module:
    for sub in module.modules():
        if hasattr(sub, "peft_config") and callable(getattr(sub, "save_pretrained", None)):
            return sub
    raise ConfigError(
        "TenSafeReleaseCallback found no peft model (a submodule with peft_config and save_pretrained) in the "
        "LightningModule; pass adapter=lambda module: module.<your peft model>"
    )


def _save_adapter_atomically(model: nn.Module, target: Path) -> None:
    """``model.save_pretrained`` into a temporary sibling folder, fsync it, then swap it into place."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        model.save_pretrained(str(tmp))  # type: ignore[operator]
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _log_to_loggers(trainer: L.Trainer, release: Release, *, trusted_keys: str, model_name: str) -> None:
    """Publish the release to the runs of attached W&B / MLflow loggers (never fails the fit).

    The files go through the same ``shared_core.mlops`` code as the Hugging Face callbacks: re-redacted, scanned
    for this process' secrets (a file holding one is not uploaded), the package verified with the signing keys'
    public halves; W&B gets a ``dp-certificate`` and a ``tssp-package`` artifact, MLflow the certificate (read
    back), the package under ``model/`` and a registered version with the ``epsilon``/``delta``/``tssp_verified``
    tags.
    """
    from shared_core.mlops.artifacts import collect_run_artifacts
    from shared_core.mlops.redaction import secret_values_from_env

    loggers = [lg for lg in trainer.loggers if type(lg).__name__ in ("MLFlowLogger", "WandbLogger")]
    if not loggers:
        return
    with tempfile.TemporaryDirectory(prefix="tensafe-release-upload-") as staging:
        artifacts = collect_run_artifacts(
            release.output_dir, staging, include_adapter=False, canaries=secret_values_from_env()
        )
        for name, reason in artifacts.refused:
            logger.error("TenSafe: %s NOT uploaded, a secret was found in it (%s)", name, reason)
        for lg in loggers:
            kind = type(lg).__name__
            try:
                if kind == "MLFlowLogger":
                    _publish_to_mlflow(lg, artifacts, release, trusted_keys=trusted_keys, model_name=model_name)
                else:
                    _publish_to_wandb(lg, artifacts, trusted_keys=trusted_keys)
            except Exception as exc:  # a tracker must never lose the release that is already on disk
                logger.warning(
                    "TenSafe: could not add the release to %s (%s); it is in %s", kind, exc, release.output_dir
                )


def _publish_to_mlflow(lg: Any, artifacts: Any, release: Release, *, trusted_keys: str, model_name: str) -> None:
    from shared_core.mlops._mlflow import MLflowPublisher
    from shared_core.mlops.config import TenSafeMLflowConfig

    config = TenSafeMLflowConfig(
        tracking_uri=lg._tracking_uri, trusted_keys=trusted_keys, registered_model_name=model_name
    )
    publisher = MLflowPublisher(config, output_dir=release.output_dir)
    publisher.start(run_name=None, resume_run_id=lg.run_id)  # the logger's own run; Lightning ends it
    publisher.publish_artifacts(artifacts)


def _publish_to_wandb(lg: Any, artifacts: Any, *, trusted_keys: str) -> None:
    from shared_core.mlops._wandb import WandbPublisher
    from shared_core.mlops.config import TenSafeWandbConfig
    from shared_core.mlops.metrics import PrivacyHistory

    lg.experiment  # noqa: B018 - makes the logger start its run, which the publisher then reuses
    publisher = WandbPublisher(TenSafeWandbConfig(trusted_keys=trusted_keys, log_model=False))
    publisher.start(run_name=None)
    publisher.publish_artifacts(artifacts, PrivacyHistory())
