"""Checks of accounting inputs, each failing with one :class:`ConfigError` that names the value and the fix."""

from __future__ import annotations

import math
from collections.abc import Iterable

from shared_core.errors import ConfigError

__all__ = ["Segment", "check_delta", "check_noise_multiplier", "check_sample_rate", "check_steps", "merge_segments"]

# (sample_rate q, noise_multiplier sigma, number of optimizer updates)
Segment = tuple[float, float, int]


def check_sample_rate(sample_rate: float, *, name: str = "sample_rate") -> float:
    """Return ``sample_rate`` as a float in ``[0, 1]`` or raise."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, float)):
        raise ConfigError(f"{name} must be a number in [0, 1] (expected batch / N), got {sample_rate!r}")
    value = float(sample_rate)
    if not (math.isfinite(value) and 0.0 <= value <= 1.0):
        raise ConfigError(
            f"{name} must lie in [0, 1] (the Poisson inclusion probability q = expected batch / N), got {sample_rate!r}"
        )
    return value


def check_noise_multiplier(noise_multiplier: float, *, name: str = "noise_multiplier") -> float:
    """Return ``noise_multiplier`` as a finite float ``>= 0`` or raise."""
    if isinstance(noise_multiplier, bool) or not isinstance(noise_multiplier, (int, float)):
        raise ConfigError(f"{name} must be a finite number >= 0, got {noise_multiplier!r}")
    value = float(noise_multiplier)
    if not (math.isfinite(value) and value >= 0.0):
        raise ConfigError(f"{name} must be a finite number >= 0 (noise std / clip norm), got {noise_multiplier!r}")
    return value


def check_steps(steps: int | float, *, name: str = "steps") -> int:
    """Return ``steps`` as an int ``>= 0`` (a whole float is accepted) or raise."""
    if isinstance(steps, float) and steps.is_integer() and steps >= 0:
        return int(steps)
    if isinstance(steps, bool) or not isinstance(steps, int):
        raise ConfigError(f"{name} must be a whole number of optimizer updates >= 0, got {steps!r}")
    if steps < 0:
        raise ConfigError(f"{name} must be >= 0 optimizer updates, got {steps!r}")
    return steps


def check_delta(delta: float) -> float:
    """Return ``delta`` as a float in ``(0, 1)`` or raise."""
    if isinstance(delta, bool) or not isinstance(delta, (int, float)) or not (0.0 < float(delta) < 1.0):
        raise ConfigError(f"delta must lie in (0, 1) and should be well below 1/N (e.g. 1/(10 N)), got {delta!r}")
    return float(delta)


def merge_segments(segments: Iterable[Segment]) -> list[Segment]:
    """Validate ``(q, sigma, steps)`` segments and sum the steps of each distinct ``(q, sigma)``.

    Composition of the subsampled Gaussian mechanism is commutative, so the merged list gives the same epsilon
    as the original order while costing one accountant entry per distinct setting. Segments with no steps or
    ``q = 0`` spend nothing and are dropped. The result is sorted by ``(q, sigma)`` so that equal histories give
    bit-identical accountant inputs.
    """
    counts: dict[tuple[float, float], int] = {}
    for index, segment in enumerate(segments):
        if not isinstance(segment, (tuple, list)) or len(segment) != 3:
            raise ConfigError(f"segment #{index} must be (sample_rate, noise_multiplier, steps), got {segment!r}")
        q = check_sample_rate(segment[0], name=f"segment #{index} sample_rate")
        sigma = check_noise_multiplier(segment[1], name=f"segment #{index} noise_multiplier")
        steps = check_steps(segment[2], name=f"segment #{index} steps")
        if steps == 0 or q == 0.0:
            continue
        counts[(q, sigma)] = counts.get((q, sigma), 0) + steps
    return [(q, sigma, n) for (q, sigma), n in sorted(counts.items())]
