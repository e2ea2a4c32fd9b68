"""Tiny real models, datasets and collators for the HF adapter tests (GPT-2 and BERT families, peft LoRA)."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    TrainerCallback,
    TrainingArguments,
)

VOCAB = 100


def gpt2_base(seed: int = 0) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=64,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return GPT2LMHeadModel(cfg)


def gpt2_lora(seed: int = 0) -> nn.Module:
    cfg = LoraConfig(
        r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM"
    )
    model = get_peft_model(gpt2_base(seed), cfg)
    _randomise_lora_b(model, seed)
    return model


def bert_cls_lora(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    cfg = BertConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=3,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        pad_token_id=0,
    )
    base = BertForSequenceClassification(cfg)
    lcfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["query", "value"], task_type="SEQ_CLS")
    model = get_peft_model(base, lcfg)
    _randomise_lora_b(model, seed)
    return model


def _randomise_lora_b(model: nn.Module, seed: int) -> None:
    # LoRA B starts at zero, which makes A's gradient zero; random B exercises every trainable tensor.
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def lm_dataset(n: int, seed: int = 1, min_len: int = 4, max_len: int = 10) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": list(ids)})
    return rows


def cls_dataset(n: int, seed: int = 1) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = lm_dataset(n, seed)
    g = torch.Generator().manual_seed(seed + 1)
    return [{"input_ids": r["input_ids"], "labels": int(torch.randint(0, 3, (1,), generator=g))} for r in rows]


def pad_collate(rows: Sequence[dict[str, Any]]) -> dict[str, torch.Tensor]:
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    out: dict[str, torch.Tensor] = {}
    for i, r in enumerate(rows):
        ids[i, : len(r["input_ids"])] = torch.tensor(r["input_ids"])
        mask[i, : len(r["input_ids"])] = 1
    out["input_ids"], out["attention_mask"] = ids, mask
    if isinstance(rows[0]["labels"], list):
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for i, r in enumerate(rows):
            labels[i, : len(r["labels"])] = torch.tensor(r["labels"])
        out["labels"] = labels
    else:
        out["labels"] = torch.tensor([r["labels"] for r in rows])
    return out


def training_args(out: Any, **overrides: Any) -> TrainingArguments:
    kw: dict[str, Any] = {
        "output_dir": str(out),
        "per_device_train_batch_size": 2,
        "gradient_accumulation_steps": 1,
        "max_steps": 2,
        "learning_rate": 0.1,
        "optim": "sgd",
        "lr_scheduler_type": "constant",
        "logging_steps": 1,
        "save_strategy": "no",
        "report_to": [],
        "use_cpu": True,
        "disable_tqdm": True,
        "dataloader_pin_memory": False,
        "seed": 0,
        "remove_unused_columns": False,
    }
    kw.update(overrides)
    return TrainingArguments(**kw)


def trainable(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def frozen(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}


class GradProbe(TrainerCallback):
    """Records the update handed to the optimizer (after TenSafe's on_pre_optimizer_step)."""

    def __init__(self) -> None:
        self.updates: list[dict[str, torch.Tensor]] = []
        self.norms: list[float] = []
        self.logs: list[dict[str, Any]] = []

    def on_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        pass

    def on_pre_optimizer_step(self, args: Any, state: Any, control: Any, model: Any = None, **kw: Any) -> None:
        grads = {
            n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad and p.grad is not None
        }
        self.updates.append(grads)
        if grads:
            self.norms.append(float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads.values()))))

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kw: Any) -> None:
        self.logs.append(copy.deepcopy(dict(logs or {})))
