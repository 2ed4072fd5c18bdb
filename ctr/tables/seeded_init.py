"""Initial weights that depend on the seed only, not on the world size or the sharding plan.

DMP initialises each table shard on the rank that owns it, drawing from that rank's RNG, so the same seed
gives different starting weights with 1 or 2 processes. ``reinitialize`` redraws every table from a
generator seeded by ``(seed, table name)`` (TorchRec's default U(-sqrt(1/rows), sqrt(1/rows))) and writes each
rank's slice of it into its local shards, then resets every dense module under one seeded RNG on every rank.
A run is then reproducible across world sizes, which is what lets the 2-process test match the 1-process run.

Example:
    >>> reinitialize(dmp, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor.api import ShardedTensor

__all__ = ["is_table", "reinitialize", "table_init", "write_whole"]


def table_init(name: str, rows: int, dim: int, seed: int, std: float | None = None) -> torch.Tensor:
    """The full initial table ``name`` from a generator seeded by (seed, name): normal with standard deviation
    ``std`` (``model.init_std``), or uniform in +-sqrt(1/rows) (TorchRec's default) when ``std`` is None."""
    gen = torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))
    if std is not None:
        return torch.randn(rows, dim, generator=gen) * std
    bound = (1.0 / rows) ** 0.5
    table: torch.Tensor = (torch.rand(rows, dim, generator=gen) * 2 - 1) * bound
    return table


def _is_dense(module: nn.Module) -> bool:
    params = list(module.parameters(recurse=False))
    return bool(params) and not any(hasattr(p, "_in_backward_optimizers") for p in params)


@torch.no_grad()
def write_whole(value: torch.Tensor, full: torch.Tensor) -> None:
    """Copy the whole tensor ``full`` into ``value``: a plain tensor, or this rank's shards of a ShardedTensor."""
    if tuple(value.size()) != tuple(full.shape):
        raise ValueError(f"cannot write a tensor of shape {tuple(full.shape)} into one of {tuple(value.size())}")
    if isinstance(value, ShardedTensor):
        for shard in value.local_shards():
            r0, c0 = shard.metadata.shard_offsets
            r, c = shard.metadata.shard_sizes
            shard.tensor.copy_(full[r0 : r0 + r, c0 : c0 + c])
    else:
        value.copy_(full)


def is_table(key: str) -> bool:
    """Whether a state-dict key names an embedding table's weight."""
    return key.endswith(".weight") and ".embedding_bags." in key


@torch.no_grad()
def reinitialize(
    dmp: nn.Module, seed: int, zero_columns: Mapping[str, tuple[int, int]] | None = None, std: float | None = None
) -> None:
    """Redraw every table (:func:`table_init`, scale ``std``) and dense layer of ``dmp`` from ``seed``.

    ``zero_columns``: table name -> columns ``[start, stop)`` drawn as zeros (a padded dim's stored columns)."""
    zero_columns = zero_columns or {}
    for key, value in dmp.state_dict().items():
        if is_table(key):
            rows, dim = value.size()
            name = key.split(".")[-2]
            full = table_init(name, rows, dim, seed, std)
            if name in zero_columns:
                start, stop = zero_columns[name]
                full[:, start:stop] = 0
            write_whole(value, full)
    torch.manual_seed(seed)
    for _, module in dmp.named_modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and _is_dense(module):
            reset()
