"""Helpers shared by the CLI commands: one-line failures and JSON output."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer

__all__ = ["echo_json", "fail"]


def fail(message: str, *, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit with ``code``."""
    typer.echo(f"tensafe: {message}", err=True)
    raise typer.Exit(code)


def echo_json(payload: Any) -> None:
    """Print ``payload`` as JSON on stdout."""
    sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True) + "\n")
