"""``DistributedModelParallel`` without a data-parallel wrapper when there is one process.

TorchRec wraps the dense (unsharded) modules in ``DistributedDataParallel`` whatever the world size. With one
process there is nothing to all-reduce, yet DDP's hooks and its gloo all-reduce cost about 2 ms a step (DeepFM,
one core: 7.6 against 5.3 ms for a 64-row step, where the step is all overhead; docs/benchmarks.md).
:func:`shard` keeps DDP for several processes and leaves it out for one.

Without DDP, TorchRec 1.8's ``DistributedModelParallel.state_dict`` adds the prefix twice (it removes
``<prefix>module.``, which only DDP puts there, then prefixes every key again): a LightningModule holding the
model as ``self.model`` would save ``model.model.<name>``. :class:`ShardedModel` returns the keys unchanged
instead, so checkpoints have the same keys at any world size.

Example:
    >>> from torchrec.distributed.model_parallel import DefaultDataParallelWrapper
    >>> isinstance(_data_parallel(1), NoDataParallel), isinstance(_data_parallel(2), DefaultDataParallelWrapper)
    (True, True)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.model_parallel import DataParallelWrapper, DefaultDataParallelWrapper, get_module
from torchrec.distributed.types import ModuleSharder, ShardingEnv, ShardingPlan

__all__ = ["NoDataParallel", "ShardedModel", "shard"]


class NoDataParallel(DataParallelWrapper):  # type: ignore[misc]
    """Leaves the dense modules as they are (one process: their gradients are already the global ones)."""

    def wrap(self, dmp: DistributedModelParallel, env: ShardingEnv, device: torch.device) -> None:
        return None


class ShardedModel(DistributedModelParallel):  # type: ignore[misc]
    """TorchRec's DMP whose ``state_dict`` keys do not depend on whether DDP wraps the dense modules."""

    def state_dict(
        self, destination: dict[str, Any] | None = None, prefix: str = "", keep_vars: bool = False
    ) -> dict[str, Any]:
        if isinstance(self._dmp_wrapped_module, DistributedDataParallel):
            out: dict[str, Any] = super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
            return out
        inner: nn.Module = get_module(self)
        if destination is None:
            return inner.state_dict(prefix=prefix, keep_vars=keep_vars)
        return inner.state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)


def _data_parallel(world_size: int) -> DataParallelWrapper:
    return NoDataParallel() if world_size == 1 else DefaultDataParallelWrapper()


def shard(
    model: nn.Module, device: torch.device, plan: ShardingPlan, sharders: Sequence[ModuleSharder[Any]], world_size: int
) -> ShardedModel:
    """``model`` sharded by ``plan``; its dense modules under DDP only when ``world_size > 1``."""
    return ShardedModel(
        model, device=device, plan=plan, sharders=list(sharders), data_parallel_wrapper=_data_parallel(world_size)
    )
