"""The privacy ledger travels in Lightning checkpoints; resuming continues epsilon and fails closed without it."""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from shared_core.accounting import compute_epsilon
from shared_core.config import DPConfig
from shared_core.errors import LedgerError
from tensafe_lightning import TenSafeDPStrategy
from tensafe_lightning._state import CHECKPOINT_KEY
from tests.lightning._modules import QUIET, PerExampleModule, loader, regression_data

CFG = DPConfig(noise_multiplier=1.0, max_grad_norm=1.0, accountant="rdp", preflight=False)


def _trainer(strategy: TenSafeDPStrategy, ckpt_dir: Path, max_steps: int) -> L.Trainer:
    settings = {**QUIET, "enable_checkpointing": True}
    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, every_n_train_steps=3, save_top_k=-1, filename="{step}")
    return L.Trainer(strategy=strategy, max_steps=max_steps, callbacks=[checkpoint], **settings)


def _first_run(tmp_path: Path) -> Path:
    strategy = TenSafeDPStrategy(CFG)
    _trainer(strategy, tmp_path, 3).fit(PerExampleModule(), loader(regression_data(24), 6))
    assert strategy.ledger is not None
    assert strategy.ledger.steps == 3
    (ckpt,) = tmp_path.glob("step=3*.ckpt")
    return ckpt


def test_resume_continues_epsilon_from_the_checkpointed_ledger(tmp_path: Path) -> None:
    ckpt = _first_run(tmp_path)
    saved = torch.load(ckpt, weights_only=True)
    assert CHECKPOINT_KEY in saved  # loadable with weights_only=True: the ledger is stored as JSON text

    strategy = TenSafeDPStrategy(CFG)
    trainer = _trainer(strategy, tmp_path / "resumed", 6)
    trainer.fit(PerExampleModule(), loader(regression_data(24), 6), ckpt_path=ckpt)
    ledger = strategy.ledger
    assert ledger is not None
    assert trainer.global_step == 6
    assert ledger.steps == 6
    six_steps = compute_epsilon(sample_rate=0.25, noise_multiplier=1.0, steps=6, delta=1 / 240, accountant="rdp")
    assert ledger.epsilon_spent == pytest.approx(six_steps, rel=1e-9)


def test_a_checkpoint_without_the_ledger_fails_closed(tmp_path: Path) -> None:
    ckpt = _first_run(tmp_path)
    stripped = tmp_path / "stripped.ckpt"
    checkpoint = torch.load(ckpt, weights_only=True)
    del checkpoint[CHECKPOINT_KEY]
    torch.save(checkpoint, stripped)
    module = PerExampleModule()
    with pytest.raises(LedgerError, match="no TenSafe privacy ledger"):
        _trainer(TenSafeDPStrategy(CFG), tmp_path / "r", 6).fit(
            module, loader(regression_data(24), 6), ckpt_path=stripped
        )


def test_an_edited_ledger_or_changed_settings_fail_closed(tmp_path: Path) -> None:
    ckpt = _first_run(tmp_path)
    checkpoint = torch.load(ckpt, weights_only=True)
    checkpoint[CHECKPOINT_KEY]["ledger_json"] = checkpoint[CHECKPOINT_KEY]["ledger_json"].replace(
        '"steps": 3', '"steps": 1'
    )
    edited = tmp_path / "edited.ckpt"
    torch.save(checkpoint, edited)
    with pytest.raises(LedgerError, match="checksum"):
        _trainer(TenSafeDPStrategy(CFG), tmp_path / "r1", 6).fit(
            PerExampleModule(), loader(regression_data(24), 6), ckpt_path=edited
        )
    other = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp", preflight=False)
    with pytest.raises(LedgerError, match="max_grad_norm"):
        _trainer(TenSafeDPStrategy(other), tmp_path / "r2", 6).fit(
            PerExampleModule(), loader(regression_data(24), 6), ckpt_path=ckpt
        )
