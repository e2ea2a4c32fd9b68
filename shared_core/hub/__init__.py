"""Publishing TSSP packages on the Hugging Face Hub: verified push, verified pull, listing, generated model card.

Importing this package is cheap: ``huggingface_hub`` (extra ``mlops``) is imported when a Hub call is made, and torch
only inside a multi-process job.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_LAZY: dict[str, str] = {
    "HubError": "shared_core.hub._config",
    "HubUnavailableError": "shared_core.hub._config",
    "TenSafeHFHubConfig": "shared_core.hub._config",
    "TenSafeHFHubIntegration": "shared_core.hub._integration",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shared_core.hub' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
