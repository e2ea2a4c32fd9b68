"""Certificate verification (library and CLI) runs with torch, transformers and opacus blocked from importing."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from shared_core.certificate import save_certificate

ROOT = Path(__file__).resolve().parents[2]

# The path finder is wrapped so that these packages look uninstalled: imports raise ModuleNotFoundError and
# ``importlib.util.find_spec`` answers None. (``sys.modules[name] = None`` blocks imports too, but scipy's
# array-API helpers then read the ``None`` entry as a loaded torch and crash, and find_spec raises.)
_BLOCK = textwrap.dedent(
    """
    import importlib.machinery
    import sys

    BLOCKED = ("torch", "transformers", "opacus", "lightning", "pytorch_lightning")

    class _HidingPathFinder:
        @classmethod
        def find_spec(cls, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                return None
            return importlib.machinery.PathFinder.find_spec(name, path, target)

        @classmethod
        def invalidate_caches(cls):
            importlib.machinery.PathFinder.invalidate_caches()

    sys.meta_path[:] = [
        _HidingPathFinder if finder is importlib.machinery.PathFinder else finder for finder in sys.meta_path
    ]
    """
)


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BLOCK + textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )


def test_verify_certificate_without_torch(signed: dict[str, Any], key_dir: Path, tmp_path: Path) -> None:
    path = save_certificate(signed, tmp_path / "dp_certificate.json")
    out = _run(
        f"""
        from shared_core.certificate import verify_certificate
        from shared_core.tssp.keys import load_trusted_keys
        check = verify_certificate({str(path)!r}, trusted=load_trusted_keys({str(key_dir)!r}), max_epsilon=3.0)
        import importlib.util, json
        assert importlib.util.find_spec("torch") is None  # the block works
        loaded = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers", "opacus"))
        print(json.dumps({{"epsilon": check.epsilon, "loaded": loaded}}))
        """
    )
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["epsilon"] == signed["privacy_guarantee"]["epsilon"]
    assert result["loaded"] == []


def test_cli_verify_privacy_without_torch(signed: dict[str, Any], key_dir: Path, tmp_path: Path) -> None:
    path = save_certificate(signed, tmp_path / "dp_certificate.json")
    code = f"""
        from shared_core.cli import main
        main(["verify-privacy", {str(path)!r}, "--public-key", {str(key_dir)!r}, "--max-epsilon", "{{}}"])
        """
    ok = _run(code.format(3.0))
    assert ok.returncode == 0, ok.stderr
    assert "verified certificate of tiny-lora-dp" in ok.stdout
    over = _run(code.format(0.1))
    assert over.returncode == 1
    assert over.stderr.strip().count("\n") == 0
    assert "exceeds the allowed maximum 0.1" in over.stderr
