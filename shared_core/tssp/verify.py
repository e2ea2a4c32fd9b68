"""Verify and inspect a TSSP package, as a directory or as a tar archive (TSSP.md 6.7). Torch-free.

Order of checks, each failing closed with one line naming the file and the check:

1. bounded read of ``tssp.dsse.json``; strict JSON and base64;
2. both signatures, by the pinned keys, over the exact payload bytes;
3. the manifest: canonical JSON, schema, signer pair, path rules, limits - before any package file is opened;
4. the file set equals manifest paths plus the envelope; no links, no hardlinks, nothing else;
5. each file through an ``O_NOFOLLOW`` descriptor (or a regular tar member), reading at most ``size + 1`` bytes:
   size and SHA-256; for encrypted files the ciphertext digest, then decryption and the plaintext digest;
6. content: safetensors structure, JSON of config, certificate and reports, and the certificate's binding to the
   exact weights and to the manifest's ``dp`` claim.

Nothing is extracted and nothing is written: archives are streamed and hashed. No setting from the process
environment changes any of this.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from shared_core.errors import ConfigError, VerificationError
from shared_core.tssp import _encrypt
from shared_core.tssp._fs import READ_BLOCK, list_tree, open_dir, open_member, read_blocks
from shared_core.tssp._manifest import (
    ENVELOPE_NAME,
    JSON_FILE_MAX,
    PAYLOAD_TYPE,
    dp_value_str,
    parse_manifest,
    stored_name,
    validate_manifest,
)
from shared_core.tssp._safetensors import SafetensorsChecker
from shared_core.tssp._strict import StrictDecodeError, b64decode_strict, loads_strict
from shared_core.tssp.keys import TrustedKeys
from shared_core.tssp.signing import ENVELOPE_MAX_BYTES, open_envelope

__all__ = ["inspect_package", "verify_package"]

logger = logging.getLogger(__name__)

_JSON_ROLES = frozenset({"config", "dp-certificate", "privacy-report", "training-config"})


def verify_package(path: str | Path, *, trusted: TrustedKeys, decryption_key: bytes | None = None) -> dict[str, Any]:
    """Verify a package directory or tar archive against the pinned keys and return the verified manifest.

    Args:
        path: the package directory (``NAME.tssp/``) or its tar archive.
        trusted: the two pinned public keys (see :func:`~shared_core.tssp.keys.load_trusted_keys`).
        decryption_key: the 32-byte CEK of an encrypted package. Without it, encrypted files are checked against
            their signed ciphertext digest only and their plaintext is not checked.

    Returns:
        The manifest, parsed from the verified bytes.

    Raises:
        VerificationError: ``path`` names the file and ``check`` the check that failed.
    """
    manifest, _ = verify_and_read(path, trusted=trusted, decryption_key=decryption_key, keep=())
    return manifest


def verify_and_read(
    path: str | Path, *, trusted: TrustedKeys, decryption_key: bytes | None, keep: Iterable[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Verify like :func:`verify_package` and also return the verified plaintext of the files whose role is in ``keep``.

    Returns ``(manifest, {path: bytes})``.

    The returned bytes are the very bytes that were hashed; they are released only after every check passed.
    """
    if not isinstance(trusted, TrustedKeys):
        raise ConfigError("trusted must be a TrustedKeys (use load_trusted_keys on a key folder or trusted-keys file)")
    cek = None if decryption_key is None else _encrypt.check_cek(decryption_key)
    source = Path(path)
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise VerificationError(f"{source}: no such package", path=str(source), check="layout") from None
    wanted = set(keep)
    if stat.S_ISDIR(info.st_mode):
        manifest, kept = _verify_directory(source, trusted, cek, wanted)
    elif stat.S_ISREG(info.st_mode):
        manifest, kept = _verify_archive(source, trusted, cek, wanted)
    else:
        raise VerificationError(
            f"{source}: not a package directory or tar archive (symbolic links are not followed)",
            path=str(source),
            check="layout",
        )
    logger.info("verified package %s (%s)", source, manifest["package"]["name"])
    return manifest, kept


# ------------------------------------------------------------------------------------------------------ manifest step


def _open_manifest(raw: bytes, trusted: TrustedKeys, cek: bytes | None) -> dict[str, Any]:
    try:
        payload = open_envelope(raw, payload_type=PAYLOAD_TYPE, trusted=trusted)
    except VerificationError as exc:
        raise VerificationError(f"{ENVELOPE_NAME}: {exc}", path=ENVELOPE_NAME, check=exc.check) from None
    manifest = parse_manifest(payload, trusted=trusted)
    encryption = manifest.get("encryption")
    if encryption is not None and cek is not None and _encrypt.key_id(cek) != encryption["key_id"]:
        raise VerificationError(
            f"the decryption key is not this package's key (package key_id {encryption['key_id']})",
            path=ENVELOPE_NAME,
            check="decrypt",
        )
    return manifest


# -------------------------------------------------------------------------------------------------------- file check


class _EntryCheck:
    """Hash (and decrypt, and structurally check) one file's stored bytes as they stream past."""

    def __init__(self, entry: dict[str, Any], cek: bytes | None, keep: bool) -> None:
        self.entry = entry
        self.path: str = entry["path"]
        self.stored = stored_name(entry)
        self.encrypted = "stored_path" in entry
        self.stored_size: int = entry["ciphertext_size"] if self.encrypted else entry["size"]
        self._stored_hash = hashlib.sha256()
        self._stored_seen = 0
        self._plain_hash = hashlib.sha256() if self.encrypted else self._stored_hash
        self._plain_seen = 0
        self._checker = SafetensorsChecker(self.path, entry["size"]) if entry["role"] == "weights" else None
        self._collect = bytearray() if keep or entry["role"] in _JSON_ROLES else None
        self._content_error: VerificationError | None = None
        self._decrypt_error: VerificationError | None = None
        self._decryptor: _encrypt.StreamDecryptor | None = None
        self.plaintext_checked = not self.encrypted or cek is not None
        if entry["role"] in _JSON_ROLES and entry["size"] > JSON_FILE_MAX:
            raise VerificationError(
                f"{self.path}: {entry['size']} bytes is over the {JSON_FILE_MAX}-byte limit for JSON files",
                path=self.path,
                check="limits",
            )
        if self.encrypted and cek is not None:
            self._decryptor = _encrypt.StreamDecryptor(
                cek,
                path=self.path,
                stored=self.stored,
                expected_length=entry["size"],
                expected_chunk=entry["chunk_size"],
                sink=self._plain,
            )

    def feed(self, data: bytes) -> None:
        self._stored_seen += len(data)
        if self._stored_seen > self.stored_size:
            return  # reported as a size mismatch in finish(); nothing past size + 1 is read anyway
        self._stored_hash.update(data)
        if not self.encrypted:
            self._plain(data)
        elif self._decryptor is not None and self._decrypt_error is None:
            try:
                self._decryptor.update(data)
            except VerificationError as exc:
                self._decrypt_error = exc

    def _plain(self, data: bytes) -> None:
        if self.encrypted:
            self._plain_hash.update(data)
        self._plain_seen += len(data)
        if self._checker is not None and self._content_error is None:
            try:
                self._checker.update(data)
            except VerificationError as exc:
                self._content_error = exc
        if self._collect is not None:
            self._collect += data

    def _fail(self, name: str, reason: str, check: str) -> VerificationError:
        return VerificationError(f"{name}: {reason}", path=name, check=check)

    def finish(self) -> bytes | None:
        what = "ciphertext " if self.encrypted else ""
        if self._stored_seen != self.stored_size:
            raise self._fail(
                self.stored,
                f"{what}size differs from the signed manifest ({self.stored_size} bytes expected; "
                "the file was truncated or extended)",
                "size",
            )
        expected_hash = self.entry["ciphertext_sha256"] if self.encrypted else self.entry["sha256"]
        if self._stored_hash.hexdigest() != expected_hash:
            raise self._fail(self.stored, f"{what}SHA-256 differs from the signed manifest (file modified)", "sha256")
        if not self.plaintext_checked:
            return None
        if self._decryptor is not None:
            if self._decrypt_error is not None:
                raise self._decrypt_error
            self._decryptor.finalize()
            if self._plain_seen != self.entry["size"] or self._plain_hash.hexdigest() != self.entry["sha256"]:
                raise self._fail(
                    self.stored, "decrypted plaintext does not match the signed SHA-256 (wrong key?)", "sha256"
                )
        if self._content_error is not None:
            raise self._content_error
        if self._checker is not None:
            self._checker.finalize()
        data = None if self._collect is None else bytes(self._collect)
        if data is not None and self.entry["role"] in _JSON_ROLES:
            _check_json_file(self.path, self.entry["role"], data)
        return data


def _check_json_file(path: str, role: str, data: bytes) -> Any:
    try:
        doc = loads_strict(data, max_size=JSON_FILE_MAX)
    except StrictDecodeError as exc:
        raise VerificationError(f"{path}: not strict JSON ({exc})", path=path, check="content") from None
    if not isinstance(doc, dict):
        raise VerificationError(f"{path}: must hold a JSON object", path=path, check="content")
    if role == "config" and not isinstance(doc.get("peft_type"), str):
        raise VerificationError(f"{path}: adapter config has no string 'peft_type'", path=path, check="content")
    return doc


def _check_certificate(manifest: dict[str, Any], data: bytes) -> None:
    """The certificate must back the manifest's ``dp`` claim and be bound to the exact packaged weights."""
    dp = manifest["dp"]
    name = dp["certificate_path"]
    cert = _check_json_file(name, "dp-certificate", data)
    guarantee = cert.get("privacy_guarantee")
    if not isinstance(guarantee, dict):
        raise VerificationError(f"{name}: no privacy_guarantee object", path=name, check="certificate")
    for field, signed in dp.items():
        if field == "certificate_path":
            continue
        try:
            claimed = dp_value_str(guarantee.get(field), what=f"privacy_guarantee.{field}")
        except ValueError as exc:
            raise VerificationError(f"{name}: {exc}", path=name, check="certificate") from None
        if claimed != signed:
            raise VerificationError(
                f"{name}: privacy_guarantee.{field} = {claimed!r} but the signed manifest claims {signed!r}",
                path=name,
                check="certificate",
            )
    weights_entry = next(e for e in manifest["files"] if e["role"] == "weights")
    bound = cert.get("weights")
    if not isinstance(bound, dict) or not isinstance(bound.get("sha256"), str):
        raise VerificationError(
            f"{name}: no weights.sha256 binding the certificate to weights", path=name, check="certificate"
        )
    if bound["sha256"].lower() != weights_entry["sha256"]:
        raise VerificationError(
            f"{name}: certifies weights with SHA-256 {bound['sha256'][:16]}..., not the packaged "
            f"{weights_entry['path']} ({weights_entry['sha256'][:16]}...)",
            path=name,
            check="certificate",
        )
    if "file" in bound and bound["file"] != weights_entry["path"]:
        raise VerificationError(
            f"{name}: certifies weights file {str(bound['file'])[:80]!r}, not {weights_entry['path']!r}",
            path=name,
            check="certificate",
        )


def _finish_all(manifest: dict[str, Any], results: dict[str, bytes | None], keep: set[str]) -> dict[str, bytes]:
    if "dp" in manifest:
        cert = results.get(manifest["dp"]["certificate_path"])
        if cert is not None:
            _check_certificate(manifest, cert)
    roles = {e["path"]: e["role"] for e in manifest["files"]}
    return {path: data for path, data in results.items() if roles[path] in keep and data is not None}


def _check_keep(manifest: dict[str, Any], keep: set[str], cek: bytes | None) -> None:
    for entry in manifest["files"]:
        if entry["role"] in keep and "stored_path" in entry and cek is None:
            raise VerificationError(
                f"{entry['path']}: is encrypted; pass the package's decryption key to load it",
                path=entry["path"],
                check="decrypt",
            )


# --------------------------------------------------------------------------------------------------------- directory


def _verify_directory(
    root: Path, trusted: TrustedKeys, cek: bytes | None, keep: set[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    root_fd = open_dir(root, name=str(root))
    try:
        try:
            env_fd = open_member(root_fd, ENVELOPE_NAME)
        except VerificationError as exc:
            raise VerificationError(
                f"{ENVELOPE_NAME}: missing or not a regular file - not a signed TSSP package ({exc})",
                path=ENVELOPE_NAME,
                check="envelope",
            ) from None
        try:
            raw = b"".join(read_blocks(env_fd, ENVELOPE_MAX_BYTES + 1))
        finally:
            os.close(env_fd)
        manifest = _open_manifest(raw, trusted, cek)
        _check_keep(manifest, keep, cek)
        expected = {stored_name(e) for e in manifest["files"]} | {ENVELOPE_NAME}
        present = set(list_tree(root_fd))
        for name in sorted(present - expected):
            raise VerificationError(
                f"{name}: not listed in the signed manifest (added or renamed file)", path=name, check="unlisted"
            )
        for name in sorted(expected - present):
            raise VerificationError(f"{name}: listed in the signed manifest but missing", path=name, check="missing")
        results: dict[str, bytes | None] = {}
        for entry in manifest["files"]:
            check = _EntryCheck(entry, cek, entry["role"] in keep)
            fd = open_member(root_fd, check.stored)
            try:
                for block in read_blocks(fd, check.stored_size + 1):
                    check.feed(block)
            finally:
                os.close(fd)
            results[entry["path"]] = check.finish()
        return manifest, _finish_all(manifest, results, keep)
    finally:
        os.close(root_fd)


# ----------------------------------------------------------------------------------------------------------- archive


def _open_archive(path: Path) -> IO[bytes]:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise VerificationError(f"{path}: not a regular file", path=str(path), check="archive")
    return os.fdopen(fd, "rb")


def _member_kind_error(member: tarfile.TarInfo) -> VerificationError | None:
    if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
        return None
    kind = {
        tarfile.SYMTYPE: "symbolic link",
        tarfile.LNKTYPE: "hard link",
        tarfile.DIRTYPE: "directory",
    }.get(member.type, "special member")
    return VerificationError(
        f"{member.name[:200]}: a {kind} in the archive is refused (only regular files)",
        path=member.name[:200],
        check="archive",
    )


def _verify_archive(
    path: Path, trusted: TrustedKeys, cek: bytes | None, keep: set[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    with _open_archive(path) as fh:
        try:
            return _read_archive(fh, trusted, cek, keep)
        except VerificationError:
            raise
        except (tarfile.TarError, EOFError, UnicodeError, ValueError) as exc:
            raise VerificationError(
                f"{path.name}: malformed or truncated tar archive ({exc})", path=str(path), check="archive"
            ) from None


def _read_archive(
    fh: IO[bytes], trusted: TrustedKeys, cek: bytes | None, keep: set[str]
) -> tuple[dict[str, Any], dict[str, bytes]]:
    tar = tarfile.open(fileobj=fh, mode="r|")  # noqa: SIM115 - streamed, uncompressed, never extracted; caller closes fh
    first = tar.next()
    if first is None or first.name != ENVELOPE_NAME:
        shown = "nothing" if first is None else repr(first.name[:100])
        raise VerificationError(
            f"{ENVELOPE_NAME}: must be the first archive member, found {shown}", path=ENVELOPE_NAME, check="archive"
        )
    error = _member_kind_error(first)
    if error is not None:
        raise error
    if first.size > ENVELOPE_MAX_BYTES:
        raise VerificationError(f"{ENVELOPE_NAME}: over the 4 MiB limit", path=ENVELOPE_NAME, check="envelope")
    stream = tar.extractfile(first)
    assert stream is not None
    manifest = _open_manifest(stream.read(ENVELOPE_MAX_BYTES + 1), trusted, cek)
    _check_keep(manifest, keep, cek)
    entries = {stored_name(e): e for e in manifest["files"]}
    results: dict[str, bytes | None] = {}
    seen: set[str] = set()
    while (member := tar.next()) is not None:
        name = member.name
        error = _member_kind_error(member)
        if error is not None:
            raise error
        if name == ENVELOPE_NAME or name in seen:
            raise VerificationError(f"{name}: appears twice in the archive", path=name, check="archive")
        if name not in entries:
            raise VerificationError(
                f"{name[:200]}: not listed in the signed manifest (added or renamed file)",
                path=name[:200],
                check="unlisted",
            )
        seen.add(name)
        entry = entries[name]
        check = _EntryCheck(entry, cek, entry["role"] in keep)
        if member.size != check.stored_size:
            raise VerificationError(
                f"{name}: size differs from the signed manifest ({check.stored_size} bytes expected)",
                path=name,
                check="size",
            )
        stream = tar.extractfile(member)
        assert stream is not None
        remaining = check.stored_size + 1
        while remaining > 0 and (block := stream.read(min(READ_BLOCK, remaining))):
            remaining -= len(block)
            check.feed(block)
        results[entry["path"]] = check.finish()
    for name in sorted(set(entries) - seen):
        raise VerificationError(f"{name}: listed in the signed manifest but missing", path=name, check="missing")
    _check_archive_end(fh, tar.offset)
    return manifest, _finish_all(manifest, results, keep)


def _check_archive_end(fh: IO[bytes], end: int) -> None:
    """After the last member only the tar end marker's zero padding may follow: no byte is left unaccounted for (a
    second archive appended after the end marker would be read by ``tar -i`` and tools that concatenate archives)."""
    fh.seek(end)
    limit = tarfile.RECORDSIZE + 2 * tarfile.BLOCKSIZE
    rest = fh.read(limit + 1)
    if len(rest) > limit or rest.count(0) != len(rest):
        raise VerificationError(
            "archive: bytes follow the end of the archive (appended data or a second archive)",
            path="archive",
            check="archive",
        )


# ----------------------------------------------------------------------------------------------------------- inspect


def inspect_package(path: str | Path) -> dict[str, Any]:
    """Describe a package WITHOUT verifying it: files, signer key IDs, the DP claim. No weights are read.

    Everything returned comes from unverified bytes (``"verified": False``); run :func:`verify_package` with the
    signer's pinned keys before trusting any of it.

    Raises:
        VerificationError: the package is not readable at all (no envelope, unparseable manifest).
    """
    source = Path(path)
    try:
        info = os.lstat(source)
    except FileNotFoundError:
        raise VerificationError(f"{source}: no such package", path=str(source), check="layout") from None
    listing: list[dict[str, Any]] = []
    if stat.S_ISDIR(info.st_mode):
        kind = "directory"
        root_fd = open_dir(source, name=str(source))
        try:
            fd = open_member(root_fd, ENVELOPE_NAME)
            try:
                raw = b"".join(read_blocks(fd, ENVELOPE_MAX_BYTES + 1))
            finally:
                os.close(fd)
            try:
                names = list(list_tree(root_fd))
            except VerificationError as exc:
                names = [f"<unreadable: {exc}>"]
        finally:
            os.close(root_fd)
        listing = [{"name": n} for n in names]
    elif stat.S_ISREG(info.st_mode):
        kind = "archive"
        raw, listing = _inspect_archive(source)
    else:
        raise VerificationError(f"{source}: not a package directory or archive", path=str(source), check="layout")
    manifest, envelope_keyids = _unverified_manifest(raw)
    problems: list[str] = []
    try:
        validate_manifest(manifest, trusted=None)
    except VerificationError as exc:
        problems.append(str(exc))
    raw_files = manifest.get("files")
    files: list[Any] = raw_files if isinstance(raw_files, list) else []
    return {
        "verified": False,
        "warning": "UNVERIFIED: nothing here is checked; run `tensafe verify` with the signer's pinned public keys",
        "path": str(source),
        "format": kind,
        "package": manifest.get("package"),
        "signature_suite": manifest.get("signature_suite"),
        "signers": manifest.get("signers"),
        "envelope_keyids": envelope_keyids,
        "dp": manifest.get("dp"),
        "base_model": manifest.get("base_model"),
        "encryption": manifest.get("encryption"),
        "files": [
            {k: f.get(k) for k in ("path", "role", "size", "sha256", "stored_path") if k in f}
            for f in files
            if isinstance(f, dict)
        ],
        "present": listing,
        "problems": problems,
    }


def _inspect_archive(source: Path) -> tuple[bytes, list[dict[str, Any]]]:
    listing: list[dict[str, Any]] = []
    raw = b""
    with _open_archive(source) as fh:
        try:
            tar = tarfile.open(fileobj=fh, mode="r|")  # noqa: SIM115 - the caller closes fh
            while (member := tar.next()) is not None:
                listing.append({"name": member.name[:300], "size": member.size, "regular": member.isreg()})
                if len(listing) == 1 and member.name == ENVELOPE_NAME and member.size <= ENVELOPE_MAX_BYTES:
                    stream = tar.extractfile(member)
                    raw = stream.read(ENVELOPE_MAX_BYTES + 1) if stream is not None else b""
                if len(listing) > 100_000:
                    break
        except (tarfile.TarError, EOFError, ValueError) as exc:
            listing.append({"name": f"<archive error: {exc}>"})
    if not raw:
        raise VerificationError(
            f"{source}: the first member is not a readable {ENVELOPE_NAME}", path=str(source), check="envelope"
        )
    return raw, listing


def _unverified_manifest(raw: bytes) -> tuple[dict[str, Any], list[str]]:
    try:
        env = loads_strict(raw, max_size=ENVELOPE_MAX_BYTES, allow_floats=False)
        payload = b64decode_strict(env["payload"], max_len=ENVELOPE_MAX_BYTES)
        manifest = loads_strict(payload, max_size=ENVELOPE_MAX_BYTES, allow_floats=False)
        keyids = [str(s.get("keyid")) for s in env.get("signatures", []) if isinstance(s, dict)]
    except (StrictDecodeError, KeyError, TypeError, AttributeError) as exc:
        raise VerificationError(
            f"{ENVELOPE_NAME}: cannot be read ({exc})", path=ENVELOPE_NAME, check="envelope"
        ) from None
    if not isinstance(manifest, dict):
        raise VerificationError(f"{ENVELOPE_NAME}: payload is not a JSON object", path=ENVELOPE_NAME, check="manifest")
    return manifest, keyids
