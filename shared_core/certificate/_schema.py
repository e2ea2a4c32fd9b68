"""Shape of the DP certificate: field names, constants, strict JSON reading and the ``dp_accounting`` event form.

Nothing here imports torch or ``dp_accounting``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared_core.errors import VerificationError

__all__ = [
    "CERTIFICATE_MAX_BYTES",
    "CERTIFICATE_PAYLOAD_TYPE",
    "CERTIFICATE_SCHEMA",
    "MECHANISM",
    "NEIGHBOURING_RELATION",
    "PRIVACY_UNIT",
    "TOP_LEVEL_KEYS",
    "dp_event_description",
    "dp_event_from_description",
    "load_certificate_json",
    "parse_certificate_json",
]

CERTIFICATE_SCHEMA = "tensafe.dp-certificate/v1"
CERTIFICATE_PAYLOAD_TYPE = "application/vnd.tensafe.dp-certificate+json;version=1"
CERTIFICATE_MAX_BYTES = 4 * 1024 * 1024
MECHANISM = "DP-SGD"
NEIGHBOURING_RELATION = "add-remove-one"
PRIVACY_UNIT = "example"

# Every top-level key, all required (``signature`` once signed); anything else is rejected by the verifier.
TOP_LEVEL_KEYS = frozenset(
    {
        "schema",
        "model_name",
        "base_model",
        "training_timestamp",
        "privacy_guarantee",
        "training_parameters",
        "data_summary",
        "sampling",
        "delta_policy",
        "accounting",
        "mechanism_details",
        "parameters_under_dp",
        "software",
        "not_covered",
        "weights",
        "signature",
    }
)

# Required keys of the nested objects the verifier reads (extra keys allowed only where listed as open).
NESTED_KEYS: dict[str, frozenset[str]] = {
    "privacy_guarantee": frozenset({"epsilon", "delta", "mechanism", "accountant"}),
    "data_summary": frozenset({"num_samples", "sample_rate"}),
    "sampling": frozenset({"sampler", "neighbouring_relation", "privacy_unit", "guarantee_applies"}),
    "delta_policy": frozenset({"rule", "is_default", "delta_times_num_samples"}),
    "accounting": frozenset(
        {
            "accountant",
            "requested_accountant",
            "fallback_reason",
            "implementation",
            "numerics",
            "epsilon_tolerance",
            "rdp_cross_check",
            "ledger",
            "dp_event",
        }
    ),
    "weights": frozenset({"file", "sha256"}),
}
TRAINING_PARAMETER_KEYS = frozenset({"noise_multiplier", "max_grad_norm", "batch_size", "epochs", "total_steps"})


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text[:40]} overflows a double")
    return value


def load_certificate_json(path: str | Path) -> dict[str, Any]:
    """Read a certificate file: bounded size, strict JSON (no duplicate keys, no NaN/Infinity), an object.

    Raises:
        VerificationError: ``check="format"`` naming the file.
    """
    path = Path(path)
    try:
        with path.open("rb") as handle:
            raw = handle.read(CERTIFICATE_MAX_BYTES + 1)
    except OSError as exc:
        raise VerificationError(f"cannot read certificate {path}: {exc}", path=str(path), check="format") from None
    return parse_certificate_json(raw, where=str(path))


def parse_certificate_json(raw: bytes, *, where: str = "certificate") -> dict[str, Any]:
    """Parse certificate bytes strictly (see :func:`load_certificate_json`)."""
    if len(raw) > CERTIFICATE_MAX_BYTES:
        raise VerificationError(f"{where} is over {CERTIFICATE_MAX_BYTES} bytes", path=where, check="format")
    try:
        doc = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
        )
    except (UnicodeDecodeError, ValueError) as exc:
        raise VerificationError(f"{where} is not strict JSON: {exc}", path=where, check="format") from None
    if not isinstance(doc, dict):
        raise VerificationError(f"{where} must hold a JSON object", path=where, check="format")
    return doc


def dp_event_description(segments: Sequence[tuple[float, float, int]]) -> dict[str, Any]:
    """JSON form of the run's ``dp_accounting`` event, in the field layout of ``DpEvent.to_named_tuple``.

    ``ComposedDpEvent([SelfComposedDpEvent(PoissonSampledDpEvent(q, GaussianDpEvent(sigma)), steps), ...])``:
    a third party rebuilds it (see :func:`shared_core.certificate.dp_event_from_description`) and re-accounts it
    with any ``dp_accounting`` accountant under the add-or-remove-one relation.
    """
    module = "dp_accounting.dp_event"
    return {
        "module_name": module,
        "class_name": "ComposedDpEvent",
        "events": [
            {
                "module_name": module,
                "class_name": "SelfComposedDpEvent",
                "count": steps,
                "event": {
                    "module_name": module,
                    "class_name": "PoissonSampledDpEvent",
                    "sampling_probability": q,
                    "event": {"module_name": module, "class_name": "GaussianDpEvent", "noise_multiplier": sigma},
                },
            }
            for q, sigma, steps in segments
        ],
    }


_EVENT_FIELDS = {
    "ComposedDpEvent": {"events"},
    "SelfComposedDpEvent": {"event", "count"},
    "PoissonSampledDpEvent": {"sampling_probability", "event"},
    "GaussianDpEvent": {"noise_multiplier"},
}


def dp_event_from_description(description: dict[str, Any]) -> Any:
    """Rebuild the ``dp_accounting.DpEvent`` of :func:`dp_event_description` (only those four event classes).

    Example:
        >>> import dp_accounting
        >>> event = dp_event_from_description(dp_event_description([(0.01, 1.0, 100)]))
        >>> accountant = dp_accounting.pld.PLDAccountant()
        >>> round(accountant.compose(event).get_epsilon(1e-5), 3)
        0.718

    Raises:
        VerificationError: ``check="consistency"`` for anything but the known event shapes.
    """
    import dp_accounting

    def build(node: Any) -> Any:
        if not isinstance(node, dict) or node.get("module_name") != "dp_accounting.dp_event":
            raise VerificationError("dp_event: unexpected node", check="consistency")
        name = node.get("class_name")
        fields = _EVENT_FIELDS.get(name) if isinstance(name, str) else None
        if fields is None or set(node) != fields | {"module_name", "class_name"}:
            raise VerificationError(f"dp_event: unsupported event {str(name)[:60]!r}", check="consistency")
        if name == "ComposedDpEvent":
            return dp_accounting.ComposedDpEvent([build(e) for e in node["events"]])
        if name == "SelfComposedDpEvent":
            return dp_accounting.SelfComposedDpEvent(build(node["event"]), int(node["count"]))
        if name == "PoissonSampledDpEvent":
            return dp_accounting.PoissonSampledDpEvent(float(node["sampling_probability"]), build(node["event"]))
        return dp_accounting.GaussianDpEvent(float(node["noise_multiplier"]))

    return build(description)
