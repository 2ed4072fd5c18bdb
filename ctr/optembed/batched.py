"""Many candidates per pass over the precomputed validation embeddings (the search's fast path).

:class:`~ctr.optembed.scorer.CandidateScorer` keeps the validation set's field embeddings ``[N, F, D]``; a candidate
is a prefix mask on them and one pass of the head. :class:`BatchedHead` scores a list of candidates at once:

* the rows are walked in blocks of ``batch_size``, and every candidate is scored on a block while it is in
  cache;
* when the validation sample is smaller than ``batch_size``, several candidates' masked copies are stacked into
  the batch dimension (``K`` candidates x ``n`` rows in one head call), so that small samples still make GEMMs
  large enough to run at full speed;
* the head is :func:`~ctr.optembed.fast_head.fast_head`'s: BatchNorm folded, ReLU fused, oneDNN matmuls, in float32
  (the same AUCs as one-by-one scoring, to 1e-6) or bfloat16 (``dtype``, faster where the CPU has it);
* for a deep tower on the flattened fields (DeepFM, FNN), the first layer multiplies only the columns a
  candidate keeps (``sum_f dims[f]`` of ``F * D``: the others are zero), and the dense fields' part of it is
  computed once per block for every candidate.

Example:
    >>> batched = BatchedHead(scorer.head, full_dim=16)  # doctest: +SKIP
    >>> batched.logits(scorer.sparse, scorer.dense, scorer.first_order, [(16, 4), (8, 8)]).shape  # doctest: +SKIP
    torch.Size([2, 100207])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ctr.models.zoo import FNN, CTRModel, DeepFM
from ctr.optembed.fast_head import FusedLinear, fast_head, linear
from ctr.optembed.supernet import prefix_mask

__all__ = ["BatchedHead"]


class BatchedHead:
    """A frozen model's head prepared for scoring many prefix-mask candidates per pass."""

    def __init__(
        self, head: CTRModel, full_dim: int, *, batch_size: int = 8192, dtype: torch.dtype = torch.float32
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}")
        self.head = fast_head(head, dtype)
        self.full_dim = full_dim
        self.batch_size = batch_size
        self.dtype = dtype
        self._tower = isinstance(self.head, (DeepFM, FNN)) and len(list(self.head.deep.mlp.children())) > 0

    def logits(
        self,
        sparse: torch.Tensor,
        dense: torch.Tensor | None,
        first_order: torch.Tensor | None,
        candidates: Sequence[Sequence[int]],
    ) -> torch.Tensor:
        """``[K, N]`` float32 logits of ``K`` candidates (per-field dims) on the rows of ``sparse`` ``[N, F, D]``."""
        masks = prefix_mask(torch.tensor([list(c) for c in candidates]), self.full_dim).to(sparse.dtype)  # [K, F, D]
        k_all, n_all = masks.shape[0], sparse.shape[0]
        out = torch.empty(k_all, n_all)
        if self._tower:
            return self._tower_logits(sparse, dense, first_order, masks)
        rows = min(self.batch_size, n_all)
        stack = max(1, self.batch_size // max(rows, 1))  # candidates per head call
        with torch.no_grad():
            for start in range(0, n_all, rows):
                stop = min(start + rows, n_all)
                block, n = sparse[start:stop], stop - start
                for k0 in range(0, k_all, stack):
                    k1 = min(k0 + stack, k_all)
                    fields = (block.unsqueeze(0) * masks[k0:k1, None]).reshape((k1 - k0) * n, *block.shape[1:])
                    if dense is not None:
                        fields = torch.cat([fields, dense[start:stop].repeat(k1 - k0, 1, 1)], dim=1)
                    logit = self.head.head(fields).float().reshape(k1 - k0, n)
                    if first_order is not None:
                        logit = logit + first_order[start:stop]
                    out[k0:k1, start:stop] = logit
        return out

    def _tower_logits(
        self, sparse: torch.Tensor, dense: torch.Tensor | None, first_order: torch.Tensor | None, masks: torch.Tensor
    ) -> torch.Tensor:
        """DeepFM and FNN: the tower's first layer on each candidate's kept columns only."""
        head = self.head
        assert isinstance(head, (DeepFM, FNN))
        layers = list(head.deep.mlp.children())
        first = layers[0]
        assert isinstance(first, FusedLinear)
        n_all, fields, dim = sparse.shape
        flat = sparse.reshape(n_all, fields * dim)
        width = fields * dim
        cols = [torch.nonzero(m.flatten()).flatten() for m in masks]  # the columns each candidate keeps
        weights = [first.weight[:, c].contiguous() for c in cols]
        selectors = [nn.functional.one_hot(c % dim, dim).to(sparse.dtype) for c in cols]  # column -> its dim
        w_dense, bias = first.weight[:, width:].contiguous(), first.bias
        out = torch.empty(masks.shape[0], n_all)
        with torch.no_grad():
            for start in range(0, n_all, self.batch_size):
                stop = min(start + self.batch_size, n_all)
                block = flat[start:stop]
                shared = torch.zeros(stop - start, first.weight.shape[0]) if bias is None else bias.float()
                dense_sum: torch.Tensor | float = 0.0
                dense_squares: torch.Tensor | float = 0.0
                if dense is not None:  # the dense fields' share of the first layer and of FM: the same for all
                    shared = shared + linear(dense[start:stop].flatten(1), w_dense).float()
                    dense_sum, dense_squares = dense[start:stop].sum(1), dense[start:stop].square().sum((1, 2))
                for k, (c, w) in enumerate(zip(cols, weights, strict=True)):
                    kept = block.index_select(1, c)  # the candidate's columns: the others are zero
                    z = linear(kept, w).float().add_(shared)
                    hidden = torch.relu_(z) if first.relu else z
                    for layer in layers[1:]:
                        hidden = layer(hidden)
                    logit = head.deep.out(hidden).float().squeeze(-1)
                    if isinstance(head, DeepFM):  # FM: 0.5 * sum_d((sum_f e)^2 - sum_f e^2), dense fields included
                        total = torch.mm(kept, selectors[k]) + dense_sum  # sum over fields, per dim
                        squares = torch.einsum("ij,ij->i", kept, kept) + dense_squares
                        logit = logit + 0.5 * (total.square().sum(1) - squares)
                    if first_order is not None:
                        logit = logit + first_order[start:stop]
                    out[k, start:stop] = logit
        return out
