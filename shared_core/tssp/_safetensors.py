"""A streaming structural check of safetensors bytes, without torch and without loading tensors.

The file is ``u64 LE header length N | N bytes of JSON header | data``. We enforce what upstream enforces, and the
"no holes, no overlap" rule: ``N`` at most 100 000 000 and within the file, a strict JSON header (no duplicate keys),
known dtypes, offsets that tile the data section exactly and sizes that match ``shape x dtype``.
"""

from __future__ import annotations

import math
from typing import Any

from shared_core.errors import VerificationError
from shared_core.tssp._strict import StrictDecodeError, loads_strict

__all__ = ["HEADER_CAP", "SafetensorsChecker"]

HEADER_CAP = 100_000_000
_DTYPE_BYTES = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E5M2": 1,
    "F8_E4M3": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}


class SafetensorsChecker:
    """Feed the plaintext of one ``.safetensors`` file; :meth:`finalize` raises on any structural problem.

    Args:
        name: the file name for error messages.
        total: the file's size in bytes (from the signed manifest).
        header_cap: the largest accepted header.
    """

    def __init__(self, name: str, total: int, *, header_cap: int = HEADER_CAP) -> None:
        self._name = name
        self._total = total
        self._cap = header_cap
        self._head = bytearray()
        self._need: int | None = None
        self._seen = 0
        self.tensors: dict[str, Any] | None = None

    def _fail(self, reason: str) -> VerificationError:
        return VerificationError(f"{self._name}: {reason}", path=self._name, check="safetensors")

    def update(self, data: bytes) -> None:
        """Feed the next bytes of the file."""
        self._seen += len(data)
        if self.tensors is not None:
            return
        self._head += data  # holds at most the header plus one fed piece
        if self._need is None:
            if len(self._head) < 8:
                return
            self._need = self._declared_length(bytes(self._head[:8]))
        if len(self._head) >= 8 + self._need:
            self.tensors = self._parse(bytes(self._head[8 : 8 + self._need]))
            self._head = bytearray()

    def _declared_length(self, prefix: bytes) -> int:
        if prefix[:1] == b"\x80" and prefix[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
            raise self._fail("is a Python pickle, not safetensors (pickle is refused: it can run code on load)")
        if prefix[:4] == b"PK\x03\x04":
            raise self._fail("is a zip/torch.save archive, not safetensors (pickle-based formats are refused)")
        declared = int.from_bytes(prefix, "little")
        if declared > self._cap:
            raise self._fail(f"safetensors header declares {declared} bytes, over the {self._cap}-byte cap")
        if 8 + declared > self._total:
            raise self._fail(f"safetensors header declares {declared} bytes but the file has only {self._total}")
        return declared

    def _parse(self, header: bytes) -> dict[str, Any]:
        assert self._need is not None
        if not header.startswith(b"{"):
            raise self._fail("safetensors header is not a JSON object")
        try:
            doc = loads_strict(header, max_size=self._cap, allow_floats=False)
        except StrictDecodeError as exc:
            raise self._fail(f"safetensors header is not strict JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise self._fail("safetensors header is not a JSON object")
        data_len = self._total - 8 - self._need
        spans: list[tuple[int, int, str]] = []
        tensors: dict[str, Any] = {}
        for key, info in doc.items():
            if key == "__metadata__":
                if not isinstance(info, dict) or not all(isinstance(v, str) for v in info.values()):
                    raise self._fail("safetensors __metadata__ must map strings to strings")
                continue
            spans.append(self._check_tensor(key, info))
            tensors[key] = info
        position = 0
        for begin, end, key in sorted(spans):
            if begin != position:
                raise self._fail(f"tensor {key!r} starts at {begin}, expected {position} (hole or overlap)")
            position = end
        if position != data_len:
            raise self._fail(f"tensors cover {position} data bytes but the file holds {data_len}")
        return tensors

    def _check_tensor(self, key: str, info: object) -> tuple[int, int, str]:
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise self._fail(f"tensor {key[:80]!r} must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype not in _DTYPE_BYTES:
            raise self._fail(f"tensor {key[:80]!r} has unknown dtype {str(dtype)[:20]!r}")
        if not isinstance(shape, list) or not all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        ):
            raise self._fail(f"tensor {key[:80]!r} has an invalid shape")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and not isinstance(o, bool) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1]
        ):
            raise self._fail(f"tensor {key[:80]!r} has invalid data_offsets")
        if (offsets[1] - offsets[0]) != math.prod(shape) * _DTYPE_BYTES[dtype]:
            raise self._fail(f"tensor {key[:80]!r}: data_offsets span does not match shape x dtype size")
        return offsets[0], offsets[1], key

    def finalize(self) -> None:
        """Raise unless the whole header was seen and validated and the byte count matches."""
        if self._seen != self._total:
            raise self._fail(f"file has {self._seen} bytes, expected {self._total}")
        if self._need is None:
            raise self._fail("file is shorter than the 8-byte safetensors prefix")
        if self.tensors is None:
            raise self._fail("file ends inside the safetensors header")
