"""HF tracker callbacks end to end: a real DP job, a real mlflow server, W&B offline read back by wandb's reader."""

from __future__ import annotations

import json
import math
import os
import socket
from pathlib import Path

import pytest

pytest.importorskip("transformers")
wandb = pytest.importorskip("wandb")
mlflow = pytest.importorskip("mlflow")

from _mlops_job import grep_tree, make_trainer, wandb_records  # noqa: E402

from shared_core.mlops import REDACTED, replay_mlflow_buffer  # noqa: E402 (the name the outage warning gives)
from shared_core.mlops.metrics import GUIDE_METRIC_KEYS  # noqa: E402
from shared_core.mlops.state import TRACKERS_FILE  # noqa: E402
from tensafe_hf.mlops import TenSafeMLflowCallback, TenSafeMLflowConfig, TenSafeWandbCallback  # noqa: E402

pytestmark = [pytest.mark.mlflow_server, pytest.mark.slow]

CANARIES = {
    "WANDB_API_KEY": "c0ffee" * 6 + "abcd",  # 40 hex, the W&B key shape
    "HF_TOKEN": "hf_CanaryHfTokenXq7Zp3Lw9Vb2Nk5Rt8Ys1Dm",
    "MLFLOW_TRACKING_PASSWORD": "CanaryMlflowPassword-5be1",
}
HUB_TOKEN = "CanaryHubTokenArg-77f2e1"
CONFIG_KEY = "CanaryCallbackApiKey-9d3c"
TAG_SECRET = "CanaryTagPassword-1a2b"
URL_PASSWORD = "CanaryUrlPassword-4c4d"


@pytest.fixture(scope="session")
def key_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from shared_core.tssp.keys import generate_keys

    folder = tmp_path_factory.mktemp("keys") / "k"
    generate_keys(folder)
    return folder


@pytest.fixture
def wandb_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    dirs = {name: tmp_path / name for name in ("wandb_dir", "wandb_data", "wandb_cache", "wandb_config")}
    for path in dirs.values():
        path.mkdir()
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(dirs["wandb_dir"]))
    monkeypatch.setenv("WANDB_DATA_DIR", str(dirs["wandb_data"]))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(dirs["wandb_cache"]))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(dirs["wandb_config"]))
    monkeypatch.chdir(tmp_path)
    yield dirs
    if wandb.run is not None:
        wandb.finish()
    wandb.teardown()  # the wandb singleton caches settings (mode, base URL) across tests


def _runs(client: mlflow.MlflowClient, experiment: str) -> list[mlflow.entities.Run]:
    exp = client.get_experiment_by_name(experiment)
    return [] if exp is None else client.search_runs([exp.experiment_id])


def _history(client: mlflow.MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run_id, key))


def _offline_run_dir(wandb_dir: Path) -> Path:
    (run_dir,) = (wandb_dir / "wandb").glob("offline-run-*")
    return run_dir


def test_both_trackers_with_report_to_publish_guide_keys_artifacts_registry_and_leak_no_secret(
    mlflow_server: dict[str, str],
    wandb_env: dict[str, Path],
    key_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in CANARIES.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "tensafe")
    monkeypatch.setenv("MLFLOW_TRUNCATE_LONG_VALUES", "false")
    port = mlflow_server["port"]
    secret_url = f"http://tensafe:{URL_PASSWORD}@127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_url)  # the built-in MLflowCallback uses the same server
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "exp-main")
    mlflow.set_tracking_uri(secret_url)

    long_value = "x" * 7000
    many = {f"p{i:03d}": i for i in range(120)}
    mlflow_cb = TenSafeMLflowCallback(
        TenSafeMLflowConfig(
            experiment_name="exp-main",
            tracking_uri=secret_url,
            log_frequency=2,
            registered_model_name="tiny-lora-dp",
            trusted_keys=str(key_dir),
            tags={"team": "privacy", "db_password": TAG_SECRET},
            params={"long": long_value, "openai_api_key": CONFIG_KEY, **many},
        )
    )
    wandb_cb = TenSafeWandbCallback(
        project="tensafe-test",
        log_frequency=2,
        log_gradients=False,
        log_model=True,
        config={"lora_rank": 2, "api_key": CONFIG_KEY, "tracking": secret_url},
        trusted_keys=str(key_dir),
    )
    out = tmp_path / "out"
    trainer, _dp = make_trainer(
        out,
        [wandb_cb, mlflow_cb],
        key_dir=key_dir,
        training_config={"lr": 0.05, "hub_token": HUB_TOKEN, "tracking_uri": secret_url},
        report_to=["wandb", "mlflow"],
        hub_token=HUB_TOKEN,
        eval_strategy="steps",
        eval_steps=4,
        save_strategy="steps",
        save_steps=2,
    )
    trainer.train()
    wandb.finish()

    # -- MLflow: one run (no ghost), guide keys, params overflow, verified certificate, registry ------------------
    client = mlflow.MlflowClient(mlflow_server["url"])
    (run,) = _runs(client, "exp-main")
    run_id = run.info.run_id
    assert mlflow_cb.summary["run_id"] == run_id
    eps = _history(client, run_id, "privacy/epsilon_spent")
    assert sorted({s for s, _ in eps}) == [1, 2, 3, 4]  # logged by the built-in callback at every log call
    assert all(b >= a > 0 for (_, a), (_, b) in zip(eps, eps[1:], strict=False))
    assert [s for s, _ in _history(client, run_id, "train/loss")] == [1, 3, 4]  # log_frequency=2 + last step
    # the DP callback puts train/gradient_norm into the Trainer's logs, so the built-in callback logs it every step
    assert sorted({s for s, _ in _history(client, run_id, "train/gradient_norm")}) == [1, 2, 3, 4]
    assert _history(client, run_id, "privacy/steps_remaining")
    ((step, eval_loss),) = _history(client, run_id, "eval/loss")
    ((_, perplexity),) = _history(client, run_id, "eval/perplexity")
    assert step == 4
    assert perplexity == pytest.approx(math.exp(eval_loss))
    params = client.get_run(run_id).data.params
    assert params["openai_api_key"] == REDACTED
    assert "long" not in params
    assert "p119" not in params
    overflow_file = Path(client.download_artifacts(run_id, "params/overflow_params.json", str(tmp_path / "dl1")))
    overflow = json.loads(overflow_file.read_text())
    assert overflow["long"] == long_value
    assert "p119" in overflow
    tags = client.get_run(run_id).data.tags
    assert tags["db_password"] == REDACTED
    assert tags["team"] == "privacy"
    cert = json.loads((out / "dp_certificate.json").read_text())
    assert tags["dp.epsilon"] == str(cert["privacy_guarantee"]["epsilon"])
    assert tags["tssp_verified"] == "true"
    assert tags["dp.certificate_read_back"] == "true"
    assert mlflow_cb.summary["certificate_read_back"] is True
    root = {a.path for a in client.list_artifacts(run_id)}
    assert {"dp_certificate.json", "privacy_report.json", "training_config.json", "model", "adapter"} <= root
    package_files = {Path(a.path).name for a in client.list_artifacts(run_id, "model")}
    assert package_files == {p.name for p in (out / "model.tssp").iterdir()}
    version = client.get_model_version_by_alias("tiny-lora-dp", "dp-certified")
    assert version.run_id == run_id
    assert version.source.endswith("/model")
    assert version.tags["tssp_verified"] == "true"
    assert version.tags["epsilon"] == str(cert["privacy_guarantee"]["epsilon"])
    assert version.tags["delta"] == str(cert["privacy_guarantee"]["delta"])

    # -- W&B: read the offline run back with wandb's own reader -----------------------------------------------
    records = wandb_records(_offline_run_dir(wandb_env["wandb_dir"]))
    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    ours = [h for h in history if "privacy/epsilon_spent" in h]  # the built-in callback writes train/privacy/...
    assert [h["train/global_step"] for h in ours] == [1, 3, 4]
    assert all("train/gradient_norm" in h for h in ours)
    own_keys = {*GUIDE_METRIC_KEYS, "train/global_step", "_step", "_runtime", "_timestamp"}
    assert all(set(h) <= own_keys for h in ours)  # no second train/ prefix, no other gradient statistic
    assert [h["train/loss"] for h in history if "train/loss" in h and "train/grad_norm" in h]  # built-in rows
    (perplexity_row,) = [h for h in history if "eval/perplexity" in h]
    assert perplexity_row["train/global_step"] == 4
    config: dict = {}
    for r in records:
        if r["type"] in ("run", "config"):
            config.update(r[r["type"]].get("config", r[r["type"]]).get("update", {}))
    assert config["api_key"] == REDACTED
    assert config["lora_rank"] == 2
    assert config["tracking"] == f"http://***@127.0.0.1:{port}"
    artifacts = {r["artifact"]["type"]: r["artifact"] for r in records if r["type"] == "artifact"}
    assert {"tssp-package", "dp-certificate", "model"} <= set(artifacts)
    package_files = {c["path"] for c in artifacts["tssp-package"]["manifest"]["contents"]}
    pkg = out / "model.tssp"
    assert package_files == {str(p.relative_to(pkg)) for p in pkg.rglob("*") if p.is_file()}
    certificate_files = {c["path"] for c in artifacts["dp-certificate"]["manifest"]["contents"]}
    assert certificate_files == {"dp_certificate.json", "privacy_report.json", "training_config.json"}
    assert any(k.startswith("privacy/budget_gauge") for h in history for k in h)
    assert any(k.startswith("privacy/epsilon_loss_tradeoff") for h in history for k in h)
    assert any(k.startswith("privacy/report") for h in history for k in h)  # the privacy report table

    # -- resume data and secrets ----------------------------------------------------------------------------
    saved = json.loads((out / "checkpoint-2" / TRACKERS_FILE).read_text())
    assert saved["mlflow"]["run_id"] == run_id
    assert saved["wandb"]["run_id"] == wandb_cb.summary["run_id"]
    secrets = [*CANARIES.values(), HUB_TOKEN, CONFIG_KEY, TAG_SECRET, URL_PASSWORD]
    scanned = [wandb_env["wandb_dir"], wandb_env["wandb_data"], Path(mlflow_server["root"]), out]
    assert grep_tree(scanned, secrets) == []
    assert not (out / ".tensafe_mlops_staging").exists()


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_trackers_never_stop_training_and_lose_nothing(
    mlflow_server: dict[str, str], wandb_env: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = _closed_port()
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    mlflow_cb = TenSafeMLflowCallback(experiment_name="exp-outage", tracking_uri=f"http://127.0.0.1:{port}")
    wandb_cb = TenSafeWandbCallback(project="tensafe-outage", log_gradients=False, log_frequency=1)
    out = tmp_path / "out"
    trainer, _dp = make_trainer(out, [wandb_cb, mlflow_cb], key_dir=None, release=False)
    with pytest.warns(UserWarning, match="not found"):  # nothing was released: log what exists, warn
        trainer.train()
    wandb.finish()
    assert trainer.state.global_step == 4

    assert wandb_cb.summary["offline_fallback"] is True
    history = [r for r in wandb_records(_offline_run_dir(wandb_env["wandb_dir"])) if r["type"] == "history"]
    assert [h["history"]["item"]["train/global_step"] for h in history if "train/loss" in h["history"]["item"]] == [
        1,
        2,
        3,
        4,
    ]

    buffer = out / "tensafe_mlflow_buffer.jsonl"
    assert mlflow_cb.summary["buffered"] > 0
    assert buffer.is_file()
    ops = [json.loads(line)["op"] for line in buffer.read_text().splitlines()]
    assert ops[0] == "start_run"
    assert "log_metrics" in ops

    sent, left = replay_mlflow_buffer(buffer, tracking_uri=mlflow_server["url"])
    assert left == 0
    assert sent == len(ops)
    assert not buffer.exists()
    client = mlflow.MlflowClient(mlflow_server["url"])
    (run,) = _runs(client, "exp-outage")
    assert [s for s, _ in _history(client, run.info.run_id, "privacy/epsilon_spent")] == [1, 4]
    assert run.info.status == "FINISHED"


def test_resumed_training_reattaches_to_the_same_runs(
    mlflow_server: dict[str, str], wandb_env: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"

    def callbacks() -> list:
        return [
            TenSafeWandbCallback(project="tensafe-resume", log_gradients=False, log_frequency=1),
            TenSafeMLflowCallback(experiment_name="exp-resume", tracking_uri=mlflow_server["url"], log_frequency=1),
        ]

    first = callbacks()
    trainer, _ = make_trainer(out, first, key_dir=None, release=False, save_strategy="steps", save_steps=2)
    with pytest.warns(UserWarning, match="not found"):
        trainer.train()
    wandb.finish()
    second = callbacks()
    trainer, _ = make_trainer(out, second, key_dir=None, release=False, save_strategy="steps", save_steps=2)
    with pytest.warns(UserWarning, match="not found"):
        trainer.train(resume_from_checkpoint=str(out / "checkpoint-2"))
    wandb.finish()

    assert second[0].summary["run_id"] == first[0].summary["run_id"]
    assert second[1].summary["run_id"] == first[1].summary["run_id"]
    client = mlflow.MlflowClient(mlflow_server["url"])
    (run,) = _runs(client, "exp-resume")
    steps = [s for s, _ in _history(client, run.info.run_id, "train/loss")]
    assert steps == [1, 2, 3, 3, 4, 4]  # steps 3-4 of the first job, then 3-4 again after resuming at 2
    assert len(list((wandb_env["wandb_dir"] / "wandb").glob("offline-run-*"))) == 2
    assert {p.name.rsplit("-", 1)[-1] for p in (wandb_env["wandb_dir"] / "wandb").glob("offline-run-*")} == {
        first[0].summary["run_id"]
    }
    assert os.environ.get("MLFLOW_RUN_ID") is None
