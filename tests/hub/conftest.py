"""Fixtures for the Hub tests: the fake Hub server, pinned keys and small real TSSP packages."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fake_hub import FakeHub
from safetensors.numpy import save_file

TOKEN = "hf_testtokenABCDEFGHIJKLMNOPQRSTUVWXYZ"


@pytest.fixture
def fake_hub(tmp_path: Path) -> Iterator[FakeHub]:
    """A Hub-compatible server on 127.0.0.1 with its state in a temporary folder."""
    hub = FakeHub(tmp_path / "hub-state").start()
    try:
        yield hub
    finally:
        hub.stop()


@pytest.fixture
def online(fake_hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeHub:
    """Point the real huggingface_hub client at ``fake_hub``.

    huggingface_hub 2.4 reads ``HF_ENDPOINT`` and ``HF_HUB_OFFLINE`` once, at import (``constants.ENDPOINT``,
    ``constants.HF_HUB_OFFLINE``, ``constants.HUGGINGFACE_CO_URL_TEMPLATE``); the suite-wide conftest sets offline
    mode, so the environment and those constants are set here, consistently (``hf_hub_url`` rewrites the template's
    prefix only when it starts with ``constants.ENDPOINT``). Our integration reads ``HF_ENDPOINT`` at call time;
    ``ModelCard.validate`` uses ``constants.ENDPOINT``.
    """
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", fake_hub.url)
    template = fake_hub.url + "/{repo_id}/resolve/{revision}/{filename}"
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", template)
    monkeypatch.setenv("HF_ENDPOINT", fake_hub.url)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return fake_hub


@pytest.fixture(scope="session")
def key_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two signer key folders: the publisher's and an unrelated one."""
    from shared_core.tssp import generate_keys

    root = tmp_path_factory.mktemp("keys")
    generate_keys(root / "publisher")
    generate_keys(root / "other")
    return {"publisher": root / "publisher", "other": root / "other"}


def _tensors(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "base_model.model.q_proj.lora_A.weight": rng.standard_normal((4, 16)).astype(np.float32),
        "base_model.model.q_proj.lora_B.weight": rng.standard_normal((16, 4)).astype(np.float32),
    }


PackageFactory = Callable[..., Path]


@pytest.fixture
def make_package(tmp_path: Path, key_dirs: dict[str, Path]) -> PackageFactory:
    """Build a real signed TSSP package of a small fake LoRA adapter (two tensors) with ``shared_core.tssp.pack``."""
    from shared_core.tssp import load_signing_keys, pack

    counter = {"n": 0}

    def factory(
        *,
        name: str = "dp-adapter",
        seed: int = 0,
        epsilon: float = 7.5,
        base_model: str = "meta-llama/Llama-3-8B",
        encryption_key: bytes | None = None,
        extra_files: dict[str, bytes] | None = None,
        signer: str = "publisher",
    ) -> Path:
        counter["n"] += 1
        work = tmp_path / f"build-{counter['n']}"
        adapter = work / "adapter"
        adapter.mkdir(parents=True)
        save_file(_tensors(seed), str(adapter / "adapter_model.safetensors"))
        (adapter / "adapter_config.json").write_text(
            json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["q_proj"],
                        "base_model_name_or_path": base_model})
        )
        weights_sha = hashlib.sha256((adapter / "adapter_model.safetensors").read_bytes()).hexdigest()
        cert: dict[str, Any] = {
            "model_name": name,
            "base_model": base_model,
            "privacy_guarantee": {"epsilon": epsilon, "delta": 1e-5, "mechanism": "DP-SGD (Gaussian)",
                                  "accountant": "PRV"},
            "training_parameters": {"noise_multiplier": 1.1, "max_grad_norm": 1.0, "sample_rate": 0.01, "steps": 100},
            "weights": {"sha256": weights_sha, "file": "adapter_model.safetensors"},
        }
        (work / "cert.json").write_text(json.dumps(cert))
        (work / "report.json").write_text(json.dumps({"epsilon_spent": epsilon, "steps": 100}))
        extras = {}
        for rel, data in (extra_files or {}).items():
            (work / rel).write_bytes(data)
            extras[rel] = work / rel
        return pack(
            adapter,
            work / f"{name}.tssp",
            keys=load_signing_keys(key_dirs[signer]),
            certificate=work / "cert.json",
            privacy_report=work / "report.json",
            training_config={"learning_rate": 1e-3, "epochs": 1},
            extra_files=extras or None,
            encryption_key=encryption_key,
            base_model={"repo": base_model} if "/" in base_model and not base_model.startswith("/") else None,
            name=name,
        )

    return factory
