"""The `Example:` blocks in module docstrings run, so the documentation cannot drift from the code."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "features.hashing",
    "config.strict",
    "config.registry",
    "ctr.data.columnar",
    "ctr.tables.names",
    "ctr.tables.rules",
    "ctr.tables.sizing",
    "ctr.tables.methods.base",
    "features.spec",
    "features.transforms",
    "features.textfile",
    "features.encode",
    "features.outputs",
    "ctr.training.metrics",
    "config.run",
    "ctr.optembed.supernet",
    "ctr.optembed.plan",
    "ctr.optembed.pruned",
    "ctr.artifact.manifest",
    "ctr.optembed.variants",
    "ctr.artifact.quantize",
    "config.model",
    "ctr.tables.embedding",
    "ctr.training.sharding",
    "ctr.training.writes",
    "search.evolution",
    "search.pick",
    "search.sample_size",
    "ctr.optembed.fast_head",
    "search.tune_space",
    "benchmarks.peer_table",
]


@pytest.mark.parametrize("name", MODULES)
def test_module_examples(name: str) -> None:
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no examples"
    assert result.failed == 0
