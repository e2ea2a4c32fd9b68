"""The TenSafe Lightning strategies against the DP-SGD definition, on real Lightning training runs."""

from __future__ import annotations

import math

import lightning.pytorch as L
import pytest
import torch
from lightning.pytorch.strategies import StrategyRegistry
from torch.utils.data import DataLoader, IterableDataset

from shared_core.accounting import compute_epsilon
from shared_core.config import DPConfig
from shared_core.errors import BudgetExhaustedError, ConfigError, PrivacyError, PrivacyWarning
from tensafe_lightning import DEFAULT_DP_CONFIG, TenSafeDDPStrategy, TenSafeDPStrategy
from tests.lightning._modules import (
    QUIET,
    DictOutputModule,
    MeanOnlyModule,
    PerExampleModule,
    RecordingLogger,
    StepRecorder,
    loader,
    make_net,
    naive_update,
    regression_data,
)


def _fit(module: L.LightningModule, strategy: object, data: DataLoader, **kwargs: object) -> L.Trainer:
    settings = {**QUIET, **kwargs}
    trainer = L.Trainer(strategy=strategy, **settings)  # type: ignore[arg-type]
    trainer.fit(module, data)
    return trainer


@pytest.mark.parametrize("module_cls", [PerExampleModule, DictOutputModule], ids=["per_example_loss", "dict_output"])
def test_update_equals_naive_per_example_reference_with_fixed_noise_seed(module_cls: type) -> None:
    sigma, clip, lr, bs, seed = 0.8, 0.7, 0.1, 6, 11
    data = regression_data(24)
    cfg = DPConfig(noise_multiplier=sigma, max_grad_norm=clip, noise_seed=seed, preflight=True)
    rec = StepRecorder()
    module = module_cls(lr=lr)
    _fit(module, TenSafeDPStrategy(cfg, sampling_seed=3), loader(data, bs), max_steps=4, callbacks=[rec])

    assert len(rec.updates) == 4
    gen = torch.Generator().manual_seed(seed)
    n_params = sum(p.numel() for p in module.parameters())
    for step, (idx, before, got) in enumerate(zip(rec.batches, rec.before, rec.updates, strict=True)):
        noise = torch.randn(n_params, generator=gen) * sigma * clip
        rows = [(data.tensors[0][i], data.tensors[1][i]) for i in idx]
        want = naive_update(make_net, before, rows, clip=clip, expected_batch=bs, noise=noise)
        for g, w in zip(got, want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5, msg=f"step {step}")
        if step + 1 < len(rec.before):  # SGD applied exactly that update
            for b, a, w in zip(before, rec.before[step + 1], want, strict=True):
                torch.testing.assert_close(a, b - lr * w, rtol=0, atol=1e-5)
    assert len({len(b) for b in rec.batches}) > 1  # Poisson batches: the realised size varies, B stays 6
    # Raw batch gradients never reach p.grad: hooks around Lightning's backward see nothing.
    assert rec.after_backward_grads
    assert all(g is None for g in rec.after_backward_grads)


def test_sigma_zero_and_q_one_match_non_private_training() -> None:
    data = regression_data(16)
    dp_module, plain_module = PerExampleModule(lr=0.05), PerExampleModule(lr=0.05)
    cfg = DPConfig(noise_multiplier=0.0, max_grad_norm=1e6, preflight=False)
    # batch_size = N makes q = 1: every example is in every logical batch, as in full-batch training.
    _fit(dp_module, TenSafeDPStrategy(cfg), DataLoader(data, batch_size=16), max_steps=3)
    _fit(plain_module, "auto", DataLoader(data, batch_size=16), max_steps=3)
    for a, b in zip(dp_module.parameters(), plain_module.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    assert not torch.allclose(dp_module.net[0].weight, make_net()[0].weight)  # it did train


def test_noise_std_is_sigma_c_over_b_once_per_update_under_accumulation() -> None:
    sigma, clip, bs, accumulation = 1.3, 0.5, 4, 2
    data = regression_data(40, d=50)
    module = PerExampleModule(d=50, hidden=40, zero_grad=True)  # gradients are exactly zero: the update is noise / B
    rec = StepRecorder()
    cfg = DPConfig(noise_multiplier=sigma, max_grad_norm=clip, noise_seed=5, preflight=False)
    _fit(
        module,
        TenSafeDPStrategy(cfg),
        loader(data, bs),
        max_steps=8,
        accumulate_grad_batches=accumulation,
        callbacks=[rec],
    )
    assert len(rec.updates) == 8  # one update (one noise draw) per logical batch of 2 micro-batches
    x = torch.cat([g.reshape(-1) for update in rec.updates for g in update]).double()
    n = x.numel()
    expected = sigma * clip / (bs * accumulation)  # B = per-device batch x accumulation x world size
    half = 2.576 / math.sqrt(2 * n)  # 99 % interval of the sample std of n iid normals
    assert abs(float(x.std()) / expected - 1) < half
    assert abs(float(x.mean())) < 2.576 * expected / math.sqrt(n)


def test_training_step_with_only_a_mean_loss_is_refused_with_the_fix() -> None:
    cfg = DPConfig(noise_multiplier=1.0, preflight=False)
    with pytest.raises(ConfigError, match="per_example_loss"):
        _fit(MeanOnlyModule(), TenSafeDPStrategy(cfg), loader(regression_data(), 6), max_steps=1)


def test_per_example_loss_of_the_wrong_shape_is_refused() -> None:
    class ScalarLoss(PerExampleModule):
        def per_example_loss(self, batch):  # type: ignore[no-untyped-def]
            return super().per_example_loss(batch).mean()

    with pytest.raises(ConfigError, match="1-D with one loss per example"):
        _fit(ScalarLoss(), TenSafeDPStrategy(DPConfig(noise_multiplier=1.0)), loader(regression_data(), 6), max_steps=1)


def test_preflight_catches_a_loss_that_mixes_examples() -> None:
    class Mixing(PerExampleModule):
        def per_example_loss(self, batch):  # type: ignore[no-untyped-def]
            losses = super().per_example_loss(batch)
            return losses / losses.detach().mean()  # a batch-wide normaliser: each gradient depends on the others

    with pytest.raises(PrivacyError, match="per-example gradient check failed"):
        _fit(Mixing(), TenSafeDPStrategy(DPConfig(noise_multiplier=1.0)), loader(regression_data(), 6), max_steps=1)


def test_only_noised_quantities_and_privacy_metrics_reach_the_logger() -> None:
    data = regression_data(24)
    rec, log = StepRecorder(), RecordingLogger()
    cfg = DPConfig(noise_multiplier=1.0, max_grad_norm=0.5, accountant="rdp", preflight=False)
    strategy = TenSafeDPStrategy(cfg)
    _fit(PerExampleModule(), strategy, loader(data, 6), max_steps=4, logger=log, log_every_n_steps=2, callbacks=[rec])
    keys = log.keys()
    assert {"privacy/epsilon_spent", "privacy/delta", "privacy/noise_multiplier", "train/gradient_norm"} <= keys
    allowed = {"user/train_loss", "epoch", "train/gradient_norm"}
    assert all(k.startswith("privacy/") or k in allowed for k in keys), keys
    # train/gradient_norm is the norm of the noised update the optimizer applied, step by step.
    logged = {step: m["train/gradient_norm"] for step, m in log.records if "train/gradient_norm" in m}
    applied = [float(torch.sqrt(sum((g.double() ** 2).sum() for g in u))) for u in rec.updates]
    for value in logged.values():
        assert any(math.isclose(value, a, rel_tol=1e-5) for a in applied)
    ledger = strategy.ledger
    assert ledger is not None
    assert ledger.steps == 4
    assert log.last("privacy/epsilon_spent") == pytest.approx(ledger.epsilon_spent, rel=1e-6)
    assert ledger.epsilon_spent == pytest.approx(
        compute_epsilon(sample_rate=0.25, noise_multiplier=1.0, steps=4, delta=1 / 240, accountant="rdp"), rel=1e-9
    )


def test_budget_stop_ends_training_cleanly_before_the_target_is_passed() -> None:
    cfg = DPConfig(noise_multiplier=1.0, target_epsilon=2.0, accountant="rdp", preflight=False)
    strategy = TenSafeDPStrategy(cfg, stop_at_budget=True)
    trainer = _fit(PerExampleModule(), strategy, loader(regression_data(24), 6), max_steps=200)
    ledger = strategy.ledger
    assert ledger is not None
    assert 0 < ledger.steps < 200
    assert ledger.epsilon_spent <= 2.0
    assert trainer.global_step == ledger.steps
    assert strategy.stop_reason is not None
    assert "target 2.0" in strategy.stop_reason
    over = compute_epsilon(
        sample_rate=0.25, noise_multiplier=1.0, steps=ledger.steps + 1, delta=1 / 240, accountant="rdp"
    )
    assert over > 2.0


def test_a_plan_that_overspends_is_refused_before_step_one() -> None:
    cfg = DPConfig(noise_multiplier=0.5, target_epsilon=1.0, accountant="rdp", preflight=False)
    module = PerExampleModule()
    before = [p.detach().clone() for p in module.parameters()]
    with pytest.raises(BudgetExhaustedError, match="stop_at_budget"):
        _fit(module, TenSafeDPStrategy(cfg), loader(regression_data(24), 6), max_steps=100)
    assert all(torch.equal(a, b) for a, b in zip(before, module.parameters(), strict=True))


def test_target_epsilon_calibrates_noise_to_the_horizon() -> None:
    cfg = DPConfig(target_epsilon=3.0, accountant="rdp", preflight=False)
    strategy = TenSafeDPStrategy(cfg)
    _fit(PerExampleModule(), strategy, loader(regression_data(24), 6), max_epochs=2)
    ledger = strategy.ledger
    assert ledger is not None
    assert ledger.steps == 8
    assert ledger.planned_steps == 8
    assert 2.9 < ledger.epsilon_spent <= 3.0


def test_registered_name_uses_the_module_dp_config_and_rejects_several_devices() -> None:
    assert {"tensafe_dp", "tensafe_ddp"} <= set(StrategyRegistry.available_strategies())
    module = PerExampleModule()
    module.dp_config = DPConfig(noise_multiplier=2.0, accountant="rdp", preflight=False)
    trainer = _fit(module, "tensafe_dp", loader(regression_data(24), 6), max_steps=2)
    assert isinstance(trainer.strategy, TenSafeDPStrategy)
    assert trainer.strategy.dp_config is module.dp_config
    assert trainer.strategy.noise_multiplier == 2.0
    assert L.Trainer(strategy="tensafe_dp", **QUIET).strategy.dp_config == DEFAULT_DP_CONFIG
    with pytest.raises(ConfigError, match="tensafe_ddp"):
        L.Trainer(strategy="tensafe_dp", devices=2, **QUIET)
    with pytest.raises(ConfigError, match="popen"):
        TenSafeDDPStrategy(start_method="spawn")
    with pytest.raises(ConfigError, match="DistributedDataParallel"):
        TenSafeDDPStrategy(find_unused_parameters=True)


def test_unsampleable_data_is_refused_or_runs_only_with_the_opt_in_and_a_warning() -> None:
    class Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self):  # type: ignore[no-untyped-def]
            data = regression_data(24)
            return iter(data[i] for i in range(24))

        def __len__(self) -> int:
            return 24

    with pytest.raises(PrivacyError, match="IterableDataset"):
        _fit(
            PerExampleModule(), TenSafeDPStrategy(DPConfig(noise_multiplier=1.0)), DataLoader(Stream(), 6), max_steps=1
        )
    cfg = DPConfig(noise_multiplier=1.0, allow_unverified_sampler=True, preflight=False)
    strategy = TenSafeDPStrategy(cfg)
    with pytest.warns(PrivacyWarning, match="NOT valid"):
        _fit(PerExampleModule(), strategy, DataLoader(Stream(), 6), max_steps=2)
    assert strategy.plan is not None
    assert not strategy.plan.sampler_verified
    assert strategy.ledger is not None
    assert strategy.ledger.sampler.startswith("unverified:")


def test_manual_optimization_is_refused() -> None:
    class Manual(PerExampleModule):
        def __init__(self) -> None:
            super().__init__()
            self.automatic_optimization = False

    with pytest.raises(ConfigError, match="manual optimization"):
        _fit(Manual(), TenSafeDPStrategy(DPConfig(noise_multiplier=1.0)), loader(regression_data(), 6), max_steps=1)


def test_limit_train_batches_that_splits_a_logical_batch_is_refused() -> None:
    cfg = DPConfig(noise_multiplier=1.0, preflight=False)
    with pytest.raises(ConfigError, match="multiple of accumulate_grad_batches"):
        _fit(
            PerExampleModule(),
            TenSafeDPStrategy(cfg),
            loader(regression_data(24), 3),
            max_steps=2,
            accumulate_grad_batches=2,
            limit_train_batches=3,
        )
