"""The DP-SGD mechanism of shared_core.dp on real (tiny) models: clipping, noise, sums, sampler."""

from __future__ import annotations

import math

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from shared_core.dp import (
    DPGradientEngine,
    PoissonBatchSampler,
    causal_lm_per_example_loss,
    collate_or_empty,
    is_empty_batch,
)


def _gpt2_lora(dtype: torch.dtype = torch.float32) -> nn.Module:
    torch.manual_seed(0)
    cfg = GPT2Config(
        n_layer=2,
        n_embd=32,
        n_head=2,
        vocab_size=100,
        n_positions=32,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=1,
        eos_token_id=2,
    )
    model = get_peft_model(
        GPT2LMHeadModel(cfg),
        LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, lora_dropout=0.0, task_type="CAUSAL_LM"),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)
    return model.to(dtype).train()


def _batch(n: int = 3, t: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (n, t), generator=g)
    return {"input_ids": ids, "labels": ids.clone()}


def _losses(model: nn.Module):
    def fn(b):
        return causal_lm_per_example_loss(model(input_ids=b["input_ids"]).logits, b["labels"])

    return fn


def _linear() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.Tanh(), nn.Linear(30, 10))


def test_noise_std_over_many_steps_lies_in_99_percent_interval() -> None:
    sigma, c, b = 1.7, 0.5, 8
    engine = DPGradientEngine(_linear(), max_grad_norm=c, noise_multiplier=sigma, expected_batch_size=b, noise_seed=1)
    draws = []
    for _ in range(40):
        engine.release_update()  # no example: the update is pure noise / B
        draws.append(torch.cat([p.grad.reshape(-1) for p in engine.params]))
    x = torch.cat(draws).double()
    n = x.numel()
    expected = sigma * c / b
    # 99 % interval of the sample std of n iid normals: std * (1 +- 2.576 / sqrt(2n)).
    half = 2.576 / math.sqrt(2 * n)
    assert abs(float(x.std()) / expected - 1) < half
    assert abs(float(x.mean())) < 2.576 * expected / math.sqrt(n)


def test_one_adversarial_example_moves_the_pre_noise_sum_by_at_most_c() -> None:
    model = _gpt2_lora()
    c = 0.3
    engine = DPGradientEngine(model, max_grad_norm=c, noise_multiplier=0.0, expected_batch_size=4)
    base = _batch(3, seed=1)
    with engine.capture():
        engine.accumulate(_losses(model)(base))
    without = engine.pending_sums()
    engine.discard_update()
    adv = _batch(1, seed=2)
    both = {k: torch.cat([base[k], adv[k]]) for k in base}

    def scaled(b):  # the last example's loss is blown up by 1e6: its raw gradient is huge
        losses = _losses(model)(b)
        return losses * torch.tensor([1.0, 1.0, 1.0, 1e6])

    with engine.capture():
        engine.accumulate(scaled(both))
    with_adv = engine.pending_sums()
    diff = math.sqrt(sum(float(((a - w) ** 2).sum()) for a, w in zip(with_adv, without, strict=True)))
    assert diff <= c * (1 + 1e-6)
    assert diff > 0.5 * c  # the adversary did use (almost) its whole allowance


def test_per_example_gradient_depends_only_on_its_own_example() -> None:
    model = _gpt2_lora()
    engine = DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=2)
    batch = _batch(2, seed=3)
    before = engine.per_example_gradients(_losses(model), batch, 2)
    changed = {k: v.clone() for k, v in batch.items()}
    changed["labels"][1, 2:] = -100  # only example 1's labels change
    after = engine.per_example_gradients(_losses(model), changed, 2)
    for g0, g1 in zip(before, after, strict=True):
        torch.testing.assert_close(g0[0], g1[0], rtol=0, atol=1e-7)
    assert any(not torch.allclose(g0[1], g1[1]) for g0, g1 in zip(before, after, strict=True))

    # The host's batch-wide token normalisation (DP_NOTES pitfall 5) would break exactly this property.
    def batch_normalised(b):
        per_tok_sum = causal_lm_per_example_loss(model(input_ids=b["input_ids"]).logits, b["labels"])
        own = (b["labels"][:, 1:] != -100).sum(1)
        return per_tok_sum * own / (b["labels"][:, 1:] != -100).sum()

    hf_before = engine.per_example_gradients(batch_normalised, batch, 2)
    hf_after = engine.per_example_gradients(batch_normalised, changed, 2)
    assert any(not torch.allclose(a[0], b[0]) for a, b in zip(hf_before, hf_after, strict=True))


def test_non_finite_example_is_dropped_and_counted() -> None:
    model = _gpt2_lora()
    engine = DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=3)
    batch = _batch(3, seed=4)
    with engine.capture():
        engine.accumulate(_losses(model)(batch) * torch.tensor([1.0, float("nan"), 1.0]))
    got = engine.pending_sums()
    assert engine.dropped_total == 1
    assert all(bool(torch.isfinite(s).all()) for s in got)
    engine.discard_update()
    keep = {k: v[[0, 2]] for k, v in batch.items()}
    with engine.capture():
        engine.accumulate(_losses(model)(keep))
    for a, b in zip(got, engine.pending_sums(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_sums_are_fp32_and_update_is_written_in_param_dtype_under_bf16() -> None:
    model = _gpt2_lora(torch.bfloat16)
    engine = DPGradientEngine(model, max_grad_norm=0.5, noise_multiplier=0.0, expected_batch_size=3)
    batch = _batch(3, seed=5)
    per_ex = engine.per_example_gradients(_losses(model), batch, 3)
    with engine.capture():
        engine.accumulate(_losses(model)(batch))
    sums = engine.pending_sums()
    assert all(s.dtype == torch.float32 for s in sums)
    norms = torch.sqrt(sum(g.float().reshape(3, -1).pow(2).sum(1) for g in per_ex))
    factors = (0.5 / (norms + 1e-6)).clamp(max=1.0)
    for s, g in zip(sums, per_ex, strict=True):
        ref = torch.einsum("i,i...->...", factors, g.float())
        torch.testing.assert_close(s, ref, rtol=1e-5, atol=1e-6)
    engine.release_update()
    assert all(p.grad.dtype == torch.bfloat16 for p in engine.params)


def test_noise_generator_is_seeded_from_the_os_by_default() -> None:
    def draw(seed: int | None) -> torch.Tensor:
        engine = DPGradientEngine(
            _linear(), max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=1, noise_seed=seed
        )
        engine.release_update()
        out = torch.cat([p.grad.reshape(-1) for p in engine.params])
        engine.close()
        return out

    assert not torch.equal(draw(None), draw(None))
    assert torch.equal(draw(7), draw(7))


def test_hooks_are_off_outside_capture_and_state_is_cleared() -> None:
    model = _gpt2_lora()
    engine = DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=2)
    _losses(model)(_batch(2)).sum().backward()  # e.g. an evaluation with grad enabled
    assert all(p.grad_sample is None for p in engine.params)
    with engine.capture():
        engine.accumulate(_losses(model)(_batch(2)))
    assert all(p.grad is None and p.grad_sample is None for p in engine.params)
    assert not any("activations" in vars(m) for m in model.modules())
    engine.close()
    assert not any(hasattr(p, "grad_sample") for p in model.parameters())


def test_batch_mean_loss_is_refused() -> None:
    model = _gpt2_lora()
    engine = DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=2)
    with engine.capture(), pytest.raises(Exception, match="1-D tensor"):
        engine.accumulate(_losses(model)(_batch(2)).mean())


def test_poisson_sampler_rate_shards_and_microbatches() -> None:
    n, q, ga = 200, 0.1, 3
    samplers = [
        PoissonBatchSampler(
            num_examples=n, sample_rate=q, num_updates=300, micro_batches_per_update=ga, rank=r, world_size=2, seed=11
        )
        for r in range(2)
    ]
    counts = torch.zeros(n)
    for s in samplers:
        chunks = list(s)
        assert len(chunks) == len(s) == 300 * ga
        for i in range(0, len(chunks), ga):
            sizes = [len(c) for c in chunks[i : i + ga]]
            assert max(sizes) - min(sizes) <= 1
        for c in chunks:
            for idx in c:
                assert idx % 2 == s.rank  # this rank's shard only
                counts[idx] += 1
    rate = counts / 300
    assert abs(float(rate.mean()) - q) < 0.01  # 60000 Bernoulli(0.1) draws
    # Same seed, different ranks: independent streams, not identical masks (DP_NOTES local check B).
    a = [
        len(x) for x in PoissonBatchSampler(num_examples=n, sample_rate=q, num_updates=20, rank=0, world_size=2, seed=3)
    ]
    b = [
        len(x) for x in PoissonBatchSampler(num_examples=n, sample_rate=q, num_updates=20, rank=1, world_size=2, seed=3)
    ]
    assert a != b


def test_empty_micro_batch_becomes_marker() -> None:
    collate = collate_or_empty(lambda rows: {"x": torch.tensor(rows)})
    assert is_empty_batch(collate([]))
    assert not is_empty_batch(collate([1, 2]))


def test_causal_lm_loss_is_own_token_mean_like_the_model_on_one_example() -> None:
    model = _gpt2_lora()
    batch = _batch(2, t=6, seed=8)
    batch["labels"][1, 3:] = -100
    per_ex = _losses(model)(batch)
    for i in range(2):
        single = model(input_ids=batch["input_ids"][i : i + 1], labels=batch["labels"][i : i + 1]).loss
        torch.testing.assert_close(per_ex[i], single, rtol=1e-5, atol=1e-6)
