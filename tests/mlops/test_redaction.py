"""Secret redaction of configs and the secret scan over files (shared_core.mlops.redaction)."""

from __future__ import annotations

import dataclasses
import json
from collections import OrderedDict
from pathlib import Path

import pytest

from shared_core.mlops.redaction import REDACTED, find_secrets, is_secret_key, redact_config_secrets, scan_paths

HF = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"
WANDB_KEY = "0123456789abcdef0123456789abcdef01234567"
SK = "sk-proj-" + "Zz9" * 10


@pytest.mark.parametrize(
    "key",
    [
        "hub_token",
        "HF_TOKEN",
        "token",
        "access_token",
        "hubToken",
        "WANDB_API_KEY",
        "api_key",
        "apiKey",
        "x-api-key",
        "MLFLOW_TRACKING_PASSWORD",
        "password",
        "db_password",
        "client_secret",
        "secret",
        "credentials",
        "aws_secret_access_key",
        "private_key",
        "Authorization",
        "basic_auth",
        "passphrase",
    ],
)
def test_secret_names_are_recognised(key: str) -> None:
    assert is_secret_key(key)


@pytest.mark.parametrize(
    "key",
    [
        "num_memory_tokens",
        "max_tokens",
        "max_new_tokens",
        "tokenizer_name",
        "pad_token_id",
        "bos_token",
        "eos_token",
        "pad_token",
        "token_type_ids",
        "tokens_per_second",
        "keyword",
        "key_dim",
        "public_key_path_hint",
        "hub_model_id",
        "learning_rate",
        "monkey",
        "tokenization",
    ],
)
def test_look_alike_names_are_not_secrets(key: str) -> None:
    assert not is_secret_key(key)


def test_redacts_keys_urls_and_token_shapes_without_false_positives() -> None:
    cfg = {
        "hub_token": "plain-value",
        "WANDB_API_KEY": WANDB_KEY,
        "tracking_uri": "https://alice:s3cr3t@mlflow.example.com:5000/api",
        "note": f"pushed with {HF} yesterday",
        "model": {"openai": SK, "wandb": {"key": WANDB_KEY}},
        "cmd": "train.py --hub_token tok123456 --lr 1e-4 MLFLOW_TRACKING_PASSWORD=pw42",
        "num_memory_tokens": 4,
        "max_tokens": 128,
        "tokenizer_name": "gpt2",
        "pad_token_id": 0,
        "bos_token": "<s>",
        "git_commit": WANDB_KEY,  # a 40-hex under a non-key name is a commit, not a W&B key
        "push_to_hub_token": None,
        "use_auth_token": True,
        "masked": "<HUB_TOKEN>",
    }
    out = redact_config_secrets(cfg)
    assert out["hub_token"] == REDACTED
    assert out["WANDB_API_KEY"] == REDACTED
    assert out["tracking_uri"] == "https://***@mlflow.example.com:5000/api"
    assert out["note"] == f"pushed with {REDACTED} yesterday"
    assert out["model"] == {"openai": REDACTED, "wandb": {"key": REDACTED}}
    assert out["cmd"] == f"train.py --hub_token {REDACTED} --lr 1e-4 MLFLOW_TRACKING_PASSWORD={REDACTED}"
    for key in ("num_memory_tokens", "max_tokens", "tokenizer_name", "pad_token_id", "bos_token", "git_commit"):
        assert out[key] == cfg[key]
    assert out["push_to_hub_token"] is None
    assert out["use_auth_token"] is True
    assert out["masked"] == "<HUB_TOKEN>"
    # The input is untouched and nothing secret survives anywhere in the copy.
    assert cfg["hub_token"] == "plain-value"
    dumped = json.dumps(out)
    for secret in ("plain-value", WANDB_KEY[:12] + "x", "s3cr3t", "alice", HF, SK, "tok123456", "pw42"):
        assert secret not in dumped.replace(WANDB_KEY, "")


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("redis://:Hunter2RedisPass@cache:6379/0", "Hunter2RedisPass"),  # a URL password without a user name
        ("HF_TOKEN='s3cr3t-hub-token-value' python train.py", "s3cr3t-hub-token-value"),
        ('export DB_PASSWORD="Pg-Pa55word!"', "Pg-Pa55word!"),
        ("password: hunter2-in-yaml", "hunter2-in-yaml"),
        ("-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----", "MC4CAQAwBQYDK2VwBCIEIA"),
    ],
)
def test_secret_shapes_in_free_text_are_redacted_and_found(text: str, secret: str) -> None:
    assert secret not in redact_config_secrets({"note": text})["note"]
    assert find_secrets(text)


def test_password_like_names_without_false_positives() -> None:
    for key in ("db_pass", "smtp_pwd", "passwd2", "user_pass"):
        assert is_secret_key(key), key
    for key in ("PWD", "first_pass", "num_passes", "bypass"):  # PWD is the working directory, not a password
        assert not is_secret_key(key), key


def test_containers_and_dataclasses_keep_their_shape() -> None:
    @dataclasses.dataclass
    class Cfg:
        api_key: str
        rank: int

    src = OrderedDict(a=(1, "https://u:p@h/x"), b=[Cfg("k", 8)], c={"x", HF})
    out = redact_config_secrets(src)
    assert isinstance(out, OrderedDict)
    assert out["a"] == (1, "https://***@h/x")
    assert out["b"] == [{"api_key": REDACTED, "rank": 8}]
    assert out["c"] == {"x", REDACTED}


def test_find_secrets_reports_kind_and_offset_never_the_value() -> None:
    canary = "CANARY-7f3a9"
    blob = json.dumps({"hub_token": "qwertyuiop", "note": f"x {HF}", "uri": "https://u:pw@host"}) + canary
    findings = find_secrets(blob.encode(), canaries=[canary, ""])
    kinds = " | ".join(findings)
    assert "value of secret key 'hub_token'" in kinds
    assert "huggingface token" in kinds
    assert "credentials in a URL" in kinds
    assert f"canary #0 at offset {blob.index(canary)}" in findings
    assert all(secret not in kinds for secret in ("qwertyuiop", HF, "pw", canary))


def test_find_secrets_is_quiet_on_clean_and_already_redacted_content() -> None:
    clean = {
        "hub_token": "<HUB_TOKEN>",
        "api_key": REDACTED,
        "max_tokens": 5,
        "tokenizer_name": "gpt2",
        "uri": "https://***@host/x",
        "commit": WANDB_KEY,
        "text": "the pad token and the max tokens per batch",
    }
    assert find_secrets(json.dumps(clean)) == []
    assert find_secrets(json.dumps(redact_config_secrets({"token": HF, "uri": "http://a:b@c"}))) == []
    assert find_secrets(bytes(range(256)) * 64) == []


def test_scan_paths_walks_folders_flags_training_args_and_finds_canaries_across_chunks(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "clean.json").write_text(json.dumps({"epsilon": 1.0, "max_tokens": 8}))
    (pkg / "training_args.bin").write_bytes(b"PK\x03\x04 pickled")
    big = bytearray(b"\0" * (8 * 1024 * 1024 + 10))
    canary = b"CANARY-secret-42"
    start = 8 * 1024 * 1024 - 5  # straddles the scanner's chunk boundary
    big[start : start + len(canary)] = canary
    (pkg / "sub" / "weights.bin").write_bytes(bytes(big))
    (pkg / "link").symlink_to(tmp_path)

    findings = scan_paths([pkg], canaries=[canary.decode()])
    by_file = {(p.name, f) for p, f in findings}
    assert ("weights.bin", f"canary #0 at offset {start}") in by_file
    assert any(name == "training_args.bin" for name, _ in by_file)
    assert any(name == "link" and "symbolic link" in f for name, f in by_file)
    assert not any(name == "clean.json" for name, _ in by_file)
    assert scan_paths([pkg / "clean.json"]) == []
