"""The one-way import rule of DESIGN.md, checked in fresh interpreters."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("transformers", "lightning", "pytorch_lightning")
ADAPTERS = ("tensafe_hf", "tensafe_lightning")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", f"{code}\nimport sys\nprint('\\n'.join(sorted(sys.modules)))"],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout
    return {line.split(".")[0] for line in out.split()}


def test_importing_core_pulls_in_no_framework_and_no_torch() -> None:
    loaded = _modules_after("import shared_core, shared_core.config, shared_core.errors")
    assert not loaded & {*FRAMEWORKS, *ADAPTERS, "torch"}


def test_core_cli_builds_without_importing_a_framework() -> None:
    loaded = _modules_after("from shared_core.cli import build_app; build_app()")
    assert not loaded & {*FRAMEWORKS, "torch"}


@pytest.mark.parametrize("path", sorted((ROOT / "shared_core").rglob("*.py")), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_core_module_imports_a_framework_or_an_adapter(path: Path) -> None:
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            assert name.split(".")[0] not in {*FRAMEWORKS, *ADAPTERS}, f"{path}: imports {name}"
