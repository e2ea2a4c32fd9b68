"""The tensafe keygen / pack / verify / inspect commands, in-process (CliRunner) and torch-free in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from shared_core.cli import build_app
from tests.tssp.conftest import write_certificate

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def runner() -> CliRunner:
    return CliRunner()


def _invoke(runner: CliRunner, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = runner.invoke(build_app(), list(args), env=env)
    return result.exit_code, result.stdout, result.stderr


def test_keygen_pack_verify_inspect_round_trip(runner: CliRunner, tmp_path: Path, adapter_dir: Path) -> None:
    keys, pkg = tmp_path / "keys", tmp_path / "p.tssp"
    cert = write_certificate(tmp_path / "cert.json", adapter_dir / "adapter_model.safetensors")
    config = tmp_path / "train.json"
    config.write_text(json.dumps({"learning_rate": 0.001}))
    code, out, err = _invoke(runner, "keygen", "--out", str(keys), "--encryption-key", str(tmp_path / "cek"))
    assert code == 0, err
    assert "ml-dsa-65: sha256:" in out
    code, out, err = _invoke(
        runner,
        "pack",
        str(adapter_dir),
        "--key",
        str(keys),
        "--out",
        str(pkg),
        "--certificate",
        str(cert),
        "--training-config",
        str(config),
        "--archive",
    )
    assert code == 0, err
    code, out, err = _invoke(runner, "verify", str(pkg), "--public-key", str(keys))
    assert code == 0, err
    assert "OK" in out
    assert "epsilon=3.0" in out
    code, out, _ = _invoke(runner, "verify", str(pkg) + ".tar", "--public-key", str(keys), "--json")
    assert code == 0
    assert json.loads(out)["dp"]["delta"] == "1e-05"
    code, out, _ = _invoke(runner, "inspect", str(pkg), "--json")
    assert code == 0
    assert json.loads(out)["verified"] is False
    code, out, _ = _invoke(runner, "inspect", str(pkg))
    assert out.startswith("UNVERIFIED")

    (pkg / "training_config.json").write_text("{}")
    code, out, err = _invoke(runner, "verify", str(pkg), "--public-key", str(keys))
    assert code != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1
    assert "training_config.json" in lines[0]
    assert "[size]" in lines[0]


def test_encrypt_needs_a_key_from_a_file_or_env_and_passphrase_comes_from_env(
    runner: CliRunner, tmp_path: Path, adapter_dir: Path
) -> None:
    keys, pkg = tmp_path / "keys", tmp_path / "e.tssp"
    code, _, err = _invoke(
        runner,
        "keygen",
        "--out",
        str(keys),
        "--passphrase-env",
        "TSSP_TEST_PASS",
        env={"TSSP_TEST_PASS": "s3cret pass"},
    )
    assert code == 0, err
    code, _, err = _invoke(
        runner,
        "pack",
        str(adapter_dir),
        "--key",
        str(keys),
        "--out",
        str(pkg),
        "--encrypt",
        "--passphrase-env",
        "TSSP_TEST_PASS",
        env={"TSSP_TEST_PASS": "s3cret pass"},
    )
    assert code != 0
    assert "--encryption-key-file" in err
    cek = "A" * 43 + "="
    code, _, err = _invoke(
        runner,
        "pack",
        str(adapter_dir),
        "--key",
        str(keys),
        "--out",
        str(pkg),
        "--encrypt",
        "--encryption-key-env",
        "CEK",
        "--passphrase-env",
        "TSSP_TEST_PASS",
        env={"TSSP_TEST_PASS": "s3cret pass", "CEK": cek},
    )
    assert code == 0, err
    assert os.listdir(pkg).count("adapter_model.safetensors.tsspenc") == 1
    (tmp_path / "wrong").write_bytes(bytes(range(32)))
    code, _, err = _invoke(
        runner, "verify", str(pkg), "--public-key", str(keys), "--decryption-key-file", str(tmp_path / "wrong")
    )
    assert code != 0
    assert "[decrypt]" in err
    code, _, err = _invoke(
        runner, "verify", str(pkg), "--public-key", str(keys), "--decryption-key-env", "CEK", env={"CEK": cek}
    )
    assert code == 0, err


_BLOCK_TORCH = """
import sys
sys.modules['torch'] = None  # any `import torch` now raises ImportError
from shared_core.cli import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
assert 'torch' not in [m for m, v in sys.modules.items() if v is not None], 'torch was imported'
sys.exit(code)
"""


def test_verify_and_inspect_run_without_torch(tmp_path: Path, adapter_dir: Path, key_dir: Path) -> None:
    from shared_core.tssp import load_signing_keys, pack

    pkg = pack(adapter_dir, tmp_path / "p.tssp", keys=load_signing_keys(key_dir), archive=True)

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-c", _BLOCK_TORCH, *args], capture_output=True, text=True, cwd=ROOT, timeout=60
        )

    done = run("verify", str(pkg) + ".tar", "--public-key", str(key_dir))
    assert done.returncode == 0, done.stderr
    assert "OK" in done.stdout
    done = run("inspect", str(pkg))
    assert done.returncode == 0, done.stderr
    (pkg / "adapter_model.safetensors").write_bytes(b"\x80\x04junk")
    done = run("verify", str(pkg), "--public-key", str(key_dir))
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "adapter_model.safetensors" in done.stderr
