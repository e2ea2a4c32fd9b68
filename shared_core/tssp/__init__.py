"""TSSP, the TenSafe Secure Package: hybrid-signed (Ed25519 + ML-DSA-65), optionally encrypted adapter packages.

Importing this package is cheap and torch-free; the names below are loaded on first use. Only
:func:`load_model` needs torch and peft, and it imports them when called.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines it
_LAZY: dict[str, str] = {
    "SigningKeys": "shared_core.tssp.keys",
    "TrustedKeys": "shared_core.tssp.keys",
    "generate_keys": "shared_core.tssp.keys",
    "inspect_package": "shared_core.tssp.verify",
    "load_model": "shared_core.tssp.load",
    "load_signing_keys": "shared_core.tssp.keys",
    "load_trusted_keys": "shared_core.tssp.keys",
    "make_envelope": "shared_core.tssp.signing",
    "open_envelope": "shared_core.tssp.signing",
    "pack": "shared_core.tssp.packing",
    "sign_detached": "shared_core.tssp.signing",
    "verify_detached": "shared_core.tssp.signing",
    "verify_package": "shared_core.tssp.verify",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'shared_core.tssp' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
