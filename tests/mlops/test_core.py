"""shared_core.mlops building blocks: key mapping, throttle, params split, buffer, tracker state, configs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from shared_core.errors import ConfigError, PrivacyWarning
from shared_core.mlops.artifacts import certificate_tags, collect_run_artifacts, verify_tssp_package
from shared_core.mlops.buffer import JsonlBuffer
from shared_core.mlops.config import TenSafeMLflowConfig, TenSafeWandbConfig, resolve_config
from shared_core.mlops.metrics import GUIDE_METRIC_KEYS, LogThrottle, PrivacyHistory, map_trainer_logs
from shared_core.mlops.params import flatten_params, split_params
from shared_core.mlops.redaction import REDACTED
from shared_core.mlops.state import find_checkpoint_state, load_tracker_state, save_tracker_state


def test_trainer_logs_map_to_exactly_the_guide_keys() -> None:
    logs = {
        "loss": 2.0,
        "learning_rate": 0.1,
        "grad_norm": 3.5,
        "privacy/epsilon_spent": 1.25,
        "privacy/delta": 1e-5,
        "privacy/noise_multiplier": 1.1,
        "privacy/steps_remaining": 7,
        "epoch": 0.5,
        "per_sample_grad_norm_max": 9.0,  # any other gradient statistic is never published
        "flag": True,
        "nan": float("nan"),
    }
    out = map_trainer_logs(logs)
    assert out == {
        "train/loss": 2.0,
        "train/learning_rate": 0.1,
        "train/gradient_norm": 3.5,
        "privacy/epsilon_spent": 1.25,
        "privacy/delta": 1e-5,
        "privacy/noise_multiplier": 1.1,
        "privacy/steps_remaining": 7.0,
    }
    assert set(out) < set(GUIDE_METRIC_KEYS)
    assert "privacy/epsilon_spent" not in map_trainer_logs(logs, include_privacy=False)
    ev = map_trainer_logs({"eval_loss": 2.0, "eval_runtime": 1.0})
    assert ev == {"eval/loss": 2.0, "eval/perplexity": pytest.approx(math.exp(2.0))}
    assert map_trainer_logs({"eval_loss": 1000.0})["eval/perplexity"] == math.inf


def test_one_element_tensor_values_are_read_without_torch_in_core() -> None:
    torch = pytest.importorskip("torch")
    assert map_trainer_logs({"loss": torch.tensor(1.5)}) == {"train/loss": 1.5}
    assert map_trainer_logs({"loss": torch.tensor([1.0, 2.0])}) == {}


def test_throttle_logs_every_n_steps_the_last_step_and_each_step_once() -> None:
    throttle = LogThrottle(3)
    published = [s for s in range(1, 11) if throttle.should_log(s, is_last=s == 10)]
    assert published == [1, 4, 7, 10]
    assert not throttle.should_log(10, is_last=True)  # a second dict at the same step
    assert throttle.should_log(10, is_eval=True)
    assert throttle.should_log(2)  # resumed from an earlier checkpoint
    with pytest.raises(ConfigError, match="log_frequency"):
        LogThrottle(0)


def test_privacy_history_keeps_points_with_both_epsilon_and_loss() -> None:
    history = PrivacyHistory()
    history.add(1, {"privacy/epsilon_spent": 0.5, "train/loss": 3.0})
    history.add(2, {"train/loss": 2.0})
    assert history.points == [(1, 0.5, 3.0)]


def test_params_split_sends_long_and_surplus_values_to_the_overflow() -> None:
    params = flatten_params({"a": {"b": 1, "c": [1, 2]}, "long": "x" * 6001, "bad key(1)": "v"})
    assert params == {"a.b": 1, "a.c": [1, 2], "long": "x" * 6001, "bad key(1)": "v"}
    inline, overflow = split_params(params)
    assert inline == {"a.b": "1", "a.c": "[1, 2]", "bad key_1_": "v"}
    assert overflow == {"long": "x" * 6001}
    inline, overflow = split_params({f"p{i}": i for i in range(150)})
    assert len(inline) == 100
    assert len(overflow) == 50
    assert "p149" in overflow


def test_buffer_replays_in_order_keeps_failures_and_skips_a_torn_line(tmp_path: Path) -> None:
    buf = JsonlBuffer(tmp_path / "b.jsonl")
    for i in range(4):
        buf.append("log_metrics", step=i)
    with buf.path.open("a") as handle:
        handle.write('{"op": "torn')
    seen: list[int] = []

    def send(op: str, args: dict) -> None:
        if args["step"] == 2:
            raise ConnectionError("down")
        seen.append(args["step"])

    assert buf.replay(send) == (2, 2)
    assert seen == [0, 1]
    assert [r["args"]["step"] for r in buf.records()] == [2, 3]
    assert buf.replay(lambda op, args: None) == (2, 0)
    assert not buf.path.exists()


def test_tracker_state_merges_trackers_and_is_found_on_resume(tmp_path: Path) -> None:
    ckpt = tmp_path / "checkpoint-6"
    ckpt.mkdir()
    save_tracker_state(ckpt, "wandb", {"run_id": "w1"})
    save_tracker_state(ckpt, "mlflow", {"run_id": "m1"})
    assert load_tracker_state(ckpt) == {"wandb": {"run_id": "w1"}, "mlflow": {"run_id": "m1"}}
    assert find_checkpoint_state(tmp_path, global_step=6)["mlflow"]["run_id"] == "m1"
    assert find_checkpoint_state(tmp_path, global_step=0) == {}
    (ckpt / "tensafe_trackers.json").write_text("{not json")
    assert load_tracker_state(ckpt) == {}


def test_configs_have_the_guide_defaults_and_validate() -> None:
    wandb_cfg = TenSafeWandbConfig(project="p")
    assert (wandb_cfg.log_frequency, wandb_cfg.log_model, wandb_cfg.log_gradients) == (10, True, True)
    assert wandb_cfg.log_privacy_metrics is True
    assert wandb_cfg.redact_config_secrets is True
    ml = TenSafeMLflowConfig(experiment_name="e")
    assert (ml.log_frequency, ml.log_model, ml.log_artifacts, ml.log_dp_certificate) == (10, True, True, True)
    assert ml.alias == "dp-certified"
    for bad in ("latest", "v3", "has space", ""):
        with pytest.raises(ConfigError, match="alias"):
            TenSafeMLflowConfig(alias=bad)
    with pytest.raises(ConfigError, match="log_frequency"):
        TenSafeWandbConfig(log_frequency=0)
    with pytest.raises(ConfigError, match="buffer_file"):
        TenSafeMLflowConfig(buffer_file="../x.jsonl")
    with pytest.raises(ConfigError, match="unknown TenSafeWandbConfig field"):
        resolve_config(TenSafeWandbConfig, None, {"projekt": "p"})
    with pytest.raises(ConfigError, match="not both"):
        resolve_config(TenSafeMLflowConfig, ml, {"run_name": "r"})
    assert resolve_config(TenSafeWandbConfig, {"rank": 2}, {"project": "p"}).config == {"rank": 2}


def test_artifacts_are_collected_redacted_and_refused_when_a_secret_is_inside(tmp_path: Path) -> None:
    out, staging = tmp_path / "out", tmp_path / "staging"
    (out / "model.tssp").mkdir(parents=True)
    cert = {"privacy_guarantee": {"epsilon": 1.5, "delta": 1e-5, "accountant": "PRV"}, "data_summary": {}}
    (out / "dp_certificate.json").write_text(json.dumps(cert))
    (out / "training_config.json").write_text(json.dumps({"lr": 0.1, "hub_token": "tok-12345678"}))
    (out / "privacy_report.json").write_text(json.dumps({"note": "leaked CANARY-abc"}))
    (out / "model.tssp" / "manifest.json").write_text("{}")
    (out / "training_args.bin").write_bytes(b"pickle")
    found = collect_run_artifacts(out, staging, include_adapter=True, canaries=["CANARY-abc"])
    assert set(found.files) == {"dp_certificate.json", "training_config.json"}
    assert json.loads(found.files["training_config.json"].read_text())["hub_token"] == REDACTED
    assert found.files["dp_certificate.json"] == out / "dp_certificate.json"  # signed: never rewritten
    assert [name for name, _ in found.refused] == ["privacy_report.json"]
    assert found.package == out / "model.tssp"
    assert found.missing == ["adapter_model.safetensors"]
    tags = certificate_tags(found.certificate, certificate_path=found.files["dp_certificate.json"])
    assert tags["dp.epsilon"] == "1.5"
    assert tags["dp.accountant"] == "PRV"
    assert len(tags["dp.certificate_sha256"]) == 64
    assert verify_tssp_package(found.package, trusted_keys=None) is False
    assert verify_tssp_package(found.package, trusted_keys=tmp_path / "missing-keys") is False


def test_log_gradients_is_refused_with_a_privacy_warning() -> None:
    pytest.importorskip("transformers")
    from tensafe_hf.mlops import TenSafeWandbCallback

    with pytest.warns(PrivacyWarning, match="gradient histograms"):
        TenSafeWandbCallback(project="p")
    TenSafeWandbCallback(project="p", log_gradients=False)  # no warning (warnings are errors in this suite)


def test_training_args_file_is_rewritten_without_the_hub_token(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from transformers import TrainingArguments

    from tensafe_hf.mlops import sanitize_training_args_file

    args = TrainingArguments(output_dir=str(tmp_path), hub_token="CANARY-hub-xyz", report_to=[], use_cpu=True)
    torch.save(args, tmp_path / "training_args.bin")
    assert b"CANARY-hub-xyz" in (tmp_path / "training_args.bin").read_bytes()
    assert sanitize_training_args_file(tmp_path, args) is True
    assert b"CANARY-hub-xyz" not in (tmp_path / "training_args.bin").read_bytes()
    assert args.hub_token == "CANARY-hub-xyz"  # the live arguments are untouched
    loaded = torch.load(tmp_path / "training_args.bin", weights_only=False)
    assert loaded.hub_token is None


def test_importing_the_mlops_core_pulls_in_no_tracker_framework_or_torch() -> None:
    code = (
        "import shared_core.mlops, shared_core.mlops.redaction, shared_core.mlops.metrics, "
        "shared_core.mlops.artifacts, shared_core.mlops.config, sys; "
        "print(sorted({m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = set(json.loads(out.replace("'", '"')))
    assert not loaded & {"torch", "transformers", "wandb", "mlflow", "lightning"}
