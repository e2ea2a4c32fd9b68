"""Build a signed (and optionally encrypted) TSSP package from a peft adapter folder. Torch-free.

The package is assembled in a private temp folder next to ``out`` - every file written with ``O_EXCL`` and fsynced,
the signed envelope last - and renamed into place in one step, so a crash or Ctrl-C never leaves anything that
looks like a complete package at ``out``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import rfc8785

from shared_core.errors import ConfigError, VerificationError
from shared_core.mlops.redaction import find_secrets, has_url_credentials, is_secret_key
from shared_core.tssp import _encrypt
from shared_core.tssp._archive import write_archive
from shared_core.tssp._fs import READ_BLOCK, fsync_dir, open_dir, write_new
from shared_core.tssp._manifest import (
    ENC_SCHEME,
    ENCRYPTED_SUFFIX,
    ENVELOPE_NAME,
    JSON_FILE_MAX,
    MANIFEST_SCHEMA,
    PAYLOAD_TYPE,
    SIGNATURE_SUITE,
    check_path,
    dp_value_str,
    stored_name,
    validate_manifest,
)
from shared_core.tssp._safetensors import SafetensorsChecker
from shared_core.tssp._strict import StrictDecodeError, loads_strict
from shared_core.tssp.keys import ED25519, MLDSA65, SigningKeys
from shared_core.tssp.signing import make_envelope

__all__ = ["WEIGHTS_NAME", "pack"]

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
CONFIG_NAME = "adapter_config.json"
CERTIFICATE_NAME = "dp_certificate.json"
REPORT_NAME = "privacy_report.json"
TRAINING_CONFIG_NAME = "training_config.json"
_RESERVED = {WEIGHTS_NAME, CONFIG_NAME, CERTIFICATE_NAME, REPORT_NAME, TRAINING_CONFIG_NAME, ENVELOPE_NAME}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib", ".npy", ".npz")
_TOKENIZER_NAMES = {"special_tokens_map.json", "vocab.json", "merges.txt", "added_tokens.json"}
_REDACTED = re.compile(r"\A(\**|<?\[?redacted\]?>?|\*+redacted\*+|none|null)\Z", re.IGNORECASE)


def pack(
    adapter_dir: str | Path,
    out: str | Path,
    *,
    keys: SigningKeys,
    certificate: Path | None = None,
    privacy_report: Path | None = None,
    training_config: dict[str, Any] | None = None,
    extra_files: dict[str, Path] | None = None,
    encryption_key: bytes | None = None,
    archive: bool = False,
    base_model: dict[str, Any] | None = None,
    name: str | None = None,
) -> Path:
    """Package a peft adapter folder into a signed TSSP directory at ``out``.

    Args:
        adapter_dir: holds ``adapter_model.safetensors`` and ``adapter_config.json`` (pickle ``.bin`` is refused).
        out: the package directory to create (conventionally ``NAME.tssp``); it must not exist.
        keys: the signer's Ed25519 + ML-DSA-65 keys.
        certificate: the DP certificate JSON; its ``weights.sha256`` must be the SHA-256 of the packed weights.
        privacy_report: a privacy report JSON file, copied as ``privacy_report.json``.
        training_config: the training configuration, already redacted; obvious secrets are refused.
        extra_files: more files to package, ``{name in package: source path}`` (e.g. ``README.md``).
        encryption_key: a 32-byte CEK; the weights are then stored as streamed AES-256-GCM.
        archive: also write ``<out>.tar``, the deterministic transport archive (envelope first).
        base_model: ``{"repo": ..., "revision": <commit sha>, ...}`` binding the adapter to its base (strings).
        name: the package name recorded in the manifest (default: ``out``'s name without ``.tssp``).

    Returns:
        The package directory.

    Raises:
        ConfigError: bad inputs (missing or pickle weights, malformed JSON, secrets, a certificate for other weights,
            an existing ``out``); nothing is left behind.
    """
    adapter = Path(adapter_dir)
    out = Path(out)
    weights_src, config_bytes = _read_adapter(adapter)
    cek = None if encryption_key is None else _encrypt.check_cek(encryption_key)
    cert_bytes, cert = (None, None) if certificate is None else _read_certificate(Path(certificate))
    report_bytes = None if privacy_report is None else _read_json_file(Path(privacy_report), "privacy report")
    training_bytes = None if training_config is None else _training_config_bytes(training_config)
    extras = _check_extras(extra_files or {})
    base = _check_base_model(base_model)
    package_name = name if name is not None else (out.name[: -len(".tssp")] if out.name.endswith(".tssp") else out.name)
    tar_path = out.with_name(out.name + ".tar") if archive else None
    for target in (out, tar_path):
        if target is not None and os.path.lexists(target):
            raise ConfigError(f"{target} already exists; choose a new output path or remove the old package first")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.", suffix=".partial"))
    tmp_tar: Path | None = None
    try:
        root_fd = open_dir(tmp)
        try:
            entries = [_write_weights(root_fd, weights_src, cek)]
            weights_sha = entries[0]["sha256"]
            entries.append(_write_file(root_fd, CONFIG_NAME, config_bytes, role="config"))
            if cert_bytes is not None:
                _bind_certificate(cert, weights_sha)
                entries.append(_write_file(root_fd, CERTIFICATE_NAME, cert_bytes, role="dp-certificate"))
            if report_bytes is not None:
                entries.append(_write_file(root_fd, REPORT_NAME, report_bytes, role="privacy-report"))
            if training_bytes is not None:
                entries.append(_write_file(root_fd, TRAINING_CONFIG_NAME, training_bytes, role="training-config"))
            for rel, (src, role) in extras.items():
                entries.append(_write_file(root_fd, rel, src.read_bytes(), role=role))
            manifest = _build_manifest(package_name, entries, keys, cert=cert, base=base, cek=cek)
            validate_manifest(manifest, trusted=keys.trusted())
            _write_envelope(root_fd, manifest, keys)
            fsync_dir(root_fd)
            if tar_path is not None:
                tmp_tar = write_archive(root_fd, [stored_name(e) for e in entries], tar_path)
        finally:
            os.close(root_fd)
        os.chmod(tmp, 0o755)  # noqa: S103 - a package folder is public content (secrets are refused or encrypted)
        os.rename(tmp, out)
        if tmp_tar is not None and tar_path is not None:
            os.rename(tmp_tar, tar_path)
        fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if tmp_tar is not None:
            with contextlib.suppress(OSError):
                tmp_tar.unlink()
        raise
    logger.info("packed %s (%d files%s)", out, len(entries), ", encrypted weights" if cek else "")
    return out


# ------------------------------------------------------------------------------------------------------------ inputs


def _read_adapter(adapter: Path) -> tuple[Path, bytes]:
    if not adapter.is_dir():
        raise ConfigError(f"adapter folder {adapter} does not exist or is not a folder")
    weights = adapter / WEIGHTS_NAME
    if not weights.is_file():
        pickles = sorted(p.name for p in adapter.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = (
            f" (found pickle weights {', '.join(pickles)}: pickle is refused; save the adapter with "
            "`model.save_pretrained(dir, safe_serialization=True)`)"
            if pickles
            else ""
        )
        raise ConfigError(f"{adapter} has no {WEIGHTS_NAME}{hint}")
    for stray in sorted(p.name for p in adapter.iterdir() if p.suffix in _PICKLE_SUFFIXES):
        logger.warning("not packaging pickle file %s from %s (only safetensors weights are packaged)", stray, adapter)
    config_path = adapter / CONFIG_NAME
    if not config_path.is_file():
        raise ConfigError(f"{adapter} has no {CONFIG_NAME}; save the adapter with peft's save_pretrained")
    config_bytes = _read_json_file(config_path, "adapter config")
    doc = json.loads(config_bytes)
    if not isinstance(doc.get("peft_type"), str):
        raise ConfigError(f"{config_path} has no 'peft_type'; it is not a peft adapter config")
    return weights, config_bytes


def _read_json_file(path: Path, what: str) -> bytes:
    if not path.is_file():
        raise ConfigError(f"{what} {path} does not exist or is not a file")
    if path.stat().st_size > JSON_FILE_MAX:
        raise ConfigError(f"{what} {path} is over the {JSON_FILE_MAX}-byte limit")
    data = path.read_bytes()
    try:
        doc = loads_strict(data, max_size=JSON_FILE_MAX)
    except StrictDecodeError as exc:
        raise ConfigError(f"{what} {path} is not strict JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def _read_certificate(path: Path) -> tuple[bytes, dict[str, Any]]:
    data = _read_json_file(path, "DP certificate")
    cert = json.loads(data)
    guarantee = cert.get("privacy_guarantee")
    if not isinstance(guarantee, dict):
        raise ConfigError(f"DP certificate {path} has no privacy_guarantee object")
    try:
        for field in ("epsilon", "delta", "accountant"):
            dp_value_str(guarantee.get(field), what=f"privacy_guarantee.{field}")
    except ValueError as exc:
        raise ConfigError(f"DP certificate {path}: {exc}") from None
    weights = cert.get("weights")
    if not isinstance(weights, dict) or not isinstance(weights.get("sha256"), str):
        raise ConfigError(
            f"DP certificate {path} has no weights.sha256; a certificate must name the exact weights it covers"
        )
    return data, cert


def _bind_certificate(cert: dict[str, Any] | None, weights_sha: str) -> None:
    assert cert is not None
    bound = cert["weights"]
    if bound["sha256"].lower() != weights_sha:
        raise ConfigError(
            f"the DP certificate covers weights with SHA-256 {bound['sha256']}, but {WEIGHTS_NAME} has {weights_sha}; "
            "package the weights the certificate was issued for (or issue a certificate for these weights)"
        )
    if "file" in bound and bound["file"] != WEIGHTS_NAME:
        raise ConfigError(f"the DP certificate covers weights file {bound['file']!r}, not {WEIGHTS_NAME!r}")


def _find_secret(value: Any, where: str) -> str | None:
    """Where in ``value`` a secret sits, by the same detector as the tracker redaction (names, URLs, token shapes)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if is_secret_key(str(key)) and _holds_secret(item):
                return f"{where}.{key}"
            found = _find_secret(item, f"{where}.{key}")
            if found:
                return found
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _find_secret(item, f"{where}[{index}]")
            if found:
                return found
    elif isinstance(value, str):
        if has_url_credentials(value):
            return f"{where} (a URL with credentials)"
        if find_secrets(value):
            return f"{where} (a token, key or password in the text)"
    return None


def _holds_secret(item: Any) -> bool:
    if item is None or isinstance(item, (bool, int, float)) or item in ("", [], {}):
        return False
    return not (isinstance(item, str) and _REDACTED.match(item.strip()))


def _training_config_bytes(config: dict[str, Any]) -> bytes:
    if not isinstance(config, dict):
        raise ConfigError("training_config must be a dict")
    found = _find_secret(config, "training_config")
    if found:
        raise ConfigError(
            f"{found} looks like a secret (token, password, API key or credentials); redact the training config "
            "before packaging - nothing secret may go into a package"
        )
    try:
        return (json.dumps(config, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training_config is not JSON-serialisable with finite numbers: {exc}") from None


def _check_extras(extras: dict[str, Path]) -> dict[str, tuple[Path, str]]:
    out: dict[str, tuple[Path, str]] = {}
    for rel, src in sorted(extras.items()):
        try:
            check_path(rel)
        except VerificationError as exc:
            raise ConfigError(f"extra file name {rel!r} is not allowed: {exc}") from None
        if rel in _RESERVED or rel.endswith(ENCRYPTED_SUFFIX) or rel.casefold() in {r.casefold() for r in out}:
            raise ConfigError(f"extra file name {rel!r} is reserved or already used; pick another name")
        if rel.lower().endswith(_PICKLE_SUFFIXES):
            raise ConfigError(f"extra file {rel!r} has a pickle-style suffix; pickle is never packaged")
        if not Path(src).is_file():
            raise ConfigError(f"extra file source {src} does not exist or is not a file")
        base = rel.rsplit("/", 1)[-1]
        role = (
            "card"
            if base == "README.md"
            else "tokenizer"
            if base.startswith("tokenizer") or base in _TOKENIZER_NAMES
            else "other"
        )
        out[rel] = (Path(src), role)
    return out


def _check_base_model(base: dict[str, Any] | None) -> dict[str, str] | None:
    if base is None:
        return None
    if not isinstance(base, dict) or not isinstance(base.get("repo"), str) or not base["repo"]:
        raise ConfigError("base_model must be a dict with at least a non-empty 'repo' (and ideally 'revision')")
    bad = [k for k, v in base.items() if not isinstance(k, str) or not isinstance(v, str) or not v]
    if bad:
        raise ConfigError(f"base_model values must be non-empty strings (bad: {bad})")
    return dict(base)


# ------------------------------------------------------------------------------------------------------------ writing


def _ensure_parent(root_fd: int, rel: str) -> tuple[int, str, list[int]]:
    parts = rel.split("/")
    fds: list[int] = []
    parent = root_fd
    for part in parts[:-1]:
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, 0o755, dir_fd=parent)
        parent = open_dir(part, dir_fd=parent, name=rel)
        fds.append(parent)
    return parent, parts[-1], fds


def _write_file(root_fd: int, rel: str, data: bytes, *, role: str) -> dict[str, Any]:
    parent, base, fds = _ensure_parent(root_fd, rel)
    try:
        write_new(parent, base, [data])
        fsync_dir(parent)
    finally:
        for fd in fds:
            os.close(fd)
    return {"path": rel, "role": role, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _source_blocks(src: Path, size: int, block: int) -> Iterator[bytes]:
    with open(src, "rb", buffering=0) as fh:
        remaining = size
        while remaining > 0:
            data = fh.read(min(block, remaining))
            if not data:
                raise ConfigError(f"{src} shrank while it was being packaged; try again")
            remaining -= len(data)
            yield data
        if fh.read(1):
            raise ConfigError(f"{src} grew while it was being packaged; try again")


def _write_weights(root_fd: int, src: Path, cek: bytes | None) -> dict[str, Any]:
    size = src.stat().st_size
    checker = SafetensorsChecker(str(src), size)
    plain_hash = hashlib.sha256()
    if cek is None:

        def plain() -> Iterator[bytes]:
            for data in _source_blocks(src, size, READ_BLOCK):
                plain_hash.update(data)
                checker.update(data)
                yield data

        _checked_write(root_fd, WEIGHTS_NAME, plain())
        _finish_check(checker)
        return {"path": WEIGHTS_NAME, "role": "weights", "size": size, "sha256": plain_hash.hexdigest()}

    chunk = _encrypt.DEFAULT_CHUNK
    enc = _encrypt.StreamEncryptor(cek, path=WEIGHTS_NAME, length=size, salt=os.urandom(32), chunk=chunk)
    cipher_hash = hashlib.sha256()

    def sealed() -> Iterator[bytes]:
        cipher_hash.update(enc.header)
        yield enc.header
        for data in _source_blocks(src, size, chunk) if size else iter([b""]):
            plain_hash.update(data)
            checker.update(data)
            out = enc.seal(data)
            cipher_hash.update(out)
            yield out

    stored = WEIGHTS_NAME + ENCRYPTED_SUFFIX
    written = _checked_write(root_fd, stored, sealed())
    _finish_check(checker)
    assert enc.done
    assert written == _encrypt.ciphertext_size(size, chunk)
    return {
        "path": WEIGHTS_NAME,
        "role": "weights",
        "size": size,
        "sha256": plain_hash.hexdigest(),
        "stored_path": stored,
        "scheme": ENC_SCHEME,
        "chunk_size": chunk,
        "ciphertext_size": written,
        "ciphertext_sha256": cipher_hash.hexdigest(),
    }


def _checked_write(root_fd: int, name: str, blocks: Iterator[bytes]) -> int:
    try:
        return write_new(root_fd, name, blocks)
    except VerificationError as exc:
        raise ConfigError(f"refusing to package weights: {exc}") from None


def _finish_check(checker: SafetensorsChecker) -> None:
    try:
        checker.finalize()
    except VerificationError as exc:
        raise ConfigError(f"refusing to package weights: {exc}") from None


def _created() -> str:
    epoch = os.environ.get("SOURCE_DATE_EPOCH")  # reproducible builds; changes only the recorded time
    stamp = int(epoch) if epoch and epoch.isdigit() else int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(stamp))


def _build_manifest(
    name: str,
    entries: list[dict[str, Any]],
    keys: SigningKeys,
    *,
    cert: dict[str, Any] | None,
    base: dict[str, str] | None,
    cek: bytes | None,
) -> dict[str, Any]:
    from shared_core import __version__

    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "package": {"name": name, "version": 1, "created": _created(), "producer": f"tensafe {__version__}"},
        "signature_suite": SIGNATURE_SUITE,
        "signers": [{"alg": ED25519, "keyid": keys.ed25519_keyid}, {"alg": MLDSA65, "keyid": keys.mldsa65_keyid}],
        "files": sorted(entries, key=lambda e: e["path"].encode("utf-8")),
    }
    if cert is not None:
        guarantee = cert["privacy_guarantee"]
        dp = {"certificate_path": CERTIFICATE_NAME}
        for field in ("epsilon", "delta", "accountant", "mechanism"):
            if field in guarantee or field != "mechanism":
                dp[field] = dp_value_str(guarantee.get(field), what=f"privacy_guarantee.{field}")
        manifest["dp"] = dp
    if base is not None:
        manifest["base_model"] = base
    if cek is not None:
        manifest["encryption"] = {"scheme": ENC_SCHEME, "key_id": _encrypt.key_id(cek)}
    return manifest


def _write_envelope(root_fd: int, manifest: dict[str, Any], keys: SigningKeys) -> None:
    """Sign ``manifest`` (RFC 8785 bytes) and write the envelope. Does not validate: callers do."""
    payload = rfc8785.dumps(manifest)
    envelope = make_envelope(payload, payload_type=PAYLOAD_TYPE, keys=keys)
    write_new(root_fd, ENVELOPE_NAME, [(json.dumps(envelope, indent=2, sort_keys=True) + "\n").encode("ascii")])
