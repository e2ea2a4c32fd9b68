"""Hybrid DSSE signatures: Ed25519 AND ML-DSA-65 over the same PAE bytes (TSSP.md 6.3-6.4).

Rules a verifier enforces here:

* exactly two signatures, one per pinned key ID (missing, extra, duplicated or unknown ones reject);
* both are checked, always, and the result is the AND of the two - there is no single-algorithm mode;
* the message is ``PAE(payloadType, payload)`` of the *exact* payload bytes; ML-DSA-65 signs it with the fixed
  FIPS 204 context ``b"tensafe/tssp/v1"``; an ``"alg"`` hint, when present, must match the pinned key's algorithm.

Nothing here imports torch.
"""

from __future__ import annotations

import logging
from typing import Any

from cryptography.exceptions import InvalidSignature

from shared_core.errors import VerificationError
from shared_core.tssp._strict import StrictDecodeError, b64decode_strict, b64encode, loads_strict
from shared_core.tssp.keys import ED25519, MLDSA65, SigningKeys, TrustedKeys

__all__ = [
    "ENVELOPE_MAX_BYTES",
    "MLDSA_CONTEXT",
    "make_envelope",
    "open_envelope",
    "pae",
    "sign_detached",
    "verify_detached",
]

logger = logging.getLogger(__name__)

MLDSA_CONTEXT = b"tensafe/tssp/v1"
ENVELOPE_MAX_BYTES = 4 * 1024 * 1024
_SIG_LEN = {ED25519: 64, MLDSA65: 3309}


def pae(payload_type: str, payload: bytes) -> bytes:
    """DSSE v1 pre-authentication encoding: ``"DSSEv1" SP len(type) SP type SP len(body) SP body``."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(type_bytes), type_bytes, len(payload), payload)


def _check_payload_type(payload_type: object) -> str:
    if not isinstance(payload_type, str) or not payload_type:
        raise VerificationError("payload_type must be a non-empty string", check="payload-type")
    return payload_type


def sign_detached(payload: bytes, *, payload_type: str, keys: SigningKeys) -> list[dict[str, str]]:
    """Sign ``PAE(payload_type, payload)`` with both keys and check both signatures before returning them.

    Args:
        payload: the exact bytes to sign.
        payload_type: the DSSE payload type (binds what the bytes are).
        keys: the signer's two private keys.

    Returns:
        ``[{"keyid", "sig" (base64), "alg": "ed25519"}, {"keyid", "sig", "alg": "ml-dsa-65"}]``.

    Raises:
        VerificationError: a fresh signature does not verify (a fault or a broken key file); nothing is returned.
    """
    message = pae(_check_payload_type(payload_type), bytes(payload))
    ed_sig = keys.ed25519.sign(message)
    ml_sig = keys.mldsa65.sign(message, MLDSA_CONTEXT)
    signatures = [
        {"keyid": keys.ed25519_keyid, "sig": b64encode(ed_sig), "alg": ED25519},
        {"keyid": keys.mldsa65_keyid, "sig": b64encode(ml_sig), "alg": MLDSA65},
    ]
    # Self-check against the public halves: catches faults and mismatched keyids before anything is written.
    verify_detached(payload, signatures, payload_type=payload_type, trusted=keys.trusted())
    return signatures


def verify_detached(
    payload: bytes, signatures: list[dict[str, Any]], *, payload_type: str, trusted: TrustedKeys
) -> None:
    """Require exactly one valid signature per pinned key over ``PAE(payload_type, payload)``.

    Args:
        payload: the exact signed bytes.
        signatures: the ``[{"keyid", "sig", ["alg"]}]`` list as found (untrusted).
        payload_type: the payload type the caller expects.
        trusted: the two pinned public keys.

    Raises:
        VerificationError: ``check="signature"`` with a one-line reason - wrong count, unknown, duplicated or missing
            keyid, malformed entry, mismatched ``alg`` hint, or an invalid signature (both are always checked).
    """
    message = pae(_check_payload_type(payload_type), bytes(payload))
    by_alg = _match_signatures(signatures, trusted)
    failures: list[str] = []
    # Check both, always (no early exit), then AND the results.
    try:
        trusted.ed25519.verify(by_alg[ED25519], message)
    except InvalidSignature:
        failures.append(ED25519)
    try:
        trusted.mldsa65.verify(by_alg[MLDSA65], message, MLDSA_CONTEXT)
    except InvalidSignature:
        failures.append(MLDSA65)
    if failures:
        raise VerificationError(
            f"invalid {' and '.join(failures)} signature over the signed payload: it was modified or signed by "
            "other keys; do not use this package",
            check="signature",
        )


def _match_signatures(signatures: object, trusted: TrustedKeys) -> dict[str, bytes]:
    if not isinstance(signatures, list):
        raise VerificationError("signatures must be a list", check="signature")
    if len(signatures) != 2:
        raise VerificationError(
            f"expected exactly 2 signatures (ed25519 and ml-dsa-65), found {len(signatures)}", check="signature"
        )
    alg_of = {keyid: alg for alg, keyid in trusted.keyids.items()}
    found: dict[str, bytes] = {}
    for index, entry in enumerate(signatures):
        if not isinstance(entry, dict) or not {"keyid", "sig"} <= set(entry) <= {"keyid", "sig", "alg"}:
            raise VerificationError(
                f"signature #{index} must be an object with keyid, sig and optionally alg", check="signature"
            )
        keyid = entry["keyid"]
        if not isinstance(keyid, str) or keyid not in alg_of:
            raise VerificationError(
                f"signature #{index} is by key {str(keyid)[:80]!r}, which is not one of the pinned keys "
                f"{sorted(alg_of)}; verify with the signer's public keys",
                check="signature",
            )
        alg = alg_of[keyid]
        if alg in found:
            raise VerificationError(f"duplicated {alg} signature (keyid {keyid})", check="signature")
        if "alg" in entry and entry["alg"] != alg:
            raise VerificationError(
                f"signature #{index} is labelled {str(entry['alg'])[:40]!r} but its keyid pins an {alg} key",
                check="signature",
            )
        try:
            sig = b64decode_strict(entry["sig"], max_len=_SIG_LEN[alg])
        except StrictDecodeError as exc:
            raise VerificationError(f"{alg} signature is not valid base64: {exc}", check="signature") from None
        if len(sig) != _SIG_LEN[alg]:
            raise VerificationError(f"{alg} signature is {len(sig)} bytes, expected {_SIG_LEN[alg]}", check="signature")
        found[alg] = sig
    missing = {ED25519, MLDSA65} - set(found)
    if missing:  # unreachable with 2 distinct pinned keyids, kept as a guard
        raise VerificationError(f"missing {' and '.join(sorted(missing))} signature", check="signature")
    return found


def make_envelope(payload: bytes, *, payload_type: str, keys: SigningKeys) -> dict[str, Any]:
    """A DSSE JSON envelope ``{"payload", "payloadType", "signatures"}`` holding both signatures."""
    return {
        "payload": b64encode(bytes(payload)),
        "payloadType": _check_payload_type(payload_type),
        "signatures": sign_detached(payload, payload_type=payload_type, keys=keys),
    }


def open_envelope(raw: bytes, *, payload_type: str, trusted: TrustedKeys) -> bytes:
    """Verify a DSSE JSON envelope and return its payload bytes, exactly as signed.

    Steps: bounded size (4 MiB), strict JSON (duplicate keys rejected), exactly the fields ``payload``,
    ``payloadType`` and ``signatures``, the expected payload type, strict base64, then both signatures over the raw
    payload bytes. The caller parses the payload only after this returns.

    Raises:
        VerificationError: ``check="envelope"`` for a malformed envelope, ``check="signature"`` for signatures.
    """
    expected_type = _check_payload_type(payload_type)
    try:
        doc = loads_strict(bytes(raw), max_size=ENVELOPE_MAX_BYTES, allow_floats=False)
    except StrictDecodeError as exc:
        raise VerificationError(f"signature envelope is malformed: {exc}", check="envelope") from None
    if not isinstance(doc, dict) or set(doc) != {"payload", "payloadType", "signatures"}:
        raise VerificationError(
            "signature envelope must be a JSON object with exactly payload, payloadType and signatures",
            check="envelope",
        )
    if doc["payloadType"] != expected_type:
        raise VerificationError(
            f"envelope payloadType {str(doc['payloadType'])[:100]!r} is not the expected {expected_type!r}",
            check="envelope",
        )
    try:
        payload = b64decode_strict(doc["payload"], max_len=ENVELOPE_MAX_BYTES)
    except StrictDecodeError as exc:
        raise VerificationError(f"envelope payload is not valid base64: {exc}", check="envelope") from None
    verify_detached(payload, doc["signatures"], payload_type=expected_type, trusted=trusted)
    return payload
