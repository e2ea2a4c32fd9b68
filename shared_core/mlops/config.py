"""Settings of the W&B and MLflow tracker callbacks, with the fields and defaults of the MLOps guide."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from shared_core.errors import ConfigError

__all__ = ["TenSafeMLflowConfig", "TenSafeWandbConfig", "resolve_config"]

_ALIAS = re.compile(r"^[A-Za-z0-9_-]{1,255}$")
_RESERVED_ALIAS = re.compile(r"^(latest|v\d+)$")
_MODES = (None, "online", "offline", "disabled")


def _check_frequency(value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"log_frequency must be a positive number of optimizer steps, got {value!r}")


@dataclass(kw_only=True)
class TenSafeWandbConfig:
    """Settings of :class:`tensafe_hf.TenSafeWandbCallback`.

    Args:
        project: W&B project; ``None`` takes ``WANDB_PROJECT`` (then ``"tensafe"``).
        entity: W&B entity (team or user).
        name: Run name.
        tags: Run tags.
        notes: Run notes.
        log_frequency: Publish training metrics every N optimizer steps (and on the last step).
        log_model: Also log the adapter weights as a ``model`` artifact.
        log_gradients: The guide's gradient histograms. Under DP they would be non-private, so they are never
            logged; ``True`` only triggers a one-time :class:`~shared_core.errors.PrivacyWarning`.
        log_privacy_metrics: Publish the ``privacy/*`` metrics.
        redact_config_secrets: Redact API keys, tokens, passwords and URL credentials from everything sent.
        config: Run config (the guide's Quick Start ``config=``), redacted before it is sent.
        mode: ``online``, ``offline`` or ``disabled``; ``None`` lets W&B decide (``WANDB_MODE``). An online run
            that cannot start falls back to offline.
        init_timeout: Seconds W&B may take to start a run before the offline fallback.
        trusted_keys: Trusted public keys file for verifying the TSSP package before it is logged.
        publish_on_train_end: Publish the release files at ``on_train_end``; set False when they are written after
            ``trainer.train()`` returns and call the callback's ``publish_artifacts(output_dir)`` then.
    """

    project: str | None = None
    entity: str | None = None
    name: str | None = None
    tags: list[str] | None = None
    notes: str | None = None
    log_frequency: int = 10
    log_model: bool = True
    log_gradients: bool = True
    log_privacy_metrics: bool = True
    redact_config_secrets: bool = True
    config: dict[str, Any] | None = None
    mode: str | None = None
    init_timeout: float = 30.0
    trusted_keys: str | None = None
    publish_on_train_end: bool = True

    def __post_init__(self) -> None:
        _check_frequency(self.log_frequency)
        if self.mode not in _MODES:
            raise ConfigError(f"mode must be one of online, offline, disabled or None; got {self.mode!r}")
        if not self.init_timeout > 0:
            raise ConfigError(f"init_timeout must be > 0 seconds, got {self.init_timeout!r}")


@dataclass(kw_only=True)
class TenSafeMLflowConfig:
    """Settings of :class:`tensafe_hf.TenSafeMLflowCallback`.

    Args:
        experiment_name: Experiment; ``None`` takes ``MLFLOW_EXPERIMENT_NAME`` (then ``"tensafe"``).
        tracking_uri: Tracking server; ``None`` takes MLflow's own (``MLFLOW_TRACKING_URI``). Credentials in it
            are used for the connection but never logged.
        artifact_location: Artifact root of a newly created experiment.
        run_name: Run name.
        tags: Run tags (redacted).
        log_frequency: Publish training metrics every N optimizer steps (and on the last step).
        log_model: Register the TSSP package (``model/``) in the model registry, and log the adapter weights.
        log_artifacts: Log ``privacy_report.json``, ``training_config.json`` and the package ``model/``.
        log_dp_certificate: Log ``dp_certificate.json`` synchronously and check it by reading it back.
        registered_model_name: Registry name; ``None`` uses ``run_name`` or ``"tensafe-dp-model"``.
        alias: Registry alias given to the new version (stages are deprecated in MLflow 3).
        params: Extra run params (redacted; long values and more than 100 params go to a JSON artifact).
        redact_config_secrets: Redact API keys, tokens, passwords and URL credentials from everything sent.
        trusted_keys: Trusted public keys file; the version tag ``tssp_verified`` is ``"true"`` only when the
            package verifies against it.
        buffer_file: Name (in ``output_dir``) of the JSONL file that keeps records the server did not accept.
        publish_on_train_end: Publish the release files at ``on_train_end``; set False when they are written after
            ``trainer.train()`` returns and call the callback's ``publish_artifacts(output_dir)`` then.
    """

    experiment_name: str | None = None
    tracking_uri: str | None = None
    artifact_location: str | None = None
    run_name: str | None = None
    tags: dict[str, str] | None = None
    log_frequency: int = 10
    log_model: bool = True
    log_artifacts: bool = True
    log_dp_certificate: bool = True
    registered_model_name: str | None = None
    alias: str = "dp-certified"
    params: dict[str, Any] | None = None
    redact_config_secrets: bool = True
    trusted_keys: str | None = None
    buffer_file: str = "tensafe_mlflow_buffer.jsonl"
    publish_on_train_end: bool = True

    def __post_init__(self) -> None:
        _check_frequency(self.log_frequency)
        if not _ALIAS.match(self.alias) or _RESERVED_ALIAS.match(self.alias):
            raise ConfigError(
                f"alias must match [A-Za-z0-9_-]{{1,255}} and not be 'latest' or 'v<digits>'; got {self.alias!r}. "
                "Example: alias='dp-certified'"
            )
        if "/" in self.buffer_file or self.buffer_file in {"", ".", ".."}:
            raise ConfigError(f"buffer_file must be a plain file name inside output_dir, got {self.buffer_file!r}")


def resolve_config(cls: type[Any], config: Any, kwargs: dict[str, Any]) -> Any:
    """Build ``cls`` from a config object or from keyword arguments (not both), naming unknown fields.

    A plain dict passed as ``config`` to a class with a ``config`` field is that field (the guide's Quick Start
    ``TenSafeWandbCallback(project=..., config={...})``).
    """
    if isinstance(config, Mapping) and "config" in {f.name for f in dataclasses.fields(cls)}:
        kwargs, config = {**kwargs, "config": dict(config)}, None
    if config is not None:
        if kwargs:
            raise ConfigError(
                f"pass either config=<{cls.__name__}> or keyword arguments, not both (got config and "
                f"{', '.join(sorted(kwargs))})"
            )
        if not isinstance(config, cls):
            raise ConfigError(f"config must be a {cls.__name__}, got {type(config).__name__}")
        return config
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(kwargs) - known)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {', '.join(unknown)}; valid fields: {', '.join(sorted(known))}"
        )
    return cls(**kwargs)
