"""Tracker run ids kept in each checkpoint folder, so a resumed training re-attaches to the same runs."""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["TRACKERS_FILE", "find_checkpoint_state", "load_tracker_state", "save_tracker_state"]

TRACKERS_FILE = "tensafe_trackers.json"


def _atomic_write_json(path: Path, payload: Any) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(payload, handle, indent=2, sort_keys=True)
            handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_tracker_state(folder: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """The ``{tracker: {run_id, ...}}`` saved in ``folder``; empty when there is none or it is unreadable."""
    path = Path(folder) / TRACKERS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        logger.warning("ignoring unreadable tracker state %s: %s", path, exc)
        return {}
    return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}


def save_tracker_state(folder: str | os.PathLike[str], tracker: str, info: dict[str, Any]) -> Path:
    """Merge ``{tracker: info}`` into ``folder``'s tracker file (atomic write); other trackers' entries are kept.

    ``info`` must hold no secret (run ids, project and experiment names only).
    """
    path = Path(folder) / TRACKERS_FILE
    state = load_tracker_state(folder)
    state[tracker] = info
    _atomic_write_json(path, state)
    return path


def find_checkpoint_state(
    output_dir: str | os.PathLike[str], *, global_step: int, resume_from: str | os.PathLike[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Tracker state for a resumed run: from ``resume_from`` if given, else ``output_dir/checkpoint-<global_step>``."""
    candidates = []
    if resume_from:
        candidates.append(Path(resume_from))
    if global_step > 0:
        candidates.append(Path(output_dir) / f"checkpoint-{global_step}")
    for folder in candidates:
        state = load_tracker_state(folder)
        if state:
            return state
    return {}
