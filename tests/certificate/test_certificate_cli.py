"""``tensafe epsilon``, ``noise`` and ``verify-privacy`` (certificate file and signed package)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shared_core.accounting import compute_epsilon
from shared_core.certificate import save_certificate
from shared_core.cli import build_app
from shared_core.tssp.keys import SigningKeys
from shared_core.tssp.packing import pack


@pytest.fixture(scope="module")
def app() -> Any:
    return build_app()


def _invoke(app: Any, *args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def test_epsilon_json(app: Any) -> None:
    result = _invoke(
        app, "epsilon", "--sample-rate", "0.01", "--noise-multiplier", "1.0", "--steps", "1000", "--delta", "1e-5",
        "--accountant", "rdp", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["accountant"] == "rdp"
    assert payload["epsilon"] == compute_epsilon(
        sample_rate=0.01, noise_multiplier=1.0, steps=1000, delta=1e-5, accountant="rdp"
    )


def test_noise_json_never_overshoots(app: Any) -> None:
    result = _invoke(
        app, "noise", "--target-epsilon", "2", "--delta", "1e-5", "--sample-rate", "0.01", "--steps", "2000",
        "--accountant", "rdp", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["epsilon"] <= 2.0
    assert payload["epsilon"] == compute_epsilon(
        sample_rate=0.01, noise_multiplier=payload["noise_multiplier"], steps=2000, delta=1e-5, accountant="rdp"
    )


def test_bad_input_is_one_line_and_non_zero(app: Any) -> None:
    result = _invoke(app, "epsilon", "--sample-rate", "2", "--noise-multiplier", "1", "--steps", "5", "--delta", "1e-5")
    assert result.exit_code == 1
    assert result.stderr.count("\n") == 1
    assert "sample_rate must lie in [0, 1]" in result.stderr


def test_verify_privacy_on_a_certificate_file(
    app: Any, signed: dict[str, Any], key_dir: Path, other_keys: SigningKeys, tmp_path: Path
) -> None:
    path = save_certificate(signed, tmp_path / "dp_certificate.json")
    ok = _invoke(app, "verify-privacy", str(path), "--public-key", str(key_dir), "--max-epsilon", "3", "--json")
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.stdout)["epsilon"] == signed["privacy_guarantee"]["epsilon"]
    signed["privacy_guarantee"]["epsilon"] = 0.1
    save_certificate(signed, path)
    bad = _invoke(app, "verify-privacy", str(path), "--public-key", str(key_dir))
    assert bad.exit_code == 1
    assert "[signature]" in bad.stderr
    assert bad.stderr.count("\n") == 1


def test_verify_privacy_on_a_signed_package(
    app: Any, signed: dict[str, Any], keys: SigningKeys, key_dir: Path, adapter_dir: Path, tmp_path: Path
) -> None:
    cert = save_certificate(signed, tmp_path / "dp_certificate.json")
    package = pack(adapter_dir, tmp_path / "tiny.tssp", keys=keys, certificate=cert)
    ok = _invoke(app, "verify-privacy", str(package), "--public-key", str(key_dir), "--max-epsilon", "3")
    assert ok.exit_code == 0, ok.output
    assert "verified package of tiny-lora-dp" in ok.stdout
    over = _invoke(app, "verify-privacy", str(package), "--public-key", str(key_dir), "--max-epsilon", "0.5")
    assert over.exit_code == 1
    assert "[budget]" in over.stderr
    (package / "adapter_model.safetensors").write_bytes(b"swapped weights")
    tampered = _invoke(app, "verify-privacy", str(package), "--public-key", str(key_dir))
    assert tampered.exit_code == 1
    assert tampered.stderr.startswith("tensafe: privacy verification failed")
