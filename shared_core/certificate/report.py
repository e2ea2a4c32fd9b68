"""The privacy report of a run: JSON, a human-readable text and a plot of epsilon versus step.

The curve is evaluated on a grid of steps, not every step: the torch-free ``dp_accounting`` RDP bound at up to
``rdp_points`` steps, and the certified accountant at ``primary_points`` of them (its last point is the
certified figure). Matplotlib (Agg backend) is imported only here, on use.
"""

from __future__ import annotations

import io
import json
import logging
import math
from pathlib import Path
from typing import Any

from shared_core.accounting._io import atomic_write_bytes
from shared_core.accounting.epsilon import compute_epsilon_detailed, epsilon_cross_check
from shared_core.accounting.ledger import PrivacyLedger
from shared_core.errors import ConfigError

__all__ = ["REPORT_FILES", "write_privacy_report"]

logger = logging.getLogger(__name__)

REPORT_FILES = {"json": "privacy_report.json", "txt": "privacy_report.txt", "png": "privacy_report.png"}


def _grid(total: int, points: int) -> list[int]:
    if total <= 0:
        return [0]
    count = max(2, min(points, total))
    return sorted({round(total * i / (count - 1)) for i in range(count)} - {0} | {total})


def _prefix(runs: list[tuple[float, float, int]], steps: int) -> list[tuple[float, float, int]]:
    out, left = [], steps
    for q, sigma, n in runs:
        if left <= 0:
            break
        take = min(n, left)
        out.append((q, sigma, take))
        left -= take
    return out


def _curve(ledger: PrivacyLedger, *, rdp_points: int, primary_points: int) -> dict[str, Any]:
    runs = ledger.runs
    total = ledger.steps
    if runs is None:  # schedule too long to keep in order: only the final figures are exact
        return {
            "steps": [total],
            "epsilon_rdp": [ledger.epsilon_rdp],
            "primary_steps": [total],
            "epsilon": [ledger.epsilon_spent],
            "note": "schedule history too long to keep in order; only the final point is shown",
        }
    rdp_steps = _grid(total, rdp_points)
    rdp_values = [epsilon_cross_check(_prefix(runs, s), delta=ledger.delta) for s in rdp_steps]
    primary_steps = _grid(total, primary_points)
    primary_values = []
    for s in primary_steps:
        if s == total:
            primary_values.append(ledger.epsilon_spent)
        else:
            result = compute_epsilon_detailed(_prefix(runs, s), delta=ledger.delta, accountant=ledger.accountant)
            primary_values.append(result.epsilon)
    return {"steps": rdp_steps, "epsilon_rdp": rdp_values, "primary_steps": primary_steps, "epsilon": primary_values}


def _text(report: dict[str, Any]) -> str:
    g = report["privacy_guarantee"]
    lines = [
        f"Privacy report: {report['model_name']}",
        "",
        f"Guarantee: ({g['epsilon']:.4g}, {g['delta']:.3g})-differential privacy, {g['mechanism']}, "
        f"{g['accountant']} accountant",
        f"  per {report['sampling']['privacy_unit']}, {report['sampling']['neighbouring_relation']} neighbouring "
        f"datasets, {report['sampling']['sampler']} sampling"
        + ("" if report["sampling"]["guarantee_applies"] else "  (NOT COVERED by the accounting: see below)"),
        f"  RDP cross-check (dp_accounting): epsilon <= {report['rdp_cross_check']:.4g}",
    ]
    if report["target_epsilon"] is not None:
        lines.append(f"  Budget: target epsilon {report['target_epsilon']:g}")
    p = report["training_parameters"]
    lines += [
        "",
        f"Training: {p['total_steps']} optimizer updates, noise multiplier {p['noise_multiplier']:g}, clip norm "
        f"{p['max_grad_norm']:g}, expected batch {p['batch_size']}, about {p['epochs']:g} epochs",
        f"Schedule: {report['schedule']['schedule']}",
    ]
    for seg in report["schedule"]["segments"]:
        lines.append(f"  q={seg['sample_rate']:g} sigma={seg['noise_multiplier']:g} steps={seg['steps']}")
    curve = report["curve"]
    lines += ["", "Epsilon versus step:"]
    lines += [f"  step {s:>9}: epsilon {e:.4g}" for s, e in zip(curve["primary_steps"], curve["epsilon"], strict=True)]
    lines += ["", f"Weights: {report['weights']['file']} sha256 {report['weights']['sha256']}", "", "Not covered:"]
    lines += [f"  - {item}" for item in report["not_covered"]]
    return "\n".join(lines) + "\n"


def _png(report: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    curve = report["curve"]
    fig = Figure(figsize=(6.4, 4.0), dpi=100)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(curve["steps"], curve["epsilon_rdp"], color="tab:gray", label="RDP bound (dp_accounting)")
    ax.plot(
        curve["primary_steps"],
        curve["epsilon"],
        marker="o",
        color="tab:blue",
        label=f"{report['privacy_guarantee']['accountant']} (certified)",
    )
    if report["target_epsilon"] is not None:
        ax.axhline(report["target_epsilon"], color="tab:red", linestyle="--", label="target epsilon")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"epsilon (delta = {report['privacy_guarantee']['delta']:.2g})")
    ax.set_title(report["model_name"])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_privacy_report(
    *,
    ledger: PrivacyLedger,
    certificate: dict[str, Any],
    out_dir: str | Path,
    rdp_points: int = 25,
    primary_points: int = 5,
) -> dict[str, Path]:
    """Write ``privacy_report.json``, ``privacy_report.txt`` and ``privacy_report.png`` into ``out_dir``.

    Args:
        ledger: The run's ledger (the same one the certificate was built from).
        certificate: The run's certificate (signed or not).
        out_dir: Folder to write into (created if missing).
        rdp_points: Grid size of the RDP curve.
        primary_points: Grid size of the certified accountant's curve (its slowest part).

    Returns:
        ``{"json": path, "txt": path, "png": path}``.

    Raises:
        ConfigError: The certificate does not describe this ledger.
    """
    guarantee = certificate.get("privacy_guarantee", {})
    if certificate.get("training_parameters", {}).get("total_steps") != ledger.steps or not math.isclose(
        float(guarantee.get("epsilon", math.nan)), ledger.epsilon_spent, rel_tol=1e-12
    ):
        raise ConfigError("the certificate does not describe this ledger (steps or epsilon differ)")
    report: dict[str, Any] = {
        "model_name": certificate["model_name"],
        "privacy_guarantee": guarantee,
        "rdp_cross_check": ledger.epsilon_rdp,
        "target_epsilon": ledger.target_epsilon,
        "sampling": certificate["sampling"],
        "training_parameters": certificate["training_parameters"],
        "schedule": ledger.summary(),
        "curve": _curve(ledger, rdp_points=rdp_points, primary_points=primary_points),
        "weights": certificate["weights"],
        "not_covered": certificate["not_covered"],
    }
    out = Path(out_dir)
    paths = {kind: out / name for kind, name in REPORT_FILES.items()}
    atomic_write_bytes(
        paths["json"], (json.dumps(report, indent=2, sort_keys=True, allow_nan=False) + "\n").encode("utf-8")
    )
    atomic_write_bytes(paths["txt"], _text(report).encode("utf-8"))
    atomic_write_bytes(paths["png"], _png(report))
    logger.info("wrote privacy report to %s", out)
    return paths
