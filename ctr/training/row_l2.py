"""FuxiCTR's ``embedding_regularizer`` for fused tables: an L2 penalty on the rows a batch looks up, in the loss.

FuxiCTR adds ``lambda / 2 * ||W||^2`` of every embedding table to the mean BCE loss, so each step every row's
gradient gains ``lambda * w``. FBGEMM updates only the rows a batch looks up (a row it does not look up gets
no update at all), so the penalty here is on those rows, counted once per distinct row and not divided by
the batch size::

    penalty = lambda / 2 * sum over distinct looked-up rows r of ||w_r||^2

Each looked-up row's gradient then gains exactly ``lambda * w_r``, FuxiCTR's term for that row, whatever its
frequency or the batch size, so a value tuned for FuxiCTR (1e-5 to 0.05 in the BARS recipes) means the same
here; the difference is that a row decays only on the steps that look it up (lazily, as sparse optimisers do).
Per occurrence instead, a row seen ``c`` times would decay ``c`` times as fast (frequent ids shrunk hardest);
divided by the batch size, the value would mean 4096 times less at batch 4096 than FuxiCTR's.

The rows are reached through their pooled vectors, so the gradient passes through FBGEMM's fused backward
(and the table optimiser, as FuxiCTR's passes through Adam): for a single-valued field the pooled vector of a
bag is its row, and a bag of row ``r`` seen ``c_r`` times in the batch (over every feature reading the same
table) contributes ``||pooled||^2 / c_r``. The vector includes the first-order columns of FM/DeepFM rows and
LR's own first-order tables (FuxiCTR regularises those embeddings too). Multi-valued fields are not
regularised: a pooled bag of several rows does not give each row its own gradient. With several processes each
process penalises the rows its own batch looks up.

Example:
    >>> reg = RowL2(0.1, {"t_a": ("a",)})  # doctest: +SKIP
    >>> reg.attach(dmp); logits = dmp(batch); loss = bce + reg.pop()  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.distributed.embeddingbag import ShardedEmbeddingBagCollection
from torchrec.distributed.types import LazyAwaitable

__all__ = ["RowL2"]


class RowL2:
    """``weight / 2 * sum ||w_r||^2`` over the distinct rows looked up by ``tables``' features (table -> features,
    single-valued features only), collected by forward hooks on the sharded collections while training."""

    def __init__(self, weight: float, tables: Mapping[str, Sequence[str]]) -> None:
        self.weight = weight
        self.tables = {name: tuple(features) for name, features in tables.items() if features}
        self._terms: list[torch.Tensor] = []

    def attach(self, model: nn.Module) -> None:
        """Hook every sharded embedding-bag collection of ``model`` (a ``DistributedModelParallel``)."""
        found = [m for m in model.modules() if isinstance(m, ShardedEmbeddingBagCollection)]
        if not found:
            raise RuntimeError("RowL2: the model has no sharded embedding-bag collection to regularise")
        for module in found:
            module.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, inputs: tuple[Any, ...], output: Any) -> None:
        if not (module.training and torch.is_grad_enabled()):
            return
        features: KeyedJaggedTensor = inputs[0]
        pooled = LazyAwaitable._wait_async(output) if isinstance(output, LazyAwaitable) else output
        vectors = pooled.to_dict()
        ids = features.to_dict()
        for names in self.tables.values():
            present = [f for f in names if f in vectors]
            if not present:
                continue
            rows = torch.cat([ids[f].values() for f in present])
            vecs = torch.cat([vectors[f] for f in present]).float()
            if rows.numel() != vecs.shape[0]:
                raise RuntimeError(f"RowL2: {present} are not single-valued: {rows.numel()} ids, {vecs.shape[0]} bags")
            _, inverse, counts = torch.unique(rows, return_inverse=True, return_counts=True)
            self._terms.append((vecs.pow(2).sum(dim=1) / counts[inverse]).sum())

    def pop(self) -> torch.Tensor | None:
        """The penalty of the forward passes since the last call (``None`` if there were none)."""
        if not self._terms:
            return None
        total = self.weight / 2 * torch.stack(self._terms).sum()
        self._terms.clear()
        return total
