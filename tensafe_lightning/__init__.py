"""TenSafe adapter for Lightning (``lightning.pytorch``): DP-SGD with one strategy flag.

Importing this package registers two names in ``lightning.pytorch.strategies.StrategyRegistry``:

* ``Trainer(strategy="tensafe_dp")``: DP-SGD in one process;
* ``Trainer(strategy="tensafe_ddp", accelerator=..., devices=N)``: DP-SGD over N DDP processes.

Pass ``TenSafeDPStrategy(DPConfig(...))`` / ``TenSafeDDPStrategy(DPConfig(...))`` to choose the settings explicitly,
and add ``TenSafeReleaseCallback`` to write the certificate, privacy report and signed TSSP package at the end of
``fit``. The module supplies per-example losses with ``per_example_loss(batch) -> Tensor[B]`` or by returning
``{"loss": ..., "per_example_loss": Tensor[B]}`` from ``training_step``.

``pytorch_lightning`` (the standalone package) is a separate copy of Lightning with its own registry and classes;
it is not supported. Needs ``pip install 'tensafe[lightning]'``.
"""

from __future__ import annotations

import importlib.util

from shared_core.errors import MissingDependencyError

if importlib.util.find_spec("lightning") is None:
    raise MissingDependencyError("tensafe_lightning needs lightning; install it with: pip install 'tensafe[lightning]'")

from tensafe_lightning.callback import TenSafeReleaseCallback  # noqa: E402
from tensafe_lightning.strategy import (  # noqa: E402
    DEFAULT_DP_CONFIG,
    STRATEGY_NAMES,
    TenSafeDDPStrategy,
    TenSafeDPStrategy,
    register_strategies,
)

register_strategies()

__all__ = [
    "DEFAULT_DP_CONFIG",
    "STRATEGY_NAMES",
    "TenSafeDDPStrategy",
    "TenSafeDPStrategy",
    "TenSafeReleaseCallback",
    "register_strategies",
]
