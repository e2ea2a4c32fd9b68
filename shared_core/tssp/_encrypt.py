"""Streamed AES-256-GCM for package files (``.tsspenc``, TSSP.md 6.6).

Layout: a 54-byte big-endian header ``"TSSPENC1" | version u8 | alg u8 | chunk_size u32 | plaintext_len u64 | salt 32B``
then ``n = max(1, ceil(len / chunk))`` sealed chunks. The per-file key is
``HKDF-SHA256(CEK, salt, "tensafe/tssp/v1/file-key\\0" + path)``, the nonce ``u32 0 | u64 index`` and the associated
data ``SHA-256(header) | u64 index | u8 is_final``: a chunk moved to another index or file, a dropped final chunk or
trailing bytes all fail. The decryptor never hands plaintext out itself; callers release it only after the
plaintext SHA-256 matched the signed manifest (which also commits the key: GCM alone does not).
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from shared_core.errors import ConfigError, VerificationError

__all__ = [
    "DEFAULT_CHUNK",
    "HEADER_SIZE",
    "StreamDecryptor",
    "StreamEncryptor",
    "check_cek",
    "ciphertext_size",
    "key_id",
]

MAGIC = b"TSSPENC1"
VERSION = 1
ALG_AES256GCM = 1
_HEADER = struct.Struct(">8sBBIQ32s")
HEADER_SIZE = _HEADER.size  # 54
TAG = 16
DEFAULT_CHUNK = 1024 * 1024
_FILE_KEY_INFO = b"tensafe/tssp/v1/file-key\x00"
_KEY_ID_INFO = b"tensafe/tssp/v1/key-id"


def check_cek(cek: object) -> bytes:
    """Return ``cek`` if it is a 32-byte key, else raise ConfigError saying how to make one."""
    if not isinstance(cek, (bytes, bytearray)) or len(cek) != 32:
        raise ConfigError(
            "the encryption key must be exactly 32 random bytes (a key file holding 32 raw bytes or their base64); "
            "create one with `tensafe keygen --encryption-key FILE`"
        )
    return bytes(cek)


def key_id(cek: bytes) -> str:
    """A public identifier of a CEK (one-way HKDF output), so a wrong key is reported as such."""
    derived = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_ID_INFO).derive(cek)
    return "sha256:" + hashlib.sha256(derived).hexdigest()


def _file_key(cek: bytes, salt: bytes, path: str) -> bytes:
    info = _FILE_KEY_INFO + path.encode("utf-8")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(cek)


def _chunk_count(length: int, chunk: int) -> int:
    return max(1, -(-length // chunk))


def ciphertext_size(length: int, chunk: int) -> int:
    """Bytes of the ``.tsspenc`` file for ``length`` plaintext bytes."""
    return HEADER_SIZE + length + TAG * _chunk_count(length, chunk)


def _nonce(index: int) -> bytes:
    return b"\x00\x00\x00\x00" + index.to_bytes(8, "big")


def _aad(header_digest: bytes, index: int, final: bool) -> bytes:
    return header_digest + index.to_bytes(8, "big") + (b"\x01" if final else b"\x00")


class StreamEncryptor:
    """Seal one file chunk by chunk; the caller feeds exactly ``length`` plaintext bytes in ``chunk``-sized pieces."""

    def __init__(self, cek: bytes, *, path: str, length: int, salt: bytes, chunk: int = DEFAULT_CHUNK) -> None:
        self.header = _HEADER.pack(MAGIC, VERSION, ALG_AES256GCM, chunk, length, salt)
        self._digest = hashlib.sha256(self.header).digest()
        self._aead = AESGCM(_file_key(check_cek(cek), salt, path))
        self._chunk = chunk
        self._count = _chunk_count(length, chunk)
        self._index = 0

    def seal(self, plaintext: bytes) -> bytes:
        """Seal the next chunk (all but the last must be exactly ``chunk`` bytes)."""
        if self._index >= self._count:
            raise ValueError("more chunks than the declared length allows")
        final = self._index == self._count - 1
        if not final and len(plaintext) != self._chunk:
            raise ValueError("only the last chunk may be short")
        sealed = self._aead.encrypt(_nonce(self._index), plaintext, _aad(self._digest, self._index, final))
        self._index += 1
        return sealed

    @property
    def done(self) -> bool:
        """Whether every chunk was sealed."""
        return self._index == self._count


class StreamDecryptor:
    """Open a ``.tsspenc`` stream fed in arbitrary pieces; plaintext goes to ``sink`` chunk by chunk.

    The header is checked against the signed manifest (chunk size, plaintext length) before any allocation.
    ``sink`` must not release plaintext: it may hash or buffer it only.
    """

    def __init__(
        self,
        cek: bytes,
        *,
        path: str,
        stored: str,
        expected_length: int,
        expected_chunk: int,
        sink: Callable[[bytes], None],
    ) -> None:
        self._cek = check_cek(cek)
        self._path = path
        self._stored = stored
        self._length = expected_length
        self._chunk = expected_chunk
        self._sink = sink
        self._buf = bytearray()
        self._aead: AESGCM | None = None
        self._digest = b""
        self._count = _chunk_count(expected_length, expected_chunk)
        self._index = 0

    def _fail(self, reason: str) -> VerificationError:
        return VerificationError(f"{self._stored}: {reason}", path=self._stored, check="decrypt")

    def _open_header(self) -> None:
        magic, version, alg, chunk, length, salt = _HEADER.unpack(bytes(self._buf[:HEADER_SIZE]))
        if magic != MAGIC or version != VERSION or alg != ALG_AES256GCM:
            raise self._fail("not a TSSPENC1 AES-256-GCM stream (bad magic, version or algorithm)")
        if chunk != self._chunk or length != self._length:
            raise self._fail(
                f"encryption header (chunk {chunk}, length {length}) disagrees with the signed manifest "
                f"(chunk {self._chunk}, length {self._length})"
            )
        self._digest = hashlib.sha256(bytes(self._buf[:HEADER_SIZE])).digest()
        self._aead = AESGCM(_file_key(self._cek, salt, self._path))
        del self._buf[:HEADER_SIZE]

    def _sealed_len(self, index: int) -> int:
        if index < self._count - 1:
            return self._chunk + TAG
        return self._length - (self._count - 1) * self._chunk + TAG

    def update(self, data: bytes) -> None:
        """Feed the next ciphertext bytes; whole chunks are opened as soon as they are complete."""
        self._buf += data
        if self._aead is None:
            if len(self._buf) < HEADER_SIZE:
                return
            self._open_header()
        while self._index < self._count and len(self._buf) >= self._sealed_len(self._index):
            size = self._sealed_len(self._index)
            final = self._index == self._count - 1
            assert self._aead is not None
            try:
                plain = self._aead.decrypt(
                    _nonce(self._index), bytes(self._buf[:size]), _aad(self._digest, self._index, final)
                )
            except InvalidTag:
                raise self._fail(
                    f"chunk {self._index} failed authentication (modified, reordered, truncated or spliced "
                    "ciphertext, or the wrong key)"
                ) from None
            del self._buf[:size]
            self._index += 1
            self._sink(plain)
        if self._index == self._count and self._buf:
            raise self._fail("trailing bytes after the final chunk")

    def finalize(self) -> None:
        """Require the header and every chunk, the last one flagged final, and nothing after it."""
        if self._aead is None:
            raise self._fail("stream is shorter than its header")
        if self._index != self._count:
            raise self._fail(f"stream ends after {self._index} of {self._count} chunks (truncated)")
        if self._buf:
            raise self._fail("trailing bytes after the final chunk")
