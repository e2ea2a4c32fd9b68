"""What of a TSSP package goes to the Hub, read from the exact bytes that match the signed manifest.

After :func:`shared_core.tssp.package.verify_package` passed, every file that will be uploaded is read once more and
its size and SHA-256 are compared with the manifest (the ciphertext digest for an encrypted file), so the bytes sent
are the bytes that were verified even if the folder changed in between. The envelope is re-opened with the pinned
keys to get the signed payload, whose SHA-256 is the manifest digest the model card names.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_core.errors import ConfigError, VerificationError

__all__ = ["PackageView", "file_sha256", "read_package", "read_regular_file"]

logger = logging.getLogger(__name__)

_ENVELOPE = "tssp.dsse.json"
_ENVELOPE_MAX = 4 * 1024 * 1024


@dataclass
class PackageView:
    """A package as it will be published.

    Attributes:
        path: the package folder.
        manifest: the signed manifest (parsed from the verified payload when ``verified``).
        manifest_sha256: SHA-256 hex of the signed manifest payload bytes.
        certificate: the parsed DP certificate (from bytes matching the manifest).
        uploads: ``(path in repo, bytes)`` for every file to upload, the envelope included.
        encrypted: the package has encrypted files.
        weights_included: every weights file of the package is in ``uploads``.
        verified: the package passed ``verify_package`` with pinned keys.
    """

    path: Path
    manifest: dict[str, Any]
    manifest_sha256: str
    certificate: dict[str, Any]
    uploads: list[tuple[str, bytes]] = field(repr=False)
    encrypted: bool
    weights_included: bool
    verified: bool


def read_regular_file(path: Path, *, limit: int) -> bytes:
    """Read a regular file without following a symlink, refusing more than ``limit`` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError as exc:
        message = f"{path.name}: cannot be read ({exc.strerror})"
        raise VerificationError(message, path=path.name, check="files") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise VerificationError(f"{path.name} is not a regular file", path=path.name, check="files")
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise VerificationError(f"{path.name} is larger than {limit} bytes", path=path.name, check="files")
    return data


def file_sha256(data: bytes) -> str:
    """SHA-256 hex digest."""
    return hashlib.sha256(data).hexdigest()


def _payload(envelope: bytes, trusted: Any | None) -> bytes:
    """The signed manifest payload: verified with ``trusted`` when given, else only decoded."""
    if trusted is not None:
        from shared_core.tssp._manifest import PAYLOAD_TYPE
        from shared_core.tssp.signing import open_envelope

        return open_envelope(envelope, payload_type=PAYLOAD_TYPE, trusted=trusted)
    try:
        doc = json.loads(envelope)
        return base64.b64decode(doc["payload"], validate=True)
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise VerificationError(f"{_ENVELOPE} is malformed ({exc})", path=_ENVELOPE, check="envelope") from None


def _manifest(payload: bytes, trusted: Any | None) -> dict[str, Any]:
    if trusted is not None:
        from shared_core.tssp._manifest import parse_manifest

        return parse_manifest(payload, trusted=trusted)
    try:
        manifest = json.loads(payload)
    except ValueError as exc:
        raise VerificationError(f"signed manifest is not JSON ({exc})", path=_ENVELOPE, check="manifest") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        raise VerificationError("signed manifest has no file list", path=_ENVELOPE, check="manifest")
    return manifest


def _expected(entry: dict[str, Any]) -> tuple[str, int, str]:
    """(name in the package, size, sha256) of the bytes stored for a manifest entry."""
    if "stored_path" in entry:
        return str(entry["stored_path"]), int(entry["ciphertext_size"]), str(entry["ciphertext_sha256"])
    return str(entry["path"]), int(entry["size"]), str(entry["sha256"])


def read_package(
    path: str | os.PathLike[str], *, trusted: Any | None, include_encrypted_weights: bool
) -> PackageView:
    """Verify (when ``trusted`` is given) and read a package folder for upload.

    Args:
        path: the ``X.tssp`` folder.
        trusted: pinned :class:`~shared_core.tssp.keys.TrustedKeys`; ``None`` skips verification (the caller opted
            out with ``require_tssp_verification=False``).
        include_encrypted_weights: put encrypted weight files in the upload set.

    Raises:
        ConfigError: ``path`` is not a package folder.
        VerificationError: the package fails verification, or a file differs from the manifest (named).
    """
    root = Path(path)
    if not root.is_dir() or not (root / _ENVELOPE).is_file():
        raise ConfigError(
            f"{root} is not a TSSP package folder (a directory holding {_ENVELOPE}); pass the X.tssp folder written "
            "by `tensafe pack`"
        )
    if trusted is not None:
        from shared_core.tssp.verify import verify_package

        verify_package(root, trusted=trusted)
    envelope = read_regular_file(root / _ENVELOPE, limit=_ENVELOPE_MAX)
    payload = _payload(envelope, trusted)
    manifest = _manifest(payload, trusted)
    uploads: list[tuple[str, bytes]] = []
    certificate: dict[str, Any] | None = None
    encrypted = False
    weights_included = True
    for entry in manifest["files"]:
        name, size, digest = _expected(entry)
        is_encrypted = "stored_path" in entry
        encrypted = encrypted or is_encrypted
        if is_encrypted and entry.get("role") == "weights" and not include_encrypted_weights:
            weights_included = False
            continue
        data = read_regular_file(root / name, limit=size)
        if len(data) != size or file_sha256(data) != digest:
            raise VerificationError(
                f"{name} changed after verification (size or SHA-256 differs from the signed manifest); nothing was "
                "uploaded",
                path=name,
                check="digest",
            )
        if entry.get("role") == "dp-certificate":
            if is_encrypted:
                raise ConfigError("the DP certificate is encrypted; the Hub card needs it in clear: re-pack it")
            certificate = _certificate(data, name)
        uploads.append((name, data))
    if certificate is None:
        raise ConfigError(f"{root} has no DP certificate (role dp-certificate); only certified models are published")
    uploads.append((_ENVELOPE, envelope))
    return PackageView(
        path=root,
        manifest=manifest,
        manifest_sha256=file_sha256(payload),
        certificate=certificate,
        uploads=uploads,
        encrypted=encrypted,
        weights_included=weights_included,
        verified=trusted is not None,
    )


def _certificate(data: bytes, name: str) -> dict[str, Any]:
    try:
        cert = json.loads(data)
    except ValueError as exc:
        raise VerificationError(f"{name} is not JSON ({exc})", path=name, check="certificate") from None
    if not isinstance(cert, dict):
        raise VerificationError(f"{name} is not a JSON object", path=name, check="certificate")
    return cert
