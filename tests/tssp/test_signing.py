"""Hybrid DSSE signatures: both required, pinned keys only, exact bytes (TSSP.md 6.3-6.4)."""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization

from shared_core.errors import VerificationError
from shared_core.tssp.keys import SigningKeys, TrustedKeys
from shared_core.tssp.signing import (
    MLDSA_CONTEXT,
    make_envelope,
    open_envelope,
    pae,
    sign_detached,
    verify_detached,
)

PT = "application/vnd.tensafe.test+json"
PAYLOAD = b'{"hello":"world"}'


def test_pae_matches_the_dsse_definition() -> None:
    assert pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )


def test_sign_then_verify_and_both_algorithms_are_present(keys: SigningKeys, trusted: TrustedKeys) -> None:
    sigs = sign_detached(PAYLOAD, payload_type=PT, keys=keys)
    assert [s["alg"] for s in sigs] == ["ed25519", "ml-dsa-65"]
    assert [s["keyid"] for s in sigs] == [keys.ed25519_keyid, keys.mldsa65_keyid]
    verify_detached(PAYLOAD, sigs, payload_type=PT, trusted=trusted)
    verify_detached(PAYLOAD, list(reversed(sigs)), payload_type=PT, trusted=trusted)


def test_mldsa65_signature_verifies_under_the_independent_dilithium_py_oracle(keys: SigningKeys, key_dir: Path) -> None:
    from dilithium_py.ml_dsa import ML_DSA_65

    sigs = sign_detached(PAYLOAD, payload_type=PT, keys=keys)
    sig = base64.b64decode(sigs[1]["sig"])
    pub = serialization.load_pem_public_key((key_dir / "mldsa65.pub").read_bytes())
    raw_pk = pub.public_bytes_raw()  # type: ignore[union-attr]
    message = pae(PT, PAYLOAD)
    assert ML_DSA_65.verify(raw_pk, message, sig, ctx=MLDSA_CONTEXT)
    assert not ML_DSA_65.verify(raw_pk, message, sig, ctx=b"")  # the context string is really bound
    assert not ML_DSA_65.verify(raw_pk, message + b"x", sig, ctx=MLDSA_CONTEXT)


def _mutations(sigs: list[dict[str, str]], other: list[dict[str, str]]) -> dict[str, Any]:
    def flip(entry: dict[str, str]) -> dict[str, str]:
        raw = bytearray(base64.b64decode(entry["sig"]))
        raw[5] ^= 0x01
        return {**entry, "sig": base64.b64encode(bytes(raw)).decode()}

    return {
        "stripped-mldsa": [sigs[0]],
        "stripped-ed25519": [sigs[1]],
        "none": [],
        "duplicated-ed25519": [sigs[0], sigs[0]],
        "extra": [*sigs, other[0]],
        "relabelled-keyids": [{**sigs[0], "keyid": sigs[1]["keyid"]}, {**sigs[1], "keyid": sigs[0]["keyid"]}],
        "relabelled-alg": [{**sigs[0], "alg": "ml-dsa-65"}, sigs[1]],
        "other-signer": other,
        "other-ed25519": [other[0], sigs[1]],
        "other-mldsa-with-pinned-keyid": [sigs[0], {**other[1], "keyid": sigs[1]["keyid"]}],
        "flipped-ed25519": [flip(sigs[0]), sigs[1]],
        "flipped-mldsa": [sigs[0], flip(sigs[1])],
        "bad-base64": [{**sigs[0], "sig": sigs[0]["sig"] + "!"}, sigs[1]],
        "unknown-field": [{**sigs[0], "cert": "x"}, sigs[1]],
        "not-a-list": {"a": 1},
    }


@pytest.mark.parametrize(
    "case",
    [
        "stripped-mldsa",
        "stripped-ed25519",
        "none",
        "duplicated-ed25519",
        "extra",
        "relabelled-keyids",
        "relabelled-alg",
        "other-signer",
        "other-ed25519",
        "other-mldsa-with-pinned-keyid",
        "flipped-ed25519",
        "flipped-mldsa",
        "bad-base64",
        "unknown-field",
        "not-a-list",
    ],
)
def test_every_signature_tampering_is_rejected(
    case: str, keys: SigningKeys, other_keys: SigningKeys, trusted: TrustedKeys
) -> None:
    sigs = sign_detached(PAYLOAD, payload_type=PT, keys=keys)
    other = sign_detached(PAYLOAD, payload_type=PT, keys=other_keys)
    with pytest.raises(VerificationError) as info:
        verify_detached(PAYLOAD, _mutations(sigs, other)[case], payload_type=PT, trusted=trusted)
    assert info.value.check == "signature"
    assert "\n" not in str(info.value)


def test_a_changed_payload_or_payload_type_fails_both(keys: SigningKeys, trusted: TrustedKeys) -> None:
    sigs = sign_detached(PAYLOAD, payload_type=PT, keys=keys)
    with pytest.raises(VerificationError, match="ed25519 and ml-dsa-65"):
        verify_detached(PAYLOAD + b" ", sigs, payload_type=PT, trusted=trusted)
    with pytest.raises(VerificationError, match="ed25519 and ml-dsa-65"):
        verify_detached(PAYLOAD, sigs, payload_type=PT + "x", trusted=trusted)


def test_envelope_round_trip_returns_the_exact_signed_bytes(keys: SigningKeys, trusted: TrustedKeys) -> None:
    payload = b'{"b":1,  "a":2}'  # non-canonical on purpose: bytes, not a re-serialisation, are returned
    env = make_envelope(payload, payload_type=PT, keys=keys)
    assert set(env) == {"payload", "payloadType", "signatures"}
    assert open_envelope(json.dumps(env).encode(), payload_type=PT, trusted=trusted) == payload


def test_envelope_accepts_the_url_safe_alphabet(keys: SigningKeys, trusted: TrustedKeys) -> None:
    payload = bytes(range(256))
    env = make_envelope(payload, payload_type=PT, keys=keys)
    env["payload"] = base64.urlsafe_b64encode(payload).decode()
    assert "-" in env["payload"] or "_" in env["payload"]
    assert open_envelope(json.dumps(env).encode(), payload_type=PT, trusted=trusted) == payload


def _envelope_mutations(env: dict[str, Any]) -> dict[str, bytes]:
    good = json.dumps(env)
    out: dict[str, bytes] = {}
    out["duplicate-key"] = good[:-1].encode() + b', "payloadType": "x"}'
    out["extra-field"] = json.dumps({**env, "note": "x"}).encode()
    out["wrong-type"] = json.dumps({**env, "payloadType": "text/plain"}).encode()
    out["stray-base64"] = json.dumps({**env, "payload": env["payload"] + "\n"}).encode()
    out["unpadded-base64"] = json.dumps({**env, "payload": env["payload"].rstrip("=")}).encode()
    mixed = env["payload"][:4] + "-" + env["payload"][5:]
    out["mixed-alphabet"] = json.dumps({**env, "payload": mixed.replace("A", "+", 1)}).encode()
    out["other-payload"] = json.dumps({**env, "payload": base64.b64encode(b'{"hello":"mars!"}').decode()}).encode()
    out["not-json"] = b"\x00" + good.encode()
    out["nan"] = good.replace('"signatures"', '"x": NaN, "signatures"').encode()
    out["too-big"] = good.encode() + b" " * (4 * 1024 * 1024)
    out["array"] = b"[]"
    out["stripped"] = json.dumps({**env, "signatures": env["signatures"][:1]}).encode()
    return out


@pytest.mark.parametrize(
    "case",
    [
        "duplicate-key",
        "extra-field",
        "wrong-type",
        "stray-base64",
        "unpadded-base64",
        "mixed-alphabet",
        "other-payload",
        "not-json",
        "nan",
        "too-big",
        "array",
        "stripped",
    ],
)
def test_malformed_or_tampered_envelopes_are_rejected(case: str, keys: SigningKeys, trusted: TrustedKeys) -> None:
    env = make_envelope(PAYLOAD, payload_type=PT, keys=keys)
    raw = _envelope_mutations(copy.deepcopy(env))[case]
    with pytest.raises(VerificationError) as info:
        open_envelope(raw, payload_type=PT, trusted=trusted)
    assert info.value.check in {"envelope", "signature"}
    assert "\n" not in str(info.value)
