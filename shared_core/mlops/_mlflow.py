"""MLflow publishing through ``MlflowClient`` with an explicit run id (no fluent calls, hence no ghost runs).

Every call goes through :meth:`MLflowPublisher._call`: when the server is unreachable, or a call fails for a
transient reason, the record is appended to a JSONL buffer in the output folder and replayed later (at the latest at
the end of training); training never stops because of the tracker. Errors the server will never accept (HTTP 4xx,
e.g. changing a param value) are reported once and dropped.
"""

from __future__ import annotations

import filecmp
import json
import logging
import os
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shared_core._imports import require
from shared_core.mlops.artifacts import CERTIFICATE_NAME, RunArtifacts, certificate_tags, verify_tssp_package
from shared_core.mlops.buffer import JsonlBuffer
from shared_core.mlops.config import TenSafeMLflowConfig
from shared_core.mlops.params import flatten_params, sanitize_key, split_params
from shared_core.mlops.redaction import has_url_credentials, redact_config_secrets, redact_text

logger = logging.getLogger(__name__)

__all__ = ["MLflowPublisher", "replay_mlflow_buffer", "suppress_credential_url_printing"]

_PROBE_INTERVAL_S = 5.0
_PROBE_TIMEOUT_S = 2.0
_DEFAULT_EXPERIMENT = "tensafe"
_DEFAULT_MODEL_NAME = "tensafe-dp-model"
OVERFLOW_PARAMS_FILE = "params/overflow_params.json"


def _strip_userinfo(uri: str) -> str:
    parts = urllib.parse.urlsplit(uri)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def suppress_credential_url_printing(*uris: str | None) -> None:
    """Stop MLflow printing "View run ... at <tracking URI>" to stdout when a URI carries credentials.

    MLflow writes that line on every run end (also the built-in MLflowCallback's); console capture (W&B, CI logs)
    would keep the password. ``MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT`` is read at each run end.
    """
    if any(uri and has_url_credentials(uri) for uri in uris):
        os.environ["MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"] = "true"


def _is_permanent(exc: BaseException) -> bool:
    status = getattr(exc, "get_http_status_code", None)
    if callable(status):
        try:
            code = int(status())
        except (TypeError, ValueError):
            return False
        return 400 <= code < 500
    return False


class MLflowPublisher:
    """One MLflow run of one training job, addressed by id.

    Args:
        config: The tracker settings.
        output_dir: Where the JSONL buffer lives.
    """

    def __init__(self, config: TenSafeMLflowConfig, *, output_dir: str | Path) -> None:
        self.config = config
        self.buffer = JsonlBuffer(Path(output_dir) / config.buffer_file)
        self.run_id: str | None = None
        self.owns_run = False
        self.dropped: list[str] = []
        self._mlflow = require("mlflow", extra="mlops")
        self._uri = config.tracking_uri or self._mlflow.get_tracking_uri()
        current = self._mlflow.get_tracking_uri()
        suppress_credential_url_printing(self._uri, current, os.environ.get("MLFLOW_TRACKING_URI"))
        self._client = self._mlflow.MlflowClient(tracking_uri=self._uri)
        self._reachable_at = 0.0
        self._reachable_cached = True
        self._warned_down = False

    # -- plumbing -----------------------------------------------------------------------------------------------

    def _redact(self, obj: Any) -> Any:
        return redact_config_secrets(obj) if self.config.redact_config_secrets else obj

    def _reachable(self) -> bool:
        if urllib.parse.urlsplit(self._uri).scheme not in {"http", "https"}:
            return True
        now = time.monotonic()
        if now - self._reachable_at < _PROBE_INTERVAL_S:
            return self._reachable_cached
        url = _strip_userinfo(self._uri).rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=_PROBE_TIMEOUT_S) as response:  # noqa: S310 (http/https only)
                ok = 200 <= response.status < 300
        except (OSError, urllib.error.URLError, ValueError):
            ok = False
        self._reachable_at, self._reachable_cached = now, ok
        return ok

    def _mark_down(self, reason: str) -> None:
        self._reachable_cached, self._reachable_at = False, time.monotonic()
        if not self._warned_down:
            self._warned_down = True
            logger.warning(
                "MLflow at %s is unreachable (%s); records are kept in %s and sent when it is back",
                redact_text(self._uri),
                reason,
                self.buffer.path,
            )

    def _call(self, op: str, **args: Any) -> Any:
        """Send one record now, or buffer it; never raises."""
        if len(self.buffer) and self._reachable():
            self.flush()
        if not self._reachable():
            self._mark_down("health probe failed")
            self.buffer.append(op, run_id=self.run_id, **args)
            return None
        try:
            return self._send(op, {"run_id": self.run_id, **args})
        except Exception as exc:  # the tracker must never stop training
            if _is_permanent(exc):
                message = f"MLflow refused {op}: {redact_text(str(exc))[:300]}"
                logger.warning(message)
                self.dropped.append(message)
                return None
            self._mark_down(type(exc).__name__)
            self.buffer.append(op, run_id=self.run_id, **args)
            return None

    def _send(self, op: str, args: dict[str, Any]) -> Any:
        if op == "start_run":
            return self._start_run(args)
        run_id = args.get("run_id") or self.run_id
        if run_id is None:
            raise RuntimeError("no MLflow run yet")  # transient: the buffered start_run comes first on replay
        metric_cls = self._mlflow.entities
        if op == "log_metrics":
            now = int(time.time() * 1000)
            stamp = args.get("timestamp", now)
            metrics = [metric_cls.Metric(k, float(v), stamp, args["step"]) for k, v in args["metrics"].items()]
            self._client.log_batch(run_id, metrics=metrics, synchronous=True)
        elif op == "log_params":
            params = [metric_cls.Param(k, v) for k, v in args["params"].items()]
            for i in range(0, len(params), 100):
                self._client.log_batch(run_id, params=params[i : i + 100], synchronous=True)
        elif op == "set_tags":
            tags = [metric_cls.RunTag(k, v) for k, v in args["tags"].items()]
            self._client.log_batch(run_id, tags=tags, synchronous=True)
        elif op == "log_text":
            self._client.log_text(run_id, args["text"], args["artifact_file"])
        elif op == "log_artifact":
            self._client.log_artifact(run_id, args["path"], artifact_path=args.get("artifact_path"))
        elif op == "log_artifacts":
            self._client.log_artifacts(run_id, args["path"], artifact_path=args.get("artifact_path"))
        elif op == "terminate":
            self._client.set_terminated(run_id, args.get("status", "FINISHED"))
        else:
            raise ValueError(f"unknown buffered MLflow operation {op!r}")
        return None

    def flush(self) -> tuple[int, int]:
        """Replay buffered records; returns ``(sent, left)``."""
        if not len(self.buffer):
            return 0, 0
        sent, left = self.buffer.replay(self._send)
        logger.info("replayed %d buffered MLflow records (%d left)", sent, left)
        return sent, left

    # -- run lifecycle ------------------------------------------------------------------------------------------

    def _start_run(self, args: dict[str, Any]) -> str:
        resume = args.get("resume_run_id")
        if resume:
            self._client.get_run(resume)  # raises when it is gone
            self._client.update_run(resume, status="RUNNING")
            self.run_id, self.owns_run = resume, True
            return resume
        active = self._mlflow.active_run()
        if active is not None and self._mlflow.get_tracking_uri() == self._uri:
            self.run_id, self.owns_run = active.info.run_id, False
            return self.run_id
        name = args.get("experiment_name") or _DEFAULT_EXPERIMENT
        experiment = self._client.get_experiment_by_name(name)
        experiment_id = (
            experiment.experiment_id
            if experiment is not None
            else self._client.create_experiment(name, artifact_location=args.get("artifact_location"))
        )
        run = self._client.create_run(experiment_id, run_name=args.get("run_name"), tags=args.get("tags") or {})
        self.run_id, self.owns_run = run.info.run_id, True
        return self.run_id

    def start(self, *, run_name: str | None, resume_run_id: str | None = None) -> str | None:
        """Attach to the resumed run, the active run of the built-in MLflowCallback, or a new run."""
        name = self._redact(self.config.run_name or run_name)
        tags = {sanitize_key(str(k)): str(v) for k, v in self._redact(dict(self.config.tags or {})).items()}
        where = {
            "experiment_name": self.config.experiment_name or _env("MLFLOW_EXPERIMENT_NAME"),
            "artifact_location": self.config.artifact_location,
        }
        self._call("start_run", run_name=name, tags=tags, resume_run_id=resume_run_id, **where)
        if resume_run_id and self.run_id is None and self._reachable():
            logger.warning("MLflow run %s to resume was not found; starting a new run", resume_run_id)
            self._call("start_run", run_name=name, tags=tags, resume_run_id=None, **where)
        if self.run_id and self.owns_run is False and resume_run_id and resume_run_id != self.run_id:
            logger.warning("resuming: logging to the active MLflow run %s, not saved %s", self.run_id, resume_run_id)
        if self.run_id and tags:
            self._call("set_tags", tags=tags)
        if self.config.params:
            self.log_params(self.config.params)
        return self.run_id

    def log_metrics(self, metrics: Mapping[str, float], *, step: int) -> None:
        """Log metrics at ``step`` (synchronously, or into the buffer)."""
        if metrics:
            self._call("log_metrics", metrics=dict(metrics), step=int(step), timestamp=int(time.time() * 1000))

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Log params (redacted, flattened); too long or too many go to ``params/overflow_params.json``."""
        inline, overflow = split_params(flatten_params(self._redact(dict(params))))
        if inline:
            self._call("log_params", params=inline)
        if overflow:
            logger.info("%d params too long or too many for MLflow; logged to %s", len(overflow), OVERFLOW_PARAMS_FILE)
            text = json.dumps(overflow, indent=2, sort_keys=True)
            self._call("log_text", text=text, artifact_file=OVERFLOW_PARAMS_FILE)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        """Set run tags (redacted)."""
        clean = {sanitize_key(str(k)): str(v)[:8000] for k, v in self._redact(dict(tags)).items()}
        if clean:
            self._call("set_tags", tags=clean)

    # -- end of training ----------------------------------------------------------------------------------------

    def _log_certificate_verified(self, path: Path) -> bool:
        """Log the certificate synchronously and compare the stored bytes with the local file."""
        if self.run_id is None or not self._reachable():
            self._call("log_artifact", path=str(path), artifact_path=None)
            return False
        try:
            self._client.log_artifact(self.run_id, str(path), artifact_path=None)
            with tempfile.TemporaryDirectory(prefix="tensafe-mlflow-check-") as tmp:
                got = Path(self._client.download_artifacts(self.run_id, CERTIFICATE_NAME, dst_path=tmp))
                same = filecmp.cmp(got, path, shallow=False)
        except Exception as exc:  # buffered for later, reported as not verified
            self._mark_down(type(exc).__name__)
            self.buffer.append("log_artifact", run_id=self.run_id, path=str(path), artifact_path=None)
            return False
        if not same:
            logger.error("MLflow returned different bytes for %s than were logged", CERTIFICATE_NAME)
        return same

    def publish_artifacts(self, artifacts: RunArtifacts) -> dict[str, Any]:
        """Log the end-of-run artifacts and tags, register the package; returns what happened."""
        outcome: dict[str, Any] = {"certificate_read_back": None, "registered_version": None, "tssp_verified": False}
        cert_path = artifacts.files.get(CERTIFICATE_NAME)
        tags = certificate_tags(artifacts.certificate, certificate_path=cert_path)
        if cert_path is not None and self.config.log_dp_certificate:
            outcome["certificate_read_back"] = self._log_certificate_verified(cert_path)
            tags["dp.certificate_read_back"] = str(outcome["certificate_read_back"]).lower()
        if self.config.log_artifacts:
            for name, path in artifacts.files.items():
                if name != CERTIFICATE_NAME:
                    self._call("log_artifact", path=str(path), artifact_path=None)
            if artifacts.package is not None:
                self._call("log_artifacts", path=str(artifacts.package), artifact_path="model")
        if self.config.log_model and artifacts.adapter:
            for path in artifacts.adapter:
                self._call("log_artifact", path=str(path), artifact_path="adapter")
        verified = verify_tssp_package(artifacts.package, trusted_keys=self.config.trusted_keys)
        outcome["tssp_verified"] = verified
        tags["tssp_verified"] = str(verified).lower()
        self.set_tags(tags)
        if self.config.log_model and self.config.log_artifacts and artifacts.package is not None:
            outcome["registered_version"] = self._register(tags, verified=verified)
        elif self.config.log_model:
            logger.warning("model not registered: no clean TSSP package (model/) was logged")
        return outcome

    def _register(self, tags: Mapping[str, str], *, verified: bool) -> str | None:
        if self.run_id is None or len(self.buffer) or not self._reachable():
            logger.warning("model not registered: MLflow is unreachable; register it later from run %s", self.run_id)
            return None
        name = self._redact(self.config.registered_model_name or self.config.run_name or _DEFAULT_MODEL_NAME)
        version_tags = {
            "epsilon": tags.get("dp.epsilon", "unknown"),
            "delta": tags.get("dp.delta", "unknown"),
            "tssp_verified": str(verified).lower(),
        }
        try:
            try:
                self._client.get_registered_model(name)
            except Exception:  # not registered yet
                self._client.create_registered_model(name, tags={"library": "tensafe"})
            run = self._client.get_run(self.run_id)
            version = self._client.create_model_version(
                name, source=f"{run.info.artifact_uri}/model", run_id=self.run_id, tags=version_tags
            )
            self._client.set_registered_model_alias(name, self.config.alias, version.version)
        except Exception as exc:  # registration is best effort; training is already done
            message = f"model registration of {name!r} failed: {redact_text(str(exc))[:300]}"
            logger.warning(message)
            self.dropped.append(message)
            return None
        logger.info("registered %s version %s with alias %s", name, version.version, self.config.alias)
        return str(version.version)

    def finish(self) -> dict[str, Any]:
        """Replay the buffer, end the run if this publisher started it; returns a summary for the user."""
        if len(self.buffer) and self._reachable():
            self.flush()
        if self.owns_run or self.run_id is None:  # a run still to be created from the buffer is ours too
            self._call("terminate", status="FINISHED")
        left = len(self.buffer)
        if left:
            logger.warning(
                "%d MLflow records could not be sent and are kept in %s; replay them with "
                "shared_core.mlops.replay_mlflow_buffer(%r, tracking_uri=...)",
                left,
                self.buffer.path,
                str(self.buffer.path),
            )
        return {"run_id": self.run_id, "buffered": left, "dropped": list(self.dropped)}


def _env(name: str) -> str | None:
    return os.environ.get(name) or None


def replay_mlflow_buffer(path: str | Path, *, tracking_uri: str) -> tuple[int, int]:
    """Send the records of a buffer file left by an earlier run to ``tracking_uri``; returns ``(sent, left)``."""
    path = Path(path)
    config = TenSafeMLflowConfig(tracking_uri=tracking_uri, buffer_file=path.name)
    publisher = MLflowPublisher(config, output_dir=path.parent)
    return publisher.flush()
