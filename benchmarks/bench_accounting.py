"""Accounting figures: epsilon at 1e4 and 1e5 updates per accountant, calibration, certificate re-verification.

Run: ``.venv/bin/python benchmarks/bench_accounting.py [--json OUT]``. Each figure is the best of ``--repeat`` runs
(wall clock), after one warm-up call per accountant so that import time (torch for opacus) is not counted.
Targets: RDP at 1e5 updates < 50 ms; re-verification of a 1e5-step certificate < 5 s.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

Q, SIGMA, DELTA = 0.001, 1.0, 1e-6


def _best(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    best, value = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    return best, value


def bench_epsilon(repeat: int) -> list[dict[str, Any]]:
    from shared_core.accounting import compute_epsilon, epsilon_cross_check

    rows = []
    for accountant in ("rdp", "pld", "prv", "rdp_dp_accounting"):
        for steps in (10_000, 100_000):
            if accountant == "rdp_dp_accounting":

                def run(steps: int = steps) -> float:
                    return epsilon_cross_check([(Q, SIGMA, steps)], delta=DELTA)

            else:

                def run(steps: int = steps, accountant: str = accountant) -> float:
                    return compute_epsilon(
                        sample_rate=Q, noise_multiplier=SIGMA, steps=steps, delta=DELTA, accountant=accountant
                    )

            run()  # warm-up: imports
            seconds, eps = _best(run, repeat)
            rows.append({"accountant": accountant, "steps": steps, "epsilon": eps, "seconds": seconds})
    return rows


def bench_calibration(repeat: int) -> list[dict[str, Any]]:
    from shared_core.accounting import calibrate_noise_multiplier

    rows = []
    for accountant in ("rdp", "pld", "prv"):

        def run(accountant: str = accountant) -> float:
            return calibrate_noise_multiplier(
                target_epsilon=1.0, delta=1e-5, sample_rate=0.01, steps=10_000, accountant=accountant
            )

        seconds, sigma = _best(run, repeat)
        rows.append(
            {"accountant": accountant, "target_epsilon": 1.0, "steps": 10_000, "sigma": sigma, "seconds": seconds}
        )
    return rows


def bench_budget_check(steps: int = 10_000) -> dict[str, Any]:
    from shared_core.accounting import PrivacyLedger

    ledger = PrivacyLedger(
        target_epsilon=2.0,
        delta=1e-5,
        accountant="prv",
        num_examples=100_000,
        sample_rate=0.001,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=100,
    )
    start = time.perf_counter()
    ledger.would_exceed_budget(sample_rate=0.001, noise_multiplier=1.0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        ledger.would_exceed_budget(sample_rate=0.001, noise_multiplier=1.0)
        ledger.record_step(sample_rate=0.001, noise_multiplier=1.0)
    per_step = (time.perf_counter() - start) / steps
    return {"first_check_seconds": first, "per_step_seconds": per_step, "steps_remaining": ledger.steps_remaining()}


def bench_verification(repeat: int) -> dict[str, Any]:
    import numpy as np
    from safetensors.numpy import save_file

    from shared_core.accounting import PrivacyLedger
    from shared_core.certificate import build_certificate, sign_certificate, verify_certificate
    from shared_core.tssp.keys import generate_keys, load_signing_keys

    steps = 100_000
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        generate_keys(root / "keys")
        keys = load_signing_keys(root / "keys")
        save_file({"w": np.zeros((8, 8), dtype=np.float32)}, str(root / "adapter_model.safetensors"))
        ledger = PrivacyLedger(
            target_epsilon=None,
            delta=DELTA,
            accountant="prv",
            num_examples=100_000,
            sample_rate=Q,
            noise_multiplier=SIGMA,
            max_grad_norm=1.0,
            expected_batch_size=100,
        )
        for _ in range(steps):
            ledger.record_step(sample_rate=Q, noise_multiplier=SIGMA)
        start = time.perf_counter()
        cert = sign_certificate(
            build_certificate(
                ledger=ledger,
                model_name="bench",
                base_model="bench-base",
                weights_path=root / "adapter_model.safetensors",
                parameters_under_dp=["w"],
                training_parameters={},
            ),
            keys,
        )
        build_seconds = time.perf_counter() - start
        trusted = keys.trusted()
        seconds, check = _best(lambda: verify_certificate(cert, trusted=trusted), repeat)
    return {
        "steps": steps,
        "build_and_sign_seconds_including_prv": build_seconds,
        "verify_seconds": seconds,
        "epsilon": check.epsilon,
        "rederived_pld": check.rederived_pld,
        "rederived_rdp": check.rederived_rdp,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None, help="Also write the figures to this JSON file.")
    args = parser.parse_args()
    figures = {
        "epsilon": bench_epsilon(args.repeat),
        "calibration": bench_calibration(1),
        "budget_check": bench_budget_check(),
        "verification": bench_verification(args.repeat),
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    for row in figures["epsilon"]:
        print(
            f"epsilon  {row['accountant']:>18} {row['steps']:>7} steps: {row['seconds'] * 1e3:9.1f} ms  "
            f"eps={row['epsilon']:.4f}"
        )
    for row in figures["calibration"]:
        print(f"calibrate {row['accountant']:>17} eps=1 T=1e4: {row['seconds']:7.2f} s  sigma={row['sigma']:.4f}")
    b = figures["budget_check"]
    print(f"budget   first check {b['first_check_seconds']:.2f} s, then {b['per_step_seconds'] * 1e6:.1f} us/step")
    v = figures["verification"]
    print(
        f"verify   1e5-step certificate: {v['verify_seconds']:.2f} s (build+sign incl. PRV "
        f"{v['build_and_sign_seconds_including_prv']:.2f} s); eps={v['epsilon']:.4f} pld={v['rederived_pld']:.4f} "
        f"rdp={v['rederived_rdp']:.4f}"
    )
    print(f"peak RSS {figures['peak_rss_mib']:.0f} MiB")
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
