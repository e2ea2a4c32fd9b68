"""The privacy ledger inside Lightning checkpoints: written by every save, required by every resume.

The strategy adds one entry, :data:`CHECKPOINT_KEY`, to the checkpoint dict in ``Strategy.save_checkpoint`` (so it is
there even in ``save_weights_only`` checkpoints) and reads it back in ``Strategy.load_checkpoint``. The ledger is
stored as its JSON text, which ``torch.load(weights_only=True)`` reads like any string; the ledger's own checksum
and fingerprint catch edits. A checkpoint without the entry fails closed: weights that were trained on private data
must not start a new epsilon count at zero.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

from shared_core.accounting.ledger import PrivacyLedger
from shared_core.errors import LedgerError

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_KEY", "CheckpointPrivacyState", "read_checkpoint", "write_checkpoint"]

CHECKPOINT_KEY = "tensafe_privacy"
CHECKPOINT_FORMAT = "tensafe.lightning-privacy"
_VERSION = 1
_KEYS = {"format", "version", "ledger_json", "skipped_updates"}


@dataclass(frozen=True)
class CheckpointPrivacyState:
    """What a checkpoint carries for the privacy side.

    Attributes:
        ledger: The privacy ledger at the time of the save.
        skipped_updates: Optimizer steps Lightning counted although the budget stopped their release (no noise, no
            update, nothing recorded); ``global_step - skipped_updates`` must equal ``ledger.steps``.
    """

    ledger: PrivacyLedger
    skipped_updates: int


def write_checkpoint(checkpoint: MutableMapping[str, Any], ledger: PrivacyLedger, *, skipped_updates: int) -> None:
    """Put the ledger into a Lightning checkpoint dict (in place)."""
    checkpoint[CHECKPOINT_KEY] = {
        "format": CHECKPOINT_FORMAT,
        "version": _VERSION,
        "ledger_json": json.dumps(ledger.state_dict(), sort_keys=True, allow_nan=False),
        "skipped_updates": int(skipped_updates),
    }


def read_checkpoint(checkpoint: Mapping[str, Any], *, source: str) -> CheckpointPrivacyState | None:
    """The privacy state of a loaded checkpoint, ``None`` when it has none.

    Raises:
        LedgerError: the entry exists but is malformed or edited.
    """
    entry = checkpoint.get(CHECKPOINT_KEY)
    if entry is None:
        return None
    if not isinstance(entry, Mapping) or set(entry) != _KEYS:
        raise LedgerError(f"the TenSafe entry of checkpoint {source} is malformed (expected keys {sorted(_KEYS)})")
    if entry["format"] != CHECKPOINT_FORMAT or entry["version"] != _VERSION:
        raise LedgerError(
            f"checkpoint {source} holds TenSafe state {entry['format']!r} v{entry['version']!r}; this TenSafe reads "
            f"{CHECKPOINT_FORMAT!r} v{_VERSION}"
        )
    skipped = entry["skipped_updates"]
    if isinstance(skipped, bool) or not isinstance(skipped, int) or skipped < 0:
        raise LedgerError(f"checkpoint {source}: skipped_updates must be a non-negative integer, got {skipped!r}")
    try:
        state = json.loads(entry["ledger_json"])
    except (TypeError, json.JSONDecodeError) as exc:
        raise LedgerError(f"the privacy ledger in checkpoint {source} is not valid JSON ({exc})") from None
    return CheckpointPrivacyState(PrivacyLedger.from_state_dict(state), skipped)
