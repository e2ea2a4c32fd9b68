"""Smoke test of ``examples/lightning_lora.py``: DP LoRA training with strategy="tensafe_dp" to a verified package."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from shared_core.accounting.ledger import PrivacyLedger
from shared_core.tssp import load_trusted_keys, verify_package

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "lightning_lora.py"


@pytest.mark.slow
def test_example_trains_lora_with_tensafe_dp_and_releases_a_verified_package(workdir: Path) -> None:
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
    names = {f.path for f in client.list_artifacts(run_id, "tensafe")}
    assert {"tensafe/dp_certificate.json", "tensafe/privacy_report.json", "tensafe/model.tssp"} <= names
