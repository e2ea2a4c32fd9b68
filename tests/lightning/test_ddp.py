"""``strategy="tensafe_ddp"`` with two gloo processes against the single-process DP-SGD definition."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shared_core.accounting import compute_epsilon
from tests.lightning import _ddp_script as script
from tests.lightning._modules import make_net, naive_update, regression_data

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.multiprocess
def test_two_process_update_equals_the_one_process_update_on_the_same_global_batch(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(Path(script.__file__)), str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))

    # Each rank draws its own Poisson stream over its own shard (rank::2) ...
    assert all(i % 2 == 0 for b in r0["batches"] for i in b)
    assert all(i % 2 == 1 for b in r1["batches"] for i in b)
    assert [[i // 2 for i in b] for b in r0["batches"]] != [[i // 2 for i in b] for b in r1["batches"]]
    # ... and an empty local batch still took part in its step (the run covers that case).
    assert any(not b for b in r0["batches"] + r1["batches"])
    # q counts the examples of both ranks: B = per-device batch 1 x world 2.
    assert r0["expected_batch_size"] == r1["expected_batch_size"] == 2
    assert r0["sample_rate"] == pytest.approx(2 / script.N)

    data = regression_data(script.N)
    gen = torch.Generator().manual_seed(script.SEED)
    n_params = sum(p.numel() for p in r0["final"])
    assert len(r0["updates"]) == len(r1["updates"]) == script.STEPS
    for step in range(script.STEPS):
        # All ranks apply the same update ...
        for a, b in zip(r0["updates"][step], r1["updates"][step], strict=True):
            assert torch.equal(a, b)
        # ... which is the single-process update of the union batch: clipped sums all-reduced, noise added once.
        union = sorted(r0["batches"][step] + r1["batches"][step])
        rows = [(data.tensors[0][i], data.tensors[1][i]) for i in union]
        noise = torch.randn(n_params, generator=gen) * script.SIGMA * script.CLIP
        want = naive_update(make_net, r0["before"][step], rows, clip=script.CLIP, expected_batch=2, noise=noise)
        for g, w in zip(r0["updates"][step], want, strict=True):
            torch.testing.assert_close(g, w, rtol=0, atol=1e-5, msg=f"step {step}")
    for a, b in zip(r0["final"], r1["final"], strict=True):
        assert torch.equal(a, b)

    # One ledger: the same on every rank, recording every update once.
    assert r0["ledger_steps"] == r1["ledger_steps"] == r0["global_step"] == script.STEPS
    want_eps = compute_epsilon(
        sample_rate=2 / script.N, noise_multiplier=script.SIGMA, steps=script.STEPS, delta=1 / 160, accountant="rdp"
    )
    assert r0["epsilon"] == pytest.approx(want_eps, rel=1e-9)
    assert r1["epsilon"] == r0["epsilon"]
