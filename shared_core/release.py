"""From a trained adapter and its privacy ledger to the released artifacts, the same for every adapter.

``release_adapter`` writes, into one output folder: the signed ``dp_certificate.json`` bound to the exact weights,
``privacy_report.{json,txt,png}``, the redacted ``training_config.json``, and the TSSP package ``model.tssp/``, which
it then verifies with the public keys before returning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Release", "atomic_write_json", "release_adapter"]

logger = logging.getLogger(__name__)

PACKAGE_NAME = "model.tssp"


@dataclass
class Release:
    """Paths of what ``release_adapter`` wrote, the verified manifest, and the ledger it certified."""

    output_dir: Path
    certificate_path: Path
    report_paths: dict[str, Path]
    training_config_path: Path
    package_path: Path
    manifest: dict[str, Any]
    ledger: Any


def atomic_write_json(path: Path, payload: Any) -> Path:
    """Write JSON next to ``path`` in a temp file, fsync it, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def release_adapter(
    *,
    adapter_dir: str | Path,
    output_dir: str | Path,
    ledger: Any,
    key_dir: str | Path,
    passphrase: str | None = None,
    model_name: str,
    base_model: str,
    parameters_under_dp: list[str],
    training_parameters: dict[str, Any],
    training_config: dict[str, Any],
) -> Release:
    """Certify, report, package and verify one trained adapter (see the module docstring)."""
    from shared_core.certificate import build_certificate, save_certificate, sign_certificate, write_privacy_report
    from shared_core.mlops.redaction import redact_config_secrets
    from shared_core.tssp import load_signing_keys, pack, verify_package

    adapter_dir, output_dir = Path(adapter_dir), Path(output_dir)
    keys = load_signing_keys(key_dir, passphrase=passphrase)
    certificate = build_certificate(
        ledger=ledger,
        model_name=model_name,
        base_model=base_model,
        weights_path=adapter_dir / "adapter_model.safetensors",
        parameters_under_dp=parameters_under_dp,
        training_parameters=training_parameters,
    )
    certificate = sign_certificate(certificate, keys)
    certificate_path = save_certificate(certificate, output_dir / "dp_certificate.json")
    report_paths = write_privacy_report(ledger=ledger, certificate=certificate, out_dir=output_dir)
    config_path = atomic_write_json(output_dir / "training_config.json", redact_config_secrets(training_config))
    package_path = output_dir / PACKAGE_NAME
    staged = output_dir / f".{PACKAGE_NAME}.new-{os.getpid()}"
    shutil.rmtree(staged, ignore_errors=True)
    pack(
        adapter_dir,
        staged,
        keys=keys,
        certificate=certificate_path,
        privacy_report=report_paths.get("json"),
        training_config=json.loads(config_path.read_text(encoding="utf-8")),
        base_model={"repo": base_model},
        name=model_name,
    )
    manifest = verify_package(staged, trusted=keys.trusted())
    _replace_dir(staged, package_path)
    logger.info("released %s: certificate %s, package %s", model_name, certificate_path, package_path)
    return Release(output_dir, certificate_path, report_paths, config_path, package_path, manifest, ledger)


def _replace_dir(new: Path, target: Path) -> None:
    """Put the verified package ``new`` at ``target``; an older package there is removed only afterwards."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)
