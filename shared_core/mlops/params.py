"""Turning a config into tracker params that never crash training (length and count limits, key rules)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

__all__ = ["MAX_PARAMS", "MAX_PARAM_VALUE_LENGTH", "flatten_params", "sanitize_key", "split_params"]

MAX_PARAM_VALUE_LENGTH = 6000
"""MLflow 3's param value limit; longer values go to a JSON artifact instead of being truncated."""
MAX_PARAMS = 100
"""At most this many params are logged as params; the rest go to the JSON artifact (hosted servers cap them)."""

_BAD_KEY_CHARS = re.compile(r"[^0-9A-Za-z_\-. :/]")
_MAX_KEY_LENGTH = 250


def sanitize_key(key: str) -> str:
    """Make ``key`` a valid MLflow/W&B name: unsupported characters become ``_``, at most 250 characters."""
    return _BAD_KEY_CHARS.sub("_", key)[:_MAX_KEY_LENGTH] or "_"


def flatten_params(params: Mapping[str, Any], *, prefix: str = "", sep: str = ".") -> dict[str, Any]:
    """Flatten nested mappings into ``a.b.c`` keys; lists and scalars stay values."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        name = f"{prefix}{sep}{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(flatten_params(value, prefix=name, sep=sep))
        else:
            out[name] = value
    return out


def _as_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return str(value)


def split_params(
    params: Mapping[str, Any],
    *,
    max_value_length: int = MAX_PARAM_VALUE_LENGTH,
    max_params: int = MAX_PARAMS,
) -> tuple[dict[str, str], dict[str, str]]:
    """Split flattened params into those safe to log as params and those that go to a JSON artifact.

    Args:
        params: Flat ``{key: value}`` (see :func:`flatten_params`); values are stringified.
        max_value_length: Values longer than this go to the overflow.
        max_params: At most this many keys are kept inline, in the given order; the rest overflow.

    Returns:
        ``(inline, overflow)``, both ``{sanitized key: text}``; their union holds every param exactly once.
    """
    inline: dict[str, str] = {}
    overflow: dict[str, str] = {}
    for key, value in params.items():
        name, text = sanitize_key(str(key)), _as_text(value)
        if len(text) > max_value_length or len(inline) >= max_params:
            overflow[name] = text
        else:
            inline[name] = text
    return inline, overflow
