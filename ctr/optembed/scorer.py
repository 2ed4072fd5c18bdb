"""Scoring a candidate (one dim per field) on the frozen supernet: validation AUC from precomputed embeddings.

The supernet is frozen during the search, so the validation set's field embeddings never change: they are
looked up once, with the learned row mask applied (pruned rows zeroed in the table, which is also right for
multi-valued fields), and kept as ``[N, F, D]``. A candidate then costs one prefix mask and the model's
head (its dense network) over ``N`` rows; the first-order term and the dense fields are precomputed too.
:meth:`CandidateScorer.score_naive` runs the whole model instead; the two agree (a test checks it) and
``benchmarks/search_speed.py`` measures the difference.

A scorer holds plain tensors and a head-only copy of the model, so it pickles: Ray ships it once to each
evaluator actor through the object store.

Example:
    >>> scorer = CandidateScorer(run.model, masks, load_split(path, fm, "valid"))  # doctest: +SKIP
    >>> scorer.score((16, 4, 8))  # doctest: +SKIP
    0.7712
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from ctr.data.columnar import ColumnarSplit
from ctr.models.zoo import CTRModel
from ctr.optembed.batched import BatchedHead
from ctr.optembed.supernet import prefix_mask
from ctr.tables.names import table_name
from ctr.training.metrics import auc

__all__ = ["CandidateScorer", "FixedPrefix"]


class FixedPrefix(nn.Module):
    """A field transform keeping the first ``dims[f]`` columns of field ``f`` (one candidate, every example)."""

    def __init__(self, dims: Sequence[int], full_dim: int) -> None:
        super().__init__()
        self.mask = prefix_mask(tuple(dims), full_dim).float()

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb * self.mask


class CandidateScorer:
    """Validation AUC of per-field dims on a frozen model with fixed row masks.

    ``model`` is the trained supernet (any base model with field embeddings), ``masks`` the kept rows per
    categorical field (``None``: keep every row), ``split`` the validation data (``max_rows`` takes a seeded
    sample of it).
    """

    def __init__(
        self,
        model: CTRModel,
        masks: Mapping[str, torch.Tensor] | None,
        split: ColumnarSplit,
        *,
        batch_size: int = 8192,
        max_rows: int | None = None,
        seed: int = 0,
        head_dtype: torch.dtype = torch.float32,
    ) -> None:
        """With a table method (``model.layout``), ``split`` holds the layout's virtual ids (its transform).

        ``head_dtype`` is the dtype of :meth:`score_many`'s head (bfloat16: faster where the CPU has it, AUCs
        off by about 1e-4); :meth:`score` and :meth:`score_naive` always run in float32."""
        if model.sparse_arch is None:
            raise ValueError(f"{type(model).__name__} has no field embeddings to search dims for")
        self.batch_size = batch_size
        self.head_dtype = head_dtype
        self._batched: BatchedHead | None = None  # built on first use (in the Ray actor, not shipped)
        layout = model.layout
        self.fields = tuple(s.field for s in layout.fields) if layout else tuple(split.feature_map.sparse_names)
        self.full_dim = model.sparse_arch.embedding_dim
        rows = np.arange(len(split))
        if max_rows is not None and max_rows < len(split):
            rows = np.sort(np.random.default_rng(seed).choice(len(split), max_rows, replace=False))
        self._rows = rows
        self._split = split
        self.model = _masked_copy(model, masks)
        self.labels: npt.NDArray[np.float32] = split.labels[rows]
        sparse, dense, first = [], [], []
        with torch.no_grad():
            for start in range(0, len(rows), batch_size):
                batch = split.batch(rows[start : start + batch_size])
                assert self.model.sparse_arch is not None
                fields, id_weights = self.model.sparse_arch(batch.sparse_features)
                sparse.append(fields)
                if self.model.dense_arch is not None:
                    dense.append(self.model.dense_arch(batch.dense_features))
                if self.model.linear_arch is not None:
                    first.append(self.model.linear_arch(batch.sparse_features, batch.dense_features, id_weights))
        self.sparse = torch.cat(sparse)
        self.dense = torch.cat(dense) if dense else None
        self.first_order = torch.cat(first) if first else None
        self.head = copy.deepcopy(self.model)
        self.head.sparse_arch = self.head.linear_arch = None  # the tables are not needed any more
        self.head.eval()

    @property
    def num_rows(self) -> int:
        return int(self.labels.shape[0])

    def _check(self, dims: Sequence[int]) -> tuple[int, ...]:
        dims = tuple(int(d) for d in dims)
        if len(dims) != len(self.fields) or any(d < 0 or d > self.full_dim for d in dims):
            raise ValueError(f"candidate {dims} is not {len(self.fields)} dims in [0, {self.full_dim}]")
        return dims

    def logits(self, dims: Sequence[int]) -> torch.Tensor:
        """Logits of every validation row for ``dims``, from the precomputed embeddings."""
        mask = prefix_mask(self._check(dims), self.full_dim).float()
        out = []
        with torch.no_grad():
            for start in range(0, self.num_rows, self.batch_size):
                stop = start + self.batch_size
                fields = self.sparse[start:stop] * mask
                if self.dense is not None:
                    fields = torch.cat([fields, self.dense[start:stop]], dim=1)
                logit = self.head.head(fields)
                if self.first_order is not None:
                    logit = logit + self.first_order[start:stop]
                out.append(logit)
        return torch.cat(out)

    def score(self, dims: Sequence[int]) -> float:
        """Validation AUC of ``dims`` (one per categorical field, in feature-map order)."""
        return auc(self.logits(dims).numpy(), self.labels)

    def score_many(self, candidates: Sequence[Sequence[int]]) -> list[float]:
        """Validation AUCs of many candidates, scored together by :class:`~ctr.optembed.batched.BatchedHead`.

        In float32 the same AUCs as :meth:`score` one by one (to 1e-6: only float rounding differs)."""
        if not candidates:
            return []
        return [auc(row.numpy(), self.labels) for row in self.logits_many(candidates)]

    def logits_many(self, candidates: Sequence[Sequence[int]]) -> torch.Tensor:
        """``[K, N]`` logits of ``K`` candidates on every validation row, by :class:`BatchedHead`."""
        checked = [self._check(c) for c in candidates]
        if self._batched is None:
            self._batched = BatchedHead(self.head, self.full_dim, batch_size=self.batch_size, dtype=self.head_dtype)
        return self._batched.logits(self.sparse, self.dense, self.first_order, checked)

    def with_head_dtype(self, dtype: torch.dtype) -> CandidateScorer:
        """This scorer (sharing its tensors) with :meth:`score_many`'s head in ``dtype``."""
        out = copy.copy(self)
        out.head_dtype, out._batched = dtype, None
        return out

    def sample(self, rows: int, seed: int = 0) -> CandidateScorer:
        """This scorer on a seeded random sample of ``rows`` of its rows (itself when it has no more)."""
        if rows >= self.num_rows:
            return self
        picked = np.sort(np.random.default_rng(seed).choice(self.num_rows, rows, replace=False))
        keep = torch.from_numpy(picked)
        out = copy.copy(self)
        out._rows = self._rows[picked]
        out.labels = self.labels[picked]
        out.sparse = self.sparse[keep]
        out.dense = None if self.dense is None else self.dense[keep]
        out.first_order = None if self.first_order is None else self.first_order[keep]
        return out

    def score_naive(self, dims: Sequence[int]) -> float:
        """The same AUC from full forward passes (table lookups included): the baseline of the benchmark."""
        model = copy.copy(self.model)
        model.field_transform = FixedPrefix(self._check(dims), self.full_dim)
        out = []
        with torch.no_grad():
            for start in range(0, self.num_rows, self.batch_size):
                out.append(model(self._split.batch(self._rows[start : start + self.batch_size])))
        return auc(torch.cat(out).numpy(), self.labels)

    def __getstate__(self) -> dict[str, object]:
        state = dict(self.__dict__)
        state["model"] = state["_split"] = None  # actors score from the precomputed tensors only
        state["_rows"] = state["_batched"] = None
        return state


def _masked_copy(model: CTRModel, masks: Mapping[str, torch.Tensor] | None) -> CTRModel:
    """A copy in eval mode with no field transform, the embeddings of its pruned rows zeroed in the main tables.

    The first-order columns of FM and DeepFM's tables are kept, as the supernet's row pruning keeps them.
    """
    out = copy.deepcopy(model).eval()
    out.field_transform = None
    if masks is None:
        return out
    assert out.sparse_arch is not None
    tables = out.sparse_arch.ebc.embedding_bags
    with torch.no_grad():
        for name, keep in masks.items():
            weight = tables[table_name(name)].weight
            if keep.shape != (weight.shape[0],):
                raise ValueError(f"field {name!r}: mask of shape {tuple(keep.shape)} for a table of {weight.shape[0]}")
            weight[~keep.to(torch.bool), : out.sparse_arch.embedding_dim] = 0.0
    return out
