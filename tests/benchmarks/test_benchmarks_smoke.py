"""``benchmarks/run.py --quick`` runs every benchmark end to end on tiny sizes (the real run: BENCHMARKS.md)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_every_benchmark_runs_and_reports_its_headline_figures(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    env = dict(os.environ, TENSAFE_BENCH_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["quick"] is True
    rows = {row["figure"]: row for row in figures["summary"]}
    for figure in (
        "DP time/update vs no DP",
        "DP peak RSS vs no DP",
        "TenSafe speed-up vs opacus_hooks",
        "RDP epsilon at 1e5 updates",
        "re-verify a 1e5-step certificate",
        "TSSP pack throughput vs sha256sum",
        "TSSP verify memory growth",
        "held-out accuracy, no_dp",
        "held-out accuracy, eps=1",
        "held-out accuracy, eps=8",
    ):
        assert figure in rows, sorted(rows)
    # Every DP contender trained the same number of timed updates and TenSafe spent a finite epsilon.
    dp = figures["dp"]["summary"]
    assert set(dp) == {"no_dp", "tensafe", "tensafe_sigma_only", "opacus_hooks", "opacus_ghost"}
    assert all(run["epsilon"] > 0 for run in figures["dp"]["runs"]["tensafe"])
    utility = figures["utility"]["summary"]
    assert all(0.0 <= row["accuracy"]["median"] <= 1.0 for row in utility.values())
    assert utility["eps=1"]["noise_multiplier"] > utility["eps=8"]["noise_multiplier"]  # less budget, more noise
    assert "quick" in done.stdout
