"""What DP costs on the main job's model: TenSafe against the same Trainer without DP and against plain opacus.

Usage::

    python benchmarks/bench_dp.py [--quick] [--runs 3] [--steps 8] [--warmup 2] [--batch 8] [--seq-len 32]

Contenders, all on SmolLM2-135M (the main job's GGUF weights) with LoRA r=8 on q_proj,v_proj, the same data, the same
threads, the same AdamW (lr 2e-4) and the same (expected) batch:

* ``no_dp``: the stock ``transformers.Trainer``, fixed batches of ``--batch``;
* ``tensafe``: ``TenSafeTrainer(dp_config=DPConfig(target_epsilon=8, ...))``, Poisson batches of expected size
  ``--batch``, the noise multiplier calibrated to the run's updates (as ``tensafe train`` does);
* ``tensafe_sigma_only``: the same with ``noise_multiplier=1`` and no target (no budget to enforce: isolates the
  accountant's cost);
* ``opacus_hooks``: a hand-written loop with ``PrivacyEngine().make_private(..., poisson_sampling=True)``;
* ``opacus_ghost``: the same with ``grad_sample_mode="ghost"`` (ghost clipping: per-example norms, two backwards).

Every run is a fresh process (so peak memory is its own), runs alternate between contenders (ABCD DCBA ...), and the
first ``--warmup`` updates of each run are not timed. Every example has exactly ``--seq-len`` tokens, so the work per
update depends only on how many examples it holds; Poisson batches vary in size, so each run's figure is its timed
seconds divided by its timed examples, times ``--batch`` (seconds per update at the expected batch). Peak memory is
the RSS high-water mark from the start of training (reset after the model is loaded) to the end.

``--quick`` swaps SmolLM2 for a tiny random Llama with byte tokens: it keeps the script working, its figures mean
nothing.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

MODES = ("no_dp", "tensafe", "tensafe_sigma_only", "opacus_hooks", "opacus_ghost")
NOISE_MULTIPLIER = 1.0
MAX_GRAD_NORM = 1.0
LEARNING_RATE = 2e-4
LOG_EVERY = 5
TARGET_EPSILON = 8.0
DELTA = 1e-5
TEMPLATE = "Review: {text}\nVerdict: {label}"


# ---- inputs ---------------------------------------------------------------------------------------------------


class ByteTokenizer:
    """Bytes as token ids (``--quick`` only): enough for ``tokenize_rows`` and the collator."""

    pad_token_id = 0
    eos_token_id = 1
    vocab_size = 260

    def __call__(self, text: str, *, truncation: bool = True, max_length: int = 512, **_: Any) -> dict[str, list[int]]:
        ids = [b + 4 for b in text.encode("utf-8")]
        return {"input_ids": ids[:max_length] if truncation else ids}


def _tiny_llama() -> Any:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=ByteTokenizer.vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    return LlamaForCausalLM(cfg)


def load_model_and_tokenizer(quick: bool) -> tuple[Any, Any]:
    """SmolLM2-135M (fp32, GGUF weights) with LoRA r=8 on q_proj,v_proj, or the tiny stand-in under ``--quick``."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if quick:
        model, tokenizer = _tiny_llama(), ByteTokenizer()
    else:
        folder = _common.smollm2_folder()
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    return get_peft_model(model, lora), tokenizer


def fixed_length_examples(tokenizer: Any, seq_len: int, limit: int) -> list[dict[str, list[int]]]:
    """Rotten Tomatoes reviews in the LM template, keeping those of at least ``seq_len`` tokens, cut to exactly that."""
    from tensafe_hf.data import tokenize_rows

    rows = _common.rotten_tomatoes_rows()
    examples = tokenize_rows(rows, tokenizer, template=TEMPLATE, max_length=seq_len)
    exact = [e for e in examples if len(e["input_ids"]) == seq_len]
    return exact[:limit]


# ---- one run (child process) ----------------------------------------------------------------------------------


class _CountingCollator:
    """Wraps the collator to record how many examples each batch holds (public only inside the benchmark)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.total = 0

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        self.total += len(features)
        return dict(self.inner(features))


def _trainer_run(mode: str, model: Any, dataset: Any, collator: _CountingCollator, opts: argparse.Namespace) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    from shared_core.config import DPConfig
    from tensafe_hf import TenSafeTrainer

    starts: list[float] = []
    ends: list[float] = []
    counts: list[int] = []

    class _Clock(TrainerCallback):
        def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            starts.append(time.perf_counter())

        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
            ends.append(time.perf_counter())
            counts.append(collator.total)

    with tempfile.TemporaryDirectory(prefix="bench-dp-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=opts.warmup + opts.steps,
            per_device_train_batch_size=opts.batch,
            learning_rate=LEARNING_RATE,
            logging_steps=LOG_EVERY,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=opts.seed,
            dataloader_num_workers=0,
        )
        common = {
            "model": model,
            "args": args,
            "train_dataset": dataset,
            "data_collator": collator,
            "callbacks": [_Clock()],
        }
        extra: dict[str, Any] = {}
        if mode == "no_dp":
            trainer = Trainer(**common)
        else:
            # "tensafe": what a user writes, a target epsilon (the noise is calibrated so that the run's updates
            # spend it, and the budget is enforced); "tensafe_sigma_only": a given noise multiplier and no target,
            # which isolates the cost of the per-example step from that of the accountant.
            noise = {"target_epsilon": TARGET_EPSILON} if mode == "tensafe" else {"noise_multiplier": NOISE_MULTIPLIER}
            dp = DPConfig(max_grad_norm=MAX_GRAD_NORM, target_delta=DELTA, expected_batch_size=opts.batch, **noise)
            trainer = TenSafeTrainer(**common, dp_config=dp, dp_callback_kwargs={"sampling_seed": opts.seed})
        trainer.train()
        if mode != "no_dp":
            extra["epsilon"] = float(trainer.dp_callback.ledger.epsilon_spent)
    return {"start": starts[0], "ends": ends, "cumulative_examples": counts, **extra}


def _opacus_run(mode: str, model: Any, dataset: Any, collator: _CountingCollator, opts: argparse.Namespace) -> dict:
    import torch
    from opacus import PrivacyEngine
    from torch.utils.data import DataLoader

    torch.manual_seed(opts.seed)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LEARNING_RATE, weight_decay=0.0)
    loader = DataLoader(dataset, batch_size=opts.batch, collate_fn=collator, shuffle=True)
    engine = PrivacyEngine(accountant="prv")
    common = {
        "module": model,
        "optimizer": optimizer,
        "data_loader": loader,
        "noise_multiplier": NOISE_MULTIPLIER,
        "max_grad_norm": MAX_GRAD_NORM,
        "poisson_sampling": True,
    }
    criterion = None
    if mode == "opacus_ghost":
        ce = torch.nn.CrossEntropyLoss(ignore_index=-100)
        dp_model, dp_optimizer, criterion, dp_loader = engine.make_private(
            **common, criterion=ce, grad_sample_mode="ghost"
        )
    else:
        dp_model, dp_optimizer, dp_loader = engine.make_private(**common, grad_sample_mode="hooks")

    start = time.perf_counter()
    ends: list[float] = []
    counts: list[int] = []
    total = opts.warmup + opts.steps
    epsilon = float("nan")
    while len(ends) < total:
        for batch in dp_loader:
            if batch["input_ids"].shape[0] == 0:
                continue  # an empty Poisson draw: opacus users skip it
            dp_optimizer.zero_grad(set_to_none=True)
            if criterion is None:
                loss = dp_model(**batch).loss
            else:
                logits = dp_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
                shifted, labels = logits[:, :-1], batch["labels"][:, 1:]
                loss = criterion(shifted.reshape(-1, shifted.size(-1)), labels.reshape(-1), shape=shifted.shape[:2])
            loss.backward()
            dp_optimizer.step()
            if (len(ends) + 1) % LOG_EVERY == 0:
                epsilon = engine.get_epsilon(DELTA)  # what a user logs, as the Trainer logs every LOG_EVERY updates
            ends.append(time.perf_counter())
            counts.append(collator.total)
            if len(ends) >= total:
                break
    return {"start": start, "ends": ends, "cumulative_examples": counts, "epsilon": epsilon}


def child(mode: str, opts: argparse.Namespace) -> dict[str, Any]:
    """One timed run of ``mode`` in this (fresh) process."""
    _common.configure(opts.threads)
    from tensafe_hf.data import CausalLMCollator, TextDataset

    model, tokenizer = load_model_and_tokenizer(opts.quick)
    examples = fixed_length_examples(tokenizer, opts.seq_len, opts.examples)
    dataset = TextDataset(examples)
    collator = _CountingCollator(CausalLMCollator(pad_token_id=int(tokenizer.pad_token_id)))
    reset_ok = _common.reset_peak_rss()
    base_rss = _common.proc_status_mib("VmRSS")
    runner = _trainer_run if mode in ("no_dp", "tensafe", "tensafe_sigma_only") else _opacus_run
    result = runner(mode, model, dataset, collator, opts)
    peak = _common.proc_status_mib("VmHWM")
    start, ends, cumulative = result.pop("start"), result.pop("ends"), result.pop("cumulative_examples")
    w = opts.warmup
    seconds = [b - a for a, b in zip(ends[w - 1 : -1], ends[w:], strict=True)]
    examples_per_update = [b - a for a, b in zip(cumulative[w - 1 : -1], cumulative[w:], strict=True)]
    timed_examples = sum(examples_per_update)
    return {
        "mode": mode,
        "num_examples": len(dataset),
        "update_seconds": seconds,
        "warmup_seconds": [b - a for a, b in zip([start, *ends[: w - 1]], ends[:w], strict=True)],
        "examples_per_update": examples_per_update,
        "seconds_per_update_at_expected_batch": sum(seconds) / timed_examples * opts.batch if timed_examples else None,
        "base_rss_mib": base_rss,
        "train_peak_rss_mib": peak if reset_ok else None,
        "train_growth_mib": peak - base_rss if reset_ok else None,
        "process_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        **result,
    }


# ---- the comparison (parent process) ----------------------------------------------------------------------------


def _child_args(mode: str, opts: argparse.Namespace, seed: int) -> list[str]:
    args = ["--child", mode, "--steps", str(opts.steps), "--warmup", str(opts.warmup), "--batch", str(opts.batch)]
    args += ["--seq-len", str(opts.seq_len), "--threads", str(opts.threads), "--examples", str(opts.examples)]
    args += ["--seed", str(seed)]
    return [*args, "--quick"] if opts.quick else args


def compare(opts: argparse.Namespace) -> dict[str, Any]:
    """Interleaved runs of every contender in fresh processes; medians, spreads and ratios."""
    if not opts.quick:
        _common.configure(opts.threads)
        _common.smollm2_folder()  # convert once before any timed run
    modes = [m for m in MODES if m in opts.modes]
    runs: dict[str, list[dict[str, Any]]] = {m: [] for m in modes}
    for r in range(opts.runs):
        order = modes if r % 2 == 0 else list(reversed(modes))
        for mode in order:
            figures = _common.run_child(Path(__file__), _child_args(mode, opts, seed=r), timeout=opts.timeout)
            runs[mode].append(figures)
            print(
                f"  [dp] run {r + 1}/{opts.runs} {mode:<13} {figures['seconds_per_update_at_expected_batch']:.3f} "
                f"s/update, peak {figures['train_peak_rss_mib']:.0f} MiB",
                file=sys.stderr,
                flush=True,
            )
    summary: dict[str, Any] = {}
    for mode, results in runs.items():
        summary[mode] = {
            "seconds_per_update": _common.summarize([x["seconds_per_update_at_expected_batch"] for x in results]),
            "raw_update_seconds_median": _common.summarize(
                [_common.summarize(x["update_seconds"])["median"] for x in results]
            ),
            "mean_examples_per_update": _common.summarize(
                [sum(x["examples_per_update"]) / max(len(x["examples_per_update"]), 1) for x in results]
            ),
            "train_peak_rss_mib": _common.summarize([x["train_peak_rss_mib"] or 0.0 for x in results]),
            "train_growth_mib": _common.summarize([x["train_growth_mib"] or 0.0 for x in results]),
            "process_peak_rss_mib": _common.summarize([x["process_peak_rss_mib"] for x in results]),
        }
    ratios = _ratios(runs)
    return {
        "settings": {
            "model": "tiny random Llama (--quick)" if opts.quick else "SmolLM2-135M-Instruct (GGUF Q4_1 -> fp32)",
            "lora": "r=8, alpha=16, q_proj+v_proj",
            "batch": opts.batch,
            "seq_len": opts.seq_len,
            "timed_updates": opts.steps,
            "warmup_updates": opts.warmup,
            "runs": opts.runs,
            "threads": opts.threads,
            "train_examples": runs[modes[0]][0]["num_examples"] if modes else 0,
            "noise_multiplier": NOISE_MULTIPLIER,
            "max_grad_norm": MAX_GRAD_NORM,
        },
        "summary": summary,
        "ratios": ratios,
        "runs": runs,
    }


def _ratios(runs: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    def metric(mode: str, key: str) -> list[float]:
        return [float(x[key] or 0.0) for x in runs.get(mode, [])]

    out: dict[str, Any] = {}
    if "tensafe" in runs and "no_dp" in runs:
        out["tensafe_vs_no_dp_time"] = _common.ratio_summary(
            metric("tensafe", "seconds_per_update_at_expected_batch"),
            metric("no_dp", "seconds_per_update_at_expected_batch"),
        )
        out["tensafe_vs_no_dp_peak_memory"] = _common.ratio_summary(
            metric("tensafe", "train_peak_rss_mib"), metric("no_dp", "train_peak_rss_mib")
        )
        out["tensafe_vs_no_dp_memory_growth"] = _common.ratio_summary(
            metric("tensafe", "train_growth_mib"), metric("no_dp", "train_growth_mib")
        )
    for other in ("opacus_hooks", "opacus_ghost"):
        if "tensafe" in runs and other in runs:
            # > 1 means TenSafe is faster (speed-up of TenSafe over the opacus loop).
            out[f"tensafe_speedup_vs_{other}"] = _common.ratio_summary(
                metric(other, "seconds_per_update_at_expected_batch"),
                metric("tensafe", "seconds_per_update_at_expected_batch"),
            )
            out[f"tensafe_vs_{other}_peak_memory"] = _common.ratio_summary(
                metric("tensafe", "train_peak_rss_mib"), metric(other, "train_peak_rss_mib")
            )
    return out


def print_table(result: dict[str, Any]) -> None:
    """Human-readable figures."""
    s = result["settings"]
    print(
        f"DP overhead: {s['model']}, LoRA {s['lora']}, batch {s['batch']} x {s['seq_len']} tokens, "
        f"{s['timed_updates']} timed updates after {s['warmup_updates']} warm-up, {s['runs']} runs, "
        f"{s['threads']} threads, N={s['train_examples']}"
    )
    print(
        f"{'contender':<14} {'s/update (median, min-max)':>28} {'ex/update':>10} "
        f"{'peak RSS MiB':>22} {'growth MiB':>20}"
    )
    for mode, row in result["summary"].items():
        t, p, g = row["seconds_per_update"], row["train_peak_rss_mib"], row["train_growth_mib"]
        print(
            f"{mode:<14} {t['median']:>10.3f} ({t['min']:.3f}-{t['max']:.3f}) "
            f"{row['mean_examples_per_update']['median']:>10.2f} "
            f"{p['median']:>8.0f} ({p['min']:.0f}-{p['max']:.0f}) {g['median']:>7.0f} ({g['min']:.0f}-{g['max']:.0f})"
        )
    for name, r in result["ratios"].items():
        print(f"  {name:<38} {r['ratio']:.3f}x (pairs {r['pair_min']:.3f}-{r['pair_max']:.3f}, n={r['pairs']})")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options (shared by the parent and its children)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny random model and sizes (keeps the script working)")
    parser.add_argument("--runs", type=int, default=None, help="runs per contender (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="timed updates per run (default 8; 3 with --quick)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed updates at the start of each run")
    parser.add_argument("--batch", type=int, default=8, help="(expected) batch size")
    parser.add_argument("--seq-len", type=int, default=32, help="tokens per example (every example has exactly this)")
    parser.add_argument("--examples", type=int, default=2000, help="training examples (N); q = batch / N")
    parser.add_argument("--threads", type=int, default=2, help="torch threads for every contender")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per run")
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--child", choices=MODES, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the comparison (or, with ``--child``, one run) and return the figures."""
    opts = build_parser().parse_args(argv)
    if opts.runs is None:
        opts.runs = 1 if opts.quick else 3
    if opts.steps is None:
        opts.steps = 3 if opts.quick else 8
    if opts.warmup < 1:
        raise SystemExit("--warmup must be at least 1 (the first update includes one-off set-up)")
    if opts.child:
        figures = child(opts.child, opts)
        _common.emit(figures)
        return figures
    opts.modes = [m.strip() for m in opts.modes.split(",") if m.strip()]
    unknown = sorted(set(opts.modes) - set(MODES))
    if unknown:
        raise SystemExit(f"unknown --modes {unknown}; choose from {', '.join(MODES)}")
    return _common.finish(compare(opts), print_table, opts.json)


if __name__ == "__main__":
    main()
