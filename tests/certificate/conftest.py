"""Fixtures for the certificate tests: one key set and one signed certificate per session (both slow to make)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import save_file

from shared_core.accounting import PrivacyLedger
from shared_core.certificate import sign_certificate
from shared_core.tssp.keys import SigningKeys, TrustedKeys, generate_keys, load_signing_keys
from tests.certificate._factory import certificate_for, make_ledger


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cert-keys") / "signer"
    generate_keys(out)
    return out


@pytest.fixture(scope="session")
def keys(key_dir: Path) -> SigningKeys:
    return load_signing_keys(key_dir)


@pytest.fixture(scope="session")
def trusted(keys: SigningKeys) -> TrustedKeys:
    return keys.trusted()


@pytest.fixture(scope="session")
def other_keys(tmp_path_factory: pytest.TempPathFactory) -> SigningKeys:
    out = tmp_path_factory.mktemp("cert-keys") / "other"
    generate_keys(out)
    return load_signing_keys(out)


@pytest.fixture(scope="session")
def adapter_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny peft-style adapter folder: safetensors weights and an adapter config."""
    out = tmp_path_factory.mktemp("adapter")
    rng = np.random.default_rng(0)
    save_file(
        {
            "base_model.model.layers.0.q_proj.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
            "base_model.model.layers.0.q_proj.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32),
        },
        str(out / "adapter_model.safetensors"),
    )
    (out / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4, "target_modules": ["q_proj"]}))
    return out


@pytest.fixture(scope="session")
def ledger() -> PrivacyLedger:
    return make_ledger()


@pytest.fixture(scope="session")
def _signed(ledger: PrivacyLedger, adapter_dir: Path, keys: SigningKeys) -> dict[str, Any]:
    return sign_certificate(certificate_for(ledger, adapter_dir), keys)


@pytest.fixture
def signed(_signed: dict[str, Any]) -> dict[str, Any]:
    """A fresh copy of the session's signed certificate (tests may tamper with it)."""
    return copy.deepcopy(_signed)
