"""Strict decoders shared by the envelope, the manifest and the key files.

Everything a verifier parses goes through here: JSON with duplicate keys, ``NaN``/``Infinity`` or (optionally) floats
is refused, and base64 must be canonical (right alphabet, right padding, zero pad bits) so that one byte string has
exactly one accepted encoding.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

__all__ = ["StrictDecodeError", "b64decode_strict", "b64encode", "loads_strict"]

_STD_B64 = re.compile(r"\A(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?\Z")
_URL_B64 = re.compile(r"\A(?:[A-Za-z0-9_-]{4})*(?:[A-Za-z0-9_-]{2}==|[A-Za-z0-9_-]{3}=)?\Z")


class StrictDecodeError(ValueError):
    """Raised by the strict decoders; callers turn it into a ConfigError or a VerificationError."""


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise StrictDecodeError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise StrictDecodeError(f"non-finite number {name} is not allowed")


def _reject_float(text: str) -> Any:
    raise StrictDecodeError(f"floating-point number {text} is not allowed (numbers must be strings or integers)")


def _checked_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise StrictDecodeError(f"number {text} overflows a double")
    return value


def loads_strict(raw: bytes, *, max_size: int, allow_floats: bool = True) -> Any:
    """Parse UTF-8 JSON bytes, refusing duplicate keys, non-finite numbers and (optionally) any float.

    Args:
        raw: the document.
        max_size: refuse documents longer than this many bytes before decoding anything.
        allow_floats: when False, any number with a fraction or exponent is refused.

    Raises:
        StrictDecodeError: the document is too large, not UTF-8 or not strict JSON.
    """
    if len(raw) > max_size:
        raise StrictDecodeError(f"document is {len(raw)} bytes, over the {max_size}-byte limit")
    try:
        text = raw.decode("utf-8", errors="strict")
    except UnicodeDecodeError as exc:
        raise StrictDecodeError(f"not valid UTF-8 ({exc.reason} at byte {exc.start})") from None
    if text.startswith("\ufeff"):
        raise StrictDecodeError("a byte-order mark is not allowed")
    try:
        return json.loads(
            text,
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_checked_float if allow_floats else _reject_float,
        )
    except json.JSONDecodeError as exc:
        raise StrictDecodeError(f"not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from None
    except RecursionError:
        raise StrictDecodeError("JSON nesting is too deep") from None


def b64encode(data: bytes) -> str:
    """Standard, padded base64 as text."""
    return base64.b64encode(data).decode("ascii")


def b64decode_strict(text: object, *, max_len: int | None = None) -> bytes:
    """Decode canonical padded base64 (standard or URL-safe alphabet, not mixed).

    Raises:
        StrictDecodeError: not a string, stray characters, wrong padding, non-zero pad bits or too long.
    """
    if not isinstance(text, str):
        raise StrictDecodeError(f"expected a base64 string, got {type(text).__name__}")
    if max_len is not None and len(text) > (max_len + 2) // 3 * 4:
        raise StrictDecodeError(f"base64 text of {len(text)} characters decodes past the {max_len}-byte limit")
    if _STD_B64.match(text):
        altchars = b"+/"
    elif _URL_B64.match(text):
        altchars = b"-_"
    else:
        raise StrictDecodeError("not canonical padded base64 (stray characters, mixed alphabets or bad padding)")
    try:
        data = base64.b64decode(text.encode("ascii"), altchars=altchars, validate=True)
    except (binascii.Error, ValueError):
        raise StrictDecodeError("not valid base64") from None
    if base64.b64encode(data, altchars=altchars).decode("ascii") != text:
        raise StrictDecodeError("base64 is not canonical (non-zero padding bits)")
    return data
