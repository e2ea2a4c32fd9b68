"""Verify a signed DP certificate without torch: signatures, strict schema, and an independent re-accounting.

Steps, each failing closed with :class:`VerificationError` (``check`` names the step):

1. ``signature``: both signatures (Ed25519 AND ML-DSA-65, keys pinned by the caller) over the RFC 8785 form of
   the certificate without its ``signature`` field;
2. ``schema``: exactly the known top-level keys, the required nested fields with the right types;
3. ``consistency``: the ledger segments, the ``dp_event``, the step count, ``q``, ``sigma`` and ``B`` agree;
4. ``epsilon``: ``dp_accounting`` re-derives epsilon from the segments (PLD and RDP); a claim below the tighter
   of the two by more than the recorded tolerance is rejected;
5. ``delta``, ``sampler``: delta must be below ``1 / N``; a non-Poisson run is refused unless allowed;
6. ``budget``: the epsilon must not exceed ``max_epsilon`` when one is given;
7. ``weights`` (optional): the weights file's SHA-256 matches.
"""

from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import rfc8785

from shared_core.accounting._engines import pld_epsilon, rdp_dp_accounting_epsilon
from shared_core.accounting._validate import merge_segments
from shared_core.accounting.epsilon import ACCOUNTANT_INFO
from shared_core.certificate._schema import (
    CERTIFICATE_PAYLOAD_TYPE,
    CERTIFICATE_SCHEMA,
    MECHANISM,
    NEIGHBOURING_RELATION,
    NESTED_KEYS,
    PRIVACY_UNIT,
    TOP_LEVEL_KEYS,
    TRAINING_PARAMETER_KEYS,
    dp_event_description,
    load_certificate_json,
)
from shared_core.errors import ConfigError, VerificationError

__all__ = ["MAX_TOLERANCE", "CertificateCheck", "verify_certificate"]

logger = logging.getLogger(__name__)

# The verifier never grants more numerical slack than this, whatever the certificate records.
MAX_TOLERANCE = 0.05
_ACCOUNTANT_NAMES = {info["name"]: key for key, info in ACCOUNTANT_INFO.items() if key != "rdp_dp_accounting"}


@dataclass(frozen=True)
class CertificateCheck:
    """Outcome of a successful :func:`verify_certificate`.

    Attributes:
        epsilon: The certified epsilon.
        delta: Its delta.
        accountant: Accountant named by the certificate.
        rederived_pld: Epsilon re-derived with ``dp_accounting`` PLD.
        rederived_rdp: Epsilon re-derived with ``dp_accounting`` RDP.
        total_steps: Optimizer updates accounted.
        model_name: Model the certificate describes.
        weights_sha256: SHA-256 of the certified weights file.
        warnings: Things that hold but deserve attention.
        certificate: The verified certificate.
    """

    epsilon: float
    delta: float
    accountant: str
    rederived_pld: float
    rederived_rdp: float
    total_steps: int
    model_name: str
    weights_sha256: str
    warnings: tuple[str, ...] = ()
    certificate: dict[str, Any] = field(default_factory=dict, repr=False)


def _fail(message: str, check: str, path: str | None) -> VerificationError:
    return VerificationError(message, path=path, check=check)


def verify_certificate(
    cert_or_path: dict[str, Any] | str | Path,
    *,
    trusted: Any,
    max_epsilon: float | None = None,
    tolerance: float | None = None,
    allow_unverified_sampler: bool = False,
    weights_path: str | Path | None = None,
) -> CertificateCheck:
    """Verify a signed certificate and re-derive its epsilon independently (no torch, no transformers).

    Args:
        cert_or_path: The certificate dict or the path of its JSON file.
        trusted: The signer's pinned :class:`~shared_core.tssp.keys.TrustedKeys`.
        max_epsilon: Reject a certificate whose epsilon exceeds this budget.
        tolerance: Absolute slack granted to the claim below the re-derived epsilon; by default the recorded
            accountant tolerance, never more than :data:`MAX_TOLERANCE`.
        allow_unverified_sampler: Accept a certificate marked ``guarantee_applies: false``.
        weights_path: Also check that this file is the certified weights file.

    Returns:
        The check's figures.

    Raises:
        VerificationError: A step failed; ``check`` names it and the message says why.
    """
    where = str(cert_or_path) if isinstance(cert_or_path, (str, Path)) else None
    if isinstance(cert_or_path, dict):
        cert = cert_or_path
    elif isinstance(cert_or_path, (str, Path)):
        cert = load_certificate_json(cert_or_path)
    else:
        raise ConfigError(f"pass a certificate dict or a path to its JSON, got {type(cert_or_path).__name__}")
    if max_epsilon is not None and not (isinstance(max_epsilon, (int, float)) and max_epsilon > 0):
        raise ConfigError(f"max_epsilon must be a number > 0, got {max_epsilon!r}")

    _check_signature(cert, trusted, where)
    _check_schema(cert, where)
    segments = _check_consistency(cert, where)
    guarantee = cert["privacy_guarantee"]
    claimed = float(guarantee["epsilon"])
    delta = float(guarantee["delta"])
    warnings: list[str] = []

    n = cert["data_summary"]["num_samples"]
    if delta >= 1.0 / n:
        raise _fail(
            f"delta={delta:g} is not below 1/N = {1.0 / n:g}: such a guarantee allows releasing whole examples",
            "delta",
            where,
        )
    if not cert["sampling"]["guarantee_applies"]:
        if not allow_unverified_sampler:
            raise _fail(
                f"the run used sampler {cert['sampling']['sampler']!r}, which its accounting does not cover "
                "(guarantee_applies is false)",
                "sampler",
                where,
            )
        warnings.append("the stated epsilon does not hold for the sampler used (guarantee_applies is false)")

    pld, rdp = _rederive(segments, delta)
    recorded_tolerance = cert["accounting"]["epsilon_tolerance"]
    slack = min(float(recorded_tolerance), MAX_TOLERANCE) if tolerance is None else float(tolerance)
    best = min(pld, rdp)
    if claimed < best - slack - 1e-9 * max(1.0, best):
        raise _fail(
            f"claimed epsilon {claimed:.6g} is below the epsilon re-derived from the recorded steps "
            f"({best:.6g}: PLD {pld:.6g}, RDP {rdp:.6g}) by more than the tolerance {slack:g}",
            "epsilon",
            where,
        )
    recorded_rdp = float(cert["accounting"]["rdp_cross_check"]["epsilon"])
    if not math.isclose(recorded_rdp, rdp, rel_tol=1e-3, abs_tol=1e-6):
        raise _fail(
            f"recorded RDP cross-check {recorded_rdp:.6g} does not match the re-derived RDP epsilon {rdp:.6g}",
            "epsilon",
            where,
        )
    spent = max(claimed, best)
    if max_epsilon is not None and spent > max_epsilon:
        raise _fail(f"epsilon {spent:.4g} exceeds the allowed maximum {max_epsilon:g}", "budget", where)
    if weights_path is not None:
        _check_weights(cert, Path(weights_path), where)
    logger.info("verified DP certificate of %s: epsilon=%.4g delta=%.3g", cert["model_name"], claimed, delta)
    return CertificateCheck(
        epsilon=claimed,
        delta=delta,
        accountant=str(guarantee["accountant"]),
        rederived_pld=pld,
        rederived_rdp=rdp,
        total_steps=int(cert["training_parameters"]["total_steps"]),
        model_name=str(cert["model_name"]),
        weights_sha256=str(cert["weights"]["sha256"]),
        warnings=tuple(warnings),
        certificate=cert,
    )


def _check_signature(cert: dict[str, Any], trusted: Any, where: str | None) -> None:
    from shared_core.tssp.signing import verify_detached

    block = cert.get("signature")
    if block is None:
        raise _fail("the certificate is not signed (no signature field)", "signature", where)
    if not isinstance(block, dict) or set(block) != {"payload_type", "signatures"}:
        raise _fail("signature must be an object with exactly payload_type and signatures", "signature", where)
    if block["payload_type"] != CERTIFICATE_PAYLOAD_TYPE:
        raise _fail(
            f"signature payload_type {str(block['payload_type'])[:80]!r} is not {CERTIFICATE_PAYLOAD_TYPE!r}",
            "signature",
            where,
        )
    try:
        payload = rfc8785.dumps({k: v for k, v in cert.items() if k != "signature"})
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise _fail(f"the certificate cannot be canonicalised (RFC 8785): {exc}", "schema", where) from None
    try:
        verify_detached(payload, block["signatures"], payload_type=CERTIFICATE_PAYLOAD_TYPE, trusted=trusted)
    except VerificationError as exc:
        raise _fail(f"certificate signature: {exc}", "signature", where) from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(condition: bool, message: str, where: str | None) -> None:
    if not condition:
        raise _fail(message, "schema", where)


def _check_schema(cert: dict[str, Any], where: str | None) -> None:
    keys = set(cert)
    unknown = sorted(keys - TOP_LEVEL_KEYS)
    missing = sorted(TOP_LEVEL_KEYS - keys)
    _require(not unknown, f"unknown top-level field(s) {unknown}", where)
    _require(not missing, f"missing top-level field(s) {missing}", where)
    _require(cert["schema"] == CERTIFICATE_SCHEMA, f"schema {cert['schema']!r} is not {CERTIFICATE_SCHEMA!r}", where)
    for name, required in NESTED_KEYS.items():
        value = cert[name]
        _require(isinstance(value, dict), f"{name} must be an object", where)
        absent = sorted(required - set(value))
        _require(not absent, f"{name} lacks {absent}", where)
    params = cert["training_parameters"]
    _require(isinstance(params, dict), "training_parameters must be an object", where)
    _require(
        not (TRAINING_PARAMETER_KEYS - set(params)),
        f"training_parameters needs {sorted(TRAINING_PARAMETER_KEYS)}",
        where,
    )
    for key in ("model_name", "base_model", "training_timestamp"):
        _require(isinstance(cert[key], str) and bool(cert[key]), f"{key} must be a non-empty string", where)
    guarantee = cert["privacy_guarantee"]
    _require(
        _is_number(guarantee["epsilon"]) and guarantee["epsilon"] >= 0, "privacy_guarantee.epsilon must be >= 0", where
    )
    _require(
        _is_number(guarantee["delta"]) and 0 < guarantee["delta"] < 1, "privacy_guarantee.delta not in (0, 1)", where
    )
    _require(guarantee["mechanism"] == MECHANISM, f"privacy_guarantee.mechanism must be {MECHANISM!r}", where)
    _require(
        guarantee["accountant"] in _ACCOUNTANT_NAMES,
        f"privacy_guarantee.accountant must be one of {sorted(_ACCOUNTANT_NAMES)}",
        where,
    )
    sampling = cert["sampling"]
    _require(
        sampling["neighbouring_relation"] == NEIGHBOURING_RELATION,
        f"sampling.neighbouring_relation must be {NEIGHBOURING_RELATION!r} (the accounted relation)",
        where,
    )
    _require(sampling["privacy_unit"] == PRIVACY_UNIT, f"sampling.privacy_unit must be {PRIVACY_UNIT!r}", where)
    _require(isinstance(sampling["guarantee_applies"], bool), "sampling.guarantee_applies must be a boolean", where)
    _require(
        sampling["guarantee_applies"] == (sampling["sampler"] == "poisson"),
        "sampling.guarantee_applies must be true exactly for the poisson sampler",
        where,
    )
    n = cert["data_summary"]["num_samples"]
    _require(isinstance(n, int) and not isinstance(n, bool) and n >= 1, "data_summary.num_samples must be >= 1", where)
    accounting = cert["accounting"]
    _require(
        _is_number(accounting["epsilon_tolerance"]) and accounting["epsilon_tolerance"] >= 0,
        "accounting.epsilon_tolerance must be a number >= 0",
        where,
    )
    cross = accounting["rdp_cross_check"]
    _require(isinstance(cross, dict) and _is_number(cross.get("epsilon")), "accounting.rdp_cross_check.epsilon", where)
    ledger = accounting["ledger"]
    _require(
        isinstance(ledger, dict) and isinstance(ledger.get("segments"), list) and bool(ledger["segments"]),
        "accounting.ledger.segments must be a non-empty list",
        where,
    )
    weights = cert["weights"]
    sha = weights["sha256"]
    _require(
        isinstance(sha, str) and len(sha) == 64 and all(c in "0123456789abcdef" for c in sha),
        "weights.sha256 must be 64 lowercase hex digits",
        where,
    )
    _require(isinstance(weights["file"], str) and bool(weights["file"]), "weights.file must name the file", where)
    _require(isinstance(cert["not_covered"], list), "not_covered must be a list", where)
    dp_params = cert["parameters_under_dp"]
    _require(isinstance(dp_params, (list, dict)) and bool(dp_params), "parameters_under_dp must not be empty", where)


def _check_consistency(cert: dict[str, Any], where: str | None) -> list[tuple[float, float, int]]:
    def bad(message: str) -> VerificationError:
        return _fail(message, "consistency", where)

    raw = cert["accounting"]["ledger"]["segments"]
    triples = []
    for index, segment in enumerate(raw):
        if not isinstance(segment, dict) or set(segment) != {"sample_rate", "noise_multiplier", "steps"}:
            raise bad(f"ledger segment #{index} must have exactly sample_rate, noise_multiplier and steps")
        steps = segment["steps"]
        if not (isinstance(steps, int) and not isinstance(steps, bool) and steps >= 1):
            raise bad(f"ledger segment #{index} steps must be a positive integer")
        if not (_is_number(segment["sample_rate"]) and _is_number(segment["noise_multiplier"])):
            raise bad(f"ledger segment #{index} must hold finite numbers")
        triples.append((float(segment["sample_rate"]), float(segment["noise_multiplier"]), steps))
    try:
        segments = merge_segments(triples)
    except ConfigError as exc:
        raise bad(f"ledger segments: {exc}") from None
    if segments != sorted(triples) or len(segments) != len(triples):
        raise bad("ledger segments must be distinct, sorted and non-empty (as the ledger writes them)")
    if any(sigma <= 0 for _, sigma, _ in segments):
        raise bad("a ledger segment has noise_multiplier 0: there is no DP guarantee")
    total = sum(n for _, _, n in segments)
    params = cert["training_parameters"]
    if params["total_steps"] != total or cert["accounting"]["ledger"].get("total_steps") != total:
        raise bad(f"total_steps disagree with the ledger segments, which sum to {total}")
    if params["noise_multiplier"] != min(s for _, s, _ in segments):
        raise bad("training_parameters.noise_multiplier is not the (smallest) noise multiplier of the ledger")
    q_max = max(q for q, _, _ in segments)
    if cert["data_summary"]["sample_rate"] != q_max:
        raise bad("data_summary.sample_rate is not the (largest) sample rate of the ledger")
    batch, n = params["batch_size"], cert["data_summary"]["num_samples"]
    if not _is_number(batch) or abs(q_max * n - batch) > max(1.0, 0.01 * batch):
        raise bad(f"batch_size {batch!r} does not match sample_rate x num_samples = {q_max * n:g}")
    if not _is_number(params["max_grad_norm"]) or params["max_grad_norm"] <= 0:
        raise bad("training_parameters.max_grad_norm must be > 0")
    if cert["accounting"]["dp_event"] != dp_event_description(segments):
        raise bad("accounting.dp_event does not describe the ledger segments")
    accountant = cert["accounting"]["accountant"]
    if _ACCOUNTANT_NAMES.get(cert["privacy_guarantee"]["accountant"]) != accountant:
        raise bad("privacy_guarantee.accountant and accounting.accountant disagree")
    return segments


def _rederive(segments: list[tuple[float, float, int]], delta: float) -> tuple[float, float]:
    try:
        pld = pld_epsilon(segments, delta)
    except Exception as exc:  # noqa: BLE001 - any failure of the re-derivation fails the check closed
        logger.warning("PLD re-derivation failed (%s); relying on RDP", exc)
        pld = math.inf
    rdp = rdp_dp_accounting_epsilon(segments, delta)
    return pld, rdp


def _check_weights(cert: dict[str, Any], weights_path: Path, where: str | None) -> None:
    digest = hashlib.sha256()
    try:
        with weights_path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as exc:
        raise _fail(f"cannot read weights {weights_path}: {exc}", "weights", where) from None
    if digest.hexdigest() != cert["weights"]["sha256"]:
        raise _fail(f"{weights_path} is not the certified weights file (SHA-256 differs)", "weights", where)
