"""Two-process ``strategy="tensafe_ddp"`` run on CPU (gloo); each rank saves what it saw to ``<out>/rank<r>.pt``.

Run as ``python tests/lightning/_ddp_script.py OUT_DIR``; Lightning's popen launcher re-runs this script for rank 1.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as L
import torch
from torch.utils.data import DataLoader

import tensafe_lightning  # noqa: F401  (registers "tensafe_ddp" in this process and in the re-run child)
from shared_core.config import DPConfig
from tests.lightning._modules import QUIET, PerExampleModule, StepRecorder, regression_data

SIGMA, CLIP, SEED, LR, STEPS, N = 0.5, 0.7, 7, 0.1, 6, 16


def main(out: Path) -> None:
    torch.set_num_threads(1)
    module = PerExampleModule(lr=LR)
    module.dp_config = DPConfig(noise_multiplier=SIGMA, max_grad_norm=CLIP, noise_seed=SEED, accountant="rdp")
    recorder = StepRecorder()
    trainer = L.Trainer(strategy="tensafe_ddp", devices=2, max_steps=STEPS, callbacks=[recorder], **QUIET)
    trainer.fit(module, DataLoader(regression_data(N), batch_size=1))
    strategy = trainer.strategy
    torch.save(
        {
            "rank": trainer.global_rank,
            "batches": recorder.batches,
            "before": recorder.before,
            "updates": recorder.updates,
            "final": [p.detach().clone() for p in module.parameters()],
            "ledger_steps": strategy.ledger.steps,
            "epsilon": strategy.ledger.epsilon_spent,
            "expected_batch_size": strategy.plan.expected_batch_size,
            "sample_rate": strategy.plan.sample_rate,
            "global_step": trainer.global_step,
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
