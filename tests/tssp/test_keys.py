"""Key generation, storage and loading (TSSP.md 6.5)."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from shared_core.errors import ConfigError
from shared_core.tssp.keys import (
    SigningKeys,
    TrustedKeys,
    generate_keys,
    load_signing_keys,
    load_trusted_keys,
)

FILES = ("ed25519.key", "ed25519.pub", "mldsa65.key", "mldsa65.pub")


def test_generate_writes_four_files_with_private_keys_0600_and_keyids_of_spki_der(tmp_path: Path) -> None:
    out = tmp_path / "k"
    ids = generate_keys(out)
    assert sorted(os.listdir(out)) == sorted(FILES)
    for name in ("ed25519.key", "mldsa65.key"):
        assert stat.S_IMODE(os.stat(out / name).st_mode) == 0o600
        assert (out / name).read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    for alg, name in (("ed25519", "ed25519.pub"), ("ml-dsa-65", "mldsa65.pub")):
        pub = serialization.load_pem_public_key((out / name).read_bytes())
        der = pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        assert ids[alg] == "sha256:" + hashlib.sha256(der).hexdigest()
    assert (
        len(
            serialization.load_pem_public_key((out / "mldsa65.pub").read_bytes()).public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        == 1974
    )
    keys = load_signing_keys(out)
    assert keys.keyids == ids
    assert load_trusted_keys(out).keyids == ids
    assert "PRIVATE" not in repr(keys)
    assert "Ed25519PrivateKey" not in repr(keys)


def test_generate_refuses_to_overwrite_any_existing_key(tmp_path: Path) -> None:
    out = tmp_path / "k"
    out.mkdir()
    (out / "mldsa65.pub").write_text("keep me")
    with pytest.raises(ConfigError, match="refusing to overwrite"):
        generate_keys(out)
    assert os.listdir(out) == ["mldsa65.pub"]
    assert (out / "mldsa65.pub").read_text() == "keep me"


def test_passphrase_wrapper_is_argon2id_aes_gcm_and_needs_the_right_passphrase(tmp_path: Path) -> None:
    out = tmp_path / "k"
    ids = generate_keys(out, passphrase="correct horse")
    doc = json.loads((out / "ed25519.key").read_bytes())
    assert doc["kdf"] == "argon2id"
    assert doc["cipher"] == "aes-256-gcm"
    assert doc["m"] >= 65536
    assert b"PRIVATE KEY" not in (out / "mldsa65.key").read_bytes()
    assert load_signing_keys(out, passphrase="correct horse").keyids == ids
    with pytest.raises(ConfigError, match="passphrase-protected"):
        load_signing_keys(out)
    with pytest.raises(ConfigError, match="wrong passphrase"):
        load_signing_keys(out, passphrase="wrong")
    # Lowering the recorded cost breaks the authenticated header.
    doc["t"] = 1
    (out / "ed25519.key").write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="wrong passphrase|modified"):
        load_signing_keys(out, passphrase="correct horse")


def test_empty_passphrase_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="empty"):
        generate_keys(tmp_path / "k", passphrase="")
    assert not (tmp_path / "k").exists()


def test_trusted_keys_json_round_trips_and_rejects_a_wrong_keyid(tmp_path: Path, trusted: TrustedKeys) -> None:
    path = tmp_path / "trusted.json"
    path.write_text(json.dumps(trusted.to_dict()))
    assert load_trusted_keys(path).keyids == trusted.keyids
    doc = trusted.to_dict()
    doc["ml-dsa-65"]["keyid"] = "sha256:" + "0" * 64
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match="does not match"):
        load_trusted_keys(path)
    path.write_text('{"ed25519": {}, "ed25519": {}}')
    with pytest.raises(ConfigError, match="duplicate"):
        load_trusted_keys(path)


def test_trusted_keys_from_a_directory_never_read_the_private_keys(tmp_path: Path, key_dir: Path) -> None:
    pubs = tmp_path / "pubs"
    pubs.mkdir()
    for name in ("ed25519.pub", "mldsa65.pub"):
        (pubs / name).write_bytes((key_dir / name).read_bytes())
    assert load_trusted_keys(pubs).keyids == load_trusted_keys(key_dir).keyids


def test_swapped_algorithms_and_mixed_up_folders_are_refused(
    tmp_path: Path, key_dir: Path, other_key_dir: Path, keys: SigningKeys
) -> None:
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for name in FILES:
        (mixed / name).write_bytes((key_dir / name).read_bytes())
    (mixed / "ed25519.pub").write_bytes((other_key_dir / "ed25519.pub").read_bytes())
    with pytest.raises(ConfigError, match="does not belong"):
        load_signing_keys(mixed)
    (mixed / "ed25519.pub").write_bytes((mixed / "mldsa65.pub").read_bytes())
    with pytest.raises(ConfigError, match="expected Ed25519PublicKey"):
        load_trusted_keys(mixed)
    with pytest.raises(ConfigError, match="does not exist"):
        load_signing_keys(tmp_path / "nowhere")
