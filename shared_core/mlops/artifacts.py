"""The end-of-run artifacts a tracker receives, found in the output folder, redacted and scanned before upload.

The DP side writes into the Trainer's ``output_dir`` before the tracker callbacks run: ``dp_certificate.json``
(signed), ``privacy_report.json``, ``training_config.json`` and the TSSP package folder ``model.tssp/``. This module
finds them, prepares an upload copy in a staging folder (JSON configs are re-redacted; a signed certificate or a
package is never rewritten, only scanned) and refuses any file in which a secret is found. ``training_args.bin`` is
never uploaded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_core.mlops.redaction import redact_config_secrets, scan_paths

logger = logging.getLogger(__name__)

__all__ = [
    "ADAPTER_FILES",
    "CERTIFICATE_NAME",
    "PACKAGE_NAME",
    "PRIVACY_REPORT_NAME",
    "TRAINING_CONFIG_NAME",
    "RunArtifacts",
    "certificate_tags",
    "collect_run_artifacts",
    "file_sha256",
    "verify_tssp_package",
]

CERTIFICATE_NAME = "dp_certificate.json"
PRIVACY_REPORT_NAME = "privacy_report.json"
TRAINING_CONFIG_NAME = "training_config.json"
PACKAGE_NAME = "model.tssp"
ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json")
_REDACTED_JSON = (PRIVACY_REPORT_NAME, TRAINING_CONFIG_NAME)


@dataclass
class RunArtifacts:
    """What was found for upload, ready to hand to a tracker.

    Attributes:
        files: Upload-ready single files by name (``dp_certificate.json`` ...), from the staging folder or the
            output folder.
        package: The TSSP package folder when present and clean.
        adapter: Adapter weight files (safetensors + config) when asked for and present.
        missing: Names that were expected but not found.
        refused: ``(name, reason)`` for files not uploaded because a secret was found in them.
        certificate: The parsed certificate, when it exists and is JSON.
        privacy_report: The parsed (redacted) privacy report, when it exists and is JSON.
    """

    files: dict[str, Path] = field(default_factory=dict)
    package: Path | None = None
    adapter: list[Path] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    refused: list[tuple[str, str]] = field(default_factory=list)
    certificate: dict[str, Any] | None = None
    privacy_report: dict[str, Any] | None = None


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None


def _first_clean(paths: list[Path], canaries: list[str]) -> list[tuple[str, str]]:
    return [(p.name, finding) for p, finding in scan_paths(paths, canaries=canaries)]


def _find_adapter(output_dir: Path) -> list[Path]:
    for folder in (output_dir, output_dir / "adapter", output_dir / "final_adapter"):
        found = [folder / name for name in ADAPTER_FILES if (folder / name).is_file()]
        if any(p.suffix == ".safetensors" for p in found):
            return found
    return []


def collect_run_artifacts(
    output_dir: str | os.PathLike[str],
    staging_dir: str | os.PathLike[str],
    *,
    include_adapter: bool,
    canaries: Iterable[str] = (),
) -> RunArtifacts:
    """Find, redact and secret-scan the end-of-run artifacts of ``output_dir``.

    Args:
        output_dir: The training output folder the DP side wrote into.
        staging_dir: An empty folder for the redacted upload copies (kept by the caller until uploaded).
        include_adapter: Also collect the adapter weights (``log_model``).
        canaries: Raw secret values of this process (env, configs); a file containing any is refused.

    Returns:
        The :class:`RunArtifacts`; never raises for missing or unreadable files (they are listed instead).
    """
    out_dir, staging = Path(output_dir), Path(staging_dir)
    staging.mkdir(parents=True, exist_ok=True)
    wanted = [c for c in canaries if c]
    result = RunArtifacts()
    for name in (CERTIFICATE_NAME, *_REDACTED_JSON):
        src = out_dir / name
        if not src.is_file():
            result.missing.append(name)
            continue
        candidate = src
        parsed = _load_json(src)
        if name in _REDACTED_JSON and parsed is not None:
            parsed = redact_config_secrets(parsed)
            candidate = staging / name
            candidate.write_text(json.dumps(parsed, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        findings = _first_clean([candidate], wanted)
        if findings:
            result.refused.append((name, findings[0][1]))
            continue
        result.files[name] = candidate
        if name == CERTIFICATE_NAME and isinstance(parsed, dict):
            result.certificate = parsed
        elif name == PRIVACY_REPORT_NAME and isinstance(parsed, dict):
            result.privacy_report = parsed
    package = out_dir / PACKAGE_NAME
    if package.is_dir():
        findings = _first_clean([package], wanted)
        if findings:
            result.refused.append((PACKAGE_NAME, f"{findings[0][0]}: {findings[0][1]}"))
        else:
            result.package = package
    else:
        result.missing.append(PACKAGE_NAME + "/")
    if include_adapter:
        adapter = _find_adapter(out_dir)
        findings = _first_clean(adapter, wanted) if adapter else []
        if not adapter:
            result.missing.append("adapter_model.safetensors")
        elif findings:
            result.refused.append(("adapter", f"{findings[0][0]}: {findings[0][1]}"))
        else:
            result.adapter = adapter
    return result


def _get(mapping: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(mapping, Mapping):
            return None
        mapping = mapping.get(key)
    return mapping


def certificate_tags(certificate: Mapping[str, Any] | None, *, certificate_path: Path | None = None) -> dict[str, str]:
    """The ``dp.*`` tags of a run, read from a certificate (the guide's field layout).

    Returns:
        ``dp.epsilon``, ``dp.delta``, ``dp.mechanism``, ``dp.accountant``, ``dp.noise_multiplier``,
        ``dp.max_grad_norm``, ``dp.sample_rate``, ``dp.total_steps`` and ``dp.certificate_sha256``, for those present.
    """
    fields = {
        "dp.epsilon": ("privacy_guarantee", "epsilon"),
        "dp.delta": ("privacy_guarantee", "delta"),
        "dp.mechanism": ("privacy_guarantee", "mechanism"),
        "dp.accountant": ("privacy_guarantee", "accountant"),
        "dp.noise_multiplier": ("training_parameters", "noise_multiplier"),
        "dp.max_grad_norm": ("training_parameters", "max_grad_norm"),
        "dp.total_steps": ("training_parameters", "total_steps"),
        "dp.sample_rate": ("data_summary", "sample_rate"),
    }
    tags = {tag: str(value) for tag, path in fields.items() if (value := _get(certificate, *path)) is not None}
    if certificate_path is not None and certificate_path.is_file():
        tags["dp.certificate_sha256"] = file_sha256(certificate_path)
    return tags


def verify_tssp_package(package: Path | None, *, trusted_keys: str | os.PathLike[str] | None) -> bool:
    """Whether ``package`` verifies against ``trusted_keys`` with ``shared_core.tssp.verify.verify_package``.

    False (with a log line saying why) when there is no package, no trusted keys, no verifier in this build, or
    verification fails. Never raises.
    """
    if package is None:
        return False
    if trusted_keys is None:
        logger.warning("TSSP package not verified: no trusted_keys given in the tracker config; tssp_verified=false")
        return False
    try:
        from shared_core.tssp.keys import load_trusted_keys
        from shared_core.tssp.package import verify_package
    except ImportError as exc:
        logger.warning("TSSP package not verified: verifier unavailable (%s); tssp_verified=false", exc)
        return False
    try:
        trusted = load_trusted_keys(Path(trusted_keys))
        verify_package(package, trusted=trusted)
    except Exception as exc:  # any failure means "not verified"; the reason is logged
        logger.warning("TSSP package %s failed verification: %s; tssp_verified=false", package, exc)
        return False
    return True

