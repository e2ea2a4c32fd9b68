"""A tiny real DP job for the tracker tests: GPT-2 (1 layer) + LoRA, the real TenSafeDPCallback, a release step."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from transformers import GPT2Config, GPT2LMHeadModel, Trainer, TrainerCallback, TrainingArguments

from shared_core.config import DPConfig
from shared_core.mlops.redaction import redact_config_secrets
from tensafe_hf.callback import TenSafeDPCallback

VOCAB = 64


def tiny_lora(seed: int = 0) -> Any:
    torch.manual_seed(seed)
    base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=VOCAB, n_positions=32))
    cfg = LoraConfig(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True)
    return get_peft_model(base, cfg)


def rows(n: int = 32) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(n):
        ids = torch.randint(3, VOCAB, (8,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": list(ids)})
    return out


def collate(batch: Sequence[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
    ids = torch.tensor([r["input_ids"] for r in batch], dtype=torch.long)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": ids.clone()}


class ReleaseStub(TrainerCallback):
    """Writes the release files the DP side produces (certificate, report, redacted config, signed package).

    Placed right after the DP callback, so its ``on_train_end`` runs before the tracker callbacks'. The package is
    a real signed TSSP package (``shared_core.tssp.pack``) of the adapter the DP callback saved.
    """

    def __init__(self, dp: TenSafeDPCallback, key_dir: Path | None, training_config: dict[str, Any]) -> None:
        self.dp, self.key_dir, self.training_config = dp, key_dir, training_config

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        out = Path(args.output_dir)
        metrics = self.dp.ledger.metrics()
        cert = {
            "model_name": "tiny-lora-dp",
            "training_timestamp": "2026-01-01T00:00:00Z",
            "privacy_guarantee": {
                "epsilon": metrics["privacy/epsilon_spent"],
                "delta": metrics["privacy/delta"],
                "mechanism": "DP-SGD",
                "accountant": "PRV",
            },
            "training_parameters": {
                "noise_multiplier": metrics["privacy/noise_multiplier"],
                "max_grad_norm": 1.0,
                "total_steps": state.global_step,
            },
            "data_summary": {"num_samples": 32, "sample_rate": 0.125},
        }
        (out / "dp_certificate.json").write_text(json.dumps(cert, indent=2))
        report = {"epsilon_spent": metrics["privacy/epsilon_spent"], "target_epsilon": 8.0, "steps": state.global_step}
        (out / "privacy_report.json").write_text(json.dumps(report))
        (out / "training_config.json").write_text(json.dumps(redact_config_secrets(self.training_config)))
        if self.key_dir is not None:
            from shared_core.tssp import pack
            from shared_core.tssp.keys import load_signing_keys

            pack(out / "adapter", out / "model.tssp", keys=load_signing_keys(self.key_dir), name="tiny-lora-dp")


def make_trainer(
    out: Path,
    trackers: list[TrainerCallback],
    *,
    key_dir: Path | None,
    training_config: dict[str, Any] | None = None,
    report_to: list[str] | None = None,
    release: bool = True,
    **overrides: Any,
) -> tuple[Trainer, TenSafeDPCallback]:
    kw: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": 4,
        "max_steps": 4,
        "learning_rate": 0.05,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": report_to or [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
        "remove_unused_columns": False,
    }
    kw.update(overrides)
    # RDP keeps the per-step budget check fast; the certificate figures are not what these tests check
    dp_config = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, target_epsilon=50.0, accountant="rdp")
    dp = TenSafeDPCallback(dp_config)
    callbacks: list[TrainerCallback] = [dp]
    if release:
        callbacks.append(ReleaseStub(dp, key_dir, training_config or {}))
    data = rows()
    trainer = Trainer(
        model=tiny_lora(),
        args=TrainingArguments(**kw),
        train_dataset=data,
        eval_dataset=data[:8],
        data_collator=collate,
        callbacks=[*callbacks, *trackers],
    )
    return trainer, dp


def wandb_records(run_dir: Path) -> list[dict[str, Any]]:
    """The offline run's transaction log, read with wandb's own reader (``wandb leet inspect --json``)."""
    (log,) = run_dir.glob("run-*.wandb")
    wandb_bin = Path(sys.executable).with_name("wandb")
    out = subprocess.run(
        [str(wandb_bin), "leet", "inspect", "--json", str(log)], capture_output=True, text=True, check=True
    ).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def grep_tree(roots: Sequence[Path], needles: Sequence[str]) -> list[str]:
    """Every (file, needle) where a needle's bytes occur anywhere under ``roots``."""
    hits = []
    encoded = [(n, n.encode()) for n in needles]
    for root in roots:
        files = [root] if root.is_file() else [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
        for path in files:
            data = path.read_bytes()
            hits += [f"{path}: {name}" for name, raw in encoded if raw in data]
    return hits
