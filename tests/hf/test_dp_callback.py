"""TenSafeDPCallback / TenSafeTrainer on the stock transformers.Trainer with tiny GPT-2 and BERT LoRA models."""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import os
import shutil
from pathlib import Path

import pytest
import torch
from _hf_models import (
    GradProbe,
    bert_cls_lora,
    cls_dataset,
    frozen,
    gpt2_base,
    gpt2_lora,
    lm_dataset,
    pad_collate,
    trainable,
    training_args,
)
from transformers import Trainer, TrainerCallback

from shared_core.accounting import compute_epsilon
from shared_core.config import DPConfig
from shared_core.dp import PoissonBatchSampler, updates_per_epoch
from shared_core.errors import BudgetExhaustedError, ConfigError, LedgerError, PrivacyError, PrivacyWarning
from tensafe_hf import TenSafeDPCallback, TenSafeTrainer


def _dp(**kw) -> DPConfig:
    base = {"noise_multiplier": 1.0, "max_grad_norm": 1.0, "accountant": "rdp", "noise_seed": 0}
    base.update(kw)
    return DPConfig(**base)


def _first_update_indices(n: int, b: int, ga: int, seed: int) -> list[int]:
    sampler = PoissonBatchSampler(
        num_examples=n,
        sample_rate=b / n,
        num_updates=updates_per_epoch(num_examples=n, expected_batch_size=b),
        micro_batches_per_update=ga,
        seed=seed,
    )
    return [i for chunk in itertools.islice(iter(sampler), ga) for i in chunk]


def _per_example_grads(model, rows):
    params = [p for p in model.parameters() if p.requires_grad]
    for row in rows:
        loss = model(**pad_collate([row])).loss  # the model's own loss on ONE example: an independent reference
        yield torch.autograd.grad(loss, params)


@pytest.mark.parametrize(("family", "ga"), [("gpt2", 1), ("gpt2", 4), ("bert", 1), ("bert", 4)])
def test_update_equals_naive_per_example_reference(tmp_path: Path, family: str, ga: int) -> None:
    n, b, sigma, c = 16, 8, 0.8, 0.05
    model = gpt2_lora() if family == "gpt2" else bert_cls_lora()
    data = lm_dataset(n) if family == "gpt2" else cls_dataset(n)
    reference = copy.deepcopy(model)
    probe = GradProbe()
    cb = TenSafeDPCallback(
        _dp(noise_multiplier=sigma, max_grad_norm=c, expected_batch_size=b, noise_seed=5), sampling_seed=9
    )
    args = training_args(tmp_path, gradient_accumulation_steps=ga, max_steps=1)
    Trainer(model=model, args=args, train_dataset=data, data_collator=pad_collate, callbacks=[cb, probe]).train()

    idx = _first_update_indices(n, b, ga, seed=9)
    assert idx
    total = [torch.zeros_like(p) for p in reference.parameters() if p.requires_grad]
    for grads in _per_example_grads(reference, [data[i] for i in idx]):
        norm = math.sqrt(sum(float((g**2).sum()) for g in grads))
        factor = min(1.0, c / (norm + 1e-6))
        for t, g in zip(total, grads, strict=True):
            t += factor * g
    noise = torch.randn(sum(t.numel() for t in total), generator=torch.Generator().manual_seed(5)) * sigma * c
    names = [name for name, p in reference.named_parameters() if p.requires_grad]
    got = probe.updates[0]
    assert list(got) == names
    offset = 0
    for name, t in zip(names, total, strict=True):
        want = (t + noise[offset : offset + t.numel()].view_as(t)) / b
        offset += t.numel()
        torch.testing.assert_close(got[name], want, rtol=0, atol=1e-5)


def test_zero_noise_and_huge_clip_match_non_private_training_step_for_step(tmp_path: Path) -> None:
    n, b, ga, steps, lr = 16, 4, 2, 3, 0.1
    model = gpt2_lora()
    reference = copy.deepcopy(model)
    data = lm_dataset(n)
    cb = TenSafeDPCallback(_dp(noise_multiplier=0.0, max_grad_norm=1e6, expected_batch_size=b), sampling_seed=4)
    probe = GradProbe()
    args = training_args(tmp_path, gradient_accumulation_steps=ga, max_steps=steps, learning_rate=lr)
    Trainer(model=model, args=args, train_dataset=data, data_collator=pad_collate, callbacks=[cb, probe]).train()

    sampler = PoissonBatchSampler(
        num_examples=n,
        sample_rate=b / n,
        num_updates=updates_per_epoch(num_examples=n, expected_batch_size=b),
        micro_batches_per_update=ga,
        seed=4,
    )
    chunks = iter(sampler)
    params = [p for p in reference.parameters() if p.requires_grad]
    for step in range(steps):
        idx = [i for chunk in itertools.islice(chunks, ga) for i in chunk]
        grads = [torch.zeros_like(p) for p in params]
        for g_ex in _per_example_grads(reference, [data[i] for i in idx]):
            for acc, g in zip(grads, g_ex, strict=True):
                acc += g / b
        # The logged training loss is the update's loss per (public) expected example, as a user reads it.
        with torch.no_grad():
            expected_loss = sum(float(reference(**pad_collate([data[i]])).loss) for i in idx) / b
        assert probe.logs[step]["loss"] == pytest.approx(expected_loss, rel=1e-4, abs=1e-6)
        for name, g in zip([n_ for n_, p in reference.named_parameters() if p.requires_grad], grads, strict=True):
            torch.testing.assert_close(probe.updates[step][name], g, rtol=0, atol=1e-5)
        with torch.no_grad():
            for p, g in zip(params, grads, strict=True):
                p -= lr * g
    for (name, p), q in zip(trainable(model).items(), params, strict=True):
        torch.testing.assert_close(p, q.detach(), rtol=0, atol=1e-5, msg=name)


class _EarlyProbe(TrainerCallback):
    """Runs BEFORE TenSafe's on_pre_optimizer_step: sees what the host's grad-norm code saw."""

    def __init__(self) -> None:
        self.grads_seen: list[bool] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
        self.grads_seen.append(any(p.grad is not None for p in model.parameters() if p.requires_grad))


def test_no_log_holds_the_hosts_raw_grad_norm(tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys) -> None:
    caplog.set_level(logging.DEBUG)
    early, probe = _EarlyProbe(), GradProbe()
    cb = TenSafeDPCallback(_dp(noise_multiplier=0.5), sampling_seed=1)
    args = training_args(tmp_path, max_steps=3, max_grad_norm=1.0)
    trainer = Trainer(
        model=gpt2_lora(),
        args=args,
        train_dataset=lm_dataset(16),
        data_collator=pad_collate,
        callbacks=[early, cb, probe],
    )
    trainer.train()
    assert trainer.args.max_grad_norm == 0
    assert early.grads_seen == [False, False, False]  # nothing non-private was left in p.grad for the host
    train_logs = [d for d in trainer.state.log_history if "loss" in d]
    assert len(train_logs) == 3
    for step, d in enumerate(train_logs):
        assert d["grad_norm"] == pytest.approx(probe.norms[step], rel=1e-6)
        assert d["train/gradient_norm"] == d["grad_norm"]
        assert d["privacy/epsilon_spent"] > 0
    for logs in [*probe.logs, *trainer.state.log_history]:
        for key, value in logs.items():
            if "grad" in key:
                assert key in ("grad_norm", "train/gradient_norm")
                assert any(value == pytest.approx(v, rel=1e-6) for v in probe.norms)
    printed = capsys.readouterr().out + caplog.text
    for token in printed.split("'grad_norm': ")[1:]:
        value = float(token.split(",")[0].strip("'\""))
        assert any(value == pytest.approx(v, rel=1e-3) for v in probe.norms)


def test_empty_poisson_batch_still_makes_a_noisy_counted_step(tmp_path: Path) -> None:
    n, b = 40, 1
    seed = next(s for s in range(200) if not _first_update_indices(n, b, 1, s))
    model = gpt2_lora()
    before = trainable(model)
    cb = TenSafeDPCallback(_dp(expected_batch_size=b), sampling_seed=seed)
    Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=1),
        train_dataset=lm_dataset(n),
        data_collator=pad_collate,
        callbacks=[cb],
    ).train()
    assert cb.ledger.steps == 1
    after = trainable(model)
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_stock_trainer_with_callback_only_trains_and_writes_a_loadable_adapter(tmp_path: Path) -> None:
    from peft import PeftModel

    base_dir = tmp_path / "base"
    gpt2_base().save_pretrained(base_dir)
    model = gpt2_lora()
    before_frozen, before_lora = frozen(model), trainable(model)
    cb = TenSafeDPCallback(DPConfig(target_epsilon=8.0, max_grad_norm=1.0, accountant="rdp"))
    out = tmp_path / "run"
    trainer = Trainer(
        model=model,
        args=training_args(out, max_steps=2),
        train_dataset=lm_dataset(16),
        data_collator=pad_collate,
        callbacks=[cb],
    )
    trainer.train()
    assert cb.ledger.steps == 2
    assert 0 < cb.ledger.epsilon_spent <= 8.0
    assert cb.summary()["sampler"] == "poisson"
    assert cb.ledger.noise_seed_fixed is False  # OS-seeded noise and batches: this run can be certified
    assert cb.ledger.sampling_seed_fixed is False
    after_frozen, after_lora = frozen(model), trainable(model)
    assert all(torch.equal(before_frozen[k], after_frozen[k]) for k in before_frozen)
    assert all(not torch.equal(before_lora[k], after_lora[k]) for k in before_lora)

    state = json.loads((out / "privacy_state.json").read_text())
    assert state["steps"] == 2
    loaded = PeftModel.from_pretrained(type(gpt2_base()).from_pretrained(base_dir), out / "adapter")
    for name, p in loaded.named_parameters():
        if "lora_" in name:
            torch.testing.assert_close(p, after_lora[name.replace(".default.", ".default.")], rtol=0, atol=0)
    generated = loaded.generate(input_ids=torch.tensor([[5, 6, 7]]), max_new_tokens=3, do_sample=False)
    assert generated.shape == (1, 6)


def test_tensafe_trainer_is_the_one_line_alternative(tmp_path: Path) -> None:
    trainer = TenSafeTrainer(
        model=gpt2_lora(),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=lm_dataset(8),
        data_collator=pad_collate,
        dp_config=_dp(),
    )
    trainer.train()
    assert trainer.dp_callback.ledger.steps == 1
    assert (tmp_path / "privacy_state.json").is_file()
    # _dp() fixes the noise seed (for reproducible tests): the ledger says so, and no certificate is issued for it.
    assert trainer.dp_callback.ledger.noise_seed_fixed is True
    state = json.loads((tmp_path / "privacy_state.json").read_text())
    assert state["settings"]["noise_seed_fixed"] is True


def test_callback_outside_a_trainer_refuses_with_a_clear_error(tmp_path: Path) -> None:
    from transformers import TrainerControl, TrainerState

    cb = TenSafeDPCallback(_dp())
    with pytest.raises(ConfigError, match="use TenSafeTrainer"):
        cb.on_init_end(training_args(tmp_path), TrainerState(), TrainerControl())


def test_budget_refused_before_training_or_stopped_cleanly(tmp_path: Path) -> None:
    n, b = 16, 2
    eps = [
        compute_epsilon(sample_rate=b / n, noise_multiplier=1.0, steps=k, delta=1 / (10 * n), accountant="rdp")
        for k in (1, 2, 3)
    ]
    target = (eps[1] + eps[2]) / 2
    with pytest.raises(BudgetExhaustedError, match="stop_at_budget=True"):
        Trainer(
            model=gpt2_lora(),
            args=training_args(tmp_path, max_steps=6),
            train_dataset=lm_dataset(n),
            data_collator=pad_collate,
            callbacks=[TenSafeDPCallback(_dp(target_epsilon=target))],
        ).train()

    cb = TenSafeDPCallback(_dp(target_epsilon=target), stop_at_budget=True)
    trainer = Trainer(
        model=gpt2_lora(),
        args=training_args(tmp_path, max_steps=6),
        train_dataset=lm_dataset(n),
        data_collator=pad_collate,
        callbacks=[cb],
    )
    trainer.train()
    assert trainer.state.global_step == 2
    assert cb.ledger.steps == 2
    assert cb.ledger.epsilon_spent <= target
    assert "stopped after 2 of 6" in cb.stop_reason

    # Not even one update fits: the update is not applied at all.
    model = gpt2_lora()
    before = trainable(model)
    cb = TenSafeDPCallback(_dp(target_epsilon=eps[0] / 2), stop_at_budget=True)
    Trainer(
        model=model,
        args=training_args(tmp_path, max_steps=3),
        train_dataset=lm_dataset(n),
        data_collator=pad_collate,
        callbacks=[cb],
    ).train()
    assert cb.ledger.steps == 0
    assert all(torch.equal(before[k], v) for k, v in trainable(model).items())


def test_resume_continues_epsilon_and_missing_ledger_fails_closed(tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = training_args(out, max_steps=4, save_strategy="steps", save_steps=2)
    full = TenSafeDPCallback(_dp(target_epsilon=20.0, noise_multiplier=None))
    Trainer(
        model=gpt2_lora(), args=args, train_dataset=lm_dataset(16), data_collator=pad_collate, callbacks=[full]
    ).train()
    assert (out / "checkpoint-2" / "tensafe_ledger.json").is_file()
    eps_full = full.ledger.epsilon_spent

    resumed = TenSafeDPCallback(_dp(target_epsilon=20.0, noise_multiplier=None))
    Trainer(
        model=gpt2_lora(), args=args, train_dataset=lm_dataset(16), data_collator=pad_collate, callbacks=[resumed]
    ).train(resume_from_checkpoint=str(out / "checkpoint-2"))
    assert resumed.ledger.steps == 4
    assert resumed.ledger.epsilon_spent == pytest.approx(eps_full, rel=1e-9)

    bare = tmp_path / "bare-checkpoint"
    shutil.copytree(out / "checkpoint-2", bare)
    (bare / "tensafe_ledger.json").unlink()
    with pytest.raises(LedgerError, match="epsilon must never restart at 0"):
        Trainer(
            model=gpt2_lora(),
            args=args,
            train_dataset=lm_dataset(16),
            data_collator=pad_collate,
            callbacks=[TenSafeDPCallback(_dp(target_epsilon=20.0, noise_multiplier=None))],
        ).train(resume_from_checkpoint=str(bare))
    with pytest.raises(LedgerError, match="does not match"):
        Trainer(
            model=gpt2_lora(),
            args=args,
            train_dataset=lm_dataset(16),
            data_collator=pad_collate,
            callbacks=[TenSafeDPCallback(_dp(target_epsilon=20.0, noise_multiplier=None, max_grad_norm=0.5))],
        ).train(resume_from_checkpoint=str(out / "checkpoint-2"))


def test_raw_gradient_logging_to_wandb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_WATCH", "gradients")
    with pytest.raises(ConfigError, match="raw \\(non-private\\) gradients"):
        Trainer(
            model=gpt2_lora(),
            args=training_args(tmp_path),
            train_dataset=lm_dataset(8),
            data_collator=pad_collate,
            callbacks=[TenSafeDPCallback(_dp())],
        )


def test_iterable_dataset_is_refused_and_an_unverified_sampler_is_labelled(tmp_path: Path) -> None:
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(lm_dataset(8))

    with pytest.raises(PrivacyError, match="IterableDataset"):
        Trainer(
            model=gpt2_lora(),
            args=training_args(tmp_path),
            train_dataset=Stream(),
            data_collator=pad_collate,
            callbacks=[TenSafeDPCallback(_dp())],
        ).train()

    cb = TenSafeDPCallback(_dp(poisson_sampling=False, allow_unverified_sampler=True))
    trainer = Trainer(
        model=gpt2_lora(),
        args=training_args(tmp_path, max_steps=1),
        train_dataset=lm_dataset(8),
        data_collator=pad_collate,
        callbacks=[cb],
    )
    with pytest.warns(PrivacyWarning, match="NOT valid"):
        trainer.train()
    assert cb.summary()["sampler_verified"] is False
    assert json.loads((tmp_path / "privacy_state.json").read_text())["settings"]["sampler"].startswith("unverified")


# The launch recipes of the README that start two CPU processes (`accelerate launch --cpu` starts only one).
LAUNCHERS = {
    "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "{port}"],
    "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--main_process_port",
                   "{port}"],
}  # fmt: skip


@pytest.mark.multiprocess
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_two_ranks_apply_the_same_noised_update_and_q_counts_all_ranks(tmp_path: Path, launcher: str) -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = Path(__file__).parent / "_hf_ddp_script.py"
    launch = [a.format(port=port) for a in LAUNCHERS[launcher]]
    env = dict(os.environ, WANDB_DIR=str(tmp_path), WANDB_MODE="offline")
    proc = subprocess.run(
        [sys.executable, *launch, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**env, "PYTHONPATH": str(Path(__file__).parents[2])},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]
    b = 2 * 2 * 2  # per-device x accumulation x world
    assert ranks[0]["expected_batch_size"] == b
    assert ranks[0]["sample_rate"] == pytest.approx(b / 32)
    # The budget stop is one decision for the job: both ranks stop after the same update, and nothing hangs.
    assert ranks[0]["steps"] == ranks[1]["steps"] == 8
    assert ranks[0]["global_step"] == ranks[1]["global_step"]
    # Noise once, all-reduced sums: every rank applies the same update.
    assert ranks[0]["norms"] == ranks[1]["norms"]
    assert ranks[0]["params"] == ranks[1]["params"]
    # Sampling: each rank draws from its own shard with its own stream (set_seed gave both the same global seed),
    # and q counts the examples of all ranks: over 8 updates the two ranks together hold about 8 * B examples
    # (Binomial(8 * 32, 1/4): mean 64, sd 6.9), not twice that (each rank sampling the whole set, or re-sharded).
    preflight = [0, 1, 2]  # the numerical preflight checks hooked gradients on the first rows before step one
    assert ranks[0]["rows"][:3] == ranks[1]["rows"][:3] == preflight
    rows0, rows1 = ranks[0]["rows"][3:], ranks[1]["rows"][3:]
    assert all(r % 2 == 0 for r in rows0)
    assert all(r % 2 == 1 for r in rows1)
    assert [r // 2 for r in rows0] != [r // 2 for r in rows1]  # not the same Poisson masks on both shards
    assert 64 - 28 <= len(rows0) + len(rows1) <= 64 + 28
    # The cross-rank vote behind the stop: true on one rank is true on all.
    assert [r["vote_one_rank_true"] for r in ranks] == [True, True]
    assert [r["vote_all_false"] for r in ranks] == [False, False]
    # One job: one ledger written, one MLflow run, one W&B run, all from rank zero.
    assert (tmp_path / "privacy_state.json").is_file()
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "ddp"]
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.data.metrics["privacy/epsilon_spent"] > 0
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1
