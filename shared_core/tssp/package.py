"""One import point for the package operations: :func:`pack`, :func:`verify_package` and :func:`inspect_package`.

Importing this module does not import torch.
"""

from __future__ import annotations

from shared_core.tssp.packing import pack
from shared_core.tssp.verify import inspect_package, verify_package

__all__ = ["inspect_package", "pack", "verify_package"]
