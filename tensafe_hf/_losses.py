"""Per-example losses for Hugging Face models: forward without labels, reduce within each example only.

The model's own loss is never used: for causal LMs transformers divides the summed token loss by a count taken over
the whole accumulation window and all ranks, which makes one example's gradient depend on the others (DP_NOTES
pitfall 5). A model family not covered here plugs in ``per_example_loss(model, inputs) -> (batch,) tensor``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

from shared_core.dp import causal_lm_per_example_loss, sequence_classification_per_example_loss
from shared_core.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["PerExampleLoss", "Task", "infer_task", "make_per_example_loss"]

Task = Literal["causal_lm", "sequence_classification"]
#: ``fn(model, inputs) -> (batch,)``; ``inputs`` still holds the labels. Each entry must depend on its example only.
PerExampleLoss = Callable[["nn.Module", Mapping[str, Any]], "torch.Tensor"]

_PEFT_TASKS: dict[str, Task] = {"CAUSAL_LM": "causal_lm", "SEQ_CLS": "sequence_classification"}


def infer_task(model: nn.Module) -> Task | None:
    """Task of a (peft-wrapped) transformers model from its peft task type or its class name."""
    peft_config = getattr(model, "peft_config", None)
    active = getattr(model, "active_adapter", None)
    if isinstance(peft_config, dict) and isinstance(active, str) and active in peft_config:
        task_type = getattr(peft_config[active], "task_type", None)
        value = getattr(task_type, "value", task_type)
        if isinstance(value, str) and value in _PEFT_TASKS:
            return _PEFT_TASKS[value]
    base = model
    get_base = getattr(model, "get_base_model", None)
    if callable(get_base):
        base = get_base()
    name = type(base).__name__
    if name.endswith(("ForCausalLM", "LMHeadModel")):
        return "causal_lm"
    if name.endswith("ForSequenceClassification"):
        return "sequence_classification"
    return None


def make_per_example_loss(model: nn.Module, task: Task | None) -> PerExampleLoss:
    """The per-example loss for ``task`` (inferred from the model when ``None``).

    Raises:
        ConfigError: when the task is unknown, telling the user to pass ``per_example_loss=``.
    """
    resolved = task or infer_task(model)
    if resolved is None:
        raise ConfigError(
            f"cannot tell which per-example loss fits {type(model).__name__}; pass task='causal_lm' or "
            "'sequence_classification', or per_example_loss=fn(model, inputs) -> 1-D tensor of one loss per example"
        )
    if resolved not in ("causal_lm", "sequence_classification"):
        raise ConfigError(f"task must be 'causal_lm' or 'sequence_classification', got {resolved!r}")
    reduce = causal_lm_per_example_loss if resolved == "causal_lm" else sequence_classification_per_example_loss

    def per_example_loss(m: nn.Module, inputs: Mapping[str, Any]) -> torch.Tensor:
        if "labels" not in inputs:
            raise ConfigError(
                "the batch has no 'labels'; the data collator must produce labels (e.g. "
                "DataCollatorForLanguageModeling(tokenizer, mlm=False) for causal LMs)"
            )
        features = {k: v for k, v in inputs.items() if k != "labels"}
        outputs = m(**features)
        logits = outputs["logits"] if isinstance(outputs, Mapping) else outputs.logits
        return reduce(logits, inputs["labels"])

    return per_example_loss
