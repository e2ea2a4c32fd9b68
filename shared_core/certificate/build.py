"""Build, sign and save the DP certificate of a finished training run.

Note:
    The certificate states an (epsilon, delta) guarantee for the released weights (and every checkpoint) under
    the add-or-remove-one neighbouring relation with one training example as the privacy unit, for DP-SGD with
    Poisson sampling as recorded by the run's :class:`~shared_core.accounting.PrivacyLedger`. Its
    ``not_covered`` list says what the guarantee does not extend to.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import rfc8785

from shared_core.accounting._io import atomic_write_bytes
from shared_core.accounting.epsilon import ACCOUNTANT_INFO
from shared_core.accounting.ledger import PrivacyLedger, default_delta
from shared_core.certificate._schema import (
    CERTIFICATE_PAYLOAD_TYPE,
    CERTIFICATE_SCHEMA,
    MECHANISM,
    NEIGHBOURING_RELATION,
    PRIVACY_UNIT,
    TRAINING_PARAMETER_KEYS,
    dp_event_description,
)
from shared_core.errors import ConfigError, PrivacyError

__all__ = [
    "DEFAULT_NOT_COVERED",
    "SOFTWARE_DISTRIBUTIONS",
    "build_certificate",
    "canonical_payload",
    "save_certificate",
    "sign_certificate",
]

logger = logging.getLogger(__name__)

SOFTWARE_DISTRIBUTIONS = (
    "tensafe",
    "opacus",
    "dp-accounting",
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "lightning",
    "numpy",
    "scipy",
)

DEFAULT_NOT_COVERED = (
    "training-loss, evaluation and other logged statistics computed on the training data without noise",
    "hyperparameter search, model selection or repeated runs on the same private data",
    "data_summary.num_samples: the exact training-set size is released without noise",
    "the base model and the data it was pre-trained on",
    "evaluation or other data outside the training set",
    "privacy units larger than one example: a person contributing k examples is protected only at group level k",
)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _software_versions(extra: dict[str, Any] | None) -> dict[str, str]:
    import platform

    versions = {"python": platform.python_version()}
    for dist in SOFTWARE_DISTRIBUTIONS:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    for name, value in (extra or {}).items():
        versions[str(name)] = str(value)
    return versions


def _json_value(value: Any, *, where: str) -> Any:
    """Check that ``value`` canonicalises under RFC 8785 (finite floats, safe integers, string keys)."""
    try:
        rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, TypeError, ValueError) as exc:
        raise ConfigError(f"{where} must be plain JSON (finite numbers, integers below 2**53): {exc}") from None
    return copy.deepcopy(value)


def _parameters_under_dp(value: list[str] | dict[str, Any]) -> list[str] | dict[str, Any]:
    if isinstance(value, list):
        if not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError("parameters_under_dp must be a non-empty list of parameter names (or a dict summary)")
        return list(value)
    if isinstance(value, dict) and value:
        return dict(_json_value(value, where="parameters_under_dp"))
    raise ConfigError(
        f"parameters_under_dp must list the trainable parameter names that got clipped, noised gradients; got {value!r}"
    )


def _training_parameters(ledger: PrivacyLedger, given: dict[str, Any]) -> dict[str, Any]:
    segments = ledger.segments
    sigmas = [s for _, s, _ in segments] or [ledger.noise_multiplier]
    derived: dict[str, Any] = {
        # For a piecewise schedule: the smallest noise multiplier used (the full schedule is in accounting.ledger).
        "noise_multiplier": min(sigmas),
        "max_grad_norm": ledger.max_grad_norm,
        "batch_size": ledger.expected_batch_size,
        "total_steps": ledger.steps,
    }
    out = dict(_json_value(given, where="training_parameters"))
    for key, value in derived.items():
        if key in out and out[key] != value:
            raise ConfigError(
                f"training_parameters[{key!r}]={out[key]!r} disagrees with the privacy ledger ({value!r}); leave the "
                "DP settings out of training_parameters, they are taken from the ledger"
            )
        out[key] = value
    if "epochs" not in out:
        out["epochs"] = round(sum(q * n for q, _, n in segments), 6)  # expected passes over the data
    missing = TRAINING_PARAMETER_KEYS - set(out)
    assert not missing, missing
    return out


def build_certificate(
    *,
    ledger: PrivacyLedger,
    model_name: str,
    base_model: str,
    weights_path: str | Path,
    parameters_under_dp: list[str] | dict[str, Any],
    training_parameters: dict[str, Any],
    software: dict[str, Any] | None = None,
    secure_rng: bool = False,
    not_covered: list[str] | None = None,
    allow_unverified_sampler: bool = False,
    timestamp: datetime | None = None,
) -> dict[str, Any]:
    """Build the (unsigned) DP certificate of a run from its ledger and the exact weights file it describes.

    Args:
        ledger: The run's privacy ledger (every optimizer update recorded).
        model_name: Name of the released model.
        base_model: The base model the adapter applies to (repo id, ideally with revision).
        weights_path: The exact weights file released (its SHA-256 binds the certificate to it).
        parameters_under_dp: Names of the parameters that received clipped, noised gradients (or a dict summary).
        training_parameters: Other training settings to record (``epochs``, learning rate, ...); the DP settings
            come from the ledger and may not contradict it.
        software: Extra software versions to record, merged over the detected ones.
        secure_rng: Whether the noise came from a cryptographically secure generator.
        not_covered: Further exclusions, appended to :data:`DEFAULT_NOT_COVERED`.
        allow_unverified_sampler: Certify a non-Poisson run anyway, marked ``guarantee_applies: false``.
        timestamp: Training end time (UTC now by default).

    Returns:
        The certificate as a JSON-ready dict (sign it with :func:`sign_certificate`).

    Raises:
        PrivacyError: No update was recorded, epsilon is not finite, the noise or the batches came from a fixed
            seed, or the sampler is not covered.
        ConfigError: An argument is malformed or contradicts the ledger.
    """
    if not isinstance(ledger, PrivacyLedger):
        raise ConfigError(f"ledger must be a PrivacyLedger, got {type(ledger).__name__}")
    if ledger.steps == 0:
        raise PrivacyError("the privacy ledger recorded no optimizer update: there is no trained model to certify")
    for name, value in (("model_name", model_name), ("base_model", base_model)):
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(f"{name} must be a non-empty string, got {value!r}")
    weights = Path(weights_path)
    if not weights.is_file():
        raise ConfigError(f"weights_path {weights} is not a file; pass the exact weights file being released")
    if ledger.noise_seed_fixed:
        raise PrivacyError(
            "the run drew its noise from a fixed seed (DPConfig.noise_seed): whoever knows the seed can regenerate "
            "the noise and subtract it, so there is no DP guarantee to certify. Retrain with noise_seed=None (the "
            "default, seeded from the operating system)"
        )
    if ledger.sampling_seed_fixed:
        raise PrivacyError(
            "the run drew its Poisson batches from a fixed seed (sampling_seed): whoever knows the seed knows which "
            "examples every update used, so the accounted sampling did not happen. Retrain with sampling_seed=None "
            "(the default, seeded from the operating system)"
        )
    sampler_ok = ledger.sampler == "poisson"
    if not sampler_ok and not allow_unverified_sampler:
        raise PrivacyError(
            f"the run used sampler {ledger.sampler!r}, which the accounting (Poisson subsampling) does not cover: "
            "refusing to certify. Train with Poisson sampling, or pass allow_unverified_sampler=True to issue a "
            "certificate marked guarantee_applies=false"
        )

    result = ledger.epsilon_result()
    if not math.isfinite(result.epsilon):
        raise PrivacyError("epsilon is infinite (an update ran without noise): there is no DP guarantee to certify")
    info = ACCOUNTANT_INFO[result.accountant]
    delta = ledger.delta
    n = ledger.num_examples
    segments = ledger.segments
    summary = ledger.summary()
    excluded = list(DEFAULT_NOT_COVERED)
    if not secure_rng:
        excluded.append("floating-point and timing side channels of the non-cryptographic noise generator")
    if not sampler_ok:
        excluded.insert(0, f"the stated epsilon: the run used sampler {ledger.sampler!r}, not Poisson sampling")
    excluded.extend(str(item) for item in (not_covered or []))
    when = (timestamp or datetime.now(timezone.utc)).astimezone(timezone.utc)

    certificate: dict[str, Any] = {
        "schema": CERTIFICATE_SCHEMA,
        "model_name": model_name,
        "base_model": base_model,
        "training_timestamp": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "privacy_guarantee": {
            "epsilon": result.epsilon,
            "delta": delta,
            "mechanism": MECHANISM,
            "accountant": info["name"],
        },
        "training_parameters": _training_parameters(ledger, training_parameters),
        "data_summary": {
            "num_samples": n,
            # For a piecewise schedule: the largest rate used (the full schedule is in accounting.ledger).
            "sample_rate": max(q for q, _, _ in segments),
        },
        "sampling": {
            "sampler": ledger.sampler,
            "neighbouring_relation": NEIGHBOURING_RELATION,
            "privacy_unit": PRIVACY_UNIT,
            "guarantee_applies": sampler_ok,
        },
        "delta_policy": {
            "rule": "1/(10 N)",
            "is_default": math.isclose(delta, default_delta(n), rel_tol=1e-12),
            "delta_times_num_samples": delta * n,
        },
        "accounting": {
            "accountant": result.accountant,
            "requested_accountant": result.requested,
            "fallback_reason": result.fallback_reason,
            "implementation": info["implementation"],
            "numerics": dict(info["numerics"]),
            "epsilon_tolerance": info["epsilon_tolerance"],
            "rdp_cross_check": {
                "epsilon": ledger.epsilon_rdp,
                "implementation": ACCOUNTANT_INFO["rdp_dp_accounting"]["implementation"],
            },
            "ledger": {
                "schedule": summary["schedule"],
                "total_steps": summary["total_steps"],
                "segments": summary["segments"],
                "target_epsilon": ledger.target_epsilon,
            },
            "dp_event": dp_event_description(segments),
        },
        "mechanism_details": {
            "clipping": "flat per-example clipping over all parameters under DP, norm max_grad_norm",
            "noise": "Gaussian, std noise_multiplier * max_grad_norm, added once per optimizer update to the sum",
            "normalisation": "noised sum divided by the public expected batch size (training_parameters.batch_size)",
            "secure_rng": bool(secure_rng),
        },
        "parameters_under_dp": _parameters_under_dp(parameters_under_dp),
        "software": _software_versions(software),
        "not_covered": excluded,
        "weights": {"file": weights.name, "sha256": _sha256_file(weights)},
    }
    _json_value(certificate, where="the certificate")
    logger.info(
        "built DP certificate for %s: epsilon=%.4g delta=%.3g (%s) over %d updates",
        model_name,
        result.epsilon,
        delta,
        result.accountant,
        ledger.steps,
    )
    return certificate


def canonical_payload(certificate: dict[str, Any]) -> bytes:
    """RFC 8785 canonical JSON of the certificate without its ``signature`` field: the signed bytes."""
    body = {k: v for k, v in certificate.items() if k != "signature"}
    return rfc8785.dumps(body)


def sign_certificate(certificate: dict[str, Any], keys: Any) -> dict[str, Any]:
    """Return a copy of ``certificate`` with both signatures (Ed25519 and ML-DSA-65) over its canonical form.

    Args:
        certificate: From :func:`build_certificate` (an existing ``signature`` is replaced).
        keys: The signer's :class:`~shared_core.tssp.keys.SigningKeys` (the same keys as the package).

    Returns:
        The signed certificate: ``signature = {"payload_type": ..., "signatures": [...]}``.
    """
    from shared_core.tssp.signing import sign_detached

    signed = copy.deepcopy({k: v for k, v in certificate.items() if k != "signature"})
    signatures = sign_detached(canonical_payload(signed), payload_type=CERTIFICATE_PAYLOAD_TYPE, keys=keys)
    signed["signature"] = {"payload_type": CERTIFICATE_PAYLOAD_TYPE, "signatures": signatures}
    return signed


def save_certificate(certificate: dict[str, Any], path: str | Path) -> Path:
    """Write the certificate as JSON, atomically; returns the path."""
    path = Path(path)
    text = json.dumps(certificate, indent=2, sort_keys=True, allow_nan=False, ensure_ascii=False) + "\n"
    atomic_write_bytes(path, text.encode("utf-8"))
    return path
