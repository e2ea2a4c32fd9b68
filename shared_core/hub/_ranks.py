"""Run a Hub operation once per multi-process job: rank zero acts, every other rank waits and gets its result.

A job is multi-process when ``torch.distributed`` is initialised, or when ``RANK``/``WORLD_SIZE`` say so (torchrun,
``accelerate launch``). In the second case a temporary gloo group is formed through ``env://`` (``MASTER_ADDR``,
``MASTER_PORT``) for the duration of the call and torn down afterwards. torch is imported only in those cases.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from shared_core.errors import ConfigError, VerificationError

__all__ = ["job_rank", "run_on_rank_zero"]

logger = logging.getLogger(__name__)

T = TypeVar("T")


def job_rank() -> tuple[int, int, bool]:
    """``(rank, world_size, process_group_initialised)`` of this process."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank()), int(dist.get_world_size()), True
    try:
        rank = int(os.environ.get("RANK", "0"))
        world = int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(
            f"RANK={os.environ.get('RANK')!r} / WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} are not integers; "
            "unset them or launch with torchrun / accelerate launch"
        ) from None
    return rank, world, False


def _describe(exc: BaseException) -> dict[str, Any]:
    return {
        "type": type(exc).__name__,
        "message": str(exc),
        "path": getattr(exc, "path", None),
        "check": getattr(exc, "check", None),
    }


def _rebuild(info: dict[str, Any], what: str) -> Exception:
    from shared_core.hub._config import HubError, HubUnavailableError

    message = f"rank 0 could not {what}: {info['message']}"
    if info["type"] == "VerificationError":
        return VerificationError(message, path=info["path"], check=info["check"])
    if info["type"] == "ConfigError":
        return ConfigError(message)
    if info["type"] == "HubUnavailableError":
        return HubUnavailableError(message)
    return HubError(f"{message} ({info['type']})")


def run_on_rank_zero(fn: Callable[[], T], *, what: str) -> T:
    """Call ``fn`` on rank zero only; other ranks block until it finished and return the same result.

    A failure on rank zero is raised on every rank (same error type for TenSafe errors), so no rank hangs.

    Raises:
        ConfigError: ``WORLD_SIZE > 1`` without an initialised process group and without ``MASTER_ADDR``/
            ``MASTER_PORT`` to form one.
    """
    rank, world, initialised = job_rank()
    if world <= 1:
        return fn()
    created = False
    if not initialised:
        if not (os.environ.get("MASTER_ADDR") and os.environ.get("MASTER_PORT")):
            raise ConfigError(
                f"WORLD_SIZE={world} but torch.distributed is not initialised and MASTER_ADDR/MASTER_PORT are not set; "
                "initialise the process group first, or call this from one process only (unset RANK/WORLD_SIZE)"
            )
        import torch.distributed as dist

        dist.init_process_group(backend="gloo", init_method="env://", rank=rank, world_size=world)
        created = True
    import torch.distributed as dist

    try:
        box: list[Any] = [None]
        error: BaseException | None = None
        if rank == 0:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:  # every rank must learn about the failure, or they would wait forever
                error = exc
                box[0] = ("error", _describe(exc))
        else:
            logger.debug("rank %d waiting for rank 0 to %s", rank, what)
        dist.broadcast_object_list(box, src=0)
        status, value = box[0]
        if error is not None:
            raise error
        if status == "error":
            raise _rebuild(value, what)
        return value
    finally:
        if created:
            dist.destroy_process_group()
