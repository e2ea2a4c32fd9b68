"""``tensafe train`` with its integration flags: the shortened main job publishes to MLflow, W&B and the (fake) Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import TOKEN
from fake_hub import FakeHub

from tests.hf.test_quickstart import _short_config, _tensafe

REPO = "alice/quickstart-dp"


@pytest.mark.slow
def test_train_flags_publish_the_release_to_mlflow_wandb_and_the_hub(
    online: FakeHub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wandb_dir = tmp_path / "wandb-dir"
    wandb_dir.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(wandb_dir))
    out = tmp_path / "run"
    done = _tensafe(
        "train",
        "--config",
        str(_short_config(tmp_path)),
        "--output-dir",
        str(out),
        "--mlflow-experiment",
        "quickstart",
        "--wandb-project",
        "quickstart",
        "--push-to-hub",
        REPO,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    certificate = json.loads((out / "dp_certificate.json").read_text())

    # Hub: the verified package in one private repo, with the generated card.
    files = online.files(REPO)
    assert json.loads(files["dp_certificate.json"]) == certificate
    assert {"tssp.dsse.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert online.is_private(REPO)

    # MLflow (a sqlite store in the output folder, no server): one run with the privacy metrics and the release.
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("quickstart")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["privacy/epsilon_spent"] == pytest.approx(certificate["privacy_guarantee"]["epsilon"])
    assert run.data.tags["tssp_verified"] == "true"
    assert {"dp_certificate.json", "model"} <= {f.path for f in client.list_artifacts(run.info.run_id)}
    version = client.get_model_version_by_alias("run", "dp-certified")
    assert version.tags["tssp_verified"] == "true"

    # W&B offline: one finished run holding the package artifact.
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    assert any(p.suffix == ".wandb" for p in run_dir.iterdir())

    # The Hub token reached no byte that was written.
    for root in (out, wandb_dir):
        for path in root.rglob("*"):
            if path.is_file():
                assert TOKEN.encode() not in path.read_bytes(), path
