"""The main job, shortened: the real SmolLM2 model and the real Rotten Tomatoes text, end to end through the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def _short_config(tmp_path: Path, **overrides: dict) -> Path:
    config = yaml.safe_load(QUICKSTART.read_text())
    config["data"].update({"eval_examples": 8, "max_train_examples": 400, "max_length": 24})
    config["dp"].update({"expected_batch_size": 4})
    config["training"].update({"max_steps": 3, "gradient_accumulation_steps": 2, "logging_steps": 1})
    config["signing"] = {"key_dir": str(tmp_path / "keys")}
    config["generation"] = {"max_new_tokens": 3}
    for section, values in overrides.items():
        config[section].update(values)
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _tensafe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from shared_core.cli import main; main()", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=600,
    )


@pytest.mark.slow
def test_quickstart_runs_end_to_end_on_real_model_and_data(tmp_path: Path) -> None:
    out = tmp_path / "run"
    done = _tensafe("train", "--config", str(_short_config(tmp_path)), "--output-dir", str(out), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    text = " ".join(done.stdout.split())  # the console wraps long lines at its width
    assert "Held-out loss before" in text
    assert "Held-out loss after" in text
    assert "Package verified" in text
    assert "generated a new Ed25519 + ML-DSA-65 pair" in text
    for name in ("dp_certificate.json", "privacy_report.json", "privacy_report.txt", "privacy_report.png"):
        assert (out / name).is_file(), name
    certificate = json.loads((out / "dp_certificate.json").read_text())
    epsilon = float(certificate["privacy_guarantee"]["epsilon"])
    assert 0 < epsilon <= 8.0
    assert certificate["training_parameters"]["total_steps"] == 3
    # The package verifies with the public keys alone, through the CLI, and passes the epsilon gate.
    verify = _tensafe("verify", str(out / "model.tssp"), "--public-key", str(tmp_path / "keys"), cwd=tmp_path)
    assert verify.returncode == 0, verify.stderr
    gate = _tensafe(
        "verify-privacy",
        str(out / "model.tssp"),
        "--max-epsilon",
        "8",
        "--public-key",
        str(tmp_path / "keys"),
        cwd=tmp_path,
    )
    assert gate.returncode == 0, gate.stderr
    tight = _tensafe(
        "verify-privacy",
        str(out / "model.tssp"),
        "--max-epsilon",
        str(epsilon / 2),
        "--public-key",
        str(tmp_path / "keys"),
        cwd=tmp_path,
    )
    assert tight.returncode != 0


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"name_or_path": "/nonexistent/model"}}, "model"),
        ({"data": {"path": "/nonexistent/data.csv"}}, "does not exist"),
        ({"dp": {"target_epsilon": 0.001}}, "epsilon"),
        ({"dp": {"noise_seed": 0}}, "dp.noise_seed"),
    ],
    ids=["missing-model", "missing-data", "unreachable-budget", "fixed-noise-seed"],
)
def test_bad_input_stops_before_training_with_one_line(tmp_path: Path, overrides: dict, message: str) -> None:
    done = _tensafe("train", "--config", str(_short_config(tmp_path, **overrides)), cwd=tmp_path)
    assert done.returncode == 2
    lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert message in lines[0]
    assert "Loading" not in done.stdout


def test_unknown_config_key_is_named(tmp_path: Path) -> None:
    path = _short_config(tmp_path)
    config = yaml.safe_load(path.read_text())
    config["dp"]["target_epsilonn"] = 3
    path.write_text(yaml.safe_dump(config))
    done = _tensafe("train", "--config", str(path), cwd=tmp_path)
    assert done.returncode == 2
    assert "target_epsilonn" in done.stderr
