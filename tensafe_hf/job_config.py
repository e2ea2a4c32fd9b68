"""The YAML config of ``tensafe train``: strict sections, unknown keys refused by name."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from shared_core.config import DPConfig
from shared_core.errors import ConfigError

__all__ = [
    "DataSection",
    "GenerationSection",
    "IntegrationsSection",
    "JobConfig",
    "LoraSection",
    "ModelSection",
    "SigningSection",
    "TrainingSection",
    "load_job_config",
]


@dataclass(frozen=True)
class ModelSection:
    """The base model: a Hub id, a local folder, or ``package:<name>`` (a folder inside an installed wheel)."""

    name_or_path: str
    gguf_file: str | None = None
    hub_id: str | None = None  # public Hub id of the base, recorded in the certificate and card
    dtype: str = "float32"


@dataclass(frozen=True)
class LoraSection:
    """peft LoRA settings."""

    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class DataSection:
    """Where the text comes from and how one example is rendered."""

    path: str
    text_column: str = "text"
    label_column: str | None = None
    keep_labels: tuple[str, ...] | None = None
    template: str = "{text}"
    max_length: int = 64
    eval_examples: int = 64
    max_train_examples: int | None = None
    seed: int = 0


@dataclass(frozen=True)
class TrainingSection:
    """Trainer settings; the horizon is ``max_steps`` optimizer updates or ``epochs`` passes."""

    max_steps: int | None = None
    epochs: float | None = None
    gradient_accumulation_steps: int = 1
    learning_rate: float = 2e-3
    logging_steps: int = 5
    save_steps: int | None = None
    seed: int = 0
    threads: int | None = None


@dataclass(frozen=True)
class SigningSection:
    """Where the signing keys live; generated there on first use when missing."""

    key_dir: str = ".tensafe/keys"
    passphrase_env: str | None = None


@dataclass(frozen=True)
class GenerationSection:
    """The sample generated from the adapter loaded back out of the package."""

    prompt: str = "Review: A warm, funny and beautifully acted film.\nVerdict:"
    max_new_tokens: int = 8


@dataclass(frozen=True)
class IntegrationsSection:
    """Trackers and the Hub; all off unless named here or on the command line."""

    wandb_project: str | None = None
    mlflow_experiment: str | None = None
    mlflow_tracking_uri: str | None = None
    push_to_hub: str | None = None


@dataclass(frozen=True)
class JobConfig:
    """One ``tensafe train`` job."""

    model: ModelSection
    data: DataSection
    dp: DPConfig
    lora: LoraSection = field(default_factory=LoraSection)
    training: TrainingSection = field(default_factory=TrainingSection)
    output_dir: str = "runs/tensafe"
    signing: SigningSection = field(default_factory=SigningSection)
    generation: GenerationSection = field(default_factory=GenerationSection)
    integrations: IntegrationsSection = field(default_factory=IntegrationsSection)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (the job's training config, before secret redaction)."""
        return dataclasses.asdict(self)


_T = TypeVar("_T")


def _section(cls: type[_T], data: Any, where: str) -> _T:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {type(data).__name__}")
    names = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(f"unknown key(s) in '{where}': {', '.join(unknown)}; allowed: {', '.join(sorted(names))}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
    try:
        return cls(**values)
    except TypeError as exc:
        raise ConfigError(f"'{where}': {exc}") from None


def load_job_config(path: str | Path, *, output_dir: str | None = None) -> JobConfig:
    """Read and validate a job YAML; ``output_dir`` overrides the config's."""
    import yaml

    try:
        raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found; pass --config with an existing YAML file") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of sections")
    sections = {f.name for f in dataclasses.fields(JobConfig)}
    unknown = sorted(set(raw) - sections)
    if unknown:
        allowed = ", ".join(sorted(sections))
        raise ConfigError(f"unknown top-level key(s) in {path}: {', '.join(unknown)}; allowed: {allowed}")
    for required in ("model", "data", "dp"):
        if required not in raw:
            raise ConfigError(f"{path}: the '{required}' section is required")
    dp_raw = raw["dp"]
    if not isinstance(dp_raw, dict):
        raise ConfigError("'dp' must be a mapping")
    try:
        dp = DPConfig.from_dict(dp_raw)
    except ConfigError as exc:
        raise ConfigError(f"'dp': {exc}") from None
    config = JobConfig(
        model=_section(ModelSection, raw["model"], "model"),
        data=_section(DataSection, raw["data"], "data"),
        dp=dp,
        lora=_section(LoraSection, raw.get("lora"), "lora"),
        training=_section(TrainingSection, raw.get("training"), "training"),
        output_dir=output_dir or str(raw.get("output_dir", "runs/tensafe")),
        signing=_section(SigningSection, raw.get("signing"), "signing"),
        generation=_section(GenerationSection, raw.get("generation"), "generation"),
        integrations=_section(IntegrationsSection, raw.get("integrations"), "integrations"),
    )
    training = config.training
    if (training.max_steps is None) == (training.epochs is None):
        raise ConfigError("'training' needs exactly one of max_steps (optimizer updates) or epochs")
    return config
