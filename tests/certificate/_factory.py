"""Builders shared by the certificate tests: a recorded ledger and a certificate for the test adapter."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shared_core.accounting import PrivacyLedger
from shared_core.certificate import build_certificate

Q, SIGMA, STEPS, N = 0.01, 1.5, 400, 5000


def make_ledger(*, accountant: str = "prv", steps: int = STEPS, sampler: str = "poisson", **kw: Any) -> PrivacyLedger:
    settings: dict[str, Any] = {
        "target_epsilon": 3.0,
        "delta": 1.0 / (10 * N),
        "accountant": accountant,
        "num_examples": N,
        "sample_rate": Q,
        "noise_multiplier": SIGMA,
        "max_grad_norm": 1.0,
        "expected_batch_size": int(Q * N),
        "sampler": sampler,
        "planned_steps": steps,
    }
    settings.update(kw)
    ledger = PrivacyLedger(**settings)
    for _ in range(steps):
        ledger.record_step(sample_rate=settings["sample_rate"], noise_multiplier=settings["noise_multiplier"])
    return ledger


def certificate_for(ledger: PrivacyLedger, adapter_dir: Path, **kw: Any) -> dict[str, Any]:
    return build_certificate(
        ledger=ledger,
        model_name="tiny-lora-dp",
        base_model="hf-internal-testing/tiny-random-LlamaForCausalLM",
        weights_path=adapter_dir / "adapter_model.safetensors",
        parameters_under_dp=[
            "base_model.model.layers.0.q_proj.lora_A.weight",
            "base_model.model.layers.0.q_proj.lora_B.weight",
        ],
        training_parameters={"epochs": 4, "learning_rate": 5e-4},
        **kw,
    )
