"""A local JSONL buffer for tracker records that could not be sent, replayed when the tracker is back."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

__all__ = ["JsonlBuffer"]


class JsonlBuffer:
    """Append-only JSONL file of ``{"op": ..., "args": {...}}`` records (each line flushed and fsynced).

    Args:
        path: The buffer file (created on first append).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def append(self, op: str, **args: Any) -> None:
        """Add one record; values must be JSON-serialisable and hold no secret."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"op": op, "args": args}, sort_keys=True, default=str)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def records(self) -> Iterator[dict[str, Any]]:
        """The buffered records in order; a torn last line (crash mid-write) is skipped with a warning."""
        if not self.path.is_file():
            return
        with self.path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    yield json.loads(line)
                except ValueError:
                    logger.warning("skipping unreadable line %d of %s", number, self.path)

    def __len__(self) -> int:
        return sum(1 for _ in self.records())

    def replay(self, send: Callable[[str, dict[str, Any]], None]) -> tuple[int, int]:
        """Send every record with ``send(op, args)``; keep the ones that fail.

        Returns:
            ``(sent, left)``; the file is rewritten atomically with the ``left`` records, or removed when empty.
        """
        left: list[dict[str, Any]] = []
        sent = 0
        for record in self.records():
            if left:  # keep order: once one fails, the rest wait too
                left.append(record)
                continue
            try:
                send(record["op"], record.get("args", {}))
                sent += 1
            except Exception as exc:  # any tracker failure keeps the record for later
                logger.debug("replay of %s failed: %s", record.get("op"), exc)
                left.append(record)
        if not left:
            self.path.unlink(missing_ok=True)
            return sent, 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        with tmp.open("w", encoding="utf-8") as handle:
            for record in left:
                handle.write(json.dumps(record, sort_keys=True) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        return sent, len(left)
