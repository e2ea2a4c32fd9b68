"""``tensafe train``: plugged into the core CLI through the ``tensafe.commands`` entry point."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from shared_core.cli._common import fail


def register(app: typer.Typer) -> None:
    """Add ``train`` to the core app; the training stack is imported only when the command runs."""

    @app.command("train")
    def train(
        config: Annotated[Path, typer.Option("--config", help="Job YAML (see examples/quickstart.yaml).")],
        output_dir: Annotated[
            str | None, typer.Option("--output-dir", help="Overrides the config's output_dir.")
        ] = None,  # noqa: UP007
        wandb_project: Annotated[
            str | None, typer.Option("--wandb-project", help="Log to W&B (offline without a server).")
        ] = None,  # noqa: UP007,E501
        mlflow_experiment: Annotated[
            str | None,
            typer.Option(
                "--mlflow-experiment", help="Log to MLflow (local sqlite store unless MLFLOW_TRACKING_URI is set)."
            ),
        ] = None,  # noqa: UP007,E501
        push_to_hub: Annotated[
            str | None, typer.Option("--push-to-hub", help="Push the verified package to this Hub repo id.")
        ] = None,  # noqa: UP007,E501
    ) -> None:
        """Run a DP fine-tune from a config and end with a verified, signed package."""
        from shared_core.errors import TensafeError
        from tensafe_hf.job import run_job
        from tensafe_hf.job_config import load_job_config

        try:
            job = load_job_config(config, output_dir=output_dir)
            run_job(job, wandb_project=wandb_project, mlflow_experiment=mlflow_experiment, push_to_hub=push_to_hub)
        except TensafeError as exc:
            fail(str(exc), code=2)
