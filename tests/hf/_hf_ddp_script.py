"""Run by torchrun with 2 gloo processes: DP training under DDP; each rank dumps what it ended with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _hf_models import gpt2_lora, lm_dataset, pad_collate, trainable, training_args  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402

from shared_core.config import DPConfig  # noqa: E402
from tensafe_hf import TenSafeDPCallback  # noqa: E402


class _Updates(TrainerCallback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        g = [p.grad.reshape(-1) for p in model.parameters() if p.requires_grad]
        self.norms.append(float(torch.cat(g).norm()))


def main(out: str) -> None:
    cb = TenSafeDPCallback(DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp"))
    probe = _Updates()
    args = training_args(out, max_steps=3, gradient_accumulation_steps=2, ddp_backend="gloo")
    trainer = Trainer(
        model=gpt2_lora(), args=args, train_dataset=lm_dataset(32), data_collator=pad_collate, callbacks=[cb, probe]
    )
    trainer.train()
    rank = dist.get_rank()
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "sample_rate": cb.plan.sample_rate,
        "expected_batch_size": cb.plan.expected_batch_size,
        "steps": cb.ledger.steps,
        "norms": probe.norms,
        "params": {k: v.flatten().tolist() for k, v in trainable(trainer.model).items()},
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
