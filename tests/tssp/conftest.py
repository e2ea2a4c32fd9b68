"""Fixtures for the TSSP tests: one key set per session (key generation is the slow part), fresh copies per test."""

from __future__ import annotations

from pathlib import Path

import pytest

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
