"""load_model: verify first, then build the peft model from the verified bytes (one real tiny Llama + LoRA)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from shared_core.errors import VerificationError
from shared_core.tssp import load_model, pack
from shared_core.tssp.keys import SigningKeys, TrustedKeys

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")


def _base() -> object:
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return transformers.LlamaForCausalLM(config).eval()


def test_load_model_reproduces_the_trained_adapter_and_refuses_tampering(
    tmp_path: Path, keys: SigningKeys, trusted: TrustedKeys, key_dir: Path
) -> None:
    lora = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0)
    trained = peft.get_peft_model(_base(), lora)
    with torch.no_grad():
        for name, param in trained.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5)  # B starts at zero; make the adapter actually change outputs
    trained.save_pretrained(tmp_path / "adapter")
    assert not list((tmp_path / "adapter").glob("*.bin"))
    cek = os.urandom(32)
    pkg = pack(tmp_path / "adapter", tmp_path / "m.tssp", keys=keys, encryption_key=cek, archive=True)

    ids = torch.tensor([[1, 2, 3, 4, 5]])
    expected = trained.eval()(ids).logits
    loaded = load_model(pkg.with_name("m.tssp.tar"), base_model=_base(), public_key=key_dir, decryption_key=cek)
    assert torch.allclose(loaded(ids).logits, expected, atol=1e-6)
    assert not torch.allclose(_base()(ids).logits, expected, atol=1e-3)  # the adapter really is applied

    with pytest.raises(VerificationError, match="decryption key"):
        load_model(pkg, base_model=_base(), public_key=trusted)
    blob = bytearray((pkg / "adapter_model.safetensors.tsspenc").read_bytes())
    blob[100] ^= 1
    (pkg / "adapter_model.safetensors.tsspenc").write_bytes(bytes(blob))
    base = _base()
    before = {k: v.clone() for k, v in base.state_dict().items()}
    with pytest.raises(VerificationError, match="SHA-256"):
        load_model(pkg, base_model=base, public_key=trusted, decryption_key=cek)
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())  # nothing was injected
