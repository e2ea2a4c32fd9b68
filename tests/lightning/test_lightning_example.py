"""Smoke test of ``examples/lightning_lora.py``: DP LoRA training with strategy="tensafe_dp" to a verified package."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from shared_core.accounting.ledger import PrivacyLedger
from shared_core.tssp import load_trusted_keys, verify_package

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_lora.py"


CANARY = "hf_lightningCanary7c1d93e0a55f"


@pytest.mark.slow
def test_example_trains_lora_with_tensafe_dp_and_releases_a_verified_package(
    workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", CANARY)
    spec = importlib.util.spec_from_file_location("lightning_lora_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)

    out, keys = workdir / "out", workdir / "keys"
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    args = ["--out", str(out), "--key-dir", str(keys), "--steps", "3", "--examples", "64", "--batch-size", "8"]
    args += ["--mlflow-uri", uri]
    summary = example.main(args)

    assert summary["steps"] == 3
    assert 0 < summary["epsilon"] <= 8.0
    ledger = PrivacyLedger.load(out / "privacy_state.json")
    assert ledger.steps == 3
    assert ledger.epsilon_spent == pytest.approx(summary["epsilon"])
    certificate = json.loads((out / "dp_certificate.json").read_text())
    assert certificate["privacy_guarantee"]["epsilon"] == pytest.approx(ledger.epsilon_spent)
    assert certificate["privacy_guarantee"]["delta"] == pytest.approx(ledger.delta)
    manifest = verify_package(out / "model.tssp", trusted=load_trusted_keys(keys))
    assert manifest["files"]
    assert (out / "adapter" / "adapter_model.safetensors").is_file()

    # The privacy figures and the release reached the attached MLflow logger's run.
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    run_id = summary["mlflow_run_id"]
    metrics = client.get_run(run_id).data.metrics
    assert metrics["privacy/epsilon_spent"] == pytest.approx(ledger.epsilon_spent, rel=1e-6)
    # Published by the same shared_core.mlops code as the HF callbacks: scanned, the certificate read back, the
    # package verified and registered with its privacy tags.
    names = {f.path for f in client.list_artifacts(run_id)}
    assert {"dp_certificate.json", "privacy_report.json", "training_config.json", "model"} <= names
    tags = client.get_run(run_id).data.tags
    assert tags["tssp_verified"] == "true"
    assert tags["dp.certificate_read_back"] == "true"
    assert float(tags["dp.epsilon"]) == pytest.approx(ledger.epsilon_spent, rel=1e-6)
    version = client.get_model_version_by_alias("out", "dp-certified")
    assert version.run_id == run_id
    assert version.tags["tssp_verified"] == "true"
    assert float(version.tags["epsilon"]) == pytest.approx(ledger.epsilon_spent, rel=1e-6)
    # A secret of the process environment reaches no byte that was written.
    for path in workdir.rglob("*"):
        if path.is_file():
            assert CANARY.encode() not in path.read_bytes(), path
