"""Benchmark TSSP pack / verify / load against ``sha256sum`` on the same weights file, plus sign / verify times.

Usage::

    python benchmarks/bench_tssp.py [--size-mib 1024] [--dir /tmp] [--encrypted]

Each timed operation runs in a fresh child process, so its peak memory growth (VmHWM minus the RSS after imports)
is its own. Targets: pack and verify throughput >= 80 % of ``sha256sum``; memory growth < 128 MiB. ``load`` holds the
verified weights in memory by design (then parses them into tensors), so its growth is the weights' size and more.
Not part of the test suite.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MIB = 1024 * 1024

_CHILD = r"""
import json, os, sys, time
from pathlib import Path

def rss_kib(field):
    for line in open('/proc/self/status'):
        if line.startswith(field + ':'):
            return int(line.split()[1])
    return 0

op, workdir, encrypted = sys.argv[1], Path(sys.argv[2]), sys.argv[3] == '1'
from shared_core.tssp import load_signing_keys, pack, verify_package
keys = load_signing_keys(workdir / 'keys')
cek = bytes(range(32)) if encrypted else None
base = rss_kib('VmRSS')
start = time.perf_counter()
if op == 'pack':
    pack(workdir / 'adapter', workdir / 'pkg.tssp', keys=keys, encryption_key=cek)
elif op == 'verify':
    verify_package(workdir / 'pkg.tssp', trusted=keys.trusted(), decryption_key=cek)
elif op == 'pack-archive':
    pack(workdir / 'adapter', workdir / 'arc.tssp', keys=keys, encryption_key=cek, archive=True)
elif op == 'verify-archive':
    verify_package(workdir / 'arc.tssp.tar', trusted=keys.trusted(), decryption_key=cek)
elif op == 'load':
    # load_model's byte path: verify, keep the verified weight bytes, parse them into tensors (peft's injection of
    # the tensors into a base model is left out: it needs a model of the same shape)
    import safetensors.torch
    from shared_core.tssp.verify import verify_and_read
    _, data = verify_and_read(workdir / 'pkg.tssp', trusted=keys.trusted(), decryption_key=cek, keep=('weights',))
    tensors = safetensors.torch.load(data['adapter_model.safetensors'])
elapsed = time.perf_counter() - start
print(json.dumps({'seconds': elapsed, 'growth_mib': (rss_kib('VmHWM') - base) / 1024}))
"""


def _write_weights(path: Path, size: int) -> None:
    """A valid safetensors file: one U8 tensor of ``size`` random bytes, written in 16 MiB pieces."""
    header = json.dumps({"blob": {"dtype": "U8", "shape": [size], "data_offsets": [0, size]}}).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as fh:
        fh.write(len(header).to_bytes(8, "little") + header)
        remaining = size
        while remaining:
            piece = min(16 * MIB, remaining)
            fh.write(os.urandom(piece))
            remaining -= piece
        fh.flush()
        os.fsync(fh.fileno())


def _child(op: str, workdir: Path, encrypted: bool) -> dict[str, float]:
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, op, str(workdir), "1" if encrypted else "0"],
        capture_output=True,
        text=True,
        check=True,
        cwd=root,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _sha256sum(path: Path) -> float:
    start = time.perf_counter()
    subprocess.run(["sha256sum", str(path)], check=True, capture_output=True)
    return time.perf_counter() - start


def _hashlib(path: Path) -> float:
    import hashlib

    start = time.perf_counter()
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        while block := fh.read(4 * MIB):
            digest.update(block)
    return time.perf_counter() - start


def _sign_times(repeat: int = 50) -> tuple[float, float]:
    from shared_core.tssp.keys import generate_keys, load_signing_keys
    from shared_core.tssp.signing import sign_detached, verify_detached

    with tempfile.TemporaryDirectory() as tmp:
        generate_keys(Path(tmp) / "k")
        keys = load_signing_keys(Path(tmp) / "k")
    payload = b"x" * 2048  # about the size of a manifest
    trusted = keys.trusted()
    start = time.perf_counter()
    for _ in range(repeat):
        sigs = sign_detached(payload, payload_type="bench", keys=keys)  # includes the self-check of both
    sign = (time.perf_counter() - start) / repeat
    start = time.perf_counter()
    for _ in range(repeat):
        verify_detached(payload, sigs, payload_type="bench", trusted=trusted)
    return sign, (time.perf_counter() - start) / repeat


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Run the benchmark and print a table; returns the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="weights size in MiB (default 1024)")
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temp folder)")
    parser.add_argument("--encrypted", action="store_true", help="also time encrypted pack / verify")
    args = parser.parse_args(argv)

    from shared_core.tssp.keys import generate_keys

    workdir = Path(tempfile.mkdtemp(prefix="bench-tssp-", dir=args.dir))
    try:
        size = args.size_mib * MIB
        (workdir / "adapter").mkdir()
        weights = workdir / "adapter" / "adapter_model.safetensors"
        _write_weights(weights, size)
        (workdir / "adapter" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 8}))
        generate_keys(workdir / "keys")
        total = weights.stat().st_size / MIB

        _sha256sum(weights)  # warm the page cache for everyone alike
        base_s = min(_sha256sum(weights) for _ in range(2))
        rows: dict[str, dict[str, float]] = {
            "sha256sum": {"seconds": base_s, "growth_mib": float("nan")},
            "hashlib.sha256 (ref)": {"seconds": min(_hashlib(weights) for _ in range(2)), "growth_mib": float("nan")},
        }
        plans = [("pack", False), ("verify", False), ("load", False)]
        plans += [("pack-archive", False), ("verify-archive", False)]
        if args.encrypted:
            plans += [("pack", True), ("verify", True)]
        for op, enc in plans:
            if op == "pack" and (workdir / "pkg.tssp").exists():
                shutil.rmtree(workdir / "pkg.tssp")
            rows[op + (" (encrypted)" if enc else "")] = _child(op, workdir, enc)
        sign_s, verify_s = _sign_times()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"TSSP benchmark: weights {total:.0f} MiB; sha256sum {total / base_s:.0f} MiB/s")
    print(f"{'operation':<22} {'seconds':>9} {'MiB/s':>8} {'vs sha256sum':>13} {'peak growth MiB':>16}")
    for name, row in rows.items():
        rate = total / row["seconds"]
        ratio = base_s / row["seconds"]
        growth = "" if row["growth_mib"] != row["growth_mib"] else f"{row['growth_mib']:.1f}"
        print(f"{name:<22} {row['seconds']:>9.3f} {rate:>8.0f} {ratio:>12.0%} {growth:>16}")
    print(f"sign (ed25519 + ml-dsa-65, with self-check): {sign_s * 1e3:.2f} ms; verify both: {verify_s * 1e3:.2f} ms")
    rows["signatures"] = {"sign_seconds": sign_s, "verify_seconds": verify_s}
    return rows


if __name__ == "__main__":
    main()
