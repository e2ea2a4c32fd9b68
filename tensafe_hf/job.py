"""``tensafe train``: a stock ``transformers.Trainer`` with the TenSafe callback, from YAML to a verified package.

The job is what a user script would do, in order: check the inputs and the budget before anything heavy, load the
base model and LoRA, measure held-out loss, train with DP, measure again, then certify, package, verify, load the
adapter back out of the package and generate a sample.
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared_core.config import DPConfig
from shared_core.errors import ConfigError
from tensafe_hf.data import CausalLMCollator, TextDataset, read_rows, resolve_path, split_rows, tokenize_rows
from tensafe_hf.job_config import JobConfig

logger = logging.getLogger(__name__)

__all__ = ["JobResult", "plan_job", "run_job"]


@dataclass
class JobPlan:
    """Everything decided before the model is loaded: data split, sample rate, horizon, noise."""

    train_rows: list[dict[str, str]]
    eval_rows: list[dict[str, str]]
    num_examples: int
    expected_batch_size: int
    sample_rate: float
    delta: float
    steps: int
    noise_multiplier: float
    per_device_batch: int


@dataclass
class JobResult:
    """What the job produced and measured."""

    output_dir: Path
    package_path: Path
    certificate_path: Path
    epsilon: float
    target_epsilon: float | None
    delta: float
    noise_multiplier: float
    steps: int
    eval_loss_before: float
    eval_loss_after: float
    sample: str
    timings: dict[str, float] = field(default_factory=dict)


def plan_job(config: JobConfig) -> JobPlan:
    """Validate the inputs and the privacy budget before anything heavy is loaded."""
    from shared_core.accounting import calibrate_noise_multiplier, compute_epsilon

    _check_model_source(config.model.name_or_path)
    if config.dp.noise_seed is not None:
        raise ConfigError(
            "dp.noise_seed fixes the DP noise, and a model trained with known noise cannot be certified; remove "
            "dp.noise_seed (the noise is then seeded from the operating system)"
        )
    data = config.data
    rows = read_rows(data.path, text_column=data.text_column, label_column=data.label_column)
    if data.keep_labels is not None:
        rows = [r for r in rows if r.get("label") in data.keep_labels]
        if not rows:
            raise ConfigError(
                f"no rows of {data.path!r} have a label in {list(data.keep_labels)}; fix data.keep_labels"
            )
    train_rows, eval_rows = split_rows(
        rows, eval_examples=data.eval_examples, seed=data.seed, max_train_examples=data.max_train_examples
    )
    n = len(train_rows)
    dp = config.dp
    training = config.training
    ga = training.gradient_accumulation_steps
    batch = dp.expected_batch_size or 8 * ga
    if batch > n:
        raise ConfigError(f"dp.expected_batch_size={batch} exceeds the {n} training rows; lower it or add data")
    q = batch / n
    if training.max_steps is not None:
        steps = training.max_steps
    else:
        assert training.epochs is not None
        steps = max(1, math.ceil(training.epochs / q))
    delta = dp.resolve_delta(n)
    if dp.noise_multiplier is not None:
        sigma = dp.noise_multiplier
        if dp.target_epsilon is not None:
            eps = compute_epsilon(
                sample_rate=q, noise_multiplier=sigma, steps=steps, delta=delta, accountant=dp.accountant
            )
            if eps > dp.target_epsilon:
                raise ConfigError(
                    f"{steps} updates at noise_multiplier={sigma} spend epsilon {eps:.3g} > target "
                    f"{dp.target_epsilon}; lower training.max_steps, raise dp.noise_multiplier, or drop it to calibrate"
                )
    else:
        assert dp.target_epsilon is not None
        sigma = calibrate_noise_multiplier(
            target_epsilon=dp.target_epsilon, delta=delta, sample_rate=q, steps=steps, accountant=dp.accountant
        )
    per_device = max(1, math.ceil(batch / ga))
    return JobPlan(train_rows, eval_rows, n, batch, q, delta, steps, sigma, per_device)


def _check_model_source(name_or_path: str) -> None:
    """Fail fast on a model path that does not exist (a Hub id, ``org/name``, is left to the loader)."""
    if name_or_path.startswith("package:"):
        resolve_path(name_or_path)
        return
    path = Path(name_or_path).expanduser()
    looks_like_path = path.is_absolute() or name_or_path.startswith((".", "~")) or name_or_path.count("/") >= 2
    if looks_like_path and not path.exists():
        raise ConfigError(f"model path {name_or_path!r} does not exist; fix model.name_or_path in the config")


def _load_model(config: JobConfig) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    m = config.model
    source = str(resolve_path(m.name_or_path)) if m.name_or_path.startswith("package:") else m.name_or_path
    kwargs: dict[str, Any] = {"gguf_file": m.gguf_file} if m.gguf_file else {}
    try:
        dtype = getattr(torch, m.dtype)
    except AttributeError:
        raise ConfigError(f"model.dtype {m.dtype!r} is not a torch dtype; use float32 or bfloat16") from None
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except OSError as exc:
        raise ConfigError(f"model {m.name_or_path!r} could not be loaded ({exc}); fix model.name_or_path") from None
    if m.gguf_file:
        _forget_gguf_quantization(model)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def _forget_gguf_quantization(model: Any) -> None:
    """transformers dequantizes GGUF weights into plain tensors at load time but keeps the quantizer marks, which make
    the Trainer refuse to train and ``save_pretrained`` refuse to save; the weights are ordinary, so drop the marks."""
    model.hf_quantizer = None
    model.is_quantized = False
    if getattr(model.config, "quantization_config", None) is not None:
        del model.config.quantization_config


def _apply_lora(model: Any, config: JobConfig) -> Any:
    from peft import LoraConfig, get_peft_model

    lora = config.lora
    peft_config = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )
    return get_peft_model(model, peft_config)


def _held_out_loss(model: Any, dataset: TextDataset, collator: CausalLMCollator, *, batch_size: int = 16) -> float:
    """Token-mean cross-entropy over the held-out rows (next-token prediction)."""
    import torch

    model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(dataset), batch_size):
            batch = collator([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            shift_logits, shift_labels = logits[:, :-1].float(), batch["labels"][:, 1:]
            loss = torch.nn.functional.cross_entropy(
                shift_logits.reshape(-1, shift_logits.size(-1)),
                shift_labels.reshape(-1),
                ignore_index=-100,
                reduction="sum",
            )
            total += float(loss)
            tokens += int((shift_labels != -100).sum())
    model.train()
    return total / max(tokens, 1)


def _ensure_keys(config: JobConfig, console: Any) -> Path:
    from shared_core.tssp.keys import generate_keys

    key_dir = Path(config.signing.key_dir).expanduser()
    passphrase = os.environ.get(config.signing.passphrase_env) if config.signing.passphrase_env else None
    if not (key_dir / "ed25519.key").exists():
        ids = generate_keys(key_dir, passphrase=passphrase)
        console.print(
            f"[yellow]No signing keys in {key_dir}: generated a new Ed25519 + ML-DSA-65 pair there "
            f"({ids['ed25519'][:19]}..., {ids['ml-dsa-65'][:19]}...). Keep the .key files private; share the .pub "
            "files with whoever verifies your packages.[/yellow]"
        )
    return key_dir


def run_job(
    config: JobConfig,
    *,
    wandb_project: str | None = None,
    mlflow_experiment: str | None = None,
    push_to_hub: str | None = None,
    console: Any = None,
) -> JobResult:
    """Run the whole job; see the module docstring."""
    from rich.console import Console

    console = console or Console()
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if config.training.threads:
        import torch

        torch.set_num_threads(config.training.threads)
    plan = plan_job(config)
    output_dir = Path(config.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    console.print(
        f"[bold]TenSafe DP fine-tune[/bold]: {plan.num_examples} training rows, Poisson rate q={plan.sample_rate:.5f} "
        f"(expected batch {plan.expected_batch_size}), {plan.steps} updates, "
        f"noise multiplier {plan.noise_multiplier:.4f}, "
        f"target epsilon {config.dp.target_epsilon}, delta {plan.delta:.3g} (1/(10 N) unless set), "
        f"clip norm {config.dp.max_grad_norm}, accountant {config.dp.accountant}"
    )
    key_dir = _ensure_keys(config, console)

    console.print(f"Loading {config.model.name_or_path} ...")
    model, tokenizer = _load_model(config)
    model = _apply_lora(model, config)
    timings["load_s"] = time.perf_counter() - t0
    collator = CausalLMCollator(pad_token_id=tokenizer.pad_token_id)
    kw: dict[str, Any] = {"template": config.data.template, "max_length": config.data.max_length}
    train_ds = TextDataset(tokenize_rows(plan.train_rows, tokenizer, **kw))
    eval_ds = TextDataset(tokenize_rows(plan.eval_rows, tokenizer, **kw))
    loss_before = _held_out_loss(model, eval_ds, collator)
    console.print(f"Held-out loss before: {loss_before:.4f} (perplexity {math.exp(loss_before):.2f})")

    trainer = _build_trainer(
        config,
        plan,
        model,
        train_ds,
        collator,
        output_dir,
        key_dir=key_dir,
        wandb_project=wandb_project,
        mlflow_experiment=mlflow_experiment,
    )
    t_train = time.perf_counter()
    trainer.train()
    timings["train_s"] = time.perf_counter() - t_train
    loss_after = _held_out_loss(model, eval_ds, collator)
    console.print(f"Held-out loss after:  {loss_after:.4f} (perplexity {math.exp(loss_after):.2f})")

    release = _release(config, plan, trainer, output_dir, key_dir)
    ledger = release.ledger
    console.print(
        f"Epsilon spent {ledger.epsilon_spent:.4f} of target {config.dp.target_epsilon} (delta {ledger.delta:.3g}, "
        f"noise multiplier {ledger.noise_multiplier:.4f}, {ledger.steps} updates; RDP cross-check "
        f"{ledger.epsilon_rdp:.4f})"
    )
    sample = _verify_and_generate(config, release.package_path, key_dir, model, tokenizer, console)
    _publish_release(trainer, output_dir, console)
    push_to_hub = push_to_hub or config.integrations.push_to_hub
    if push_to_hub:
        from shared_core.hub import TenSafeHFHubConfig, TenSafeHFHubIntegration

        hub = TenSafeHFHubIntegration(config=TenSafeHFHubConfig(public_key=str(key_dir)))
        url = hub.push_to_hub(str(release.package_path), push_to_hub)
        console.print(f"Pushed the verified package to {url}")
    timings["total_s"] = time.perf_counter() - t0
    result = JobResult(
        output_dir=output_dir,
        package_path=release.package_path,
        certificate_path=release.certificate_path,
        epsilon=ledger.epsilon_spent,
        target_epsilon=config.dp.target_epsilon,
        delta=ledger.delta,
        noise_multiplier=ledger.noise_multiplier,
        steps=ledger.steps,
        eval_loss_before=loss_before,
        eval_loss_after=loss_after,
        sample=sample,
        timings=timings,
    )
    console.print(f"[green]Done in {timings['total_s']:.0f} s[/green]: package {release.package_path}")
    return result


def _build_trainer(
    config: JobConfig,
    plan: JobPlan,
    model: Any,
    train_ds: TextDataset,
    collator: CausalLMCollator,
    output_dir: Path,
    *,
    key_dir: Path,
    wandb_project: str | None,
    mlflow_experiment: str | None,
) -> Any:
    from transformers import TrainingArguments

    from tensafe_hf import TenSafeTrainer

    training = config.training
    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=plan.steps,
        per_device_train_batch_size=plan.per_device_batch,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        learning_rate=training.learning_rate,
        logging_steps=training.logging_steps,
        save_strategy="steps" if training.save_steps else "no",
        save_steps=training.save_steps or 500,
        seed=training.seed,
        report_to=[],
        use_cpu=True,
        disable_tqdm=False,
    )
    dp = DPConfig.from_dict(
        {
            **config.dp.to_dict(),
            "noise_multiplier": plan.noise_multiplier,
            "target_delta": plan.delta,
            "expected_batch_size": plan.expected_batch_size,
        }
    )
    callbacks = _tracker_callbacks(
        config, key_dir=key_dir, wandb_project=wandb_project, mlflow_experiment=mlflow_experiment
    )
    return TenSafeTrainer(
        model=model, args=args, train_dataset=train_ds, data_collator=collator, dp_config=dp, callbacks=callbacks
    )


def _release(config: JobConfig, plan: JobPlan, trainer: Any, output_dir: Path, key_dir: Path) -> Any:
    from shared_core.release import release_adapter
    from tensafe_hf.callback import ADAPTER_DIR

    callback = trainer.dp_callback
    passphrase = os.environ.get(config.signing.passphrase_env) if config.signing.passphrase_env else None
    return release_adapter(
        adapter_dir=output_dir / ADAPTER_DIR,
        output_dir=output_dir,
        ledger=callback.ledger,
        key_dir=key_dir,
        passphrase=passphrase,
        model_name=output_dir.name,
        base_model=config.model.hub_id or config.model.name_or_path,
        parameters_under_dp=callback.summary()["trainable_parameters"],
        training_parameters={
            "learning_rate": config.training.learning_rate,
            "gradient_accumulation_steps": config.training.gradient_accumulation_steps,
            "epochs": round(plan.steps * plan.sample_rate, 4),
        },
        training_config=config.to_dict(),
    )


def _publish_release(trainer: Any, output_dir: Path, console: Any) -> None:
    """The certificate and package exist only after training: hand them to the tracker callbacks' runs now."""
    from tensafe_hf.mlops import TenSafeMLflowCallback, TenSafeWandbCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, (TenSafeWandbCallback, TenSafeMLflowCallback)):
            summary = cb.publish_artifacts(output_dir, args=trainer.args)
            verified = summary.get("tssp_verified")
            console.print(f"Published the release to {cb.tracker} (package verified there: {verified})")
    if any(isinstance(cb, TenSafeWandbCallback) for cb in trainer.callback_handler.callbacks):
        import wandb

        if wandb.run is not None:
            wandb.finish()


def _tracker_callbacks(
    config: JobConfig, *, key_dir: Path, wandb_project: str | None, mlflow_experiment: str | None
) -> list[Any]:
    callbacks: list[Any] = []
    wandb_project = wandb_project or config.integrations.wandb_project
    mlflow_experiment = mlflow_experiment or config.integrations.mlflow_experiment
    if wandb_project:
        from tensafe_hf.mlops import TenSafeWandbCallback

        callbacks.append(
            TenSafeWandbCallback(
                project=wandb_project, trusted_keys=str(key_dir), log_gradients=False, publish_on_train_end=False
            )
        )
    if mlflow_experiment:
        from tensafe_hf.mlops import TenSafeMLflowCallback

        uri = config.integrations.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = f"sqlite:///{Path(config.output_dir).resolve() / 'mlflow.db'}"
        callbacks.append(
            TenSafeMLflowCallback(
                experiment_name=mlflow_experiment,
                tracking_uri=uri,
                trusted_keys=str(key_dir),
                registered_model_name=Path(config.output_dir).name,
                publish_on_train_end=False,
            )
        )
    return callbacks


def _verify_and_generate(
    config: JobConfig, package: Path, key_dir: Path, model: Any, tokenizer: Any, console: Any
) -> str:
    """Verify the package with the public key, load the adapter back from it onto the base weights, generate.

    The base is the trained model with its LoRA layers removed (``unload``): DP training never changes frozen
    weights, so this is the pretrained base without a second slow load.
    """
    import torch

    from shared_core.tssp import load_model, verify_package
    from shared_core.tssp.keys import load_trusted_keys

    manifest = verify_package(package, trusted=load_trusted_keys(key_dir))
    console.print(f"[green]Package verified[/green] with the pinned public keys: {len(manifest['files'])} files")
    base = model.unload()
    loaded = load_model(package, base_model=base, public_key=key_dir)
    loaded.eval()
    inputs = tokenizer(config.generation.prompt, return_tensors="pt")
    with torch.no_grad():
        out = loaded.generate(**inputs, max_new_tokens=config.generation.max_new_tokens, do_sample=False)
    sample = tokenizer.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    console.print(f"Sample from the adapter loaded out of the package: {config.generation.prompt!r} -> {sample!r}")
    return sample
