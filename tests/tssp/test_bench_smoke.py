"""The TSSP benchmark script runs end to end on a few MiB (the real run is manual, see benchmarks/bench_tssp.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_tssp.py"


def test_benchmark_smoke(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location("bench_tssp", BENCH)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    rows = module.main(["--size-mib", "2", "--dir", str(tmp_path)])
    assert set(rows) >= {"sha256sum", "pack", "verify", "load", "pack-archive", "verify-archive", "signatures"}
    assert rows["pack"]["growth_mib"] < 128
    assert rows["verify"]["seconds"] > 0
    assert list(tmp_path.iterdir()) == []  # the work folder is removed
