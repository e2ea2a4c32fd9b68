"""The model card (``README.md``) published next to a TSSP package on the Hub.

Every privacy figure in the card comes from the package's DP certificate (``dp_certificate.json``), read from the same
bytes that were verified against the signed manifest. Figures a publisher passes in ``privacy_info`` may add fields
the certificate does not hold (shown apart, marked as not certified); a figure that disagrees with the certificate is
refused. The card names the SHA-256 of the signed manifest payload, so a reader can tell which package it describes.

Metadata follows what the Hub validates: a Hub license id, ``base_model`` only as a Hub repo id (a local path is
never published), ``library_name: peft`` (the guide's ``tensafe`` is not a library the Hub knows; the weights are a
PEFT LoRA adapter), the tags ``differential-privacy``, ``tensafe`` and ``lora``, and no empty or null field.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from typing import Any

from shared_core.errors import ConfigError

__all__ = [
    "CARD_TAGS",
    "HUB_LICENSES",
    "LIBRARY_NAME",
    "build_card_text",
    "card_metadata_problems",
    "certificate_figures",
    "check_license",
    "check_privacy_info",
    "hub_base_model",
]

LIBRARY_NAME = "peft"
CARD_TAGS = ("tensafe", "differential-privacy", "lora", "peft", "tssp", "privacy-preserving")

#: License ids the Hub accepts in model card metadata (hub-docs "Licenses" table). ``other`` is left out: it would
#: need ``license_name`` and ``license_link``, which the config does not carry.
HUB_LICENSES = frozenset(
    {
        "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
        "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
        "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
        "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
        "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
        "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
        "etalab-2.0", "eupl-1.1", "eupl-1.2", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1",
        "lgpl-3.0", "isc", "h-research", "intel-research", "lppl-1.3c", "ms-pl", "apple-ascl", "apple-amlr",
        "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa", "unlicense", "zlib",
        "pddl", "lgpl-lr", "deepfloyd-if-license", "fair-noncommercial-research-license", "llama2", "llama3",
        "llama3.1", "llama3.2", "llama3.3", "llama4", "gemma", "unknown",
    }
)

_SEGMENT = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HUB_ID = re.compile(rf"\A(?:{_SEGMENT}/)?{_SEGMENT}\Z")
_COMMIT_SHA = re.compile(r"\A[0-9a-f]{40}\Z")
_INFO_KEY = re.compile(r"\A[a-z][a-z0-9_]{0,63}\Z")
# Certificate figures shown in the privacy table, in this order: (key, label, where in the certificate).
_FIGURES: tuple[tuple[str, str, str], ...] = (
    ("epsilon", "Epsilon (ε)", "privacy_guarantee"),
    ("delta", "Delta (δ)", "privacy_guarantee"),
    ("mechanism", "Mechanism", "privacy_guarantee"),
    ("accountant", "Accountant", "privacy_guarantee"),
    ("noise_multiplier", "Noise Multiplier", "training_parameters"),
    ("max_grad_norm", "Max Gradient Norm", "training_parameters"),
)


def check_license(license_id: str) -> None:
    """Raise :class:`ConfigError` unless ``license_id`` is a Hub license id."""
    if license_id not in HUB_LICENSES:
        raise ConfigError(
            f"license={license_id!r} is not a Hugging Face Hub license id; use one such as 'apache-2.0', 'mit', "
            "'cc-by-4.0' or 'llama3' (see https://huggingface.co/docs/hub/repositories-licenses)"
        )


def hub_base_model(certificate: Mapping[str, Any], manifest: Mapping[str, Any]) -> str | None:
    """The base model as a Hub repo id, or ``None`` when only a local path (or nothing) is known.

    A ``namespace/name`` id is taken as a Hub id unless it exists as a local path here. A bare ``name`` is taken only
    when the signed manifest pins it to a Hub commit (``base_model.revision`` is a 40-hex SHA), since a bare name is
    as likely a local folder.
    """
    recorded = manifest.get("base_model")
    pinned: Mapping[str, Any] = recorded if isinstance(recorded, Mapping) else {}
    candidates = [pinned.get("repo"), certificate.get("base_model")]
    for value in candidates:
        if not isinstance(value, str) or not _HUB_ID.match(value) or ".." in value or "--" in value:
            continue
        if value.startswith((".", "~")) or os.path.exists(value):
            continue
        if "/" not in value and not (value == pinned.get("repo") and _COMMIT_SHA.match(str(pinned.get("revision")))):
            continue
        return value
    return None


def certificate_figures(certificate: Mapping[str, Any]) -> dict[str, Any]:
    """The privacy figures of the certificate: the guarantee, then every scalar training parameter.

    Raises:
        ConfigError: the certificate has no ``privacy_guarantee`` with ``epsilon`` and ``delta``.
    """
    guarantee = certificate.get("privacy_guarantee")
    if not isinstance(guarantee, Mapping) or not {"epsilon", "delta"} <= set(guarantee):
        raise ConfigError(
            "the package's dp_certificate.json has no privacy_guarantee with epsilon and delta; re-create the package "
            "with a complete certificate"
        )
    figures: dict[str, Any] = {}
    for key, value in guarantee.items():
        if _is_scalar(value):
            figures[key] = value
    params = certificate.get("training_parameters")
    if isinstance(params, Mapping):
        for key, value in params.items():
            if _is_scalar(value) and key not in figures:
                figures[key] = value
    return figures


def check_privacy_info(privacy_info: Mapping[str, Any] | None, figures: Mapping[str, Any]) -> dict[str, Any]:
    """Validate publisher-supplied privacy fields against the certificate and return the extra ones.

    A field the certificate also holds must agree with it (numbers to a relative 1e-9, strings ignoring case); it is
    then dropped, because the card shows the certificate's value. Fields the certificate lacks are returned, to be
    shown apart as not certified.

    Raises:
        ConfigError: a field contradicts the certificate, or a key/value is not a simple scalar.
    """
    extra: dict[str, Any] = {}
    for key, value in (privacy_info or {}).items():
        if not isinstance(key, str) or not _INFO_KEY.match(key):
            raise ConfigError(f"privacy_info key {key!r} must be lower_snake_case (e.g. 'epsilon', 'sample_rate')")
        if not _is_scalar(value):
            raise ConfigError(f"privacy_info[{key!r}] must be a number, a string or a bool, got {type(value).__name__}")
        if key in figures:
            if not _same(value, figures[key]):
                raise ConfigError(
                    f"privacy_info[{key!r}]={value!r} contradicts the signed DP certificate ({key}={figures[key]!r}); "
                    "the card always shows the certificate's figures: drop this field or fix the package"
                )
            continue
        extra[key] = value
    return extra


def _is_scalar(value: object) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (str, int, bool)) and value != ""


def _same(given: object, certified: object) -> bool:
    if isinstance(given, bool) or isinstance(certified, bool):
        return given is certified
    try:
        a, b = float(given), float(certified)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return str(given).strip().casefold() == str(certified).strip().casefold()
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


def _fmt(value: object) -> str:
    # repr keeps every digit of a float (no rounding that would understate epsilon); '|' would break a table row.
    text = repr(value) if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def card_metadata_problems(metadata: Mapping[str, Any], *, where: str = "") -> list[str]:
    """Local checks of card metadata: no empty/null value anywhere, ``base_model`` a Hub id, known license/tags."""
    problems: list[str] = []
    for key, value in metadata.items():
        path = f"{where}{key}"
        if value is None or (isinstance(value, (str, list, dict, tuple)) and len(value) == 0):
            problems.append(f"{path} is empty")
        elif isinstance(value, Mapping):
            problems += card_metadata_problems(value, where=f"{path}.")
        elif isinstance(value, (list, tuple)):
            problems += [f"{path}[{i}] is empty" for i, item in enumerate(value) if item is None or item == ""]
    if where:
        return problems
    base = metadata.get("base_model")
    if base is not None and (not isinstance(base, str) or not _HUB_ID.match(base) or os.path.isabs(base)):
        problems.append(f"base_model {base!r} is not a Hub repo id")
    if "license" in metadata and metadata["license"] not in HUB_LICENSES:
        problems.append(f"license {metadata['license']!r} is not a Hub license id")
    missing = {"differential-privacy", "tensafe", "lora"} - set(metadata.get("tags") or ())
    if missing:
        problems.append(f"tags lack {sorted(missing)}")
    return problems


def build_card_text(
    *,
    repo_id: str,
    manifest: Mapping[str, Any],
    manifest_sha256: str,
    certificate: Mapping[str, Any],
    extra_privacy: Mapping[str, Any],
    license_id: str,
    language: str,
    encrypted: bool,
    weights_included: bool,
    verified: bool,
) -> tuple[dict[str, Any], str]:
    """Metadata and Markdown body of the card (the caller wraps them in ``huggingface_hub.ModelCard``).

    Returns:
        ``(metadata, body)``: metadata has no empty or null field; the body has the guide's sections (model details,
        privacy information, security features, usage).
    """
    figures = certificate_figures(certificate)
    package = manifest.get("package", {})
    name = str(package.get("name") or repo_id.split("/")[-1])
    base_model = hub_base_model(certificate, manifest)
    privacy_meta = {key: figures[key] for key, _, _ in _FIGURES if key in figures}
    privacy_meta["certificate"] = "dp_certificate.json"
    metadata: dict[str, Any] = {
        "language": language,
        "license": license_id,
        "library_name": LIBRARY_NAME,
        "tags": list(CARD_TAGS),
        "differential_privacy": privacy_meta,
        "tensafe": {
            "package": name,
            "package_version": package.get("version"),
            "manifest_sha256": manifest_sha256,
            "signature_suite": manifest.get("signature_suite"),
            "encrypted": encrypted,
            "weights_included": weights_included,
            "verified_before_upload": verified,
        },
    }
    if base_model is not None:
        metadata["base_model"] = base_model
    if extra_privacy:
        metadata["differential_privacy"]["publisher_supplied"] = dict(extra_privacy)
    metadata["tensafe"] = {k: v for k, v in metadata["tensafe"].items() if v is not None and v != ""}

    base_text = f"[{base_model}](https://huggingface.co/{base_model})" if base_model else "a local model (not on Hub)"
    producer = _fmt(package.get("producer", "TenSafe"))
    lines = [
        f"# {_fmt(name)}",
        "",
        "This adapter was trained with **TenSafe** using differentially private fine-tuning (DP-SGD on LoRA "
        "weights). It is published as a signed **TSSP** package: verify it with the publisher's public keys before "
        "use (`tensafe pull` does this for you).",
        "",
        "## Model Details",
        "",
        "| Property | Value |",
        "|----------|-------|",
        f"| Base Model | {base_text} |",
        "| Training Method | LoRA with Differential Privacy |",
        f"| TSSP Package | `{_fmt(name)}` (version {_fmt(package.get('version', '?'))}) |",
        f"| Manifest SHA-256 | `{manifest_sha256}` |",
        f"| Framework | {producer} |",
        "",
        "## Privacy Information",
        "",
        "This model was trained with differential privacy guarantees. The figures below are copied from the signed "
        "DP certificate (`dp_certificate.json`) of the package with the manifest digest above:",
        "",
        "| Parameter | Value |",
        "|-----------|-------|",
    ]
    for key, label, _ in _FIGURES:
        if key in figures:
            lines.append(f"| {label} | {_fmt(figures[key])} |")
    shown = {key for key, _, _ in _FIGURES}
    for key in sorted(set(figures) - shown):
        lines.append(f"| {_fmt(key)} | {_fmt(figures[key])} |")
    if extra_privacy:
        lines += [
            "",
            "Supplied by the publisher, **not** part of the signed certificate:",
            "",
            "| Field | Value |",
            "|-------|-------|",
            *(f"| {_fmt(k)} | {_fmt(v)} |" for k, v in sorted(extra_privacy.items())),
        ]
    weights_line = (
        "- **Encrypted Weights**: AES-256-GCM, streamed in authenticated chunks"
        if encrypted
        else "- **Weights**: plaintext safetensors (this package is not encrypted)"
    )
    if not weights_included:
        weights_line += "; the weights are **not** in this repository and are distributed separately"
    lines += [
        "",
        "## Security Features",
        "",
        "This model is distributed as a **TSSP (TenSafe Secure Package)** with:",
        "",
        "- **Cryptographic Signatures**: Ed25519 + ML-DSA-65 (FIPS 204, post-quantum); both must verify",
        weights_line,
        "- **Tamper-Evident Manifest**: size and SHA-256 of every file, signed; `tssp.dsse.json` holds the envelope",
        "",
        "This card (`README.md`) is not part of the signed package; trust the verified certificate over it.",
        "",
        "## Usage",
        "",
        "```bash",
        f"tensafe pull {repo_id} --local-dir {name}.tssp --public-key publisher-keys/",
        "```",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM",
        "",
        "from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration",
        "from shared_core.tssp import load_model",
        "",
        'hub = TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key="publisher-keys/"))',
        f'manifest = hub.pull_from_hub("{repo_id}", local_dir="{name}.tssp")  # verifies before anything is kept',
        f'base = AutoModelForCausalLM.from_pretrained("{base_model or "<the base model>"}")',
        f'model = load_model("{name}.tssp", base_model=base, public_key="publisher-keys/")  # verifies again',
        "```",
        "",
    ]
    return metadata, "\n".join(lines)
