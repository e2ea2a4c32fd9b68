"""TenSafe adapter for PyTorch Lightning. Needs ``pip install 'tensafe[lightning]'``."""

from __future__ import annotations

__all__: list[str] = []
