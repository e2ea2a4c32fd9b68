"""Preflight refusals of shared_core.dp.preflight, each on a real module that triggers it."""

from __future__ import annotations

import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel

from shared_core.dp import DPGradientEngine, causal_lm_per_example_loss
from shared_core.dp import preflight as pf
from shared_core.errors import PrivacyError


def _gpt2(lora: bool = True) -> nn.Module:
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
    model = GPT2LMHeadModel(cfg)
    if lora:
        model = get_peft_model(
            model, LoraConfig(r=4, target_modules=["c_attn"], fan_in_fan_out=True, task_type="CAUSAL_LM")
        )
    return model.train()


def test_batch_norm_in_training_mode_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    with pytest.raises(PrivacyError, match=r"'1'.*BatchNorm1d.*normalises over the batch"):
        pf.check_supported_layers(model)
    model[1].eval()
    model[1].requires_grad_(False)
    pf.check_supported_layers(model)


def test_module_already_wrapped_by_opacus_is_refused() -> None:
    model = nn.Sequential(nn.Linear(4, 2))
    DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=1.0, expected_batch_size=1)
    with pytest.raises(PrivacyError, match="already carries opacus per-sample hooks"):
        pf.check_supported_layers(model)


def test_tied_trainable_parameters_are_refused() -> None:
    model = _gpt2(lora=False)
    model.requires_grad_(False)
    model.transformer.wte.weight.requires_grad_(True)  # tied with lm_head.weight
    with pytest.raises(PrivacyError, match=r"lm_head.weight.*transformer.wte.weight|tied across"):
        pf.check_tied_parameters(model)
    pf.check_tied_parameters(_gpt2(lora=True))


def test_non_reentrant_activation_checkpointing_is_refused() -> None:
    model = _gpt2()
    model.base_model.model.activation_checkpointing_enable()  # transformers 5 default: use_reentrant=False
    with pytest.raises(PrivacyError, match=r"use_reentrant=False.*use_reentrant': True"):
        pf.check_activation_checkpointing(model)
    model = _gpt2()
    model.base_model.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": True})
    pf.check_activation_checkpointing(model)


def test_ghost_clipping_under_accumulation_is_refused() -> None:
    with pytest.raises(PrivacyError, match="keeps only the last micro-batch"):
        pf.check_clipping_mode("ghost", accumulation_steps=4)
    with pytest.raises(PrivacyError, match="not supported"):
        pf.check_clipping_mode("ghost", accumulation_steps=1)
    pf.check_clipping_mode("hooks", accumulation_steps=4)


def test_trainable_parameter_missing_from_optimizer_is_refused() -> None:
    model = _gpt2()
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(PrivacyError, match=r"1 trainable parameter\(s\) are not in the optimizer"):
        pf.check_optimizer_covers_trainable(named, [p for _, p in named[1:]])
    copies = [p.detach().clone().requires_grad_(True) for _, p in named]
    with pytest.raises(PrivacyError, match="not in the optimizer"):
        pf.check_optimizer_covers_trainable(named, copies)
    pf.check_optimizer_covers_trainable(named, [p for _, p in named])


def test_numerical_check_passes_for_own_token_loss_and_catches_batch_wide_normalisation() -> None:
    model = _gpt2()
    engine = DPGradientEngine(model, max_grad_norm=1.0, noise_multiplier=0.0, expected_batch_size=3)
    ids = torch.randint(3, 100, (3, 7), generator=torch.Generator().manual_seed(0))
    labels = ids.clone()
    labels[0, 4:] = -100
    batch = {"input_ids": ids, "labels": labels}

    def own(b):
        return causal_lm_per_example_loss(model(input_ids=b["input_ids"]).logits, b["labels"])

    assert pf.check_per_example_gradients(engine, per_example_losses=own, batch=batch, batch_size=3) < 1e-4

    def batch_wide(b):  # the host's num_items_in_batch normalisation (DP_NOTES pitfall 5)
        own_counts = (b["labels"][:, 1:] != -100).sum(1)
        return own(b) * own_counts / (b["labels"][:, 1:] != -100).sum()

    with pytest.raises(PrivacyError, match="per-example gradient check failed"):
        pf.check_per_example_gradients(engine, per_example_losses=batch_wide, batch=batch, batch_size=3)
    assert all(m.training for m in model.modules())  # flags restored
