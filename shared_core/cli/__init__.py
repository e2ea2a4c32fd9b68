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
        ep.load()(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    app = build_app()
    app(args=argv if argv is not None else sys.argv[1:], prog_name="tensafe")
