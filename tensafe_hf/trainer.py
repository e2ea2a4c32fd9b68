"""``TenSafeTrainer``: a ``transformers.Trainer`` that runs DP-SGD, in one line."""

from __future__ import annotations

from typing import Any

from transformers import Trainer

from shared_core.config import DPConfig
from shared_core.errors import ConfigError
from tensafe_hf.callback import TenSafeDPCallback

__all__ = ["TenSafeTrainer"]


class TenSafeTrainer(Trainer):
    """A stock ``Trainer`` with :class:`~tensafe_hf.callback.TenSafeDPCallback` attached.

    Example:
        >>> trainer = TenSafeTrainer(model=lora_model, args=args, train_dataset=ds,  # doctest: +SKIP
        ...                          data_collator=collator, dp_config=DPConfig(target_epsilon=8.0))
        >>> trainer.train()  # doctest: +SKIP

    Args:
        *args: Passed to ``transformers.Trainer``.
        dp_config: The DP settings.
        dp_callback_kwargs: Extra keyword arguments of ``TenSafeDPCallback`` (``per_example_loss``, ``task``,
            ``stop_at_budget``, ``sampling_seed``).
        **kwargs: Passed to ``transformers.Trainer``.
    """

    def __init__(
        self,
        *args: Any,
        dp_config: DPConfig,
        dp_callback_kwargs: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if dp_config is None:
            raise ConfigError("TenSafeTrainer needs dp_config=DPConfig(...)")
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if any(isinstance(cb, TenSafeDPCallback) for cb in callbacks):
            raise ConfigError("pass dp_config to TenSafeTrainer or a TenSafeDPCallback in callbacks, not both")
        self.dp_callback = TenSafeDPCallback(dp_config, **(dp_callback_kwargs or {}))
        kwargs["callbacks"] = [*callbacks, self.dp_callback]
        super().__init__(*args, **kwargs)
        self.dp_callback.attach(self)
