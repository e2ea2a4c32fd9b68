"""Privacy metrics reach Lightning's own W&B (offline) and MLflow (sqlite) loggers, from rank zero."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
from lightning.pytorch.loggers import MLFlowLogger, WandbLogger

from shared_core.config import DPConfig
from tensafe_lightning import TenSafeDPStrategy
from tests.lightning._modules import QUIET, PerExampleModule, loader, regression_data

PRIVACY_KEYS = ("privacy/epsilon_spent", "privacy/delta", "privacy/noise_multiplier", "privacy/steps_remaining")


def test_privacy_metrics_reach_wandb_offline_and_mlflow_sqlite(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import wandb
    from mlflow import MlflowClient

    monkeypatch.setenv("WANDB_MODE", "offline")
    uri = f"sqlite:///{workdir / 'mlflow.db'}"
    wb = WandbLogger(offline=True, save_dir=str(workdir), project="tensafe-test")
    ml = MLFlowLogger(experiment_name="tensafe-test", tracking_uri=uri, save_dir=str(workdir / "mlruns"))
    cfg = DPConfig(noise_multiplier=1.0, target_epsilon=50.0, accountant="rdp", preflight=False)
    strategy = TenSafeDPStrategy(cfg)
    trainer = L.Trainer(strategy=strategy, max_steps=5, log_every_n_steps=2, **{**QUIET, "logger": [wb, ml]})
    try:
        trainer.fit(PerExampleModule(), loader(regression_data(24), 6))
        ledger = strategy.ledger
        assert ledger is not None
        assert ledger.steps == 5
        final = ledger.metrics()

        summary = dict(wb.experiment.summary)
        for key in PRIVACY_KEYS:
            assert summary[key] == pytest.approx(final[key], rel=1e-6), key
        assert "train/gradient_norm" in summary
    finally:
        wandb.finish()

    client = MlflowClient(uri)
    for key in PRIVACY_KEYS:
        history = client.get_metric_history(ml.run_id, key)
        assert history, key
        assert history[-1].value == pytest.approx(final[key], rel=1e-6), key
    epsilons = [m.value for m in client.get_metric_history(ml.run_id, "privacy/epsilon_spent")]
    assert epsilons == sorted(epsilons)  # epsilon only grows
    assert len(epsilons) >= 2  # on Lightning's logging steps, then the final figure
    logged = set(client.get_run(ml.run_id).data.metrics)
    assert not {k for k in logged if "grad" in k and k != "train/gradient_norm"}
