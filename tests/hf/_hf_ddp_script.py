"""Run by torchrun or accelerate launch with 2 gloo processes: DP training under DDP; each rank dumps what it saw.

The training runs until the privacy budget stops it (the vote of every rank), records which rows each micro-batch
held on this rank, and ends with a direct check of the cross-rank vote.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).parent))
from _hf_models import gpt2_lora, lm_dataset, pad_collate, trainable, training_args  # noqa: E402
from transformers import Trainer, TrainerCallback  # noqa: E402

from shared_core.accounting import compute_epsilon  # noqa: E402
from shared_core.config import DPConfig  # noqa: E402
from shared_core.dp import DPGradientEngine  # noqa: E402
from tensafe_hf import TenSafeDPCallback, TenSafeMLflowCallback, TenSafeWandbCallback  # noqa: E402

N, PER_DEVICE, GA, PLANNED, STOP_AFTER = 32, 2, 2, 12, 8


class _Updates(TrainerCallback):
    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        g = [p.grad.reshape(-1) for p in model.parameters() if p.requires_grad and p.grad is not None]
        self.norms.append(float(torch.cat(g).norm()) if g else 0.0)


class _RecordingCollator:
    """Records the rows of every (non-empty) micro-batch this rank trains on."""

    def __init__(self) -> None:
        self.rows: list[int] = []

    def __call__(self, features):
        self.rows += [f["row"] for f in features]
        return pad_collate([{k: v for k, v in f.items() if k != "row"} for f in features])


def main(out: str) -> None:
    world_b = PER_DEVICE * GA * 2
    delta = 1 / (10 * N)
    eps = [
        compute_epsilon(sample_rate=world_b / N, noise_multiplier=1.0, steps=k, delta=delta, accountant="rdp")
        for k in (STOP_AFTER, STOP_AFTER + 1)
    ]
    dp = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp", target_epsilon=sum(eps) / 2)
    cb = TenSafeDPCallback(dp, stop_at_budget=True)  # the budget stops it after STOP_AFTER of PLANNED updates
    probe = _Updates()
    collator = _RecordingCollator()
    rows = [dict(r, row=i) for i, r in enumerate(lm_dataset(N))]
    args = training_args(
        out,
        max_steps=PLANNED,
        per_device_train_batch_size=PER_DEVICE,
        gradient_accumulation_steps=GA,
        ddp_backend="gloo",
    )
    # One job, one run per tracker: only rank zero may talk to MLflow or W&B (offline here; the test counts runs).
    trackers = [
        TenSafeMLflowCallback(experiment_name="ddp", tracking_uri=f"sqlite:///{Path(out) / 'mlflow.db'}"),
        TenSafeWandbCallback(project="ddp", mode="offline", log_gradients=False),
    ]
    trainer = Trainer(
        model=gpt2_lora(),
        args=args,
        train_dataset=rows,
        data_collator=collator,
        callbacks=[cb, probe, *trackers],
    )
    trainer.train()
    rank = dist.get_rank()
    vote = DPGradientEngine(torch.nn.Linear(2, 1), max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=1)
    result = {
        "rank": rank,
        "world": dist.get_world_size(),
        "sample_rate": cb.plan.sample_rate,
        "expected_batch_size": cb.plan.expected_batch_size,
        "steps": cb.ledger.steps,
        "global_step": trainer.state.global_step,
        "norms": probe.norms,
        "rows": collator.rows,
        "params": {k: v.flatten().tolist() for k, v in trainable(trainer.model).items()},
        "vote_one_rank_true": vote.any_rank(rank == 0),
        "vote_all_false": vote.any_rank(False),
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    # Leave together and close the gloo group: a process that exits with the group's threads still running can die
    # of "terminate called without an active exception" (SIGABRT) after all its work is done.
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
