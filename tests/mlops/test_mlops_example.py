"""Smoke test of examples/hf_mlops.py: train, release, publish to W&B (offline) and MLflow (sqlite), register."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("transformers")
wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

pytestmark = pytest.mark.slow

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "hf_mlops.py"


def test_example_trains_releases_and_publishes_a_verified_registered_package(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        (tmp_path / name).mkdir()
        monkeypatch.setenv(name, str(tmp_path / name))
    monkeypatch.chdir(tmp_path)
    spec = importlib.util.spec_from_file_location("hf_mlops_example", EXAMPLE)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = tmp_path / "out"
    try:
        summary = module.main(["--output-dir", str(out), "--max-steps", "4", "--model-name", "demo-lora"])
    finally:
        wandb.teardown()

    assert summary["mlflow"]["certificate_read_back"] is True
    assert summary["mlflow"]["tssp_verified"] is True
    assert summary["wandb"]["tssp_verified"] is True
    assert summary["mlflow"]["missing"] == []
    client = mlflow.MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    version = client.get_model_version_by_alias("demo-lora", "dp-certified")
    assert version.run_id == summary["mlflow"]["run_id"]
    assert version.tags["tssp_verified"] == "true"
    assert [m.step for m in client.get_metric_history(version.run_id, "train/loss")] == [1, 3, 4]
    assert list((tmp_path / "WANDB_DIR" / "wandb").glob("offline-run-*"))
