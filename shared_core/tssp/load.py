"""Load a verified package onto a base model. Only this module needs torch and peft, imported when called."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from shared_core._imports import require
from shared_core.errors import VerificationError
from shared_core.tssp.keys import TrustedKeys, load_trusted_keys
from shared_core.tssp.verify import verify_and_read

__all__ = ["load_model"]

logger = logging.getLogger(__name__)


def load_model(
    package: str | Path,
    *,
    base_model: Any,
    public_key: TrustedKeys | str | Path,
    decryption_key: bytes | None = None,
) -> Any:
    """Verify ``package`` completely, then put its adapter on ``base_model`` from the very bytes that were verified.

    No file is re-opened by path after verification: the weights come from ``safetensors.torch.load`` over the
    verified bytes and the adapter config from the verified JSON.

    Args:
        package: the package directory or tar archive.
        base_model: an already loaded transformers model; peft injects the adapter into it (in place).
        public_key: the pinned keys - a :class:`TrustedKeys`, a key directory or a trusted-keys JSON file.
        decryption_key: the 32-byte CEK when the weights are encrypted.

    Returns:
        The ``PeftModel`` in eval mode.

    Raises:
        VerificationError: any verification failure, or weights that do not fit the base model.
        MissingDependencyError: peft/torch are not installed (``pip install 'tensafe[hf]'``).
    """
    trusted = public_key if isinstance(public_key, TrustedKeys) else load_trusted_keys(public_key)
    manifest, data = verify_and_read(
        package, trusted=trusted, decryption_key=decryption_key, keep=("weights", "config")
    )
    by_role = {e["role"]: e["path"] for e in manifest["files"] if e["role"] in ("weights", "config")}
    weights, config_bytes = data[by_role["weights"]], data[by_role["config"]]

    peft = require("peft", extra="hf")
    st_torch = require("safetensors.torch", extra="hf")
    adapter_config = json.loads(config_bytes)
    adapter_config["inference_mode"] = True
    config = peft.PeftConfig.from_peft_type(**adapter_config)
    state_dict = st_torch.load(weights)
    model = peft.get_peft_model(base_model, config)
    result = peft.set_peft_model_state_dict(model, state_dict)
    unexpected = list(getattr(result, "unexpected_keys", []) or [])
    missing = [k for k in (getattr(result, "missing_keys", []) or []) if "lora_" in k]
    if unexpected or missing:
        shown = (unexpected or missing)[:3]
        raise VerificationError(
            f"{by_role['weights']}: the verified adapter does not fit this base model "
            f"({len(unexpected)} unexpected, {len(missing)} missing adapter tensors, e.g. {shown})",
            path=by_role["weights"],
            check="base-model",
        )
    model.eval()
    logger.info("loaded verified package %s (%d tensors)", manifest["package"]["name"], len(state_dict))
    return model
