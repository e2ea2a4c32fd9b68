"""Streamed AES-256-GCM (TSSP.md 6.6): round trip, and reordering, truncation, splicing and wrong keys all fail."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import pytest

from shared_core.errors import ConfigError, VerificationError
from shared_core.tssp import pack, verify_package
from shared_core.tssp._encrypt import HEADER_SIZE, TAG, StreamDecryptor, StreamEncryptor, ciphertext_size
from shared_core.tssp.keys import SigningKeys, TrustedKeys
from tests.tssp.conftest import read_manifest, resign, tree

CHUNK = 64 * 1024
CEK = bytes(range(32))


def _encrypt(data: bytes, *, path: str = "w.safetensors", cek: bytes = CEK) -> bytes:
    enc = StreamEncryptor(cek, path=path, length=len(data), salt=os.urandom(32), chunk=CHUNK)
    pieces = [data[i : i + CHUNK] for i in range(0, len(data), CHUNK)] or [b""]
    out = enc.header + b"".join(enc.seal(p) for p in pieces)
    assert enc.done
    return out


def _decrypt(blob: bytes, length: int, *, path: str = "w.safetensors", cek: bytes = CEK, piece: int = 7777) -> bytes:
    out = bytearray()
    dec = StreamDecryptor(
        cek, path=path, stored=path + ".tsspenc", expected_length=length, expected_chunk=CHUNK, sink=out.extend
    )
    for i in range(0, len(blob), piece):
        dec.update(blob[i : i + piece])
    dec.finalize()
    return bytes(out)


@pytest.mark.parametrize("length", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK + 5])
def test_round_trip_and_ciphertext_size(length: int) -> None:
    data = os.urandom(length)
    blob = _encrypt(data)
    assert len(blob) == ciphertext_size(length, CHUNK)
    assert _decrypt(blob, length) == data


def _chunks(blob: bytes) -> tuple[bytes, list[bytes]]:
    body = blob[HEADER_SIZE:]
    size = CHUNK + TAG
    return blob[:HEADER_SIZE], [body[i : i + size] for i in range(0, len(body), size)]


def test_reordered_truncated_extended_or_spliced_chunks_fail() -> None:
    length = 3 * CHUNK + 100
    data = os.urandom(length)
    header, chunks = _chunks(_encrypt(data))
    _, other_chunks = _chunks(_encrypt(os.urandom(length), path="other.safetensors"))
    same_key_other_file = _chunks(_encrypt(os.urandom(length)))[1]  # same path and CEK, different salt
    cases: dict[str, tuple[bytes, str]] = {
        "reordered": (header + chunks[1] + chunks[0] + chunks[2] + chunks[3], "chunk 0"),
        "dropped-final": (header + b"".join(chunks[:3]), "truncated"),
        "truncated-mid-chunk": (header + b"".join(chunks)[:-5], "truncated"),
        "trailing": (header + b"".join(chunks) + b"x", "trailing"),
        "spliced-other-path": (header + other_chunks[0] + b"".join(chunks[1:]), "chunk 0"),
        "spliced-same-path": (header + chunks[0] + same_key_other_file[1] + b"".join(chunks[2:]), "chunk 1"),
        "header-swapped": (_chunks(_encrypt(data))[0] + b"".join(chunks), "chunk 0"),
        "bit-flip": (
            header + chunks[0][:10] + bytes([chunks[0][10] ^ 1]) + chunks[0][11:] + b"".join(chunks[1:]),
            "chunk 0",
        ),
    }
    for name, (blob, reason) in cases.items():
        with pytest.raises(VerificationError, match=reason) as info:
            _decrypt(blob, length)
        assert info.value.check == "decrypt", name


def test_path_binding_wrong_key_and_header_mismatch_fail() -> None:
    data = os.urandom(1000)
    blob = _encrypt(data)
    with pytest.raises(VerificationError, match="chunk 0"):
        _decrypt(blob, len(data), path="renamed.safetensors")
    with pytest.raises(VerificationError, match="chunk 0"):
        _decrypt(blob, len(data), cek=bytes(32))
    with pytest.raises(VerificationError, match="disagrees with the signed manifest"):
        _decrypt(blob, len(data) + 1)
    with pytest.raises(VerificationError, match="not a TSSPENC1"):
        _decrypt(b"X" + blob[1:], len(data))
    with pytest.raises(ConfigError, match="32 random bytes"):
        _decrypt(blob, len(data), cek=b"short")


@pytest.fixture
def enc_pkg(tmp_path: Path, adapter_dir: Path, keys: SigningKeys) -> Path:
    return pack(adapter_dir, tmp_path / "out" / "enc.tssp", keys=keys, encryption_key=CEK, archive=True)


def test_encrypted_package_verifies_with_and_without_the_key(
    enc_pkg: Path, trusted: TrustedKeys, adapter_dir: Path
) -> None:
    assert sorted(os.listdir(enc_pkg)) == ["adapter_config.json", "adapter_model.safetensors.tsspenc", "tssp.dsse.json"]
    plain = (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert plain not in (enc_pkg / "adapter_model.safetensors.tsspenc").read_bytes()
    manifest = verify_package(enc_pkg, trusted=trusted, decryption_key=CEK)
    entry = next(e for e in manifest["files"] if e["role"] == "weights")
    assert entry["sha256"] == hashlib.sha256(plain).hexdigest()
    assert entry["chunk_size"] == 1024 * 1024
    verify_package(enc_pkg, trusted=trusted)  # ciphertext digest only (registry / CI without the key)
    verify_package(enc_pkg.with_name("enc.tssp.tar"), trusted=trusted, decryption_key=CEK)


def test_encrypted_package_rejects_a_wrong_key_and_forged_ciphertext(
    enc_pkg: Path, trusted: TrustedKeys, keys: SigningKeys, adapter_dir: Path
) -> None:
    before = tree(enc_pkg.parent)
    with pytest.raises(VerificationError, match="not this package's key") as info:
        verify_package(enc_pkg, trusted=trusted, decryption_key=bytes(32))
    assert info.value.check == "decrypt"
    stored = enc_pkg / "adapter_model.safetensors.tsspenc"
    blob = stored.read_bytes()
    stored.write_bytes(blob[:-1])
    with pytest.raises(VerificationError, match="ciphertext size"):
        verify_package(enc_pkg, trusted=trusted)
    # An attacker with the signing keys but not the CEK re-signs a tampered ciphertext: decryption catches it.
    forged = blob[:HEADER_SIZE] + bytes([blob[HEADER_SIZE] ^ 1]) + blob[HEADER_SIZE + 1 :]
    resign(enc_pkg, keys, replace={stored.name: forged})
    verify_package(enc_pkg, trusted=trusted)  # ciphertext digest matches the forged manifest
    with pytest.raises(VerificationError, match="failed authentication") as info:
        verify_package(enc_pkg, trusted=trusted, decryption_key=CEK)
    assert info.value.check == "decrypt"
    # A plaintext digest that does not match (e.g. another key's "valid" ciphertext) is refused too.
    other = StreamEncryptor(CEK, path="adapter_model.safetensors", length=4, salt=os.urandom(32), chunk=1024 * 1024)

    def set_size(manifest: dict[str, Any]) -> None:
        next(e for e in manifest["files"] if e["role"] == "weights")["size"] = 4

    resign(enc_pkg, keys, replace={stored.name: other.header + other.seal(b"abcd")}, mutate=set_size)
    with pytest.raises(VerificationError, match="does not match the signed SHA-256"):
        verify_package(enc_pkg, trusted=trusted, decryption_key=CEK)
    assert set(tree(enc_pkg.parent)) == set(before)
    assert read_manifest(enc_pkg)["encryption"]["scheme"] == "tssp-aes256gcm-stream/v1"
