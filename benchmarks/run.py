"""Run the TenSafe benchmarks side by side on this machine and print the ratios against their goals.

Usage::

    python benchmarks/run.py [--quick] [--only dp,accounting,tssp,utility] [--json OUT]

* ``dp``: time per update and peak memory of TenSafe DP against the same Trainer without DP, and against plain
  opacus (hooks and ghost clipping), on SmolLM2-135M + LoRA (``bench_dp.py``);
* ``accounting``: epsilon at 1e4/1e5 updates, calibration, certificate re-verification (``bench_accounting.py``);
* ``tssp``: package pack/verify against ``sha256sum`` (``bench_tssp.py``);
* ``utility``: held-out accuracy of a DP MiniLM classifier at epsilon 1, 3, 8 against no DP (``bench_utility.py``).

``--quick`` uses tiny sizes everywhere: it checks that every benchmark still runs; its figures mean nothing.
The full run takes about an hour on 2 CPU cores. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common  # noqa: E402

NAMES = ("dp", "accounting", "tssp", "utility")


def _load(name: str) -> Any:
    spec = importlib.util.spec_from_file_location(name, HERE / f"{name}.py")
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load benchmarks/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_dp(quick: bool) -> dict[str, Any]:
    """``bench_dp.py``: TenSafe vs no DP vs opacus, fresh process per run."""
    return dict(_load("bench_dp").main(["--quick"] if quick else []))


def run_utility(quick: bool) -> dict[str, Any]:
    """``bench_utility.py``: accuracy at epsilon 1, 3, 8 vs no DP."""
    return dict(_load("bench_utility").main(["--quick"] if quick else []))


def run_tssp(quick: bool) -> dict[str, Any]:
    """``bench_tssp.py`` (owned by the TSSP engineer): 4 MiB under --quick, its default 1 GiB otherwise."""
    return dict(_load("bench_tssp").main(["--size-mib", "4"] if quick else []))


def run_accounting(quick: bool) -> dict[str, Any]:
    """``bench_accounting.py`` (owned by the accounting engineer), in a child process; one repeat under --quick.

    Its sizes (1e4/1e5 updates) are fixed by that script, so --quick only lowers the repeats.
    """
    with tempfile.TemporaryDirectory(prefix="bench-acct-") as tmp:
        out = Path(tmp) / "accounting.json"
        cmd = [sys.executable, str(HERE / "bench_accounting.py"), "--json", str(out)]
        cmd += ["--repeat", "1" if quick else "3"]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=str(HERE.parent))  # noqa: S603
        print(done.stdout, end="")
        if done.returncode != 0:
            raise RuntimeError(f"bench_accounting.py failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
        return dict(json.loads(out.read_text()))


RUNNERS = {"dp": run_dp, "accounting": run_accounting, "tssp": run_tssp, "utility": run_utility}


# ---- the summary table --------------------------------------------------------------------------------------------


def _row(figure: str, measured: str, goal: str, met: bool | None) -> tuple[str, str, str, str]:
    return figure, measured, goal, "-" if met is None else ("yes" if met else "NO")


def _ratio_text(r: dict[str, Any]) -> str:
    return f"{r['ratio']:.2f}x ({r['pair_min']:.2f}-{r['pair_max']:.2f})"


def summary_rows(results: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """One row per headline figure: what was measured, the goal, whether it is met."""
    rows: list[tuple[str, str, str, str]] = []
    dp = results.get("dp")
    if isinstance(dp, dict):
        r = dp["ratios"]
        if "tensafe_vs_no_dp_time" in r:
            t = r["tensafe_vs_no_dp_time"]
            rows.append(_row("DP time/update vs no DP", _ratio_text(t), "<= 1.10x", t["ratio"] <= 1.10))
            m = r["tensafe_vs_no_dp_peak_memory"]
            rows.append(_row("DP peak RSS vs no DP", _ratio_text(m), "<= 1.10x", m["ratio"] <= 1.10))
            g = r["tensafe_vs_no_dp_memory_growth"]
            rows.append(_row("DP RSS growth in training vs no DP", _ratio_text(g), "(context)", None))
        for other in ("opacus_hooks", "opacus_ghost"):
            key = f"tensafe_speedup_vs_{other}"
            if key in r:
                goal_met = r[key]["ratio"] >= 1.5 if other == "opacus_hooks" else None
                rows.append(_row(f"TenSafe speed-up vs {other}", _ratio_text(r[key]), ">= 1.5x", goal_met))
        s = dp["summary"]
        if "tensafe_sigma_only" in s and "no_dp" in s:
            base = s["no_dp"]["seconds_per_update"]["median"]
            only = s["tensafe_sigma_only"]["seconds_per_update"]["median"]
            mem = s["tensafe_sigma_only"]["train_peak_rss_mib"]["median"] / s["no_dp"]["train_peak_rss_mib"]["median"]
            rows.append(
                _row("DP without a target epsilon: time / peak RSS", f"{only / base:.2f}x / {mem:.2f}x", "-", None)
            )
    acct = results.get("accounting")
    if isinstance(acct, dict):
        rdp = next((x for x in acct["epsilon"] if x["accountant"] == "rdp" and x["steps"] == 100_000), None)
        if rdp:
            rows.append(
                _row("RDP epsilon at 1e5 updates", f"{rdp['seconds'] * 1e3:.1f} ms", "< 50 ms", rdp["seconds"] < 0.05)
            )
        v = acct["verification"]["verify_seconds"]
        rows.append(_row("re-verify a 1e5-step certificate", f"{v:.2f} s", "< 5 s", v < 5))
    tssp = results.get("tssp")
    if isinstance(tssp, dict):
        base = tssp["sha256sum"]["seconds"]
        for op in ("pack", "verify"):
            share = base / tssp[op]["seconds"]
            rows.append(_row(f"TSSP {op} throughput vs sha256sum", f"{share:.0%}", ">= 80%", share >= 0.8))
            growth = tssp[op]["growth_mib"]
            rows.append(_row(f"TSSP {op} memory growth", f"{growth:.0f} MiB", "< 128 MiB", growth < 128))
    util = results.get("utility")
    if isinstance(util, dict):
        s = util["summary"]
        base = s["no_dp"]["accuracy"]
        for name, row in s.items():
            a = row["accuracy"]
            text = f"{a['median']:.3f} ({a['min']:.3f}-{a['max']:.3f})"
            if name != "no_dp":
                text += f", {a['median'] - base['median']:+.3f} vs no DP"
            rows.append(_row(f"held-out accuracy, {name}", text, "(context)", None))
    return rows


def print_summary(rows: list[tuple[str, str, str, str]]) -> None:
    """Print the headline table."""
    widths = [max(len(r[i]) for r in [("figure", "measured", "goal", "met"), *rows]) for i in range(4)]
    header = ("figure", "measured (median; pair/run min-max)", "goal", "met")
    widths = [max(w, len(h)) for w, h in zip(widths, header, strict=True)]
    print("\n" + "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)))
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the selected benchmarks and print the summary; returns every figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks the benchmarks run, figures mean nothing"
    )
    parser.add_argument("--only", default=",".join(NAMES), help=f"comma-separated subset of {','.join(NAMES)}")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure to this JSON file")
    opts = parser.parse_args(argv)
    chosen = [n.strip() for n in opts.only.split(",") if n.strip()]
    unknown = sorted(set(chosen) - set(NAMES))
    if unknown or not chosen:
        parser.error(f"--only takes a comma-separated subset of {', '.join(NAMES)}; got {opts.only!r}")
    results: dict[str, Any] = {"machine": _common.machine(), "versions": _common.versions(), "quick": opts.quick}
    timings: dict[str, float] = {}
    for name in NAMES:
        if name not in chosen:
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        results[name] = RUNNERS[name](opts.quick)
        timings[name] = time.perf_counter() - started
    results["seconds"] = timings
    rows = summary_rows(results)
    results["summary"] = [dict(zip(("figure", "measured", "goal", "met"), r, strict=True)) for r in rows]
    print_summary(rows)
    if opts.quick:
        print("(--quick: tiny sizes and models; these figures only show that the benchmarks run)")
    print(
        f"machine: {results['machine']['cpu']}, {results['machine']['cores']} cores; "
        f"load average at start {results['machine']['load_average']}"
    )
    if opts.json is not None:
        opts.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
    return results


if __name__ == "__main__":
    main()
