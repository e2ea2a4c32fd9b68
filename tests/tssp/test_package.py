"""pack / verify_package / inspect_package: the happy path and every rejection of the task list (TSSP.md 6.1-6.8)."""

from __future__ import annotations

import io
import json
import os
import struct
import tarfile
from pathlib import Path
from typing import Any

import pytest

from shared_core.errors import ConfigError, VerificationError
from shared_core.tssp import inspect_package, pack, verify_package
from shared_core.tssp.keys import SigningKeys, TrustedKeys
from tests.tssp.conftest import ENVELOPE, read_manifest, resign, sha256_file, tree, write_certificate

WEIGHTS = "adapter_model.safetensors"


@pytest.fixture
def pkg(tmp_path: Path, adapter_dir: Path, keys: SigningKeys) -> Path:
    """A full package: weights, config, certificate, privacy report, training config and a README."""
    cert = write_certificate(tmp_path / "cert.json", adapter_dir / WEIGHTS)
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"epsilon_spent": 2.9, "steps": 10}))
    readme = tmp_path / "README.md"
    readme.write_text("# tiny adapter\n")
    return pack(
        adapter_dir,
        tmp_path / "out" / "tiny.tssp",
        keys=keys,
        certificate=cert,
        privacy_report=report,
        training_config={"learning_rate": 1e-4, "hub_token": "***", "pad_token": "<pad>"},
        extra_files={"README.md": readme},
        base_model={"repo": "org/tiny-llama", "revision": "0" * 40},
        archive=True,
    )


def _rejects(pkg: Path, trusted: TrustedKeys, *, check: str | set[str] | None = None, **kw: Any) -> VerificationError:
    """Verify must fail with one line, and must not write anything anywhere under the test folder."""
    root = pkg.parent.parent
    before = tree(root)
    with pytest.raises(VerificationError) as info:
        verify_package(pkg, trusted=trusted, **kw)
    assert tree(root) == before
    message = str(info.value)
    assert message
    assert "\n" not in message
    if check is not None:
        assert info.value.check in ({check} if isinstance(check, str) else check), message
    return info.value


def test_pack_writes_the_documented_layout_and_verifies(pkg: Path, trusted: TrustedKeys, adapter_dir: Path) -> None:
    assert sorted(os.listdir(pkg)) == sorted(
        [
            WEIGHTS,
            "adapter_config.json",
            "dp_certificate.json",
            "privacy_report.json",
            "training_config.json",
            "README.md",
            ENVELOPE,
        ]
    )
    manifest = verify_package(pkg, trusted=trusted)
    assert manifest == read_manifest(pkg)
    assert manifest["signature_suite"] == "ed25519+ml-dsa-65"
    assert manifest["dp"] == {
        "certificate_path": "dp_certificate.json",
        "epsilon": "3.0",
        "delta": "1e-05",
        "accountant": "prv",
        "mechanism": "gaussian",
    }
    assert manifest["base_model"]["repo"] == "org/tiny-llama"
    weights = next(e for e in manifest["files"] if e["path"] == WEIGHTS)
    assert weights["sha256"] == sha256_file(adapter_dir / WEIGHTS)
    assert [e["path"] for e in manifest["files"]] == sorted(e["path"] for e in manifest["files"])
    # the archive verifies too, and its first member is the envelope
    archive = pkg.with_name(pkg.name + ".tar")
    assert verify_package(archive, trusted=trusted) == manifest
    with tarfile.open(archive) as tar:
        members = tar.getmembers()
    assert members[0].name == ENVELOPE
    assert all(m.isreg() and m.mtime == 0 and m.uid == 0 and m.mode == 0o644 for m in members)


def test_archive_bytes_are_deterministic_for_one_package(pkg: Path) -> None:
    from shared_core.tssp._archive import write_archive

    names = [p for p in os.listdir(pkg) if p != ENVELOPE]
    fd = os.open(pkg, os.O_RDONLY)
    try:
        first = write_archive(fd, names, pkg.parent / "a.tar")
        second = write_archive(fd, list(reversed(names)), pkg.parent / "b.tar")
    finally:
        os.close(fd)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() == pkg.with_name(pkg.name + ".tar").read_bytes()


@pytest.mark.parametrize(
    "name",
    [
        WEIGHTS,
        "adapter_config.json",
        "dp_certificate.json",
        "privacy_report.json",
        "training_config.json",
        "README.md",
        ENVELOPE,
    ],
)
def test_a_flipped_byte_in_any_file_is_rejected(pkg: Path, trusted: TrustedKeys, name: str) -> None:
    path = pkg / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    error = _rejects(pkg, trusted)
    assert error.path == name


def test_truncated_weights_are_rejected(pkg: Path, trusted: TrustedKeys) -> None:
    path = pkg / WEIGHTS
    path.write_bytes(path.read_bytes()[:-7])
    assert "truncated" in str(_rejects(pkg, trusted, check="size"))


def test_added_removed_and_renamed_files_are_rejected(pkg: Path, trusted: TrustedKeys) -> None:
    (pkg / "notes.txt").write_text("unsigned")
    assert "notes.txt" in str(_rejects(pkg, trusted, check="unlisted"))
    (pkg / "notes.txt").unlink()
    (pkg / "privacy_report.json").rename(pkg / "privacy.json")
    _rejects(pkg, trusted, check="unlisted")
    (pkg / "privacy.json").unlink()
    assert "privacy_report.json" in str(_rejects(pkg, trusted, check="missing"))
    (pkg / "sub").mkdir()
    _rejects(pkg, trusted, check={"missing", "unlisted"})


def test_an_empty_folder_inside_the_package_is_rejected(pkg: Path, trusted: TrustedKeys) -> None:
    (pkg / "empty" / "nested").mkdir(parents=True)  # no file in it, so no manifest entry can account for it
    assert "empty/nested/" in str(_rejects(pkg, trusted, check="unlisted"))


def test_a_missing_envelope_is_rejected(pkg: Path, trusted: TrustedKeys) -> None:
    (pkg / ENVELOPE).unlink()
    _rejects(pkg, trusted, check="envelope")


def test_a_symlink_or_hardlink_inside_the_package_is_rejected(pkg: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    outside = tmp_path / "outside.json"
    outside.write_bytes((pkg / "privacy_report.json").read_bytes())
    (pkg / "privacy_report.json").unlink()
    (pkg / "privacy_report.json").symlink_to(outside)
    assert "symbolic link" in str(_rejects(pkg, trusted, check="layout"))
    (pkg / "privacy_report.json").unlink()
    os.link(outside, pkg / "privacy_report.json")
    assert "hard-linked" in str(_rejects(pkg, trusted, check="layout"))


def test_the_package_root_itself_must_not_be_a_symlink(pkg: Path, trusted: TrustedKeys, tmp_path: Path) -> None:
    link = tmp_path / "link.tssp"
    link.symlink_to(pkg)
    with pytest.raises(VerificationError, match="symbolic links are not followed"):
        verify_package(link, trusted=trusted)


def test_signatures_stripped_duplicated_or_relabelled_in_the_envelope_are_rejected(
    pkg: Path, trusted: TrustedKeys
) -> None:
    env_path = pkg / ENVELOPE
    good = json.loads(env_path.read_bytes())
    variants = [
        {**good, "signatures": good["signatures"][:1]},
        {**good, "signatures": [good["signatures"][0], good["signatures"][0]]},
        {
            **good,
            "signatures": [
                {**good["signatures"][0], "keyid": good["signatures"][1]["keyid"]},
                {**good["signatures"][1], "keyid": good["signatures"][0]["keyid"]},
            ],
        },
    ]
    for variant in variants:
        env_path.write_text(json.dumps(variant))
        assert _rejects(pkg, trusted, check="signature").path == ENVELOPE


def test_a_package_signed_by_another_key_is_rejected(pkg: Path, trusted: TrustedKeys, other_keys: SigningKeys) -> None:
    resign(pkg, other_keys)
    assert "not one of the pinned keys" in str(_rejects(pkg, trusted, check="signature"))


def test_resigning_with_other_keys_is_also_caught_by_the_signed_signer_list(
    pkg: Path, keys: SigningKeys, other_keys: SigningKeys
) -> None:
    """The manifest names its signers: a package re-signed by B but claiming A's keys fails B's pinning."""
    resign(pkg, other_keys)
    with pytest.raises(VerificationError) as info:
        verify_package(pkg, trusted=other_keys.trusted())
    assert info.value.check == "signers"


@pytest.mark.parametrize(
    "bad",
    ["../x", "/abs", "a/../../x", "a\\b", "a\x00b", "./a", "a//b", "a/", "caf\u0065\u0301.json", "x\x1b.json"],
)
def test_signed_manifests_with_unsafe_paths_are_rejected(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys, bad: str
) -> None:
    def mutate(manifest: dict[str, Any]) -> None:
        manifest["files"].append({"path": bad, "role": "other", "size": 1, "sha256": "0" * 64})
        manifest["files"].sort(key=lambda e: e["path"].encode("utf-8", "surrogatepass"))

    resign(pkg, keys, mutate=mutate)
    _rejects(pkg, trusted, check="path")
    assert not (pkg.parent / "x").exists()


def test_case_fold_twins_and_unsorted_or_duplicate_entries_are_rejected(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys
) -> None:
    readme = (pkg / "README.md").read_bytes()

    def twins(manifest: dict[str, Any]) -> None:
        entry = next(e for e in manifest["files"] if e["path"] == "README.md")
        manifest["files"].append({**entry, "path": "readme.md"})
        manifest["files"].sort(key=lambda e: e["path"].encode())

    (pkg / "readme.md").write_bytes(readme) if not (pkg / "readme.md").exists() else None
    resign(pkg, keys, mutate=twins)
    assert "case-fold" in str(_rejects(pkg, trusted, check="path"))
    (pkg / "readme.md").unlink(missing_ok=True)
    resign(pkg, keys, mutate=lambda m: m["files"].reverse())
    assert "sorted" in str(_rejects(pkg, trusted, check="manifest"))
    resign(pkg, keys, mutate=lambda m: m["files"].reverse())
    resign(pkg, keys, mutate=lambda m: m["files"].insert(0, dict(m["files"][0])))
    _rejects(pkg, trusted, check="manifest")


@pytest.mark.parametrize(
    ("mutation", "check"),
    [
        (lambda m: m.update(extra="x"), "manifest"),
        (lambda m: m["package"].update(version=1.5), "manifest"),
        (lambda m: m.update(signature_suite="ed25519"), "signers"),
        (lambda m: m["files"][0].update(size=-1), "manifest"),
        (lambda m: m["files"][0].update(sha256=m["files"][0]["sha256"].upper()), "manifest"),
        (lambda m: m["dp"].update(epsilon="0.5"), "certificate"),
    ],
)
def test_signed_but_invalid_manifests_are_rejected(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys, mutation: Any, check: str
) -> None:
    resign(pkg, keys, mutate=mutation)
    _rejects(pkg, trusted, check=check)


def _safetensors(header: bytes, data: bytes = b"", declared: int | None = None) -> bytes:
    return struct.pack("<Q", len(header) if declared is None else declared) + header + data


@pytest.mark.parametrize(
    ("blob", "reason"),
    [
        (
            _safetensors(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 4, declared=10**6),
            "but the file has only",
        ),
        (_safetensors(b"{}", b"", declared=100_000_001), "cap"),
        (_safetensors(b'{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,4]}}', b"\0" * 4), "shape"),
        (_safetensors(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}', b"\0" * 8), "cover"),
        (_safetensors(b'{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"a":{}}', b"\0" * 4), "duplicate"),
    ],
)
def test_bad_safetensors_headers_are_rejected_even_when_signed(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys, blob: bytes, reason: str
) -> None:
    (pkg / "dp_certificate.json").unlink()
    resign(pkg, keys, replace={WEIGHTS: blob}, mutate=_drop_certificate)
    error = _rejects(pkg, trusted, check="safetensors")
    assert reason in str(error)


def _drop_certificate(manifest: dict[str, Any]) -> None:
    manifest.pop("dp", None)
    manifest["files"] = [e for e in manifest["files"] if e["role"] != "dp-certificate"]


def test_a_pickle_renamed_to_safetensors_is_refused_by_pack_and_by_verify(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys, tmp_path: Path, adapter_dir: Path
) -> None:
    import pickle

    blob = pickle.dumps({"w": [1.0, 2.0]}, protocol=4)
    (adapter_dir / WEIGHTS).write_bytes(blob)
    with pytest.raises(ConfigError, match="pickle"):
        pack(adapter_dir, tmp_path / "p.tssp", keys=keys)
    assert not (tmp_path / "p.tssp").exists()
    (pkg / "dp_certificate.json").unlink()
    resign(pkg, keys, replace={WEIGHTS: blob}, mutate=_drop_certificate)
    assert "pickle" in str(_rejects(pkg, trusted, check="safetensors"))


def test_pack_refuses_pickle_only_adapters(tmp_path: Path, adapter_dir: Path, keys: SigningKeys) -> None:
    (adapter_dir / WEIGHTS).rename(adapter_dir / "adapter_model.bin")
    with pytest.raises(ConfigError, match="pickle is refused"):
        pack(adapter_dir, tmp_path / "p.tssp", keys=keys)


def test_the_certificate_is_bound_to_the_exact_weights(
    pkg: Path, trusted: TrustedKeys, keys: SigningKeys, tmp_path: Path, adapter_dir: Path
) -> None:
    cert = write_certificate(tmp_path / "other.json", adapter_dir / "adapter_config.json")  # wrong digest
    with pytest.raises(ConfigError, match="covers weights"):
        pack(adapter_dir, tmp_path / "p.tssp", keys=keys, certificate=cert)
    assert not (tmp_path / "p.tssp").exists()
    resign(pkg, keys, replace={"dp_certificate.json": cert.read_bytes()})
    assert "not the packaged" in str(_rejects(pkg, trusted, check="certificate"))


def test_training_config_secrets_are_refused(tmp_path: Path, adapter_dir: Path, keys: SigningKeys) -> None:
    for config in (
        {"hub_token": "hf_abc123"},
        {"wandb": {"api_key": "0123456789"}},
        {"db": {"password": "hunter2"}},
        {"tracking_uri": "https://user:pw@mlflow.example.com"},
        # What the shared detector also catches (the same one the trackers' redaction uses):
        {"cache_url": "redis://:Hunter2RedisPass@cache:6379/0"},
        {"launch": "HF_TOKEN='s3cr3t-hub-token-value' python train.py"},
        {"signing_key_pem": "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEIA==\n-----END PRIVATE KEY-----\n"},
        {"db_pass": "Pg-Pa55word!"},
        {"notes": ["password: hunter2-in-yaml"]},
    ):
        with pytest.raises(ConfigError, match="secret"):
            pack(adapter_dir, tmp_path / "p.tssp", keys=keys, training_config=config)
    assert not (tmp_path / "p.tssp").exists()


def test_a_crash_while_packing_leaves_nothing_that_looks_like_a_package(
    tmp_path: Path, adapter_dir: Path, keys: SigningKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    from shared_core.tssp import packing as pack_module

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pack_module, "_write_envelope", interrupted)
    out_dir = tmp_path / "dest"
    with pytest.raises(KeyboardInterrupt):
        pack(adapter_dir, out_dir / "p.tssp", keys=keys, archive=True)
    assert os.listdir(out_dir) == []


def test_pack_refuses_to_overwrite(pkg: Path, adapter_dir: Path, keys: SigningKeys) -> None:
    with pytest.raises(ConfigError, match="already exists"):
        pack(adapter_dir, pkg, keys=keys)


def test_no_environment_variable_skips_a_check(
    pkg: Path, trusted: TrustedKeys, monkeypatch: pytest.MonkeyPatch
) -> None:
    for var in (
        "TENSAFE_SKIP_VERIFY",
        "TENSAFE_INSECURE",
        "TSSP_SKIP_SIGNATURES",
        "TSSP_NO_VERIFY",
        "TENSAFE_VERIFY",
        "TSSP_ALLOW_UNSIGNED",
    ):
        monkeypatch.setenv(var, "1")
    monkeypatch.setenv("TENSAFE_VERIFY", "0")
    data = bytearray((pkg / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (pkg / WEIGHTS).write_bytes(bytes(data))
    _rejects(pkg, trusted, check="sha256")
    import shared_core.tssp as tssp_pkg

    for module in ("verify.py", "signing.py", "_manifest.py", "_fs.py", "_encrypt.py", "_safetensors.py"):
        source = (Path(tssp_pkg.__file__).parent / module).read_text()
        assert "os.environ" not in source, module
        assert "getenv" not in source, module


# ----------------------------------------------------------------------------------------------------------- archive


def _retar(archive: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(buf.getvalue())


def _members(archive: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    out = []
    with tarfile.open(archive) as tar:
        for info in tar.getmembers():
            stream = tar.extractfile(info)
            out.append((info, stream.read() if stream else None))
    return out


def test_archive_tampering_is_rejected(pkg: Path, trusted: TrustedKeys) -> None:
    archive = pkg.with_name(pkg.name + ".tar")
    original = _members(archive)

    def variant(members: list[tuple[tarfile.TarInfo, bytes | None]], check: str) -> None:
        _retar(archive, members)
        _rejects(archive, trusted, check=check)

    variant(original[1:] + original[:1], "archive")  # envelope not first
    extra = tarfile.TarInfo("evil.txt")
    extra.size = 3
    variant([*original, (extra, b"abc")], "unlisted")
    variant([*original, original[1]], "archive")  # duplicate member
    variant(original[:-1], "missing")
    link = tarfile.TarInfo("README.md")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    variant([m for m in original if m[0].name != "README.md"] + [(link, None)], "archive")
    hard = tarfile.TarInfo("README.md")
    hard.type, hard.linkname = tarfile.LNKTYPE, ENVELOPE
    variant([m for m in original if m[0].name != "README.md"] + [(hard, None)], "archive")
    flipped = [(i, d if i.name != WEIGHTS else d[:-1] + bytes([d[-1] ^ 1])) for i, d in original]
    variant(flipped, "sha256")
    _retar(archive, original)
    raw = archive.read_bytes()
    archive.write_bytes(raw[: len(raw) // 2])
    _rejects(archive, trusted, check={"archive", "size", "missing"})
    # Nothing may follow the end marker: neither junk nor a second archive that `tar -i` would extract over ours.
    _retar(archive, original)
    signed = archive.read_bytes()
    archive.write_bytes(signed + b"\0" * 1024 + b"junk")
    _rejects(archive, trusted, check="archive")
    evil = tarfile.TarInfo(WEIGHTS)
    evil.size = 4
    second = io.BytesIO()
    with tarfile.open(fileobj=second, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(evil, io.BytesIO(b"evil"))
    archive.write_bytes(signed + second.getvalue())
    _rejects(archive, trusted, check="archive")
    archive.write_bytes(signed)
    assert verify_package(archive, trusted=trusted)  # the untouched archive (with its zero padding) still verifies


def test_inspect_reports_unverified_contents_without_reading_weights(pkg: Path) -> None:
    (pkg / WEIGHTS).write_bytes(b"garbage")  # inspect neither reads nor checks the weights
    for target in (pkg, pkg.with_name(pkg.name + ".tar")):
        report = inspect_package(target)
        assert report["verified"] is False
        assert "UNVERIFIED" in report["warning"]
        assert report["dp"]["epsilon"] == "3.0"
        assert {f["path"] for f in report["files"]} >= {WEIGHTS, "dp_certificate.json"}
        assert len(report["signers"]) == 2
