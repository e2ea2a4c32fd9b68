"""DP LoRA fine-tuning with the stock ``transformers.Trainer``, tracked in Weights & Biases and MLflow.

Runs offline by default: W&B in offline mode (``wandb sync`` later) and MLflow in a local sqlite store inside the
output folder. Point ``--tracking-uri`` at a server (``http://host:5000``) to use one; credentials belong in
``MLFLOW_TRACKING_USERNAME``/``MLFLOW_TRACKING_PASSWORD`` (they are never logged either way).

    python examples/hf_mlops.py --output-dir runs/demo

The model is a tiny byte-level GPT-2 built on the spot, so the script needs no download. The flow is the real one:
train with ``TenSafeDPCallback`` -> certify, package and verify (``release_adapter``) -> publish the certificate,
report, config and signed package to both trackers -> register the package in the MLflow registry under
``--model-name@dp-certified``.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

TEXT = (
    "Differential privacy bounds what a trained model can reveal about any one training example. "
    "DP-SGD clips each example's gradient and adds Gaussian noise to the sum before every update. "
    "The privacy accountant turns the noise multiplier, sampling rate and number of steps into epsilon. "
)


def _rows(seq_len: int = 24) -> list[dict[str, list[int]]]:
    data = list(TEXT.encode("utf-8")) * 4
    return [{"input_ids": data[i : i + seq_len]} for i in range(0, len(data) - seq_len, seq_len // 2)]


def _collate(batch: Sequence[dict[str, list[int]]]) -> dict[str, Any]:
    import torch

    ids = torch.tensor([r["input_ids"] for r in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


def _model() -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=256, n_positions=64))
    lora = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True)
    return get_peft_model(base, lora)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Train, release and publish; returns the trackers' summaries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output-dir", type=Path, default=Path("runs/hf_mlops"))
    parser.add_argument("--max-steps", type=int, default=8)
    parser.add_argument("--noise-multiplier", type=float, default=1.0)
    parser.add_argument("--tracking-uri", default=None, help="MLflow server (default: sqlite in the output dir)")
    parser.add_argument("--experiment", default="tensafe-hf-mlops")
    parser.add_argument("--wandb-project", default="tensafe-hf-mlops")
    parser.add_argument("--wandb-mode", default="offline", choices=["online", "offline", "disabled"])
    parser.add_argument("--model-name", default="tensafe-demo-lora")
    opts = parser.parse_args(argv)

    import wandb
    from transformers import Trainer, TrainingArguments

    from shared_core.config import DPConfig
    from shared_core.release import release_adapter
    from shared_core.tssp.keys import generate_keys
    from tensafe_hf.callback import ADAPTER_DIR, TenSafeDPCallback
    from tensafe_hf.mlops import TenSafeMLflowCallback, TenSafeWandbCallback

    out = opts.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    key_dir = out / "keys"  # demo keys; in production keep the private keys out of the output folder
    if not (key_dir / "ed25519.pub").exists():
        generate_keys(key_dir)
    tracking_uri = opts.tracking_uri or f"sqlite:///{out / 'mlflow.db'}"

    dp = TenSafeDPCallback(DPConfig(noise_multiplier=opts.noise_multiplier, max_grad_norm=1.0))
    wandb_cb = TenSafeWandbCallback(
        project=opts.wandb_project,
        mode=opts.wandb_mode,
        log_frequency=2,
        log_gradients=False,  # gradient histograms are not private under DP; never logged
        config={"lora_rank": 4, "noise_multiplier": opts.noise_multiplier},
        trusted_keys=str(key_dir),
        publish_on_train_end=False,  # the release is written after train(); published below
    )
    mlflow_cb = TenSafeMLflowCallback(
        experiment_name=opts.experiment,
        tracking_uri=tracking_uri,
        artifact_location=str(out / "mlartifacts") if opts.tracking_uri is None else None,
        log_frequency=2,
        registered_model_name=opts.model_name,
        trusted_keys=str(key_dir),
        publish_on_train_end=False,
    )
    args = TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=8,
        max_steps=opts.max_steps,
        learning_rate=5e-3,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        remove_unused_columns=False,
        seed=0,
    )
    data = _rows()
    trainer = Trainer(
        model=_model(),
        args=args,
        train_dataset=data,
        data_collator=_collate,
        callbacks=[dp, wandb_cb, mlflow_cb],
    )
    trainer.train()

    # The certificate and the package exist only after the release step: publish them to both runs now.
    release_adapter(
        adapter_dir=out / ADAPTER_DIR,
        output_dir=out,
        ledger=dp.ledger,
        key_dir=key_dir,
        model_name=opts.model_name,
        base_model="tiny-byte-gpt2 (random init)",
        parameters_under_dp=dp.summary()["trainable_parameters"],
        training_parameters={"learning_rate": args.learning_rate, "max_steps": opts.max_steps},
        training_config={"experiment": opts.experiment, "max_steps": opts.max_steps},
    )
    summaries = {
        "wandb": wandb_cb.publish_artifacts(out, args=args),
        "mlflow": mlflow_cb.publish_artifacts(out, args=args),
    }
    if wandb.run is not None:
        wandb.finish()
    print(json.dumps(summaries, indent=2, default=str))
    return summaries


if __name__ == "__main__":
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    main()
