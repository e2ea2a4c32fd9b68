"""The privacy ledger: recording, budget stop, metrics, save/resume and fail-closed resume."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

import shared_core.accounting.calibration as calibration
from shared_core.accounting import (
    PrivacyLedger,
    compute_epsilon,
    compute_epsilon_segments,
    default_delta,
    epsilon_cross_check,
)
from shared_core.config import DPConfig
from shared_core.errors import ConfigError, LedgerError

Q, SIGMA = 0.01, 1.0


def _ledger(**overrides: Any) -> PrivacyLedger:
    kw: dict[str, Any] = {
        "target_epsilon": 2.0,
        "delta": 1e-5,
        "accountant": "rdp",
        "num_examples": 10_000,
        "sample_rate": Q,
        "noise_multiplier": SIGMA,
        "max_grad_norm": 1.0,
        "expected_batch_size": 100,
        "planned_steps": 1000,
    }
    kw.update(overrides)
    return PrivacyLedger(**kw)


def _run(ledger: PrivacyLedger, steps: int, q: float = Q, sigma: float = SIGMA) -> None:
    for _ in range(steps):
        ledger.record_step(sample_rate=q, noise_multiplier=sigma)


def test_epsilon_spent_is_the_accountants_figure() -> None:
    ledger = _ledger(accountant="pld")
    assert ledger.steps == 0
    assert ledger.epsilon_spent == 0.0
    _run(ledger, 300)
    expected = compute_epsilon(sample_rate=Q, noise_multiplier=SIGMA, steps=300, delta=1e-5, accountant="pld")
    assert ledger.steps == 300
    assert ledger.epsilon_spent == expected
    assert ledger.epsilon_accountant == "pld"
    assert ledger.epsilon_rdp == epsilon_cross_check([(Q, SIGMA, 300)], delta=1e-5)
    assert ledger.epsilon_rdp >= ledger.epsilon_spent


def test_budget_stop_flips_exactly_and_the_check_is_an_integer_compare(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"n": 0}
    real = calibration._epsilon

    def counting(*args: Any) -> float:
        calls["n"] += 1
        return real(*args)

    monkeypatch.setattr(calibration, "_epsilon", counting)
    ledger = _ledger(target_epsilon=2.0)
    while not ledger.would_exceed_budget(sample_rate=Q, noise_multiplier=SIGMA):
        ledger.record_step(sample_rate=Q, noise_multiplier=SIGMA)
    searches = calls["n"]
    assert searches < 20  # one bracketed search for ~900 checks, not one per step
    kw = {"sample_rate": Q, "noise_multiplier": SIGMA, "delta": 1e-5, "accountant": "rdp"}
    assert compute_epsilon(steps=ledger.steps, **kw) <= 2.0 < compute_epsilon(steps=ledger.steps + 1, **kw)
    assert ledger.epsilon_spent <= 2.0
    assert ledger.steps_remaining() == 0
    assert ledger.would_exceed_budget(sample_rate=Q, noise_multiplier=SIGMA)
    assert calls["n"] == searches


def test_steps_remaining_counts_down_and_changes_with_the_setting() -> None:
    ledger = _ledger()
    start = ledger.steps_remaining()
    assert start is not None
    assert start > 0
    _run(ledger, 10)
    assert ledger.steps_remaining() == start - 10
    # More noise per step leaves more steps; a different setting is searched given the spend so far.
    assert ledger.steps_remaining(noise_multiplier=2.0) > start
    ledger.record_step(sample_rate=Q, noise_multiplier=2.0)
    assert ledger.noise_multiplier == 2.0
    assert ledger.summary()["schedule"] == "piecewise"


def test_metrics_have_exactly_the_guide_keys() -> None:
    ledger = _ledger()
    _run(ledger, 5)
    metrics = ledger.metrics()
    assert set(metrics) == {
        "privacy/epsilon_spent",
        "privacy/delta",
        "privacy/noise_multiplier",
        "privacy/steps_remaining",
    }
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["privacy/noise_multiplier"] == SIGMA
    no_target = _ledger(target_epsilon=None)
    assert set(no_target.metrics()) == {"privacy/epsilon_spent", "privacy/delta", "privacy/noise_multiplier"}
    assert no_target.steps_remaining() is None
    assert not no_target.would_exceed_budget(sample_rate=Q, noise_multiplier=SIGMA)


def test_resumed_ledger_equals_an_uninterrupted_one(tmp_path: Path) -> None:
    straight = _ledger(accountant="prv")
    _run(straight, 15)
    _run(straight, 5, sigma=1.2)

    first = _ledger(accountant="prv")
    _run(first, 10)
    path = first.save(tmp_path / "ckpt-10" / "privacy_ledger.json")
    assert not [p for p in path.parent.iterdir() if p.name != path.name]  # no temp file left behind
    resumed = PrivacyLedger.resume(path, global_step=10, **_ledger(accountant="prv").settings)
    _run(resumed, 5)
    _run(resumed, 5, sigma=1.2)

    assert resumed == straight
    assert resumed.state_dict() == straight.state_dict()
    assert resumed.epsilon_spent == straight.epsilon_spent
    assert resumed.epsilon_spent == compute_epsilon_segments([(Q, SIGMA, 15), (Q, 1.2, 5)], delta=1e-5)


def test_state_dict_is_plain_versioned_json(tmp_path: Path) -> None:
    ledger = _ledger()
    _run(ledger, 3)
    state = json.loads(ledger.save(tmp_path / "l.json").read_text())
    assert state["format"] == "tensafe.privacy-ledger"
    assert state["version"] == 1
    assert state["settings"]["delta"] == 1e-5
    assert state["settings"]["sampler"] == "poisson"
    assert state["segments"] == [{"sample_rate": Q, "noise_multiplier": SIGMA, "steps": 3}]
    assert state["fingerprint"].startswith("sha256:")
    assert PrivacyLedger.from_state_dict(state) == ledger


def test_missing_ledger_fails_closed(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="cannot restart at 0"):
        PrivacyLedger.resume(tmp_path / "nope.json", global_step=10)


@pytest.mark.parametrize(
    ("global_step", "settings", "needle"),
    [
        (11, {}, "step 11 but the ledger recorded 10"),
        (10, {"noise_multiplier": 1.1}, "noise_multiplier is 1.1 now"),
        (10, {"sample_rate": 0.02, "expected_batch_size": 200}, "sample_rate is 0.02 now"),
        (10, {"delta": 1e-6}, "delta"),
        (10, {"num_examples": 20_000}, "num_examples"),
        (10, {"accountant": "pld"}, "accountant"),
    ],
)
def test_mismatched_resume_fails_closed(
    tmp_path: Path, global_step: int, settings: dict[str, Any], needle: str
) -> None:
    ledger = _ledger()
    _run(ledger, 10)
    path = ledger.save(tmp_path / "l.json")
    current = {**ledger.settings, **settings}
    with pytest.raises(LedgerError, match=needle):
        PrivacyLedger.resume(path, global_step=global_step, **current)


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s["segments"][0].update(steps=1),  # understate the spend
        lambda s: s["settings"].update(delta=0.1),
        lambda s: s.update(version=2),
        lambda s: s.pop("checksum"),
        lambda s: s.update(extra=1),
    ],
)
def test_edited_or_corrupt_ledger_is_refused(tmp_path: Path, edit: Any) -> None:
    ledger = _ledger()
    _run(ledger, 10)
    path = ledger.save(tmp_path / "l.json")
    state = json.loads(path.read_text())
    edit(state)
    path.write_text(json.dumps(state))
    with pytest.raises(LedgerError):
        PrivacyLedger.load(path)
    path.write_text("{not json")
    with pytest.raises(LedgerError, match="not valid JSON"):
        PrivacyLedger.load(path)


def test_ledger_survives_an_accountant_failure() -> None:
    ledger = _ledger(accountant="prv", num_examples=100, expected_batch_size=100, sample_rate=1.0, noise_multiplier=5.0)
    _run(ledger, 100_000, q=1.0, sigma=5.0)
    assert math.isfinite(ledger.epsilon_spent)
    assert ledger.epsilon_accountant == "rdp"
    assert ledger.epsilon_result().fallback_reason


def test_settings_are_validated() -> None:
    with pytest.raises(ConfigError, match="does not match expected_batch_size"):
        _ledger(expected_batch_size=400)  # q = B / N would be 0.04, not 0.01 (the accumulation/world-size unit bug)
    with pytest.raises(ConfigError, match="accountant"):
        _ledger(accountant="gdp")
    with pytest.raises(ConfigError, match="target_epsilon"):
        _ledger(target_epsilon=float("inf"))
    with pytest.raises(ConfigError, match="delta"):
        _ledger(delta=0.0)


def test_default_delta_matches_dpconfig() -> None:
    assert default_delta(12_345) == DPConfig(noise_multiplier=1.0).resolve_delta(12_345) == 1.0 / 123_450
    with pytest.raises(ConfigError):
        default_delta(0)


def test_check_plan_refuses_an_overspending_horizon() -> None:
    assert _ledger(planned_steps=500).check_plan() <= 2.0
    with pytest.raises(ConfigError, match="Only 881 updates fit"):
        _ledger(planned_steps=5000).check_plan()
