"""Hybrid signing keys: one Ed25519 and one ML-DSA-65 key, always generated, stored and loaded together.

Layout of a key directory (TSSP.md 6.5)::

    ed25519.key   mldsa65.key     private keys, mode 0600: PKCS#8 PEM, or our passphrase wrapper (below)
    ed25519.pub   mldsa65.pub     public keys: SPKI PEM

A key ID is ``"sha256:" + hex(SHA-256(SPKI DER))``. Verifiers pin both public keys (a key directory or a trusted-keys
JSON file ``{"ed25519": {"keyid", "spki_pem"}, "ml-dsa-65": {...}}``); keys shipped inside a package are never
trusted.

Passphrase protection does not use the library's encrypted PKCS#8 (PBKDF2 with 2048 iterations, not tunable).
The private key file is instead a JSON object::

    {"format": "tensafe-key/v1", "kdf": "argon2id", "t": 3, "m": 65536, "p": 4, "salt": <b64>,
     "cipher": "aes-256-gcm", "nonce": <b64>, "ct": <b64>}

where ``ct`` is AES-256-GCM over the PKCS#8 DER, keyed by Argon2id(passphrase), with the RFC 8785 form of every
field except ``ct`` as associated data, so the parameters cannot be changed without detection.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, mldsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

from shared_core.errors import ConfigError
from shared_core.tssp._strict import StrictDecodeError, b64decode_strict, b64encode, loads_strict

__all__ = [
    "ED25519",
    "KEY_FILES",
    "MLDSA65",
    "SigningKeys",
    "TrustedKeys",
    "generate_keys",
    "keyid_for",
    "load_signing_keys",
    "load_trusted_keys",
]

logger = logging.getLogger(__name__)

ED25519 = "ed25519"
MLDSA65 = "ml-dsa-65"

#: file names inside a key directory, per algorithm: (private, public)
KEY_FILES: dict[str, tuple[str, str]] = {
    ED25519: ("ed25519.key", "ed25519.pub"),
    MLDSA65: ("mldsa65.key", "mldsa65.pub"),
}

_WRAP_FORMAT = "tensafe-key/v1"
# Argon2id cost (RFC 9106 second recommendation, 64 MiB); readers accept the recorded cost within these bounds.
_ARGON_T, _ARGON_M, _ARGON_P = 3, 65536, 4
_ARGON_BOUNDS = {"t": (1, 64), "m": (19456, 4 * 1024 * 1024), "p": (1, 64)}
_MAX_KEY_FILE = 64 * 1024
_MAX_TRUSTED_FILE = 64 * 1024


def keyid_for(public_key: ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey) -> str:
    """Key ID of a public key: ``"sha256:" + hex(SHA-256(SPKI DER))``."""
    der = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return "sha256:" + hashlib.sha256(der).hexdigest()


def _spki_pem(public_key: ed25519.Ed25519PublicKey | mldsa.MLDSA65PublicKey) -> str:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode(
        "ascii"
    )


@dataclass(frozen=True)
class TrustedKeys:
    """The two public keys a verifier pins, with their key IDs.

    Attributes:
        ed25519: the pinned Ed25519 public key.
        mldsa65: the pinned ML-DSA-65 public key.
        ed25519_keyid: its key ID.
        mldsa65_keyid: its key ID.
    """

    ed25519: ed25519.Ed25519PublicKey = field(repr=False)
    mldsa65: mldsa.MLDSA65PublicKey = field(repr=False)
    ed25519_keyid: str
    mldsa65_keyid: str

    @property
    def keyids(self) -> dict[str, str]:
        """``{"ed25519": keyid, "ml-dsa-65": keyid}``."""
        return {ED25519: self.ed25519_keyid, MLDSA65: self.mldsa65_keyid}

    def to_dict(self) -> dict[str, dict[str, str]]:
        """The trusted-keys JSON object that :func:`load_trusted_keys` reads back."""
        return {
            ED25519: {"keyid": self.ed25519_keyid, "spki_pem": _spki_pem(self.ed25519)},
            MLDSA65: {"keyid": self.mldsa65_keyid, "spki_pem": _spki_pem(self.mldsa65)},
        }


@dataclass(frozen=True)
class SigningKeys:
    """Both private keys of a signer, with their key IDs. The repr never shows key material.

    Attributes:
        ed25519: the Ed25519 private key.
        mldsa65: the ML-DSA-65 private key.
        ed25519_keyid: key ID of the matching public key.
        mldsa65_keyid: key ID of the matching public key.
    """

    ed25519: ed25519.Ed25519PrivateKey = field(repr=False)
    mldsa65: mldsa.MLDSA65PrivateKey = field(repr=False)
    ed25519_keyid: str
    mldsa65_keyid: str

    @property
    def keyids(self) -> dict[str, str]:
        """``{"ed25519": keyid, "ml-dsa-65": keyid}``."""
        return {ED25519: self.ed25519_keyid, MLDSA65: self.mldsa65_keyid}

    def trusted(self) -> TrustedKeys:
        """The public half, as a verifier would pin it."""
        return TrustedKeys(
            ed25519=self.ed25519.public_key(),
            mldsa65=self.mldsa65.public_key(),
            ed25519_keyid=self.ed25519_keyid,
            mldsa65_keyid=self.mldsa65_keyid,
        )


# ----------------------------------------------------------------------------------------------------------- generate


def generate_keys(out_dir: str | Path, *, passphrase: str | None = None) -> dict[str, str]:
    """Generate an Ed25519 + ML-DSA-65 key pair set into ``out_dir``.

    Private keys are written 0600 with ``O_CREAT|O_EXCL`` (PKCS#8 PEM, or the Argon2id + AES-256-GCM wrapper when
    ``passphrase`` is given); public keys are SPKI PEM. Existing key files are never overwritten.

    Args:
        out_dir: the key directory (created 0700 if missing).
        passphrase: protect both private keys with this passphrase.

    Returns:
        ``{"ed25519": keyid, "ml-dsa-65": keyid}``.

    Raises:
        ConfigError: a key file already exists, the passphrase is empty, or the directory is not usable.
    """
    if passphrase is not None and not passphrase:
        raise ConfigError("the passphrase is empty; give a non-empty passphrase or none at all")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out} exists and is not a directory; choose a new folder for the keys")
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    names = [name for pair in KEY_FILES.values() for name in pair]
    existing = [name for name in names if os.path.lexists(out / name)]
    if existing:
        raise ConfigError(
            f"refusing to overwrite existing key file(s) {', '.join(existing)} in {out}; choose an empty folder"
        )

    ed_key = ed25519.Ed25519PrivateKey.generate()
    ml_key = mldsa.MLDSA65PrivateKey.generate()
    private_blobs = {
        ED25519: _encode_private(ed_key, passphrase),
        MLDSA65: _encode_private(ml_key, passphrase),
    }
    public_blobs = {ED25519: _spki_pem(ed_key.public_key()), MLDSA65: _spki_pem(ml_key.public_key())}

    created: list[Path] = []
    try:
        for alg, (priv_name, pub_name) in KEY_FILES.items():
            _write_exclusive(out / priv_name, private_blobs[alg], mode=0o600)
            created.append(out / priv_name)
            _write_exclusive(out / pub_name, public_blobs[alg].encode("ascii"), mode=0o644)
            created.append(out / pub_name)
        _fsync_dir(out)
    except BaseException:
        for path in created:
            with contextlib.suppress(OSError):
                path.unlink()
        raise
    keyids = {ED25519: keyid_for(ed_key.public_key()), MLDSA65: keyid_for(ml_key.public_key())}
    logger.info("generated signing keys in %s: %s", out, keyids)
    return keyids


def _write_exclusive(path: Path, data: bytes, *, mode: int) -> None:
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise ConfigError(f"refusing to overwrite existing key file {path}; choose an empty folder") from None
    try:
        os.fchmod(fd, mode)  # the umask may have narrowed or the caller may expect exactly this mode
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _encode_private(key: ed25519.Ed25519PrivateKey | mldsa.MLDSA65PrivateKey, passphrase: str | None) -> bytes:
    if passphrase is None:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    salt, nonce = os.urandom(16), os.urandom(12)
    header: dict[str, Any] = {
        "format": _WRAP_FORMAT,
        "kdf": "argon2id",
        "t": _ARGON_T,
        "m": _ARGON_M,
        "p": _ARGON_P,
        "salt": b64encode(salt),
        "cipher": "aes-256-gcm",
        "nonce": b64encode(nonce),
    }
    kek = _derive_kek(passphrase, salt, t=_ARGON_T, m=_ARGON_M, p=_ARGON_P)
    ct = AESGCM(kek).encrypt(nonce, der, rfc8785.dumps(header))
    return rfc8785.dumps({**header, "ct": b64encode(ct)}) + b"\n"


def _derive_kek(passphrase: str, salt: bytes, *, t: int, m: int, p: int) -> bytes:
    return Argon2id(salt=salt, length=32, iterations=t, lanes=p, memory_cost=m).derive(passphrase.encode("utf-8"))


# --------------------------------------------------------------------------------------------------------------- load


def load_signing_keys(key_dir: str | Path, *, passphrase: str | None = None) -> SigningKeys:
    """Load both private keys from a key directory written by :func:`generate_keys`.

    When the ``.pub`` files are present they must match the private keys (catches mixed-up key folders).

    Args:
        key_dir: the key directory.
        passphrase: the passphrase, if the keys are protected.

    Raises:
        ConfigError: a key file is missing, malformed, of the wrong algorithm, protected while no passphrase was
            given (or the reverse), or the passphrase is wrong.
    """
    folder = Path(key_dir)
    if not folder.is_dir():
        raise ConfigError(f"key directory {folder} does not exist; create one with `tensafe keygen --out {folder}`")
    ed_key = _load_private(folder / KEY_FILES[ED25519][0], ed25519.Ed25519PrivateKey, passphrase)
    ml_key = _load_private(folder / KEY_FILES[MLDSA65][0], mldsa.MLDSA65PrivateKey, passphrase)
    keys = SigningKeys(
        ed25519=ed_key,
        mldsa65=ml_key,
        ed25519_keyid=keyid_for(ed_key.public_key()),
        mldsa65_keyid=keyid_for(ml_key.public_key()),
    )
    for alg, (_, pub_name) in KEY_FILES.items():
        pub_path = folder / pub_name
        if pub_path.exists():
            on_disk = _keyid_of_pem(pub_path, _PUBLIC_TYPES[alg])
            if on_disk != keys.keyids[alg]:
                raise ConfigError(
                    f"{pub_path} does not belong to the private key next to it ({on_disk} != {keys.keyids[alg]}); "
                    "the key folder is mixed up - regenerate it or restore the matching public key"
                )
    return keys


def _read_bounded(path: Path, limit: int) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ConfigError(f"key file {path} is missing; create keys with `tensafe keygen`") from None
    except OSError as exc:
        raise ConfigError(f"cannot open key file {path} ({exc.strerror}); it must be a regular file") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"key file {path} is not a regular file")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ConfigError(f"key file {path} is larger than {limit} bytes; it is not a TenSafe key")
    return data


def _load_private(path: Path, expected: type, passphrase: str | None) -> Any:
    raw = _read_bounded(path, _MAX_KEY_FILE)
    mode = os.stat(path, follow_symlinks=False).st_mode
    if mode & 0o077:
        logger.warning("private key %s is readable by group/others (mode %o); chmod 600 it", path, mode & 0o777)
    if raw.lstrip().startswith(b"{"):
        if passphrase is None:
            raise ConfigError(f"private key {path} is passphrase-protected; give the passphrase (--passphrase-env)")
        der = _unwrap(path, raw, passphrase)
        try:
            key = serialization.load_der_private_key(der, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"private key {path} decrypted but is not a valid PKCS#8 key") from None
    else:
        if passphrase is not None:
            raise ConfigError(
                f"private key {path} is not passphrase-protected but a passphrase was given; drop the passphrase"
            )
        try:
            key = serialization.load_pem_private_key(raw, password=None)
        except (ValueError, TypeError):
            raise ConfigError(f"private key {path} is not an unencrypted PKCS#8 PEM key") from None
    if not isinstance(key, expected):
        raise ConfigError(f"private key {path} holds a {type(key).__name__}, expected {expected.__name__}")
    return key


def _unwrap(path: Path, raw: bytes, passphrase: str) -> bytes:
    try:
        doc = loads_strict(raw, max_size=_MAX_KEY_FILE, allow_floats=False)
    except StrictDecodeError as exc:
        raise ConfigError(f"protected key file {path} is malformed: {exc}") from None
    expected_keys = {"format", "kdf", "t", "m", "p", "salt", "cipher", "nonce", "ct"}
    if not isinstance(doc, dict) or set(doc) != expected_keys:
        raise ConfigError(f"protected key file {path} does not have the fields {sorted(expected_keys)}")
    if doc["format"] != _WRAP_FORMAT or doc["kdf"] != "argon2id" or doc["cipher"] != "aes-256-gcm":
        raise ConfigError(f"protected key file {path} uses an unknown format, KDF or cipher")
    for name, (low, high) in _ARGON_BOUNDS.items():
        value = doc[name]
        if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
            raise ConfigError(
                f"protected key file {path}: Argon2id parameter {name}={value!r} is outside [{low}, {high}]"
            )
    try:
        salt = b64decode_strict(doc["salt"], max_len=64)
        nonce = b64decode_strict(doc["nonce"], max_len=12)
        ct = b64decode_strict(doc["ct"], max_len=_MAX_KEY_FILE)
    except StrictDecodeError as exc:
        raise ConfigError(f"protected key file {path} is malformed: {exc}") from None
    if len(salt) < 16 or len(nonce) != 12:
        raise ConfigError(f"protected key file {path} has a salt shorter than 16 bytes or a nonce that is not 12 bytes")
    header = {k: v for k, v in doc.items() if k != "ct"}
    kek = _derive_kek(passphrase, salt, t=doc["t"], m=doc["m"], p=doc["p"])
    try:
        return AESGCM(kek).decrypt(nonce, ct, rfc8785.dumps(header))
    except InvalidTag:
        raise ConfigError(f"wrong passphrase for {path} (or the key file was modified)") from None


_PUBLIC_TYPES: dict[str, type] = {ED25519: ed25519.Ed25519PublicKey, MLDSA65: mldsa.MLDSA65PublicKey}


def _public_from_pem(pem: bytes, expected: type, where: str) -> Any:
    try:
        key = serialization.load_pem_public_key(pem)
    except (ValueError, TypeError):
        raise ConfigError(f"{where} is not an SPKI PEM public key") from None
    if not isinstance(key, expected):
        raise ConfigError(f"{where} holds a {type(key).__name__}, expected {expected.__name__}")
    return key


def _keyid_of_pem(path: Path, expected: type) -> str:
    return keyid_for(_public_from_pem(_read_bounded(path, _MAX_KEY_FILE), expected, str(path)))


def load_trusted_keys(path: str | Path) -> TrustedKeys:
    """Load the two pinned public keys a verifier trusts.

    Args:
        path: a key directory (only ``ed25519.pub`` and ``mldsa65.pub`` are read, never the private keys) or a
            trusted-keys JSON file ``{"ed25519": {"keyid", "spki_pem"}, "ml-dsa-65": {"keyid", "spki_pem"}}``.
            A recorded keyid must match its key.

    Raises:
        ConfigError: missing or malformed files, wrong key types, or a keyid that does not match its key.
    """
    source = Path(path)
    if source.is_dir():
        pems = {alg: _read_bounded(source / pub, _MAX_KEY_FILE) for alg, (_, pub) in KEY_FILES.items()}
        where = {alg: str(source / pub) for alg, (_, pub) in KEY_FILES.items()}
        claimed: dict[str, str | None] = dict.fromkeys(KEY_FILES)
    elif source.is_file():
        pems, where, claimed = _parse_trusted_file(source)
    else:
        raise ConfigError(f"trusted keys {source} not found; pass a key directory or a trusted-keys JSON file")
    keys = {alg: _public_from_pem(pems[alg], _PUBLIC_TYPES[alg], where[alg]) for alg in KEY_FILES}
    ids = {alg: keyid_for(keys[alg]) for alg in KEY_FILES}
    for alg in KEY_FILES:
        if claimed[alg] is not None and claimed[alg] != ids[alg]:
            raise ConfigError(f"{where[alg]}: recorded keyid {claimed[alg]} does not match the key ({ids[alg]})")
    return TrustedKeys(
        ed25519=keys[ED25519], mldsa65=keys[MLDSA65], ed25519_keyid=ids[ED25519], mldsa65_keyid=ids[MLDSA65]
    )


def _parse_trusted_file(source: Path) -> tuple[dict[str, bytes], dict[str, str], dict[str, str | None]]:
    raw = _read_bounded(source, _MAX_TRUSTED_FILE)
    try:
        doc = loads_strict(raw, max_size=_MAX_TRUSTED_FILE, allow_floats=False)
    except StrictDecodeError as exc:
        raise ConfigError(
            f"trusted-keys file {source} is not valid ({exc}); pass a key folder or a trusted-keys JSON file"
        ) from None
    if not isinstance(doc, dict) or set(doc) != set(KEY_FILES):
        raise ConfigError(f"trusted-keys file {source} must have exactly the keys {sorted(KEY_FILES)}")
    pems: dict[str, bytes] = {}
    where: dict[str, str] = {}
    claimed: dict[str, str | None] = {}
    for alg in KEY_FILES:
        entry = doc[alg]
        if (
            not isinstance(entry, dict)
            or set(entry) != {"keyid", "spki_pem"}
            or not all(isinstance(v, str) for v in entry.values())
        ):
            raise ConfigError(f"trusted-keys file {source}: {alg!r} must be {{'keyid': str, 'spki_pem': str}}")
        pems[alg] = entry["spki_pem"].encode("ascii", errors="replace")
        where[alg] = f"{source} [{alg}]"
        claimed[alg] = entry["keyid"]
    return pems, where, claimed
