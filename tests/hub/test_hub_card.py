"""The generated model card: Hub-valid metadata, certificate figures only, manifest digest, no local paths."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from fake_hub import FakeHub
from huggingface_hub import ModelCard

from shared_core.errors import ConfigError, VerificationError
from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration
from shared_core.hub._card import card_metadata_problems

REPO = "alice/dp-adapter"


def _hub(key_dirs: dict[str, Path], **kwargs: object) -> TenSafeHFHubIntegration:
    return TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key=str(key_dirs["publisher"]), **kwargs))


def _meta(card_text: str) -> dict:
    return yaml.safe_load(card_text.split("---\n")[1])


def test_card_metadata_is_hub_valid_and_from_the_certificate(online: FakeHub, key_dirs, make_package, tmp_path):
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(epsilon=7.5), REPO, privacy_info={"epsilon": 7.5, "dataset_size": 50000})
    text = online.files(REPO)["README.md"].decode()
    card = ModelCard(text)
    card.validate()  # POSTs to the (fake) Hub's /api/validate-yaml, like the real Hub check
    meta = card.data.to_dict()
    assert card_metadata_problems(meta) == []
    assert meta["license"] == "apache-2.0"
    assert meta["language"] == "en"
    assert meta["library_name"] == "peft"
    assert {"differential-privacy", "tensafe", "lora"} <= set(meta["tags"])
    assert meta["base_model"] == "meta-llama/Llama-3-8B"
    assert meta["differential_privacy"]["epsilon"] == 7.5
    assert meta["differential_privacy"]["delta"] == 1e-5
    assert meta["differential_privacy"]["noise_multiplier"] == 1.1
    assert meta["differential_privacy"]["publisher_supplied"] == {"dataset_size": 50000}
    manifest = hub.pull_from_hub(REPO, tmp_path / "pulled")
    assert meta["tensafe"]["manifest_sha256"] == manifest["manifest_sha256"]
    assert "ML-DSA-65" in text
    assert "Dilithium" not in text
    assert "shared_core.tssp import load_model" in text
    assert "| Epsilon (ε) | 7.5 |" in text
    assert "not** part of the signed certificate" in text


def test_card_omits_a_local_base_model_path(online: FakeHub, key_dirs, make_package):
    _hub(key_dirs).push_to_hub(make_package(base_model="/home/alice/models/tiny-llama"), REPO)
    text = online.files(REPO)["README.md"].decode()
    assert "base_model" not in _meta(text)
    assert "/home/alice" not in text
    ModelCard(text).validate()


def test_privacy_info_contradicting_the_certificate_is_refused(online: FakeHub, key_dirs, make_package):
    with pytest.raises(ConfigError, match="contradicts the signed DP certificate"):
        _hub(key_dirs).push_to_hub(make_package(epsilon=7.5), REPO, privacy_info={"epsilon": 1.0})
    with pytest.raises(ConfigError, match="noise_multiplier"):
        _hub(key_dirs).push_to_hub(make_package(), REPO, privacy_info={"noise_multiplier": 2.0})
    assert online.requests == []  # refused before anything was sent


def test_fake_hub_validator_rejects_what_the_hub_rejects(online: FakeHub):
    """The validator the card test relies on can fail: local paths, unknown licenses and nulls are refused."""
    for bad in ("base_model: /models/x", "license: my-license", "datasets: ./data", "tags: []", "pipeline_tag: \"\""):
        with pytest.raises(ValueError, match=bad.split(":")[0]):
            ModelCard(f"---\n{bad}\n---\n# x\n").validate()


def test_config_rejects_a_non_hub_license_and_bad_language():
    with pytest.raises(ConfigError, match="Hub license id"):
        TenSafeHFHubConfig(license="Apache 2")
    with pytest.raises(ConfigError, match="ISO 639"):
        TenSafeHFHubConfig(language="English")


def test_card_with_forged_figures_is_rejected_at_pull(online: FakeHub, key_dirs, make_package, tmp_path):
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(epsilon=7.5), REPO)
    text = online.files(REPO)["README.md"].decode().replace("epsilon: 7.5", "epsilon: 0.5", 1)
    online.server_side_commit(REPO, {"README.md": text.encode()})
    with pytest.raises(VerificationError, match="README.md") as info:
        hub.pull_from_hub(REPO, tmp_path / "pulled")
    assert info.value.path == "README.md"


def test_card_is_deterministic(online: FakeHub, key_dirs, make_package):
    package = make_package()
    hub = _hub(key_dirs)
    hub.push_to_hub(package, REPO)
    first = online.files(REPO)["README.md"]
    hub.push_to_hub(package, "alice/copy")
    assert online.files("alice/copy")["README.md"] == first.replace(b"alice/dp-adapter", b"alice/copy")
