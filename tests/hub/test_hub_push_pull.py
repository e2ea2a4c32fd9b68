"""Push, pull and list through the REAL huggingface_hub client against the fake Hub server (tests/hub/fake_hub.py)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import TOKEN, PackageFactory
from fake_hub import FakeHub
from safetensors.numpy import load_file

from shared_core.errors import ConfigError, VerificationError
from shared_core.hub import HubError, HubUnavailableError, TenSafeHFHubConfig, TenSafeHFHubIntegration

REPO = "alice/dp-adapter"
PACKAGE_FILES = {
    "tssp.dsse.json",
    "adapter_model.safetensors",
    "adapter_config.json",
    "dp_certificate.json",
    "privacy_report.json",
    "training_config.json",
}


def _hub(key_dirs: dict[str, Path], **kwargs: object) -> TenSafeHFHubIntegration:
    return TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key=str(key_dirs["publisher"]), **kwargs))


def test_push_then_pull_round_trip(online: FakeHub, key_dirs, make_package: PackageFactory, tmp_path: Path) -> None:
    package = make_package()
    hub = _hub(key_dirs)
    url = hub.push_to_hub(package, REPO, privacy_info={"epsilon": 7.5, "delta": 1e-5, "noise_multiplier": 1.1})

    assert url == f"{online.url}/{REPO}"
    assert online.is_private(REPO)
    assert set(online.files(REPO)) == PACKAGE_FILES | {"README.md", ".gitattributes"}
    commits = [r for r in online.requests if r.method == "POST" and r.path.startswith(f"/api/models/{REPO}/commit/")]
    assert len(commits) == 1  # one atomic commit for package + card

    manifest = hub.pull_from_hub(REPO, tmp_path / "pulled")
    pulled = tmp_path / "pulled"
    assert {p.name for p in pulled.iterdir()} == PACKAGE_FILES  # no card, no .gitattributes, no .cache
    original = load_file(str(package / "adapter_model.safetensors"))
    fetched = load_file(str(pulled / "adapter_model.safetensors"))
    assert original.keys() == fetched.keys()
    for key in original:
        np.testing.assert_array_equal(original[key], fetched[key])
    assert manifest["privacy"]["epsilon"] == 7.5
    assert isinstance(manifest["privacy"]["epsilon"], float)
    assert manifest["privacy"]["delta"] == 1e-5
    assert manifest["dp"]["epsilon"] == "7.5"  # the signed manifest keeps its string
    assert manifest["revision"] == online.repos[("model", REPO)].head.oid
    assert manifest["manifest_sha256"] in online.files(REPO)["README.md"].decode()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".pulled.pull-")]  # temp folder removed

    from shared_core.tssp import load_trusted_keys, verify_package

    verify_package(pulled, trusted=load_trusted_keys(key_dirs["publisher"]))


def test_rerun_is_idempotent_and_new_version_replaces_files(online: FakeHub, key_dirs, make_package) -> None:
    hub = _hub(key_dirs)
    package = make_package()
    url = hub.push_to_hub(package, REPO)
    commits = online.commit_count(REPO)
    assert hub.push_to_hub(package, REPO) == url
    assert online.commit_count(REPO) == commits  # nothing changed, no empty commit

    newer = make_package(seed=1, epsilon=3.0, extra_files={"notes.txt": b"second run\n"})
    hub.push_to_hub(newer, REPO)
    assert online.commit_count(REPO) == commits + 1
    assert set(online.files(REPO)) == PACKAGE_FILES | {"README.md", ".gitattributes", "notes.txt"}
    again = make_package(seed=2)
    hub.push_to_hub(again, REPO)
    assert "notes.txt" not in online.files(REPO)  # files of the previous package do not linger


def test_tampered_file_on_server_is_rejected_at_pull(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO)
    weights = bytearray(online.files(REPO)["adapter_model.safetensors"])
    weights[-1] ^= 0x01
    online.server_side_commit(REPO, {"adapter_model.safetensors": bytes(weights)})

    with pytest.raises(VerificationError, match="adapter_model.safetensors") as info:
        hub.pull_from_hub(REPO, tmp_path / "pulled")
    assert info.value.path == "adapter_model.safetensors"
    assert not (tmp_path / "pulled").exists()
    assert [p.name for p in tmp_path.iterdir() if ".pull-" in p.name] == []


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"dp_certificate.json": b'{"privacy_guarantee": {"epsilon": 0.1}}'}, "dp_certificate.json"),
        ({"backdoor.py": b"import os\n"}, "backdoor.py"),
    ],
)
def test_changed_or_added_file_is_named(online, key_dirs, make_package, tmp_path, changes, named) -> None:
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO)
    online.server_side_commit(REPO, changes)
    with pytest.raises(VerificationError, match=named):
        hub.pull_from_hub(REPO, tmp_path / "pulled")
    assert not (tmp_path / "pulled").exists()


def test_storage_level_swap_is_rejected(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO)
    online.swap_blob(REPO, "adapter_config.json", b'{"peft_type": "LORA", "r": 64}')
    with pytest.raises(VerificationError, match="adapter_config.json"):
        hub.pull_from_hub(REPO, tmp_path / "pulled")


def test_package_signed_by_another_key_is_rejected(online, key_dirs, make_package, tmp_path: Path) -> None:
    _hub(key_dirs, require_tssp_verification=False).push_to_hub(make_package(signer="other"), REPO)
    with pytest.raises(VerificationError, match="signature|keyid|key"):
        _hub(key_dirs).pull_from_hub(REPO, tmp_path / "pulled")


@pytest.mark.parametrize("damage", ["tampered", "foreign-signer"])
def test_push_verifies_the_package_first(online: FakeHub, key_dirs, make_package, damage: str) -> None:
    if damage == "tampered":
        package = make_package()
        config = package / "adapter_config.json"
        config.write_bytes(config.read_bytes().replace(b'"r"', b'"R"'))
    else:
        package = make_package(signer="other")
    with pytest.raises(VerificationError):
        _hub(key_dirs).push_to_hub(package, REPO)  # require_tssp_verification is on by default
    assert online.requests == []  # refused before anything was sent


def test_failed_commit_leaves_repo_as_it_was(online: FakeHub, key_dirs, make_package) -> None:
    hub = _hub(key_dirs)
    online.fail_next["commit"] = 500
    with pytest.raises(HubError, match="left as it was"):
        hub.push_to_hub(make_package(), REPO)
    assert not online.exists(REPO)  # the repo this push created is removed again: no empty, half-published repo

    hub.push_to_hub(make_package(), REPO)  # the rerun completes it
    before = online.files(REPO)
    online.fail_next["commit"] = 500
    with pytest.raises(HubError):
        hub.push_to_hub(make_package(seed=5, epsilon=2.0), REPO)
    assert online.files(REPO) == before  # previous version intact, nothing half-replaced


def test_push_refuses_an_existing_public_repo(online: FakeHub, key_dirs, make_package) -> None:
    from huggingface_hub import HfApi

    HfApi(endpoint=online.url, token=TOKEN).create_repo(REPO, private=False)
    with pytest.raises(ConfigError, match="PUBLIC"):
        _hub(key_dirs).push_to_hub(make_package(), REPO)
    assert set(online.files(REPO)) == {".gitattributes"}
    assert not online.is_private(REPO)  # never flipped


def test_list_models(online: FakeHub, key_dirs, make_package) -> None:
    from huggingface_hub import HfApi

    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(epsilon=7.5), "alice/one")
    hub.push_to_hub(make_package(epsilon=2.0), "alice/two")
    hub.push_to_hub(make_package(), "bob/three")
    HfApi(endpoint=online.url, token=TOKEN).create_repo("alice/not-tensafe")

    mine = hub.list_models(author="alice")
    assert [m["id"] for m in mine] == ["alice/one", "alice/two"]
    assert [m["privacy"]["epsilon"] for m in mine] == [7.5, 2.0]
    assert all(m["private"] and m["url"] == f"{online.url}/{m['id']}" and m["downloads"] == 0 for m in mine)
    assert {m["id"] for m in hub.list_models()} == {"alice/one", "alice/two", "bob/three"}


def test_encrypted_weights_only_when_asked(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    key = bytes(range(32))
    package = make_package(encryption_key=key)
    _hub(key_dirs).push_to_hub(package, "alice/meta-only")
    files = online.files("alice/meta-only")
    assert not any(name.startswith("adapter_model.safetensors") for name in files)
    assert "weights_included: false" in files["README.md"].decode()
    with pytest.raises(HubError, match="include_encrypted_weights=False"):
        _hub(key_dirs).pull_from_hub("alice/meta-only", tmp_path / "meta")
    assert not (tmp_path / "meta").exists()

    _hub(key_dirs, include_encrypted_weights=True).push_to_hub(package, "alice/full")
    assert "adapter_model.safetensors.tsspenc" in online.files("alice/full")
    assert "adapter_model.safetensors" not in online.files("alice/full")  # no plaintext of an encrypted package
    manifest = _hub(key_dirs).pull_from_hub("alice/full", tmp_path / "full")
    assert manifest["encryption"]["key_id"]
    assert (tmp_path / "full" / "adapter_model.safetensors.tsspenc").is_file()


def test_offline_push_stops_quickly_with_instructions(key_dirs, make_package) -> None:
    package = make_package()  # the suite-wide conftest sets HF_HUB_OFFLINE=1
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as info:
        _hub(key_dirs).push_to_hub(package, REPO)
    assert time.monotonic() - start < 2
    message = str(info.value)
    assert str(package) in message
    assert f"tensafe push {package} --repo-id {REPO}" in message
    assert "HF_HUB_OFFLINE" in message
    with pytest.raises(HubUnavailableError, match="Nothing was written"):
        _hub(key_dirs).pull_from_hub(REPO, package.parent / "pulled")
    assert not (package.parent / "pulled").exists()
    assert time.monotonic() - start < 3


def test_unreachable_endpoint_stops_quickly(key_dirs, make_package, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants as constants

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    package = make_package()
    start = time.monotonic()
    with pytest.raises(HubUnavailableError, match="not reachable") as info:
        _hub(key_dirs, endpoint=f"http://127.0.0.1:{port}").push_to_hub(package, REPO)
    assert time.monotonic() - start < 5
    assert "tensafe push" in str(info.value)


def test_canary_token_never_reaches_uploaded_bytes(online: FakeHub, key_dirs, make_package, monkeypatch, caplog,
                                                    tmp_path: Path) -> None:
    canary = "hf_canaryQWERTYUIOPASDFGHJKLZXCVBNM1234"
    monkeypatch.setenv("HF_TOKEN", canary)
    caplog.set_level("DEBUG")
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO, privacy_info={"dataset_size": 50000})
    hub.pull_from_hub(REPO, tmp_path / "pulled")
    hub.list_models(author="alice")
    online.fail_next["commit"] = 500
    with pytest.raises(HubError) as failed:
        hub.push_to_hub(make_package(seed=3), REPO)

    assert any(r.headers.get("authorization") == f"Bearer {canary}" for r in online.requests)  # it was used
    assert canary.encode() not in online.bodies()
    assert all(canary not in r.path for r in online.requests)
    assert canary not in str(failed.value)
    assert canary not in caplog.text
    assert canary not in repr(TenSafeHFHubConfig(token=canary))


def test_secret_in_package_is_refused_before_anything_is_sent(online: FakeHub, key_dirs, make_package) -> None:
    leaked = b"debug: token=hf_leakedABCDEFGHIJKLMNOPQRSTUVWXYZ12\n"
    package = make_package(extra_files={"notes.txt": leaked})
    with pytest.raises(VerificationError, match="notes.txt") as info:
        _hub(key_dirs).push_to_hub(package, REPO)
    assert info.value.path == "notes.txt"
    assert info.value.check == "secret-scan"
    assert online.requests == []  # refused before any request


def test_secret_in_privacy_info_is_refused(online: FakeHub, key_dirs, make_package) -> None:
    with pytest.raises(VerificationError, match="README.md"):
        _hub(key_dirs).push_to_hub(make_package(), REPO, privacy_info={"note": f"token {TOKEN}"})
    assert online.requests == []


def test_pull_replaces_a_previous_pull_but_not_other_folders(online, key_dirs, make_package, tmp_path) -> None:
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO)
    hub.pull_from_hub(REPO, tmp_path / "pulled")
    hub.pull_from_hub(REPO, tmp_path / "pulled")  # a previously pulled package is replaced
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(ConfigError, match="not empty"):
        hub.pull_from_hub(REPO, other)
    assert [p.name for p in other.iterdir()] == ["cat.jpg"]
    with pytest.raises(ConfigError, match="verify=False"):
        hub.pull_from_hub(REPO, tmp_path / "x", verify=False)
    with pytest.raises(ConfigError, match="public key"):
        TenSafeHFHubIntegration().pull_from_hub(REPO, tmp_path / "y")


def test_pull_of_missing_repo_says_so(online: FakeHub, key_dirs, tmp_path: Path) -> None:
    with pytest.raises(HubError, match="not found"):
        _hub(key_dirs).pull_from_hub("alice/nothing-here", tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_manifest_json_is_serialisable(online: FakeHub, key_dirs, make_package, tmp_path: Path) -> None:
    hub = _hub(key_dirs)
    hub.push_to_hub(make_package(), REPO)
    manifest = hub.pull_from_hub(REPO, tmp_path / "pulled", revision="main")
    assert json.loads(json.dumps(manifest))["privacy"]["source"] == "dp_certificate.json"
