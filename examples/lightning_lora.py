"""DP LoRA fine-tuning with the stock Lightning ``Trainer`` and one flag: ``strategy="tensafe_dp"``.

A tiny byte-level GPT-2 (built from a small config, no download) gets peft LoRA adapters on its attention, and is
trained with DP-SGD on a few hundred short sentences. ``training_step`` returns one loss per example next to the
mean (``{"loss": ..., "per_example_loss": ...}``: one forward per batch; a ``per_example_loss(batch)`` method works
too); the DP settings ride on the module as ``dp_config``. With ``--key-dir`` the run ends with a
signed certificate and a verified TSSP package (keys are generated there if the folder has none).

Run::

    python examples/lightning_lora.py --out runs/lightning-lora --key-dir keys/ --steps 30
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import torch
from peft import LoraConfig, get_peft_model
from torch.utils.data import DataLoader, Dataset
from transformers import GPT2Config, GPT2LMHeadModel

import tensafe_lightning  # noqa: F401  (registers strategy="tensafe_dp")
from shared_core.config import DPConfig
from shared_core.dp import IGNORE_INDEX, causal_lm_per_example_loss
from tensafe_lightning import TenSafeReleaseCallback

logger = logging.getLogger(__name__)

SUBJECTS = ["the patient", "a nurse", "the doctor", "our clinic", "the pharmacist", "a visitor"]
VERBS = ["reported", "noted", "asked about", "reviewed", "scheduled", "discussed"]
OBJECTS = ["a mild fever", "the new dosage", "an x-ray", "the follow-up visit", "sleep quality", "a blood test"]
MAX_LEN = 48


def sentences(n: int, seed: int = 0) -> list[str]:
    """``n`` short synthetic clinical-note sentences (the private training data of this example)."""
    g = torch.Generator().manual_seed(seed)
    pick = lambda xs: xs[int(torch.randint(len(xs), (1,), generator=g))]  # noqa: E731
    return [f"{pick(SUBJECTS)} {pick(VERBS)} {pick(OBJECTS)}." for _ in range(n)]


class ByteDataset(Dataset):  # type: ignore[type-arg]
    """Byte-level tokens (ids 3..258; 0 pad, 1 bos, 2 eos), padded to ``MAX_LEN`` with ``-100`` labels."""

    def __init__(self, texts: list[str]) -> None:
        self.rows = []
        for text in texts:
            ids = [1, *(b + 3 for b in text.encode("utf-8"))][: MAX_LEN - 1] + [2]
            pad = MAX_LEN - len(ids)
            self.rows.append(
                {
                    "input_ids": torch.tensor(ids + [0] * pad),
                    "attention_mask": torch.tensor([1] * len(ids) + [0] * pad),
                    "labels": torch.tensor(ids + [IGNORE_INDEX] * pad),
                }
            )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.rows[i]


def tiny_gpt2_lora(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=259, n_positions=MAX_LEN, n_embd=64, n_layer=2, n_head=4, bos_token_id=1, eos_token_id=2
    )
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True)
    return get_peft_model(GPT2LMHeadModel(config), lora)


class LoRALanguageModel(L.LightningModule):
    """A causal LM whose loss is computed per example (own-token mean), as DP-SGD needs."""

    def __init__(self, dp_config: DPConfig, lr: float = 5e-3) -> None:
        super().__init__()
        self.model = tiny_gpt2_lora()
        self.dp_config = dp_config
        self.lr = lr

    def losses(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        out = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        return causal_lm_per_example_loss(out.logits, batch["labels"])

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, torch.Tensor]:
        losses = self.losses(batch)
        self.log("train/loss", losses.mean(), prog_bar=True)
        return {"loss": losses.mean(), "per_example_loss": losses}

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self.log("eval/loss", self.losses(batch).mean(), prog_bar=True)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW([p for p in self.parameters() if p.requires_grad], lr=self.lr)


def _mlflow_logger(uri: str, out: Path) -> Any:
    from lightning.pytorch.loggers import MLFlowLogger

    return MLFlowLogger(experiment_name="tensafe-lightning-lora", tracking_uri=uri, save_dir=str(out / "mlruns"))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/lightning-lora"))
    parser.add_argument("--key-dir", type=Path, default=None, help="sign and package the adapter with these keys")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--examples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--target-epsilon", type=float, default=8.0)
    parser.add_argument("--accountant", choices=["prv", "rdp", "pld"], default="prv")
    parser.add_argument("--mlflow-uri", default=None, help="also log to MLflow, e.g. sqlite:///mlflow.db")
    args = parser.parse_args(argv)

    texts = sentences(args.examples + 64)
    train, held_out = ByteDataset(texts[: args.examples]), ByteDataset(texts[args.examples :])
    module = LoRALanguageModel(
        DPConfig(target_epsilon=args.target_epsilon, max_grad_norm=1.0, accountant=args.accountant)
    )
    callbacks: list[L.Callback] = []
    if args.key_dir is not None:
        if not (args.key_dir / "ed25519.key").exists():
            from shared_core.tssp import generate_keys

            generate_keys(args.key_dir)
        callbacks.append(TenSafeReleaseCallback(args.out, key_dir=args.key_dir, base_model="tiny-gpt2-bytes"))
    trainer = L.Trainer(
        strategy="tensafe_dp",
        accelerator="cpu",
        devices=1,
        max_steps=args.steps,
        val_check_interval=args.steps,
        check_val_every_n_epoch=None,
        log_every_n_steps=10,
        logger=_mlflow_logger(args.mlflow_uri, args.out) if args.mlflow_uri else False,
        enable_checkpointing=False,
        enable_model_summary=False,
        default_root_dir=str(args.out),
        callbacks=callbacks,
    )
    loader = DataLoader(train, batch_size=args.batch_size, shuffle=True)
    trainer.fit(module, loader, DataLoader(held_out, batch_size=32))
    ledger = trainer.strategy.ledger  # type: ignore[attr-defined]
    summary = {
        "steps": ledger.steps,
        "epsilon": ledger.epsilon_spent,
        "delta": ledger.delta,
        "noise_multiplier": ledger.noise_multiplier,
        "eval_loss": float(trainer.callback_metrics["eval/loss"]),
        "package": str(callbacks[0].release.package_path) if callbacks and callbacks[0].release else None,  # type: ignore[attr-defined]
        "mlflow_run_id": trainer.logger.run_id if args.mlflow_uri else None,  # type: ignore[union-attr]
    }
    print(json.dumps(summary, indent=2))
    return summary


if __name__ == "__main__":
    main()
