"""The examples in the accounting and certificate docstrings run and print what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "shared_core.accounting.epsilon",
        "shared_core.accounting.calibration",
        "shared_core.accounting.ledger",
        "shared_core.certificate._schema",
    ],
)
def test_docstring_examples(module: str) -> None:
    result = doctest.testmod(importlib.import_module(module), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0
    assert result.failed == 0
