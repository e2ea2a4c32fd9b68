"""The privacy ledger: one per training job, recording every optimizer update's ``(q, sigma)``.

The ledger is the single source of every privacy figure a run reports: epsilon spent, the steps left in the
budget, the stop decision before each update, and the segments a certificate is built from. It is saved with
every checkpoint (JSON, never pickle) and must be restored on resume: a missing or mismatched ledger fails closed
with :class:`LedgerError` instead of silently restarting epsilon at zero.

Note:
    Neighbouring datasets differ by adding or removing one example; each recorded update is one Poisson-sampled
    Gaussian step (rate ``q``, noise multiplier ``sigma``) of the whole logical batch, after gradient accumulation
    and across all ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from pathlib import Path
from typing import Any

import rfc8785

from shared_core.accounting._io import atomic_write_bytes
from shared_core.accounting._validate import (
    Segment,
    check_delta,
    check_noise_multiplier,
    check_sample_rate,
    check_steps,
    merge_segments,
)
from shared_core.accounting.calibration import STEP_LIMIT, _max_count, check_planned_budget
from shared_core.accounting.epsilon import (
    ACCOUNTANTS,
    CROSS_CHECK_ACCOUNTANT,
    EpsilonResult,
    compute_epsilon_detailed,
)
from shared_core.errors import ConfigError, LedgerError

__all__ = ["LEDGER_FORMAT", "LEDGER_VERSION", "PrivacyLedger", "default_delta"]

logger = logging.getLogger(__name__)

LEDGER_FORMAT = "tensafe.privacy-ledger"
LEDGER_VERSION = 1

_SETTING_KEYS = (
    "accountant",
    "delta",
    "expected_batch_size",
    "max_grad_norm",
    "noise_multiplier",
    "noise_seed_fixed",
    "num_examples",
    "planned_steps",
    "sample_rate",
    "sampler",
    "sampling_seed_fixed",
    "target_epsilon",
)
# Settings that must match exactly when a run resumes (planned_steps may grow: the budget still stops the run).
_RESUME_KEYS = tuple(k for k in _SETTING_KEYS if k != "planned_steps")
_TOP_KEYS = {
    "format",
    "version",
    "settings",
    "fingerprint",
    "segments",
    "current",
    "steps",
    "runs",
    "runs_complete",
    "checksum",
}
# Run-length history of the schedule, in order (for reports); accounting itself only needs the merged counts.
MAX_RUNS = 1000


def default_delta(num_examples: int) -> float:
    """Default delta for ``num_examples`` training rows: ``1 / (10 N)``, as :meth:`DPConfig.resolve_delta`."""
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ConfigError(f"num_examples must be a positive integer (training rows), got {num_examples!r}")
    return 1.0 / (10.0 * num_examples)


def _digest(payload: Any) -> str:
    return "sha256:" + hashlib.sha256(rfc8785.dumps(payload)).hexdigest()


class PrivacyLedger:
    """Privacy state of one training job: settings, per-``(q, sigma)`` update counts and the budget.

    Example:
        >>> ledger = PrivacyLedger(target_epsilon=3.0, delta=1e-5, accountant="rdp", num_examples=10_000,
        ...                        sample_rate=0.01, noise_multiplier=1.0, max_grad_norm=1.0,
        ...                        expected_batch_size=100)
        >>> for _ in range(100):
        ...     if ledger.would_exceed_budget(sample_rate=0.01, noise_multiplier=1.0):
        ...         break
        ...     ledger.record_step(sample_rate=0.01, noise_multiplier=1.0)
        >>> ledger.steps, round(ledger.epsilon_spent, 3)
        (100, 1.214)

    Args:
        target_epsilon: Budget; ``None`` reports epsilon without a stop.
        delta: Target delta (see :func:`default_delta`).
        accountant: ``prv`` (default), ``rdp`` or ``pld``: the accountant whose epsilon is reported and certified.
        num_examples: Training rows ``N``.
        sample_rate: Poisson rate ``q = expected_batch_size / N`` of the run's updates.
        noise_multiplier: Noise multiplier sigma of the run's updates.
        max_grad_norm: Per-example clip norm ``C``.
        expected_batch_size: Public expected logical batch ``B`` (the normaliser of the noised sum).
        sampler: Sampling scheme actually used; only ``poisson`` is covered by the accounting.
        planned_steps: Planned optimizer updates (for reports and the pre-training budget check).
        noise_seed_fixed: Whether the noise came from a fixed, user-given seed (tests only): anyone who knows the seed
            can regenerate and subtract the noise, so such a run reports epsilon but is never certified.
        sampling_seed_fixed: Whether the Poisson batches came from a fixed, user-given seed (tests only): anyone who
            knows the seed knows which examples each update used, so there is no amplification by sampling and the
            run is never certified either.

    Raises:
        ConfigError: A setting is invalid or inconsistent (for example ``q * N`` far from ``B``).
    """

    def __init__(
        self,
        *,
        target_epsilon: float | None,
        delta: float,
        accountant: str = "prv",
        num_examples: int,
        sample_rate: float,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: int,
        sampler: str = "poisson",
        planned_steps: int | None = None,
        noise_seed_fixed: bool = False,
        sampling_seed_fixed: bool = False,
    ) -> None:
        self._settings = _validated_settings(
            target_epsilon=target_epsilon,
            delta=delta,
            accountant=accountant,
            num_examples=num_examples,
            sample_rate=sample_rate,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            sampler=sampler,
            planned_steps=planned_steps,
            noise_seed_fixed=noise_seed_fixed,
            sampling_seed_fixed=sampling_seed_fixed,
        )
        self._counts: dict[tuple[float, float], int] = {}
        self._runs: list[list[Any]] = []
        self._runs_complete = True
        self._current = (self._settings["sample_rate"], self._settings["noise_multiplier"])
        self._version = 0
        self._eps_cache: tuple[int, EpsilonResult] | None = None
        self._rdp_cache: tuple[int, float] | None = None
        self._limit_cache: dict[tuple[tuple[float, float], tuple[Segment, ...]], int] = {}

    # -- settings -------------------------------------------------------------------------------------------------

    @property
    def settings(self) -> dict[str, Any]:
        """Every setting of the ledger (a copy)."""
        return dict(self._settings)

    @property
    def target_epsilon(self) -> float | None:
        """The budget, or ``None``."""
        return self._settings["target_epsilon"]

    @property
    def delta(self) -> float:
        """Target delta."""
        return float(self._settings["delta"])

    @property
    def accountant(self) -> str:
        """Accountant asked for (see :attr:`epsilon_accountant` for the one that answered)."""
        return str(self._settings["accountant"])

    @property
    def num_examples(self) -> int:
        """Training rows ``N``."""
        return int(self._settings["num_examples"])

    @property
    def max_grad_norm(self) -> float:
        """Per-example clip norm ``C``."""
        return float(self._settings["max_grad_norm"])

    @property
    def expected_batch_size(self) -> int:
        """Public expected logical batch ``B``."""
        return int(self._settings["expected_batch_size"])

    @property
    def sampler(self) -> str:
        """Sampling scheme used by the run."""
        return str(self._settings["sampler"])

    @property
    def noise_seed_fixed(self) -> bool:
        """Whether the noise came from a fixed seed (then no certificate is issued for the run)."""
        return bool(self._settings["noise_seed_fixed"])

    @property
    def sampling_seed_fixed(self) -> bool:
        """Whether the Poisson batches came from a fixed seed (then no certificate is issued for the run)."""
        return bool(self._settings["sampling_seed_fixed"])

    @property
    def planned_steps(self) -> int | None:
        """Planned optimizer updates, if known."""
        return self._settings["planned_steps"]

    @property
    def sample_rate(self) -> float:
        """Sample rate of the latest update (or the configured one before the first)."""
        return self._current[0]

    @property
    def noise_multiplier(self) -> float:
        """Noise multiplier of the latest update (or the configured one before the first)."""
        return self._current[1]

    # -- recording ------------------------------------------------------------------------------------------------

    def record_step(self, *, sample_rate: float, noise_multiplier: float) -> None:
        """Record one optimizer update (one noised logical batch) with rate ``sample_rate`` and ``noise_multiplier``."""
        key = (check_sample_rate(sample_rate), check_noise_multiplier(noise_multiplier))
        self._counts[key] = self._counts.get(key, 0) + 1
        if self._runs and (self._runs[-1][0], self._runs[-1][1]) == key:
            self._runs[-1][2] += 1
        elif len(self._runs) < MAX_RUNS:
            self._runs.append([key[0], key[1], 1])
        else:
            self._runs_complete = False
        self._current = key
        self._version += 1

    @property
    def steps(self) -> int:
        """Optimizer updates recorded."""
        return sum(self._counts.values())

    @property
    def runs(self) -> list[Segment] | None:
        """The schedule in recorded order as ``(q, sigma, consecutive steps)`` runs; ``None`` if too long to keep."""
        if not self._runs_complete:
            return None
        return [(q, s, n) for q, s, n in self._runs]

    @property
    def segments(self) -> list[Segment]:
        """Recorded ``(q, sigma, steps)`` per distinct setting, sorted."""
        return merge_segments((q, sigma, n) for (q, sigma), n in self._counts.items())

    # -- epsilon --------------------------------------------------------------------------------------------------

    def epsilon_result(self) -> EpsilonResult:
        """Epsilon spent so far with its provenance (cached until the next update)."""
        if self._eps_cache is None or self._eps_cache[0] != self._version:
            result = compute_epsilon_detailed(self.segments, delta=self.delta, accountant=self.accountant)
            self._eps_cache = (self._version, result)
        return self._eps_cache[1]

    @property
    def epsilon_spent(self) -> float:
        """Epsilon spent so far under the configured accountant (RDP if it had to fall back)."""
        return self.epsilon_result().epsilon

    @property
    def epsilon_accountant(self) -> str:
        """Accountant that produced :attr:`epsilon_spent`."""
        return self.epsilon_result().accountant

    @property
    def epsilon_rdp(self) -> float:
        """Independent RDP bound (``dp_accounting``, torch-free) on the same updates: the cross-check."""
        if self._rdp_cache is None or self._rdp_cache[0] != self._version:
            value = compute_epsilon_detailed(self.segments, delta=self.delta, accountant=CROSS_CHECK_ACCOUNTANT)
            self._rdp_cache = (self._version, value.epsilon)
        return self._rdp_cache[1]

    # -- budget ---------------------------------------------------------------------------------------------------

    def _limit_for(self, key: tuple[float, float]) -> int:
        """Most updates at ``key`` the budget allows given every other recorded setting (cached)."""
        target = self.target_epsilon
        assert target is not None
        others = tuple(sorted((q, s, n) for (q, s), n in self._counts.items() if (q, s) != key))
        cache_key = (key, others)
        limit = self._limit_cache.get(cache_key)
        if limit is None:
            hint = self.planned_steps if not others and self.planned_steps else None
            limit = _max_count(
                others=list(others),
                q=key[0],
                sigma=key[1],
                target=target,
                delta=self.delta,
                accountant=self.accountant,
                hint=hint,
            )
            self._limit_cache[cache_key] = limit
            logger.debug("budget allows %d updates at q=%g sigma=%g (others: %s)", limit, key[0], key[1], others)
        return limit

    def would_exceed_budget(self, *, sample_rate: float, noise_multiplier: float) -> bool:
        """Whether recording ONE more update at ``(sample_rate, noise_multiplier)`` would take epsilon past the target.

        The first call per setting searches the step limit (a few accountant evaluations); later calls at the
        same setting are an integer compare.
        """
        if self.target_epsilon is None:
            return False
        key = (check_sample_rate(sample_rate), check_noise_multiplier(noise_multiplier))
        return self._counts.get(key, 0) + 1 > self._limit_for(key)

    def steps_remaining(self, *, sample_rate: float | None = None, noise_multiplier: float | None = None) -> int | None:
        """Updates left before epsilon would pass the target (at the latest setting unless given), or ``None``."""
        if self.target_epsilon is None:
            return None
        q = self.sample_rate if sample_rate is None else check_sample_rate(sample_rate)
        sigma = self.noise_multiplier if noise_multiplier is None else check_noise_multiplier(noise_multiplier)
        limit = self._limit_for((q, sigma))
        if limit >= STEP_LIMIT:
            return STEP_LIMIT
        return max(limit - self._counts.get((q, sigma), 0), 0)

    def check_plan(self, planned_steps: int | None = None) -> float:
        """Check before training that the planned updates fit in the budget at the configured ``(q, sigma)``.

        Returns:
            Epsilon the plan would spend (``nan`` without a target or plan).

        Raises:
            ConfigError: The plan overspends; the message says what to change.
        """
        planned = self.planned_steps if planned_steps is None else check_steps(planned_steps, name="planned_steps")
        if self.target_epsilon is None or planned is None:
            return math.nan
        return check_planned_budget(
            target_epsilon=self.target_epsilon,
            delta=self.delta,
            sample_rate=self._settings["sample_rate"],
            noise_multiplier=self._settings["noise_multiplier"],
            planned_steps=planned,
            accountant=self.accountant,
        )

    # -- reporting ------------------------------------------------------------------------------------------------

    def metrics(self) -> dict[str, float]:
        """The guide's metrics, keyed ``privacy/epsilon_spent``, ``privacy/delta``, ``privacy/noise_multiplier``.

        Plus ``privacy/steps_remaining``, left out when the ledger has no target.
        """
        out = {
            "privacy/epsilon_spent": float(self.epsilon_spent),
            "privacy/delta": self.delta,
            "privacy/noise_multiplier": float(self.noise_multiplier),
        }
        remaining = self.steps_remaining()
        if remaining is not None:
            out["privacy/steps_remaining"] = float(remaining)
        return out

    def summary(self) -> dict[str, Any]:
        """Schedule of the run: constant ``(q, sigma)`` or piecewise segments, with total steps."""
        segments = [{"sample_rate": q, "noise_multiplier": s, "steps": n} for q, s, n in self.segments]
        out: dict[str, Any] = {
            "schedule": "constant" if len(segments) <= 1 else "piecewise",
            "total_steps": self.steps,
            "segments": segments,
        }
        if len(segments) <= 1:
            constant = segments[0] if segments else self._settings
            out["sample_rate"] = constant["sample_rate"]
            out["noise_multiplier"] = constant["noise_multiplier"]
        return out

    # -- persistence ----------------------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """JSON-ready, versioned state: settings, their fingerprint, per-``(q, sigma)`` counts and a checksum."""
        body: dict[str, Any] = {
            "format": LEDGER_FORMAT,
            "version": LEDGER_VERSION,
            "settings": dict(self._settings),
            "fingerprint": _digest(self._settings),
            "segments": [{"sample_rate": q, "noise_multiplier": s, "steps": n} for q, s, n in self.segments],
            "current": {"sample_rate": self._current[0], "noise_multiplier": self._current[1]},
            "steps": self.steps,
            "runs": [list(run) for run in self._runs],
            "runs_complete": self._runs_complete,
        }
        body["checksum"] = _digest(body)
        return body

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PrivacyLedger:
        """Rebuild a ledger from :meth:`state_dict`, refusing anything malformed with :class:`LedgerError`."""
        if not isinstance(state, dict):
            raise LedgerError(f"privacy ledger state must be a JSON object, got {type(state).__name__}")
        if state.get("format") != LEDGER_FORMAT:
            raise LedgerError(f"not a privacy ledger (format={state.get('format')!r}, expected {LEDGER_FORMAT!r})")
        if state.get("version") != LEDGER_VERSION:
            raise LedgerError(
                f"privacy ledger version {state.get('version')!r} is not supported (this TenSafe reads version "
                f"{LEDGER_VERSION}); resume with the TenSafe version that wrote it"
            )
        keys = set(state)
        if keys != _TOP_KEYS:
            raise LedgerError(
                f"privacy ledger keys do not match: missing {sorted(_TOP_KEYS - keys)}, "
                f"unknown {sorted(keys - _TOP_KEYS)}"
            )
        body = {k: v for k, v in state.items() if k != "checksum"}
        try:
            if state["checksum"] != _digest(body):
                raise LedgerError(
                    "privacy ledger checksum does not match its content: the file was edited or corrupted"
                )
            settings = state["settings"]
            if not isinstance(settings, dict) or set(settings) != set(_SETTING_KEYS):
                raise LedgerError(f"privacy ledger settings must have exactly the keys {', '.join(_SETTING_KEYS)}")
            if state["fingerprint"] != _digest(settings):
                raise LedgerError("privacy ledger settings do not match their fingerprint")
            ledger = cls(**settings)
            for index, segment in enumerate(state["segments"]):
                if not isinstance(segment, dict) or set(segment) != {"sample_rate", "noise_multiplier", "steps"}:
                    raise LedgerError(f"privacy ledger segment #{index} is malformed: {segment!r}")
                q = check_sample_rate(segment["sample_rate"])
                sigma = check_noise_multiplier(segment["noise_multiplier"])
                n = check_steps(segment["steps"])
                if n == 0 or (q, sigma) in ledger._counts:
                    raise LedgerError(f"privacy ledger segment #{index} is empty or repeated: {segment!r}")
                ledger._counts[(q, sigma)] = n
            runs = state["runs"]
            if not isinstance(runs, list) or len(runs) > MAX_RUNS or not isinstance(state["runs_complete"], bool):
                raise LedgerError("privacy ledger runs are malformed")
            for run in runs:
                if not isinstance(run, list) or len(run) != 3:
                    raise LedgerError(f"privacy ledger run {run!r} is malformed")
                ledger._runs.append([check_sample_rate(run[0]), check_noise_multiplier(run[1]), check_steps(run[2])])
            ledger._runs_complete = state["runs_complete"]
            if ledger._runs_complete and merge_segments((r[0], r[1], r[2]) for r in ledger._runs) != ledger.segments:
                raise LedgerError("privacy ledger runs do not add up to its segments")
            current = state["current"]
            ledger._current = (
                check_sample_rate(current["sample_rate"]),
                check_noise_multiplier(current["noise_multiplier"]),
            )
        except (ConfigError, KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, LedgerError):
                raise
            raise LedgerError(f"privacy ledger is malformed: {exc}") from exc
        if ledger.steps != state["steps"]:
            raise LedgerError(f"privacy ledger says {state['steps']!r} steps but its segments sum to {ledger.steps}")
        ledger._version = ledger.steps
        return ledger

    def save(self, path: str | Path) -> Path:
        """Write the ledger as JSON atomically (never pickle); returns the path."""
        path = Path(path)
        data = json.dumps(self.state_dict(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        atomic_write_bytes(path, data.encode("utf-8"))
        return path

    @classmethod
    def load(cls, path: str | Path) -> PrivacyLedger:
        """Read a ledger written by :meth:`save`; a missing or unreadable file raises :class:`LedgerError`."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise LedgerError(
                f"no privacy ledger at {path}: epsilon cannot restart at 0 on resume. Restore the ledger saved with "
                "this checkpoint, or start a new run from step 0"
            ) from None
        except OSError as exc:
            raise LedgerError(f"cannot read the privacy ledger at {path}: {exc}") from exc
        try:
            state = json.loads(text)
        except json.JSONDecodeError as exc:
            raise LedgerError(
                f"privacy ledger at {path} is not valid JSON ({exc}); restore it from the checkpoint"
            ) from None
        return cls.from_state_dict(state)

    def check_resume(self, *, global_step: int, **settings: Any) -> None:
        """Fail closed unless this ledger belongs to the run being resumed at ``global_step``.

        Args:
            global_step: Optimizer updates the resumed run has done (the host's step counter).
            **settings: Any of the constructor settings as the resumed run computes them; each must match.

        Raises:
            LedgerError: Step count or a setting differs; the message lists every difference.
        """
        unknown = sorted(set(settings) - set(_SETTING_KEYS))
        if unknown:
            raise ConfigError(f"check_resume got unknown setting(s) {unknown}; known: {', '.join(_SETTING_KEYS)}")
        problems = []
        if global_step != self.steps:
            problems.append(f"the checkpoint is at step {global_step} but the ledger recorded {self.steps} updates")
        for name, value in sorted(settings.items()):
            if name not in _RESUME_KEYS:
                continue
            stored = self._settings[name]
            if not _same(stored, value):
                problems.append(f"{name} is {value!r} now but {stored!r} in the ledger")
        if problems:
            raise LedgerError(
                "the privacy ledger does not match the resumed run: "
                + "; ".join(problems)
                + ". Resume with the original settings and the ledger saved with this checkpoint, or start a new run "
                "from step 0 (epsilon is never restarted mid-run)"
            )

    @classmethod
    def resume(cls, path: str | Path, *, global_step: int, **settings: Any) -> PrivacyLedger:
        """Load the ledger saved with a checkpoint and check it against the resumed run (fail closed)."""
        ledger = cls.load(path)
        ledger.check_resume(global_step=global_step, **settings)
        return ledger

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyLedger):
            return NotImplemented
        return self.state_dict() == other.state_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"PrivacyLedger(steps={self.steps}, accountant={self.accountant!r}, delta={self.delta:g}, "
            f"target_epsilon={self.target_epsilon!r})"
        )


def _same(stored: Any, value: Any) -> bool:
    if isinstance(stored, float) or isinstance(value, float):
        if stored is None or value is None:
            return stored is value
        return math.isclose(float(stored), float(value), rel_tol=1e-12, abs_tol=0.0)
    return bool(stored == value)


def _validated_settings(
    *,
    target_epsilon: float | None,
    delta: float,
    accountant: str,
    num_examples: int,
    sample_rate: float,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: int,
    sampler: str,
    planned_steps: int | None,
    noise_seed_fixed: bool,
    sampling_seed_fixed: bool,
) -> dict[str, Any]:
    if target_epsilon is not None and (
        isinstance(target_epsilon, bool)
        or not isinstance(target_epsilon, (int, float))
        or not (math.isfinite(target_epsilon) and target_epsilon > 0)
    ):
        raise ConfigError(f"target_epsilon must be a finite number > 0 or None, got {target_epsilon!r}")
    if accountant not in ACCOUNTANTS:
        raise ConfigError(f"accountant must be one of {', '.join(ACCOUNTANTS)}; got {accountant!r}")
    if isinstance(num_examples, bool) or not isinstance(num_examples, int) or num_examples < 1:
        raise ConfigError(f"num_examples must be a positive integer (training rows), got {num_examples!r}")
    if isinstance(expected_batch_size, bool) or not isinstance(expected_batch_size, int) or expected_batch_size < 1:
        raise ConfigError(f"expected_batch_size must be a positive integer, got {expected_batch_size!r}")
    if isinstance(max_grad_norm, bool) or not isinstance(max_grad_norm, (int, float)):
        raise ConfigError(f"max_grad_norm must be a finite number > 0, got {max_grad_norm!r}")
    if not (math.isfinite(max_grad_norm) and max_grad_norm > 0):
        raise ConfigError(f"max_grad_norm must be a finite number > 0 (the clip norm C), got {max_grad_norm!r}")
    if not isinstance(sampler, str) or not sampler:
        raise ConfigError(f"sampler must name the sampling scheme (e.g. 'poisson'), got {sampler!r}")
    for name, flag in (("noise_seed_fixed", noise_seed_fixed), ("sampling_seed_fixed", sampling_seed_fixed)):
        if not isinstance(flag, bool):
            raise ConfigError(f"{name} must be True or False, got {flag!r}")
    q = check_sample_rate(sample_rate)
    if q == 0.0:
        raise ConfigError("sample_rate must be > 0: q = expected_batch_size / num_examples")
    if abs(q * num_examples - expected_batch_size) > max(1.0, 0.01 * expected_batch_size):
        raise ConfigError(
            f"sample_rate={q:g} does not match expected_batch_size={expected_batch_size} divided by "
            f"num_examples={num_examples} "
            f"(= {expected_batch_size / num_examples:g}). q is the expected logical batch of one optimizer step "
            "(per-device batch x accumulation steps x world size) divided by the training set size"
        )
    return {
        "accountant": accountant,
        "delta": check_delta(delta),
        "expected_batch_size": expected_batch_size,
        "max_grad_norm": float(max_grad_norm),
        "noise_multiplier": check_noise_multiplier(noise_multiplier),
        "noise_seed_fixed": noise_seed_fixed,
        "num_examples": num_examples,
        "planned_steps": None if planned_steps is None else check_steps(planned_steps, name="planned_steps"),
        "sample_rate": q,
        "sampler": sampler,
        "sampling_seed_fixed": sampling_seed_fixed,
        "target_epsilon": None if target_epsilon is None else float(target_epsilon),
    }
