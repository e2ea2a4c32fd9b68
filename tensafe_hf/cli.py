"""``tensafe train``: plugged into the core CLI through the ``tensafe.commands`` entry point."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add ``train`` to the core app; the training stack is imported only when the command runs."""
