"""The `Example:` blocks in module docstrings run, so the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "features.hashing",
    "features.strict",
    "features.spec",
    "features.transforms",
    "features.textfile",
    "features.encode",
    "features.outputs",
    "ctr.metrics",
    "ctr.run_config",
    "ctr.supernet",
    "ctr.plan",
    "ctr.pruned",
    "ctr.manifest",
    "ctr.variants",
    "ctr.quantize",
    "ctr.config",
    "ctr.embedding",
    "ctr.dmp",
    "ctr.writes",
    "search.evolution",
    "search.tune_space",
    "benchmarks.peer_table",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
