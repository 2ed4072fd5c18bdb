"""Many candidates per pass over the precomputed validation embeddings (the search's fast path).

:class:`~search.scorer.CandidateScorer` keeps the validation set's field embeddings ``[N, F, D]``; a candidate
is a prefix mask on them and one pass of the head. :class:`BatchedHead` scores a list of candidates at once:

* the rows are walked in blocks of ``batch_size``, and every candidate is scored on a block while it is in
  cache;
* when the validation sample is smaller than ``batch_size``, several candidates' masked copies are stacked into
  the batch dimension (``K`` candidates x ``n`` rows in one head call), so that small samples still make GEMMs
  large enough to run at full speed;
* the head is :func:`~search.fast_head.fast_head`'s: BatchNorm folded, ReLU fused, oneDNN matmuls, in float32
  (the same AUCs as one-by-one scoring, to 1e-6) or bfloat16 (``dtype``, faster where the CPU has it).

Example:
    >>> batched = BatchedHead(scorer.head, full_dim=16)  # doctest: +SKIP
    >>> batched.logits(scorer.sparse, scorer.dense, scorer.first_order, [(16, 4), (8, 8)]).shape  # doctest: +SKIP
    torch.Size([2, 100207])
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ctr.models import CTRModel
from ctr.supernet import prefix_mask
from search.fast_head import fast_head

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
