"""Publishing to experiment trackers (W&B, MLflow): what to log, key mapping, redaction, artifacts, registry.

Everything here is framework-free; the Trainer callbacks in ``tensafe_hf.mlops`` only translate Trainer events
into these calls. Importing this package imports neither torch, wandb nor mlflow.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it; resolved lazily so the trackers are imported only when used.
_LAZY: dict[str, str] = {
    "REDACTED": "shared_core.mlops.redaction",
    "find_secrets": "shared_core.mlops.redaction",
    "has_url_credentials": "shared_core.mlops.redaction",
    "is_secret_key": "shared_core.mlops.redaction",
    "redact_config_secrets": "shared_core.mlops.redaction",
    "redact_text": "shared_core.mlops.redaction",
    "replay_mlflow_buffer": "shared_core.mlops._mlflow",
    "scan_paths": "shared_core.mlops.redaction",
    "secret_values": "shared_core.mlops.redaction",
    "secret_values_from_env": "shared_core.mlops.redaction",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shared_core.mlops' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
