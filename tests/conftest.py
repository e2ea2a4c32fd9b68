"""Suite-wide fixtures: every test runs offline, with tracker state kept out of the checkout and the home folder."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "WANDB_SILENT": "true",
    "TOKENIZERS_PARALLELISM": "false",
}


@pytest.fixture(autouse=True)
def _isolated_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Restore os.environ after each test and keep tracker/cache writes in a temporary folder."""
    saved = dict(os.environ)
    home = tmp_path_factory.mktemp("env")
    os.environ.update(OFFLINE_ENV)
    os.environ.setdefault("WANDB_MODE", "disabled")
    for var in ("WANDB_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_DATA_DIR", "MPLCONFIGDIR"):
        os.environ[var] = str(home / var.lower())
    try:
        yield
    finally:
        if "wandb" in sys.modules:
            # wandb keeps one process-wide settings singleton (run dir, mode, base URL) from its first use: drop it,
            # so the next test's environment decides where its runs go.
            sys.modules["wandb"].teardown()
        os.environ.clear()
        os.environ.update(saved)


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A temporary current directory, so nothing a test writes lands in the checkout."""
    monkeypatch.chdir(tmp_path)
    return tmp_path
