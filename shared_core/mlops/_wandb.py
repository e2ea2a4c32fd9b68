"""W&B publishing: one run per job (reusing ``wandb.run`` when one exists), offline fallback, privacy dashboard."""

from __future__ import annotations

import logging
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Mapping
from typing import Any

from shared_core._imports import require
from shared_core.mlops.artifacts import CERTIFICATE_NAME, RunArtifacts, certificate_tags, verify_tssp_package
from shared_core.mlops.config import TenSafeWandbConfig
from shared_core.mlops.metrics import GUIDE_METRIC_KEYS, PrivacyHistory
from shared_core.mlops.params import flatten_params
from shared_core.mlops.redaction import has_url_credentials, redact_config_secrets, redact_text

logger = logging.getLogger(__name__)

__all__ = ["WandbPublisher"]

STEP_METRIC = "train/global_step"
_ARTIFACT_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _artifact_name(prefix: str, run_id: str) -> str:
    return _ARTIFACT_NAME.sub("-", f"{prefix}-{run_id}")[:128]


def _find_number(obj: Any, key: str) -> float | None:
    """The first numeric value stored under ``key`` anywhere in a nested mapping."""
    if isinstance(obj, Mapping):
        value = obj.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        for child in obj.values():
            found = _find_number(child, key)
            if found is not None:
                return found
    return None


class WandbPublisher:
    """The W&B side of one training job.

    Args:
        config: The tracker settings.
    """

    def __init__(self, config: TenSafeWandbConfig) -> None:
        self.config = config
        self.run: Any = None
        self.owns_run = False
        self.offline_fallback = False
        self._wandb = require("wandb", extra="mlops")

    def _redact(self, obj: Any) -> Any:
        return redact_config_secrets(obj) if self.config.redact_config_secrets else obj

    def start(self, *, run_name: str | None, resume_run_id: str | None = None) -> str | None:
        """Reuse ``wandb.run`` if there is one, else start (or resume) a run; falls back to offline mode."""
        wandb = self._wandb
        uri = _env("MLFLOW_TRACKING_URI")
        if uri and has_url_credentials(uri):  # W&B captures the console; MLflow prints its URI at each run end
            os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"
        user_config = self._redact(dict(self.config.config or {}))
        if wandb.run is not None:
            self.run, self.owns_run = wandb.run, False
            if resume_run_id and resume_run_id != self.run.id:
                logger.warning("W&B run %s is active; the saved run %s is not resumed", self.run.id, resume_run_id)
            if user_config:
                self.run.config.update(user_config, allow_val_change=True)
        else:
            kwargs: dict[str, Any] = {
                "project": self.config.project or _env("WANDB_PROJECT") or "tensafe",
                "entity": self.config.entity,
                "name": self._redact(self.config.name or run_name),
                "tags": self._redact(list(self.config.tags)) if self.config.tags else None,
                "notes": self._redact(self.config.notes),
                "config": user_config or None,
                "mode": self.config.mode,
                "settings": wandb.Settings(init_timeout=self.config.init_timeout),
            }
            if resume_run_id:
                kwargs.update(id=resume_run_id, resume="allow")
            if self._wants_online() and not _server_reachable():
                logger.warning("W&B server unreachable; running in offline mode, sync later with `wandb sync`")
                kwargs["mode"] = "offline"
                self.offline_fallback = True
            try:
                self.run = wandb.init(**kwargs)
            except Exception as exc:  # unreachable server, missing key ...: keep every record offline
                logger.warning(
                    "W&B run could not start online (%s); continuing in offline mode, sync later with `wandb sync`",
                    redact_text(str(exc))[:300],
                )
                kwargs["mode"] = "offline"
                self.offline_fallback = True
                self.run = wandb.init(**kwargs)
            self.owns_run = True
        self._define_metrics()
        return str(self.run.id)

    def _wants_online(self) -> bool:
        mode = self.config.mode or _env("WANDB_MODE") or "online"
        return mode.lower() in {"online", "run"}

    def _define_metrics(self) -> None:
        try:
            self.run.define_metric(STEP_METRIC)
            for key in GUIDE_METRIC_KEYS:
                self.run.define_metric(key, step_metric=STEP_METRIC)
        except Exception as exc:  # a cosmetic failure must not stop training
            logger.debug("W&B define_metric failed: %s", exc)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log the guide's keys as they are (no ``train/`` prefix added), with ``train/global_step``."""
        if self.run is None or not metrics:
            return
        try:
            self.run.log({**metrics, STEP_METRIC: int(step)})
        except Exception as exc:  # W&B keeps its own offline queue; a failed call is reported, not raised
            logger.warning("W&B log failed at step %d: %s", step, redact_text(str(exc))[:300])

    def publish_artifacts(self, artifacts: RunArtifacts, history: PrivacyHistory) -> dict[str, Any]:
        """Log the report table, budget plots and artifacts; returns what happened."""
        outcome: dict[str, Any] = {"artifacts": [], "tssp_verified": False}
        if self.run is None:
            return outcome
        wandb = self._wandb
        try:
            self._log_dashboard(artifacts, history)
        except Exception as exc:  # plots are a convenience; never fatal
            logger.warning("W&B privacy dashboard failed: %s", redact_text(str(exc))[:300])
        run_id = str(self.run.id)
        verified = verify_tssp_package(artifacts.package, trusted_keys=self.config.trusted_keys)
        outcome["tssp_verified"] = verified
        tags = certificate_tags(artifacts.certificate, certificate_path=artifacts.files.get(CERTIFICATE_NAME))
        tags["tssp_verified"] = str(verified).lower()
        plan: list[tuple[str, str, list[Any], bool]] = []
        if artifacts.files:
            files = list(artifacts.files.values())
            plan.append((_artifact_name("dp-certificate", run_id), "dp-certificate", files, False))
        if artifacts.package is not None:
            plan.append((_artifact_name("tssp-package", run_id), "tssp-package", [artifacts.package], True))
        if self.config.log_model and artifacts.adapter:
            plan.append((_artifact_name("model", run_id), "model", list(artifacts.adapter), False))
        for name, kind, paths, is_dir in plan:
            try:
                artifact = wandb.Artifact(name, type=kind, metadata=tags)
                for path in paths:
                    if is_dir:
                        artifact.add_dir(str(path))
                    else:
                        artifact.add_file(str(path))
                self.run.log_artifact(artifact, aliases=["latest", "dp-certified" if verified else "unverified"])
                outcome["artifacts"].append(name)
            except Exception as exc:  # one failed artifact does not stop the others
                logger.warning("W&B artifact %s failed: %s", name, redact_text(str(exc))[:300])
        try:
            for key, value in tags.items():
                self.run.summary[key] = value
        except Exception as exc:  # summary is informative only
            logger.debug("W&B summary update failed: %s", exc)
        return outcome

    def _log_dashboard(self, artifacts: RunArtifacts, history: PrivacyHistory) -> None:
        wandb = self._wandb
        report = artifacts.privacy_report or {}
        rows = [[str(k), str(v)] for k, v in flatten_params(self._redact(report)).items()]
        payload: dict[str, Any] = {}
        if rows:
            payload["privacy/report"] = wandb.Table(columns=["field", "value"], data=rows)
        spent = _find_number(artifacts.certificate, "epsilon")
        if spent is None and history.points:
            spent = history.points[-1][1]
        target = _find_number(report, "target_epsilon")
        if target is None:
            target = _find_number(artifacts.certificate, "target_epsilon")
        if spent is not None and math.isfinite(spent):
            data = [["Spent", spent]]
            if target is not None:
                data.append(["Remaining", max(target - spent, 0.0)])
            table = wandb.Table(data=data, columns=["Category", "Epsilon"])
            payload["privacy/budget_gauge"] = wandb.plot.bar(table, "Category", "Epsilon", title="Privacy Budget")
        if history.points:
            table = wandb.Table(data=[[eps, loss] for _, eps, loss in history.points], columns=["Epsilon", "Loss"])
            payload["privacy/epsilon_loss_tradeoff"] = wandb.plot.scatter(
                table, "Epsilon", "Loss", title="Privacy-Utility Tradeoff"
            )
        if payload:
            self.run.log(payload)

    def run_info(self) -> dict[str, Any]:
        """Ids to save in a checkpoint (no secrets)."""
        if self.run is None:
            return {}
        return {"run_id": str(self.run.id), "project": self.run.project, "entity": self.run.entity}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def _server_reachable(timeout: float = 2.0) -> bool:
    """A TCP connect to the W&B server (``WANDB_BASE_URL``), so an outage costs seconds, not W&B's retry loop."""
    parts = urllib.parse.urlsplit(_env("WANDB_BASE_URL") or "https://api.wandb.ai")
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False
