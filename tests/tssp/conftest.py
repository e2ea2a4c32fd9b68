"""Fixtures for the TSSP tests: one key set per session (key generation is the slow part), fresh copies per test."""

from __future__ import annotations

import base64
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared_core.tssp.keys import SigningKeys, TrustedKeys, generate_keys, load_signing_keys


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A key directory generated once for the session."""
    out = tmp_path_factory.mktemp("keys") / "signer"
    generate_keys(out)
    return out


@pytest.fixture(scope="session")
def other_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second, unrelated signer."""
    out = tmp_path_factory.mktemp("keys") / "other"
    generate_keys(out)
    return out


@pytest.fixture(scope="session")
def keys(key_dir: Path) -> SigningKeys:
    return load_signing_keys(key_dir)


@pytest.fixture(scope="session")
def trusted(keys: SigningKeys) -> TrustedKeys:
    return keys.trusted()


@pytest.fixture(scope="session")
def other_keys(other_key_dir: Path) -> SigningKeys:
    return load_signing_keys(other_key_dir)


# ------------------------------------------------------------------------------------------------- package helpers

ENVELOPE = "tssp.dsse.json"


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def adapter_dir(tmp_path: Path) -> Path:
    """A fake peft adapter folder: two small LoRA tensors and a LoRA config."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    rng = np.random.default_rng(0)
    save_file(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": rng.standard_normal((4, 32)).astype(np.float32),
            "base_model.model.layers.0.q_proj.lora_B.weight": rng.standard_normal((32, 4)).astype(np.float32),
        },
        str(folder / "adapter_model.safetensors"),
    )
    (folder / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"]})
    )
    return folder


def write_certificate(path: Path, weights: Path, **overrides: Any) -> Path:
    cert = {
        "model_name": "tiny",
        "privacy_guarantee": {"epsilon": 3.0, "delta": 1e-5, "mechanism": "gaussian", "accountant": "prv"},
        "weights": {"file": "adapter_model.safetensors", "sha256": sha256_file(weights)},
    }
    cert.update(overrides)
    path.write_text(json.dumps(cert))
    return path


def read_manifest(pkg: Path) -> dict[str, Any]:
    env = json.loads((pkg / ENVELOPE).read_bytes())
    return json.loads(base64.b64decode(env["payload"]))


def resign(
    pkg: Path,
    keys: SigningKeys,
    *,
    replace: dict[str, bytes] | None = None,
    mutate: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Forge a package the way an attacker holding the keys would: rewrite files, fix the manifest, sign again."""
    from shared_core.tssp.packing import _write_envelope

    manifest = read_manifest(pkg)
    for name, data in (replace or {}).items():
        (pkg / name).write_bytes(data)
        for entry in manifest["files"]:
            if entry.get("stored_path", entry["path"]) == name:
                key_size, key_sha = (
                    ("ciphertext_size", "ciphertext_sha256")
                    if "stored_path" in entry
                    else (
                        "size",
                        "sha256",
                    )
                )
                entry[key_size] = len(data)
                entry[key_sha] = hashlib.sha256(data).hexdigest()
    if mutate is not None:
        mutate(manifest)
    (pkg / ENVELOPE).unlink()
    fd = os.open(pkg, os.O_RDONLY)
    try:
        _write_envelope(fd, manifest, keys)
    finally:
        os.close(fd)


def tree(root: Path) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes (to prove that nothing was written)."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}
