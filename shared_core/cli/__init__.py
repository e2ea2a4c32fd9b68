"""The ``tensafe`` command line.

Core commands (keygen, pack, verify, inspect, epsilon, noise, verify-privacy, push, pull) live in this package and
run with only the core installed. Adapters add commands (``train``) through the ``tensafe.commands`` entry-point
group, so the core never imports an adapter.
"""

from __future__ import annotations

import importlib
import sys
from importlib.metadata import entry_points

import typer

from shared_core.errors import MissingDependencyError

__all__ = ["build_app", "main"]

_CORE_MODULES = ("shared_core.cli._privacy", "shared_core.cli._tssp", "shared_core.cli._hub")


def build_app() -> typer.Typer:
    """Assemble the Typer app from the core command modules and the installed adapters."""
    app = typer.Typer(
        name="tensafe",
        help="Differentially private fine-tuning: train, account, certify, package, verify and publish.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
    )
    for name in _CORE_MODULES:
        importlib.import_module(name).register(app)
    for ep in entry_points(group="tensafe.commands"):
        try:
            register = ep.load()
        except MissingDependencyError as exc:
            _register_unavailable(app, ep.name, str(exc))
            continue
        register(app)
    return app


def _register_unavailable(app: typer.Typer, name: str, reason: str) -> None:
    """Keep an adapter's command visible when its extra is missing, failing with the install hint."""

    @app.command(name, help=f"(unavailable: {reason})", context_settings={"ignore_unknown_options": True})
    def _unavailable() -> None:
        typer.echo(f"tensafe {name}: {reason}", err=True)
        raise typer.Exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    app = build_app()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tensafe")
