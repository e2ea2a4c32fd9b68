"""The public surface of shared_core.tssp: sorted, lazily loaded, torch-free to import."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import shared_core.tssp as tssp

ROOT = Path(__file__).resolve().parents[2]


def test_all_is_sorted_and_every_name_resolves() -> None:
    assert tssp.__all__ == sorted(tssp.__all__)
    assert {"load_model", "pack", "verify_package", "inspect_package", "generate_keys"} <= set(tssp.__all__)
    for name in tssp.__all__:
        assert callable(getattr(tssp, name))


def test_importing_the_verifier_and_exported_names_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from shared_core.tssp import load_model, pack, verify_package, inspect_package\n"
        "import shared_core.tssp.package, shared_core.tssp.verify, shared_core.tssp.load\n"
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert done.stdout.strip() == "False"
