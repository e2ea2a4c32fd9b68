"""TenSafe adapter for the Hugging Face ``transformers.Trainer``.

Add ``TenSafeDPCallback`` to a stock Trainer, or use ``TenSafeTrainer``; the privacy mechanism itself lives in
``shared_core``. Needs ``pip install 'tensafe[hf]'``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

from shared_core.errors import MissingDependencyError

if importlib.util.find_spec("transformers") is None:  # checked without importing, so the CLI stays light
    raise MissingDependencyError("tensafe_hf needs transformers; install it with: pip install 'tensafe[hf]'")

_LAZY: dict[str, str] = {
    "TenSafeDPCallback": "tensafe_hf.callback",
    "TenSafeMLflowCallback": "tensafe_hf.mlops",
    "TenSafeTrainer": "tensafe_hf.trainer",
    "TenSafeWandbCallback": "tensafe_hf.mlops",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'tensafe_hf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
