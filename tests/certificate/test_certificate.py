"""Build, sign and verify the DP certificate: fields, canonical form, tampering and understated claims."""

from __future__ import annotations

import copy
import hashlib
import json
import math
from pathlib import Path
from typing import Any

import dp_accounting
import pytest
import rfc8785

from shared_core.accounting import PrivacyLedger, compute_epsilon
from shared_core.certificate import (
    CERTIFICATE_PAYLOAD_TYPE,
    build_certificate,
    canonical_payload,
    dp_event_from_description,
    load_certificate_json,
    save_certificate,
    sign_certificate,
    verify_certificate,
)
from shared_core.errors import ConfigError, PrivacyError, VerificationError
from shared_core.tssp.keys import SigningKeys, TrustedKeys
from tests.certificate._factory import SIGMA, STEPS, N, Q, certificate_for, make_ledger


def _resign(cert: dict[str, Any], keys: SigningKeys) -> dict[str, Any]:
    return sign_certificate(cert, keys)


def test_certificate_has_the_guide_fields_and_what_makes_it_checkable(
    signed: dict[str, Any], ledger: PrivacyLedger, adapter_dir: Path
) -> None:
    g = signed["privacy_guarantee"]
    assert g == {"epsilon": ledger.epsilon_spent, "delta": 1.0 / (10 * N), "mechanism": "DP-SGD", "accountant": "PRV"}
    assert g["epsilon"] == compute_epsilon(
        sample_rate=Q, noise_multiplier=SIGMA, steps=STEPS, delta=1.0 / (10 * N), accountant="prv"
    )
    p = signed["training_parameters"]
    assert {k: p[k] for k in ("noise_multiplier", "max_grad_norm", "batch_size", "epochs", "total_steps")} == {
        "noise_multiplier": SIGMA,
        "max_grad_norm": 1.0,
        "batch_size": 50,
        "epochs": 4,
        "total_steps": STEPS,
    }
    assert signed["data_summary"] == {"num_samples": N, "sample_rate": Q}
    assert signed["sampling"] == {
        "sampler": "poisson",
        "neighbouring_relation": "add-remove-one",
        "privacy_unit": "example",
        "guarantee_applies": True,
    }
    weights = (adapter_dir / "adapter_model.safetensors").read_bytes()
    assert signed["weights"] == {"file": "adapter_model.safetensors", "sha256": hashlib.sha256(weights).hexdigest()}
    accounting = signed["accounting"]
    assert accounting["ledger"]["segments"] == [{"sample_rate": Q, "noise_multiplier": SIGMA, "steps": STEPS}]
    assert accounting["epsilon_tolerance"] == 0.01
    assert accounting["rdp_cross_check"]["epsilon"] == ledger.epsilon_rdp >= g["epsilon"]
    assert signed["delta_policy"]["is_default"] is True
    assert any("hyperparameter" in item for item in signed["not_covered"])
    assert {"opacus", "dp-accounting", "python"} <= set(signed["software"])
    assert signed["signature"]["payload_type"] == CERTIFICATE_PAYLOAD_TYPE
    assert [s["alg"] for s in signed["signature"]["signatures"]] == ["ed25519", "ml-dsa-65"]


def test_dp_event_lets_a_third_party_re_account(signed: dict[str, Any]) -> None:
    event = dp_event_from_description(signed["accounting"]["dp_event"])
    pld = dp_accounting.pld.PLDAccountant()
    pld.compose(event)
    eps = pld.get_epsilon(signed["privacy_guarantee"]["delta"])
    assert eps <= signed["privacy_guarantee"]["epsilon"] <= eps + 0.02


def test_signed_certificate_verifies_as_dict_and_from_file(
    signed: dict[str, Any], trusted: TrustedKeys, tmp_path: Path, adapter_dir: Path
) -> None:
    check = verify_certificate(signed, trusted=trusted, max_epsilon=3.0)
    assert check.epsilon == signed["privacy_guarantee"]["epsilon"]
    assert check.rederived_pld <= check.epsilon <= check.rederived_pld + 0.02
    assert check.rederived_rdp >= check.rederived_pld
    assert check.total_steps == STEPS
    path = save_certificate(signed, tmp_path / "dp_certificate.json")
    again = verify_certificate(path, trusted=trusted, weights_path=adapter_dir / "adapter_model.safetensors")
    assert again.epsilon == check.epsilon


def test_floats_canonicalise_identically_after_a_json_round_trip(signed: dict[str, Any], tmp_path: Path) -> None:
    before = canonical_payload(signed)
    reloaded = load_certificate_json(save_certificate(signed, tmp_path / "c.json"))
    assert canonical_payload(reloaded) == before
    assert json.loads(before)["privacy_guarantee"]["epsilon"] == signed["privacy_guarantee"]["epsilon"]
    assert b"signature" not in before
    with pytest.raises(rfc8785.CanonicalizationError):
        rfc8785.dumps({"epsilon": math.nan})


def _set(path: str, value: Any) -> Any:
    def edit(cert: dict[str, Any]) -> None:
        *parents, leaf = path.split(".")
        node = cert
        for key in parents:
            node = node[key]
        node[leaf] = value

    return edit


@pytest.mark.parametrize(
    "edit",
    [
        _set("privacy_guarantee.epsilon", 0.5),
        _set("training_parameters.total_steps", 100),
        _set("accounting.ledger.segments", [{"sample_rate": Q, "noise_multiplier": SIGMA, "steps": 100}]),
        _set("weights.sha256", "0" * 64),
        _set("model_name", "someone-else"),
    ],
    ids=["epsilon", "total-steps", "ledger-steps", "weights", "model-name"],
)
def test_tampered_certificate_is_rejected(signed: dict[str, Any], trusted: TrustedKeys, edit: Any) -> None:
    edit(signed)
    with pytest.raises(VerificationError) as info:
        verify_certificate(signed, trusted=trusted)
    assert info.value.check == "signature"


def test_stripped_or_foreign_signatures_are_rejected(
    signed: dict[str, Any], trusted: TrustedKeys, other_keys: SigningKeys
) -> None:
    stripped = copy.deepcopy(signed)
    del stripped["signature"]
    with pytest.raises(VerificationError, match="not signed"):
        verify_certificate(stripped, trusted=trusted)
    one = copy.deepcopy(signed)
    one["signature"]["signatures"] = one["signature"]["signatures"][:1]
    with pytest.raises(VerificationError, match="exactly 2 signatures"):
        verify_certificate(one, trusted=trusted)
    foreign = _resign(signed, other_keys)
    with pytest.raises(VerificationError) as info:
        verify_certificate(foreign, trusted=trusted)
    assert info.value.check == "signature"
    wrong_type = copy.deepcopy(signed)
    wrong_type["signature"]["payload_type"] = "application/vnd.tensafe.manifest+json"
    with pytest.raises(VerificationError, match="payload_type"):
        verify_certificate(wrong_type, trusted=trusted)


def test_understated_claim_is_rejected_even_when_properly_signed(
    signed: dict[str, Any], trusted: TrustedKeys, keys: SigningKeys
) -> None:
    honest = signed["privacy_guarantee"]["epsilon"]
    for claimed in (honest * 0.9, honest - 0.05):
        lying = copy.deepcopy(signed)
        lying["privacy_guarantee"]["epsilon"] = claimed
        with pytest.raises(VerificationError, match="below the epsilon re-derived") as info:
            verify_certificate(_resign(lying, keys), trusted=trusted)
        assert info.value.check == "epsilon"
    # More steps than claimed: the re-derived epsilon grows beyond the claim.
    hidden = copy.deepcopy(signed)
    hidden["accounting"]["ledger"]["segments"][0]["steps"] = 4 * STEPS
    hidden["accounting"]["ledger"]["total_steps"] = 4 * STEPS
    hidden["training_parameters"]["total_steps"] = 4 * STEPS
    hidden["accounting"]["dp_event"]["events"][0]["count"] = 4 * STEPS
    with pytest.raises(VerificationError) as info:
        verify_certificate(_resign(hidden, keys), trusted=trusted)
    assert info.value.check == "epsilon"


@pytest.mark.parametrize(
    ("edit", "check"),
    [
        (_set("extra_field", 1), "schema"),
        (_set("privacy_guarantee.mechanism", "DP-FTRL"), "schema"),
        (_set("sampling.neighbouring_relation", "replace-one"), "schema"),
        (_set("training_parameters.total_steps", STEPS + 1), "consistency"),
        (_set("data_summary.sample_rate", 0.005), "consistency"),
        (_set("training_parameters.noise_multiplier", 3.0), "consistency"),
        (_set("accounting.dp_event.events", []), "consistency"),
    ],
    ids=["unknown-key", "mechanism", "relation", "steps", "q", "sigma", "dp-event"],
)
def test_re_signed_inconsistent_certificate_is_rejected(
    signed: dict[str, Any], trusted: TrustedKeys, keys: SigningKeys, edit: Any, check: str
) -> None:
    edit(signed)
    with pytest.raises(VerificationError) as info:
        verify_certificate(_resign(signed, keys), trusted=trusted)
    assert info.value.check == check


def test_max_epsilon_gate(signed: dict[str, Any], trusted: TrustedKeys) -> None:
    eps = signed["privacy_guarantee"]["epsilon"]
    verify_certificate(signed, trusted=trusted, max_epsilon=eps + 0.01)
    with pytest.raises(VerificationError, match="exceeds the allowed maximum") as info:
        verify_certificate(signed, trusted=trusted, max_epsilon=eps * 0.5)
    assert info.value.check == "budget"


def test_weights_binding(signed: dict[str, Any], trusted: TrustedKeys, tmp_path: Path) -> None:
    other = tmp_path / "adapter_model.safetensors"
    other.write_bytes(b"not the weights")
    with pytest.raises(VerificationError) as info:
        verify_certificate(signed, trusted=trusted, weights_path=other)
    assert info.value.check == "weights"


def test_delta_not_below_one_over_n_is_rejected(adapter_dir: Path, keys: SigningKeys, trusted: TrustedKeys) -> None:
    loose = make_ledger(accountant="rdp", steps=50, delta=1.0 / N)
    cert = sign_certificate(certificate_for(loose, adapter_dir), keys)
    assert cert["delta_policy"]["is_default"] is False
    with pytest.raises(VerificationError) as info:
        verify_certificate(cert, trusted=trusted)
    assert info.value.check == "delta"


def test_unverified_sampler_is_refused_unless_allowed(
    adapter_dir: Path, keys: SigningKeys, trusted: TrustedKeys
) -> None:
    shuffled = make_ledger(accountant="rdp", steps=50, sampler="shuffle")
    with pytest.raises(PrivacyError, match="refusing to certify"):
        certificate_for(shuffled, adapter_dir)
    cert = sign_certificate(certificate_for(shuffled, adapter_dir, allow_unverified_sampler=True), keys)
    assert cert["sampling"]["guarantee_applies"] is False
    assert "shuffle" in cert["not_covered"][0]
    with pytest.raises(VerificationError) as info:
        verify_certificate(cert, trusted=trusted)
    assert info.value.check == "sampler"
    check = verify_certificate(cert, trusted=trusted, allow_unverified_sampler=True)
    assert check.warnings


def test_build_refuses_what_it_cannot_certify(adapter_dir: Path) -> None:
    with pytest.raises(PrivacyError, match="no optimizer update"):
        certificate_for(make_ledger(accountant="rdp", steps=0), adapter_dir)
    # Noise from a known seed can be regenerated and subtracted: epsilon is reported, but never certified.
    with pytest.raises(PrivacyError, match="fixed seed"):
        certificate_for(make_ledger(accountant="rdp", steps=3, noise_seed_fixed=True), adapter_dir)
    # Known Poisson batches: which examples each update used is no secret, so there is no sampling amplification.
    with pytest.raises(PrivacyError, match="Poisson batches from a fixed seed"):
        certificate_for(make_ledger(accountant="rdp", steps=3, sampling_seed_fixed=True), adapter_dir)
    noiseless = make_ledger(accountant="rdp", steps=3, noise_multiplier=0.0)
    with pytest.raises(PrivacyError, match="infinite"):
        certificate_for(noiseless, adapter_dir)
    ledger = make_ledger(accountant="rdp", steps=3)
    with pytest.raises(ConfigError, match="disagrees with the privacy ledger"):
        build_certificate(
            ledger=ledger,
            model_name="m",
            base_model="b",
            weights_path=adapter_dir / "adapter_model.safetensors",
            parameters_under_dp=["w"],
            training_parameters={"noise_multiplier": 0.5},
        )
    with pytest.raises(ConfigError, match="plain JSON"):
        build_certificate(
            ledger=ledger,
            model_name="m",
            base_model="b",
            weights_path=adapter_dir / "adapter_model.safetensors",
            parameters_under_dp=["w"],
            training_parameters={"learning_rate": math.nan},
        )
    with pytest.raises(ConfigError, match="parameters_under_dp"):
        build_certificate(
            ledger=ledger,
            model_name="m",
            base_model="b",
            weights_path=adapter_dir / "adapter_model.safetensors",
            parameters_under_dp=[],
            training_parameters={},
        )


def test_piecewise_schedule_certifies_and_verifies(adapter_dir: Path, keys: SigningKeys, trusted: TrustedKeys) -> None:
    ledger = make_ledger(accountant="pld", steps=100)
    for _ in range(50):
        ledger.record_step(sample_rate=Q, noise_multiplier=2.0)
    cert = sign_certificate(certificate_for(ledger, adapter_dir), keys)
    assert cert["accounting"]["ledger"]["schedule"] == "piecewise"
    assert cert["training_parameters"]["noise_multiplier"] == SIGMA  # the smallest sigma used
    check = verify_certificate(cert, trusted=trusted)
    assert check.total_steps == 150
    assert check.epsilon == pytest.approx(check.rederived_pld, abs=1e-9)
