"""The signed manifest: its constants, the path rules and the strict schema check (TSSP.md 6.2, 6.8).

The manifest is RFC 8785 (JCS) JSON with no floats. A verifier parses it only after both signatures verified over its
exact bytes, then runs :func:`validate_manifest` before touching the filesystem.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

import rfc8785

from shared_core.errors import VerificationError
from shared_core.tssp._strict import StrictDecodeError, loads_strict
from shared_core.tssp.keys import ED25519, MLDSA65, TrustedKeys

__all__ = [
    "ENCRYPTED_SUFFIX",
    "ENC_SCHEME",
    "ENVELOPE_NAME",
    "JSON_FILE_MAX",
    "MANIFEST_SCHEMA",
    "PAYLOAD_TYPE",
    "ROLES",
    "SIGNATURE_SUITE",
    "check_path",
    "dp_value_str",
    "parse_manifest",
    "stored_name",
    "validate_manifest",
]

MANIFEST_SCHEMA = "tensafe.tssp/manifest/v1"
PAYLOAD_TYPE = "application/vnd.tensafe.tssp.manifest+json;version=1"
SIGNATURE_SUITE = "ed25519+ml-dsa-65"
ENVELOPE_NAME = "tssp.dsse.json"
ENCRYPTED_SUFFIX = ".tsspenc"
ENC_SCHEME = "tssp-aes256gcm-stream/v1"
ROLES = frozenset(
    {"weights", "config", "dp-certificate", "privacy-report", "training-config", "card", "tokenizer", "other"}
)

MAX_ENTRIES = 10_000
MAX_PATH_BYTES = 1024
MAX_SEGMENT_BYTES = 255
MAX_TOTAL_PLAINTEXT = 1 << 40  # 1 TiB
MAX_INT = 1 << 53
#: JSON files (config, certificate, reports) are parsed in memory; refuse bigger ones before reading.
JSON_FILE_MAX = 16 * 1024 * 1024
MIN_CHUNK, MAX_CHUNK = 64 * 1024, 16 * 1024 * 1024

_TOP_REQUIRED = {"schema", "package", "signature_suite", "signers", "files"}
_TOP_OPTIONAL = {"dp", "base_model", "encryption"}
_PLAIN_ENTRY = {"path", "role", "size", "sha256"}
_ENC_ENTRY = {"stored_path", "scheme", "chunk_size", "ciphertext_size", "ciphertext_sha256"}
_HEX64 = re.compile(r"\A[0-9a-f]{64}\Z")
_KEYID = re.compile(r"\Asha256:[0-9a-f]{64}\Z")
_RFC3339_UTC = re.compile(r"\A\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z\Z")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _fail(message: str, *, check: str = "manifest") -> VerificationError:
    return VerificationError(message, path=ENVELOPE_NAME, check=check)


def check_path(path: object) -> str:
    """Enforce the manifest path rules on one path and return it.

    Rules: a string, NFC, relative, ``/``-separated, no empty, ``.`` or ``..`` segment, no backslash, NUL or control
    character, at most 255 bytes per segment and 1024 per path.

    Raises:
        VerificationError: ``check="path"`` naming the rule that failed.
    """
    if not isinstance(path, str) or not path:
        raise _fail(f"manifest path {path!r} must be a non-empty string", check="path")
    shown = repr(path[:120])
    if _CONTROL.search(path):
        raise _fail(f"manifest path {shown} contains NUL or a control character", check="path")
    if "\\" in path:
        raise _fail(f"manifest path {shown} contains a backslash", check="path")
    if path.startswith("/"):
        raise _fail(f"manifest path {shown} is absolute", check="path")
    if unicodedata.normalize("NFC", path) != path:
        raise _fail(f"manifest path {shown} is not NFC-normalised", check="path")
    encoded = path.encode("utf-8", errors="surrogatepass")
    if len(encoded) > MAX_PATH_BYTES:
        raise _fail(f"manifest path {shown} is longer than {MAX_PATH_BYTES} bytes", check="path")
    for segment in path.split("/"):
        if segment in ("", ".", ".."):
            raise _fail(f"manifest path {shown} has an empty, '.' or '..' segment", check="path")
        if len(segment.encode("utf-8", errors="surrogatepass")) > MAX_SEGMENT_BYTES:
            raise _fail(f"manifest path {shown} has a segment longer than {MAX_SEGMENT_BYTES} bytes", check="path")
    try:
        encoded.decode("utf-8")
        path.encode("utf-8")
    except UnicodeError:
        raise _fail(f"manifest path {shown} is not valid UTF-8 (lone surrogate)", check="path") from None
    return path


def dp_value_str(value: object, *, what: str) -> str:
    """The manifest's string form of a certificate number: ints as ``str``, floats as their shortest repr.

    Raises:
        ValueError: booleans, non-finite floats and anything that is not a number or a string.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{what} must be a number or a string, got {value!r}")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return repr(value)
    if isinstance(value, str) and value:
        return value
    raise ValueError(f"{what} must be a number or a non-empty string, got {type(value).__name__}")


def stored_name(entry: dict[str, Any]) -> str:
    """The name a manifest entry has inside the package (the ciphertext name when encrypted)."""
    return str(entry.get("stored_path", entry["path"]))


def _check_int(value: object, what: str, *, low: int = 0, high: int = MAX_INT) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value < high:
        raise _fail(f"{what} must be an integer in [{low}, {high}), got {str(value)[:40]!r}")
    return value


def _check_str(value: object, what: str, *, max_len: int = 1024) -> str:
    if not isinstance(value, str) or not value or len(value) > max_len or _CONTROL.search(value):
        raise _fail(f"{what} must be a non-empty string without control characters (at most {max_len} characters)")
    return value


def _no_floats(value: object, where: str = "manifest") -> None:
    if isinstance(value, float):
        raise _fail(f"{where} holds a float; every number must be a string or an integer")
    if isinstance(value, dict):
        for key, item in value.items():
            _no_floats(item, f"{where}.{key}")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _no_floats(item, f"{where}[{index}]")
    elif isinstance(value, int) and not isinstance(value, bool) and not -MAX_INT < value < MAX_INT:
        raise _fail(f"{where} holds an integer outside +-2^53")


def parse_manifest(payload: bytes, *, trusted: TrustedKeys) -> dict[str, Any]:
    """Parse verified payload bytes into a manifest and validate it (signers must be the pinned pair).

    Raises:
        VerificationError: the payload is not strict canonical JSON or breaks a manifest rule.
    """
    try:
        manifest = loads_strict(payload, max_size=len(payload), allow_floats=False)
    except StrictDecodeError as exc:
        raise _fail(f"signed manifest is not strict JSON: {exc}") from None
    if not isinstance(manifest, dict):
        raise _fail("signed manifest must be a JSON object")
    if rfc8785.dumps(manifest) != payload:
        raise _fail("signed manifest is not in RFC 8785 canonical form")
    validate_manifest(manifest, trusted=trusted)
    return manifest


def validate_manifest(manifest: dict[str, Any], *, trusted: TrustedKeys | None) -> None:
    """Check the manifest schema, the signer pair, the file entries and the path rules.

    Args:
        manifest: the parsed manifest.
        trusted: the pinned keys the ``signers`` must equal; ``None`` skips only that comparison (inspect, pack).

    Raises:
        VerificationError: naming the rule that failed.
    """
    _no_floats(manifest)
    keys = set(manifest)
    if not keys >= _TOP_REQUIRED:
        raise _fail(f"manifest lacks the field(s) {sorted(_TOP_REQUIRED - keys)}")
    if keys - _TOP_REQUIRED - _TOP_OPTIONAL:
        raise _fail(f"manifest has unknown field(s) {sorted(keys - _TOP_REQUIRED - _TOP_OPTIONAL)} (strict v1)")
    if manifest["schema"] != MANIFEST_SCHEMA:
        raise _fail(f"manifest schema {str(manifest['schema'])[:80]!r} is not {MANIFEST_SCHEMA!r}")
    _validate_package_info(manifest["package"])
    _validate_signers(manifest, trusted)
    encrypted = _validate_files(manifest["files"])
    _validate_encryption(manifest.get("encryption"), encrypted=encrypted)
    _validate_dp(manifest.get("dp"), manifest["files"])
    if "base_model" in manifest:
        base = manifest["base_model"]
        if not isinstance(base, dict) or "repo" not in base:
            raise _fail("manifest base_model must be an object with at least 'repo'")
        for key, value in base.items():
            _check_str(value, f"base_model.{key}")


def _validate_package_info(info: object) -> None:
    if not isinstance(info, dict) or set(info) != {"name", "version", "created", "producer"}:
        raise _fail("manifest package must have exactly name, version, created and producer")
    _check_str(info["name"], "package.name", max_len=256)
    _check_int(info["version"], "package.version", low=1)
    if not isinstance(info["created"], str) or not _RFC3339_UTC.match(info["created"]):
        raise _fail("package.created must be an RFC 3339 UTC time like 2025-01-31T12:00:00Z")
    _check_str(info["producer"], "package.producer", max_len=256)


def _validate_signers(manifest: dict[str, Any], trusted: TrustedKeys | None) -> None:
    if manifest["signature_suite"] != SIGNATURE_SUITE:
        raise _fail(
            f"signature_suite {str(manifest['signature_suite'])[:60]!r} is not {SIGNATURE_SUITE!r} (no downgrade)",
            check="signers",
        )
    signers = manifest["signers"]
    if (
        not isinstance(signers, list)
        or len(signers) != 2
        or not all(isinstance(s, dict) and set(s) == {"alg", "keyid"} for s in signers)
    ):
        raise _fail("signers must be two objects {alg, keyid}", check="signers")
    declared = {s["alg"]: s["keyid"] for s in signers}
    if set(declared) != {ED25519, MLDSA65} or not all(
        isinstance(k, str) and _KEYID.match(k) for k in declared.values()
    ):
        raise _fail("signers must name one ed25519 and one ml-dsa-65 key ID (sha256:<hex>)", check="signers")
    if [s["alg"] for s in signers] != [ED25519, MLDSA65]:
        raise _fail("signers must be listed ed25519 first, then ml-dsa-65", check="signers")
    if trusted is not None and declared != trusted.keyids:
        raise _fail("the manifest names signer keys other than the pinned pair", check="signers")


def _validate_files(files: object) -> bool:
    if not isinstance(files, list) or not files:
        raise _fail("manifest files must be a non-empty list")
    if len(files) > MAX_ENTRIES:
        raise _fail(f"manifest lists {len(files)} files, over the limit of {MAX_ENTRIES}")
    names: dict[str, str] = {}  # casefolded stored name or path -> original
    previous: bytes | None = None
    total = 0
    roles: list[str] = []
    encrypted = False
    for entry in files:
        if not isinstance(entry, dict):
            raise _fail("every manifest file entry must be an object")
        path = check_path(entry.get("path"))
        keys = set(entry)
        is_enc = "stored_path" in entry
        expected = _PLAIN_ENTRY | _ENC_ENTRY if is_enc else _PLAIN_ENTRY
        if keys != expected:
            raise _fail(f"file entry {path!r} must have exactly the fields {sorted(expected)}")
        current = path.encode("utf-8")
        if previous is not None and current <= previous:
            raise _fail(f"manifest files are not sorted and unique by path at {path!r}")
        previous = current
        if entry["role"] not in ROLES:
            raise _fail(f"file entry {path!r} has unknown role {str(entry['role'])[:40]!r}")
        roles.append(entry["role"])
        total += _check_int(entry["size"], f"size of {path!r}")
        if not isinstance(entry["sha256"], str) or not _HEX64.match(entry["sha256"]):
            raise _fail(f"sha256 of {path!r} must be 64 lowercase hex characters")
        stored = [path]
        if is_enc:
            encrypted = True
            _validate_encrypted_entry(entry, path)
            stored.append(entry["stored_path"])
        for name in stored:
            if name == ENVELOPE_NAME:
                raise _fail(f"manifest must not list the envelope {ENVELOPE_NAME}", check="path")
            folded = unicodedata.normalize("NFC", name.casefold())
            if folded in names:
                raise _fail(f"manifest paths {names[folded]!r} and {name!r} collide (case-fold twins)", check="path")
            names[folded] = name
    if total > MAX_TOTAL_PLAINTEXT:
        raise _fail(f"manifest declares {total} bytes in total, over the 1 TiB limit")
    if roles.count("weights") != 1 or roles.count("config") != 1:
        raise _fail("manifest must list exactly one weights file and one adapter config")
    weights = next(e for e in files if e["role"] == "weights")
    if not weights["path"].endswith(".safetensors"):
        raise _fail("the weights file must be .safetensors (pickle formats are refused)")
    return encrypted


def _validate_encrypted_entry(entry: dict[str, Any], path: str) -> None:
    check_path(entry["stored_path"])
    if entry["stored_path"] != path + ENCRYPTED_SUFFIX:
        raise _fail(f"stored_path of {path!r} must be {path + ENCRYPTED_SUFFIX!r}", check="path")
    if entry["scheme"] != ENC_SCHEME:
        raise _fail(f"file {path!r} uses unknown encryption scheme {str(entry['scheme'])[:60]!r}")
    chunk = _check_int(entry["chunk_size"], f"chunk_size of {path!r}", low=MIN_CHUNK, high=MAX_CHUNK + 1)
    if chunk & (chunk - 1):
        raise _fail(f"chunk_size of {path!r} must be a power of two")
    _check_int(entry["ciphertext_size"], f"ciphertext_size of {path!r}")
    if not isinstance(entry["ciphertext_sha256"], str) or not _HEX64.match(entry["ciphertext_sha256"]):
        raise _fail(f"ciphertext_sha256 of {path!r} must be 64 lowercase hex characters")


def _validate_encryption(section: object, *, encrypted: bool) -> None:
    if section is None:
        if encrypted:
            raise _fail("manifest has encrypted files but no encryption section")
        return
    if not encrypted:
        raise _fail("manifest has an encryption section but no encrypted file")
    if not isinstance(section, dict) or set(section) != {"scheme", "key_id"}:
        raise _fail("manifest encryption must have exactly scheme and key_id")
    if section["scheme"] != ENC_SCHEME or not isinstance(section["key_id"], str) or not _KEYID.match(section["key_id"]):
        raise _fail(f"manifest encryption must use {ENC_SCHEME!r} with a sha256:<hex> key_id")


def _validate_dp(dp: object, files: list[dict[str, Any]]) -> None:
    certs = [e["path"] for e in files if e["role"] == "dp-certificate"]
    if dp is None:
        if certs:
            raise _fail("manifest lists a DP certificate but has no dp section")
        return
    if not isinstance(dp, dict) or not {"certificate_path", "epsilon", "delta", "accountant"} <= set(dp):
        raise _fail("manifest dp must hold certificate_path, epsilon, delta and accountant")
    for key, value in dp.items():
        _check_str(value, f"dp.{key}")
    if certs != [dp["certificate_path"]]:
        raise _fail("dp.certificate_path must name the one file with role dp-certificate")
