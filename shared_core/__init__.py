"""TenSafe core: DP step, accounting, certificates, secure packages and publishing.

Importing this package is cheap and pulls in neither torch nor any training framework; the names below are
loaded on first use.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# name -> module that defines it; resolved lazily so `import shared_core` stays torch-free.
_LAZY: dict[str, str] = {
    "BudgetExhaustedError": "shared_core.errors",
    "ConfigError": "shared_core.errors",
    "DPConfig": "shared_core.config",
    "LedgerError": "shared_core.errors",
    "MissingDependencyError": "shared_core.errors",
    "PrivacyError": "shared_core.errors",
    "PrivacyWarning": "shared_core.errors",
    "TensafeError": "shared_core.errors",
    "VerificationError": "shared_core.errors",
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shared_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
