"""The privacy report: JSON, text and an epsilon-versus-step PNG consistent with the certificate."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from shared_core.accounting import PrivacyLedger, epsilon_cross_check
from shared_core.certificate import write_privacy_report
from shared_core.errors import ConfigError
from tests.certificate._factory import SIGMA, STEPS, Q, certificate_for, make_ledger


def test_report_files(ledger: PrivacyLedger, signed: dict[str, Any], tmp_path: Path) -> None:
    paths = write_privacy_report(ledger=ledger, certificate=signed, out_dir=tmp_path / "report")
    assert {p.name for p in paths.values()} == {"privacy_report.json", "privacy_report.txt", "privacy_report.png"}
    report = json.loads(paths["json"].read_text())
    curve = report["curve"]
    assert curve["steps"][-1] == STEPS
    assert curve["epsilon"][-1] == signed["privacy_guarantee"]["epsilon"]
    assert curve["epsilon_rdp"][-1] == pytest.approx(ledger.epsilon_rdp)
    assert curve["epsilon_rdp"] == sorted(curve["epsilon_rdp"])  # epsilon only grows with steps
    mid = curve["steps"][len(curve["steps"]) // 2]
    assert curve["epsilon_rdp"][len(curve["steps"]) // 2] == pytest.approx(
        epsilon_cross_check([(Q, SIGMA, mid)], delta=ledger.delta)
    )
    text = paths["txt"].read_text()
    assert f"{signed['privacy_guarantee']['epsilon']:.4g}" in text
    assert "Not covered:" in text
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_piecewise_curve_follows_the_recorded_order(adapter_dir: Path, tmp_path: Path) -> None:
    ledger = make_ledger(accountant="rdp", steps=60)
    for _ in range(40):
        ledger.record_step(sample_rate=Q, noise_multiplier=3.0)
    cert = certificate_for(ledger, adapter_dir)
    paths = write_privacy_report(ledger=ledger, certificate=cert, out_dir=tmp_path, rdp_points=11, primary_points=3)
    curve = json.loads(paths["json"].read_text())["curve"]
    assert curve["steps"] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    at_70 = epsilon_cross_check([(Q, SIGMA, 60), (Q, 3.0, 10)], delta=ledger.delta)
    assert curve["epsilon_rdp"][6] == pytest.approx(at_70)


def test_report_refuses_a_certificate_of_another_run(signed: dict[str, Any], tmp_path: Path) -> None:
    other = make_ledger(accountant="rdp", steps=10)
    with pytest.raises(ConfigError, match="does not describe this ledger"):
        write_privacy_report(ledger=other, certificate=signed, out_dir=tmp_path)
