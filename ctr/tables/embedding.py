"""Embedding arches: categorical ids -> field vectors, dense values -> field vectors, first-order terms.

* :class:`SparseArch` holds ONE :class:`torchrec.EmbeddingBagCollection` (``ebc``) with a table ``t_<field>``
  per categorical field and returns ``[B, F, D_max]``: fields in feature-map order, each pooled vector
  zero-padded to the largest dim. Zero padding is the same as masking a prefix of ``D_max`` columns, so
  mixed-dimension tables work with every interaction (inner products and sums ignore the zeros).
* :class:`DenseEmbedding` turns each dense field ``j`` into a field vector ``x_j * v_j`` (FuxiCTR's
  numeric embedding), so dense inputs join the interactions as extra fields.
* :class:`LinearArch` is the first-order term ``bias + sum_f w_f(id) + w_dense . x`` of LR/FM/DeepFM. LR keeps
  its per-id weights in an EBC of its own (``ebc_linear``, tables ``lin_<field>``). FM and DeepFM keep them in
  the main tables (:data:`FOLDED_MODELS`): each row of ``t_<field>`` is the id's embedding followed by its
  :data:`LINEAR_DIM` first-order columns, so one FBGEMM lookup and one fused update serve both. The backward
  and update of FBGEMM's CPU kernels cost per looked-up index more than per column: a separate 4-wide
  first-order collection cost almost as much as the 16-wide embeddings, and twice the collectives when sharded.
  The row-wise optimisers then keep one accumulator per row for both parts.

The EBCs are direct submodules, so ``DistributedModelParallel`` with ``EmbeddingBagCollectionSharder``
shards them, and a fused optimiser can be applied to exactly their parameters.

:func:`embedding_params` counts the embedding parameters of a model from its config, without building it.

Example:
    >>> from features.schema import CategoricalField, FeatureMap
    >>> from config.model import ModelConfig
    >>> fm = FeatureMap(
    ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
    ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 100)),
    ... )
    >>> embedding_params(fm, ModelConfig(name="fm", embedding_dim=8, field_dims={"b": 4}))
    920
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import DataType, EmbeddingBagCollection, EmbeddingBagConfig, KeyedJaggedTensor, PoolingType

from config.model import ModelConfig
from ctr.tables.layout import TableLayout
from ctr.tables.names import field_of, linear_table_name, table_name
from features.schema import FeatureMap

__all__ = [
    "FIRST_ORDER_MODELS",
    "FOLDED_MODELS",
    "LINEAR_DIM",
    "LINEAR_ONLY_MODELS",
    "DenseEmbedding",
    "LinearArch",
    "SparseArch",
    "embedding_params",
    "field_dims",
    "stored_dim",
]

#: Models with a first-order term (a :class:`LinearArch`, whose tables count towards the embedding params).
FIRST_ORDER_MODELS: frozenset[str] = frozenset({"lr", "fm", "deepfm"})
#: Models with nothing but the first-order term (no :class:`SparseArch`).
LINEAR_ONLY_MODELS: frozenset[str] = frozenset({"lr"})
#: Models whose first-order weights are the last :data:`LINEAR_DIM` columns of the main tables (no ``ebc_linear``).
FOLDED_MODELS: frozenset[str] = FIRST_ORDER_MODELS - LINEAR_ONLY_MODELS
#: First-order columns per id. FBGEMM needs a multiple of 4, so an id's weight is the mean of 4 columns.
LINEAR_DIM = 4

_POOLING = {"sum": PoolingType.SUM, "mean": PoolingType.MEAN}
_DATA_TYPE = {"float32": DataType.FP32, "float16": DataType.FP16}


def stored_dim(dim: int) -> int:
    """The width FBGEMM stores a table of logical dim ``dim`` at: the next multiple of 4.

    >>> [stored_dim(d) for d in (1, 4, 7, 10, 16)]
    [4, 4, 8, 12, 16]
    """
    return -(-dim // 4) * 4


def field_dims(fm: FeatureMap, config: ModelConfig) -> tuple[int, ...]:
    """The embedding dim of every categorical field, in feature-map order.

    Raises ``ValueError`` naming the field when ``config.field_dims`` names a field the map does not have.
    """
    if not fm.categorical:
        raise ValueError(f"feature map {fm.dataset!r} has no categorical fields to embed")
    unknown = sorted(set(config.field_dims) - set(fm.sparse_names))
    if unknown:
        raise ValueError(
            f"ModelConfig.field_dims: unknown field(s) {unknown}; categorical fields are {list(fm.sparse_names)}"
        )
    return tuple(config.dim(name) for name in fm.sparse_names)


def embedding_params(fm: FeatureMap, config: ModelConfig, layout: TableLayout | None = None) -> int:
    """Exact number of embedding parameters of ``config``'s model on ``fm``, without building it.

    ``sum(cardinality * dim)`` over the main tables (none for LR), plus ``sum(cardinality * LINEAR_DIM)``
    first-order weights for the models in :data:`FIRST_ORDER_MODELS` (LR's own tables; columns of the main
    tables for FM and DeepFM: the same count). Dense-field vectors and MLPs
    are dense parameters and are not counted.
    """
    if layout is not None:
        main = layout.params if config.name not in LINEAR_ONLY_MODELS else 0
        first = LINEAR_DIM * sum(t.rows for t in layout.tables) if config.name in FIRST_ORDER_MODELS else 0
        return main + first
    dims = field_dims(fm, config)
    total = 0
    if config.name not in LINEAR_ONLY_MODELS:
        total += sum(f.cardinality * d for f, d in zip(fm.categorical, dims, strict=True))
    if config.name in FIRST_ORDER_MODELS:
        total += LINEAR_DIM * sum(f.cardinality for f in fm.categorical)
    return total


def _id_weights(columns: torch.Tensor) -> torch.Tensor:
    """``sum_f w_f(ids_f)`` from pooled first-order columns ``[B, ...]``: an id's weight is the mean of its columns."""
    return columns.sum(dim=tuple(range(1, columns.dim()))) / LINEAR_DIM


def _tables(
    fm: FeatureMap, name: Callable[[str], str], dims: Sequence[int], config: ModelConfig, extra: int = 0
) -> list[EmbeddingBagConfig]:
    """One table per categorical field, named ``name(field)``, of the given dims plus ``extra`` columns."""
    return [
        _bag(name(f.name), d + extra, f.cardinality, [f.name], config)
        for f, d in zip(fm.categorical, dims, strict=True)
    ]


def _bag(name: str, dim: int, rows: int, features: list[str], config: ModelConfig) -> EmbeddingBagConfig:
    """One table, pooled and stored as ``config`` says (``pooling``, ``table_dtype``)."""
    return EmbeddingBagConfig(
        name=name,
        embedding_dim=dim,
        num_embeddings=rows,
        feature_names=features,
        pooling=_POOLING[config.pooling],
        data_type=_DATA_TYPE[config.table_dtype],
    )


class SparseArch(nn.Module):
    """Pooled embeddings of every categorical field: ``KeyedJaggedTensor -> ([B, F, D_max], first-order [B] or None)``.

    One ``EmbeddingBagConfig`` per categorical field (table ``t_<field>``, ``cardinality`` rows, the field's
    dim from ``config``), all in the single EBC ``self.ebc``. Fields come out in feature-map order; a field
    of dim ``d < D_max`` has zeros in columns ``d:``. An empty multi-valued list pools to zeros. A dim that is no
    multiple of 4 is stored :func:`stored_dim` wide: the extra columns start at zero (:meth:`pad_columns`), are
    sliced off after the lookup, so they never reach an output and get no gradient, and stay zero.

    With ``first_order`` (FM, DeepFM: :data:`FOLDED_MODELS`), every table has :data:`LINEAR_DIM` more columns,
    the ids' first-order weights, and the second output is ``sum_f w_f(ids_f)`` (an id's weight is the mean
    of its first-order columns, as in :class:`LinearArch`). Without it, the second output is ``None``.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> from config.model import ModelConfig
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5, True)),
        ... )
        >>> arch = SparseArch(fm, ModelConfig(name="fnn", embedding_dim=8, field_dims={"a": 4}))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(
        ...     keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 0]), lengths=torch.tensor([1, 1, 2, 1]),
        ... )
        >>> out, first = arch(kjt)
        >>> out.shape, bool((out[:, 0, 4:] == 0).all()), first
        (torch.Size([2, 2, 8]), True, None)
    """

    def __init__(
        self,
        fm: FeatureMap,
        config: ModelConfig,
        device: torch.device | None = None,
        layout: TableLayout | None = None,
        first_order: bool = False,
    ) -> None:
        super().__init__()
        self.layout = layout
        self.first_order = first_order
        extra = LINEAR_DIM if first_order else 0
        if layout is not None:
            if config.field_dims:
                raise ValueError("model.field_dims does not combine with a table method (the layout sets widths)")
            self.dims = tuple(s.width for s in layout.fields)
            tables = [_bag(t.name, t.dim + extra, t.rows, list(t.features), config) for t in layout.tables]
            self.stored = self.dims
        else:
            self.dims = field_dims(fm, config)
            self.stored = tuple(stored_dim(d) for d in self.dims)
            tables = _tables(fm, table_name, self.stored, config, extra)
        self.num_fields = len(self.dims)
        self.embedding_dim = max(*self.dims, config.pad_to or 0)
        # The EBC's output columns are its features' vectors in table order. When each field's slots are
        # concatenated and come in field order (per-field tables, shared tables, Unified Embedding), the output
        # already holds the fields side by side, and no per-feature split is needed (unless first-order columns
        # follow every slot of a layout's field).
        self._side_by_side = layout is None or (
            not first_order
            and all(s.combine == "concat" for s in layout.fields)
            and tuple(f for s in layout.fields for f in s.features) == layout.features
        )
        self._uniform = self._side_by_side and set(self.dims) == {self.embedding_dim} and self.stored == self.dims
        self._split_sizes = [s + extra for s in self.stored]
        self.ebc = EmbeddingBagCollection(tables=tables, device=device)
        self._features = [f for t in tables for f in t.feature_names]  # table order, fixed before any sharding
        self._tables = tables

    def pad_columns(self) -> dict[str, tuple[int, int]]:
        """Per table stored wider than its dim, the columns ``[start, stop)`` that must stay zero."""
        return (
            {t.name: (d, s) for t, d, s in zip(self._tables, self.dims, self.stored, strict=True) if d != s}
            if self.layout is None
            else {}
        )

    def _assemble(self, pooled: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Each field from its slots (probes concatenated, or QR parts multiplied), padded to ``embedding_dim``."""
        assert self.layout is not None
        out, weights = [], []
        some = next(iter(pooled.values()))
        for slots in self.layout.fields:
            parts = [pooled[f] for f in slots.features]
            if not parts:  # a field with no probes (Unified Embedding): a zero vector, no first-order weight
                out.append(some.new_zeros(some.shape[0], self.embedding_dim))
                continue
            if self.first_order:
                weights += [p[:, -LINEAR_DIM:] for p in parts]
                parts = [p[:, :-LINEAR_DIM] for p in parts]
            if slots.combine == "product":
                vec = parts[0]
                for p in parts[1:]:
                    vec = vec * p
            else:
                vec = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
            out.append(F.pad(vec, (0, self.embedding_dim - vec.shape[1])))
        return torch.stack(out, dim=1), _id_weights(torch.cat(weights, dim=1)) if self.first_order else None

    def forward(
        self, features: KeyedJaggedTensor, append: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``append``: ``[B, k, D_max]`` more fields (the dense ones) placed after the categorical fields."""
        # Float16 tables (model.table_dtype) pool to float32 under FBGEMM's TBE, to float16 in an unsharded EBC.
        if not self._side_by_side:
            pooled_by_key = {k: v.float() for k, v in self.ebc(features).to_dict().items()}
            return _appended(*self._assemble(pooled_by_key), append)
        # The unsharded EBC's KeyedTensor holds the fields side by side in table (= feature-map) order:
        # [B, sum(widths)]. A sharded one orders its keys by the plan (table-wise over 2 ranks: each rank's tables
        # in turn), so its columns are put back in table order.
        pooled = self.ebc(features)
        values: torch.Tensor = pooled.values()
        if pooled.keys() != self._features:
            by_key = pooled.to_dict()
            values = torch.cat([by_key[f] for f in self._features], dim=1)
        values = values.float()  # a no-op for float32
        if self._uniform:
            if not self.first_order and append is None:
                return values.view(values.shape[0], self.num_fields, -1), None
            if torch.is_grad_enabled():
                fields, id_weights = _FieldRows.apply(values, append, self.num_fields, self.embedding_dim)  # type: ignore[no-untyped-call]
            else:  # inference: the same computation without the autograd Function's bookkeeping
                fields, id_weights = _field_rows(values, append, self.num_fields, self.embedding_dim)
            return fields, id_weights if self.first_order else None
        pieces = torch.split(values, self._split_sizes, dim=1)
        fields = [p[:, :d] for p, d in zip(pieces, self.dims, strict=True)]
        out = torch.stack([F.pad(p, (0, self.embedding_dim - p.shape[1])) for p in fields], dim=1)
        weights = (
            _id_weights(torch.cat([p[:, s:] for p, s in zip(pieces, self.stored, strict=True)], dim=1))
            if self.first_order
            else None
        )
        return _appended(out, weights, append)


def _appended(
    fields: torch.Tensor, id_weights: torch.Tensor | None, append: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    return (fields if append is None else torch.cat([fields, append], dim=1)), id_weights


def _field_rows(
    values: torch.Tensor, append: torch.Tensor | None, num_fields: int, dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The forward of :class:`_FieldRows`: one copy of the rows' first ``dim`` columns (and ``append``) into the
    fields, and ``sum_f w_f`` from the rest."""
    rows = values.view(values.shape[0], num_fields, -1)
    extra = 0 if append is None else append.shape[1]
    fields = values.new_empty(values.shape[0], num_fields + extra, dim)
    fields[:, :num_fields] = rows[:, :, :dim]
    if append is not None:
        fields[:, num_fields:] = append
    return fields, _id_weights(rows[:, :, dim:])


class _FieldRows(torch.autograd.Function):
    """Uniform pooled rows ``[B, F * W]`` -> contiguous fields ``[B, F + k, D]`` (+ ``append`` ``[B, k, D]``) and
    ``sum_f w_f`` over the ``W - D`` first-order columns of each row (zeros when ``W == D``).

    Autograd of the same slices and ``cat`` keeps a zero-filled ``[B, F * W]`` gradient per slice and adds them;
    here the backward writes the rows' gradient once: the fields' gradient in columns ``:D``, ``g / LINEAR_DIM``
    in the first-order columns. Checked against the autograd of the slices by ``torch.autograd.gradcheck``.
    """

    @staticmethod
    def forward(
        ctx: Any, values: torch.Tensor, append: torch.Tensor | None, num_fields: int, dim: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        ctx.num_fields, ctx.width, ctx.has_append = num_fields, values.shape[1] // num_fields, append is not None
        return _field_rows(values, append, num_fields, dim)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor, grad_weights: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        n, dim = ctx.num_fields, grad.shape[2]
        rows = grad.new_empty(grad.shape[0], n, ctx.width)
        rows[:, :, :dim] = grad[:, :n]
        rows[:, :, dim:] = (grad_weights / LINEAR_DIM).view(-1, 1, 1)
        return rows.view(grad.shape[0], -1), grad[:, n:] if ctx.has_append else None, None, None


class DenseEmbedding(nn.Module):
    """Dense fields as embedding fields: ``[B, n_dense] -> [B, n_dense, dim]`` with ``e_j = x_j * v_j``.

    Example:
        >>> emb = DenseEmbedding(2, 4)
        >>> with torch.no_grad():
        ...     _ = emb.weight.copy_(torch.ones(2, 4))
        >>> emb(torch.tensor([[1.0, 2.0]]))[0, 1].tolist()
        [2.0, 2.0, 2.0, 2.0]
    """

    def __init__(self, num_dense: int, dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        if num_dense < 1 or dim < 1:
            raise ValueError(f"DenseEmbedding needs num_dense >= 1 and dim >= 1, got {num_dense} and {dim}")
        self.weight = nn.Parameter(torch.empty(num_dense, dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.weight.shape[1] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return dense.unsqueeze(-1) * self.weight


class LinearArch(nn.Module):
    """First-order term ``bias + sum_f w_f(ids_f) + dense @ w_dense -> [B]`` (LR, FM, DeepFM).

    With ``own_tables`` (LR), the per-id weights live in the EBC ``self.ebc_linear`` (tables ``lin_<field>``,
    pooled like the main tables). FBGEMM tables need a dim that is a multiple of 4, so each table has
    :data:`LINEAR_DIM` = 4 columns and **the first-order weight of an id is the mean of its 4 columns** (a mean,
    not a sum, so a step of the fused optimiser moves the logit as much as it would move a 1-column weight).
    Without (FM, DeepFM), ``ebc_linear`` is ``None`` and :meth:`forward` takes ``sum_f w_f(ids_f)`` from the
    main tables' first-order columns (:class:`SparseArch` with ``first_order``).
    ``self.dense`` (no bias) and ``self.bias`` are dense parameters: a fused embedding optimiser belongs on
    ``ebc_linear`` only.

    Example:
        >>> from features.schema import CategoricalField, DenseField, FeatureMap
        >>> from config.model import ModelConfig
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", splits={}, source_spec={}, seed=0, split_method="random",
        ...     dense=(DenseField("x", "none", 0.0, 0.0, 1.0),), categorical=(CategoricalField("a", "vocab", 3),),
        ... )
        >>> arch = LinearArch(fm, ModelConfig(name="lr"))
        >>> kjt = KeyedJaggedTensor.from_lengths_sync(["a"], torch.tensor([2, 0]), torch.tensor([1, 1]))
        >>> arch(kjt, torch.tensor([[0.5], [1.0]])).shape
        torch.Size([2])
    """

    def __init__(
        self,
        fm: FeatureMap,
        config: ModelConfig,
        device: torch.device | None = None,
        layout: TableLayout | None = None,
        own_tables: bool = True,
    ) -> None:
        super().__init__()
        if not fm.categorical:
            raise ValueError(f"feature map {fm.dataset!r} has no categorical fields for the first-order term")
        self.ebc_linear: EmbeddingBagCollection | None = None
        if own_tables:
            self.ebc_linear = EmbeddingBagCollection(tables=self._tables(fm, config, layout), device=device)
        self.dense = nn.Linear(len(fm.dense), 1, bias=False, device=device) if fm.dense else None
        self.bias = nn.Parameter(torch.empty(1, device=device))
        self.reset_parameters()

    @staticmethod
    def _tables(fm: FeatureMap, config: ModelConfig, layout: TableLayout | None) -> list[EmbeddingBagConfig]:
        if layout is None:
            return _tables(fm, linear_table_name, [LINEAR_DIM] * len(fm.categorical), config)
        return [  # the layout's tables at LINEAR_DIM: every virtual feature adds its weight
            _bag(linear_table_name(field_of(t.name)), LINEAR_DIM, t.rows, list(t.features), config)
            for t in layout.tables
        ]

    def reset_parameters(self) -> None:
        """Zero the bias (the only parameter held directly; the EBC and ``dense`` initialise themselves)."""
        nn.init.zeros_(self.bias)

    def forward(
        self, features: KeyedJaggedTensor, dense: torch.Tensor, id_weights: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``id_weights``: ``sum_f w_f(ids_f)`` from the main tables, exactly when there is no ``ebc_linear``."""
        if (self.ebc_linear is None) != (id_weights is not None):
            raise ValueError("LinearArch: pass id_weights exactly when the first-order weights are in the main tables")
        if self.ebc_linear is not None:
            id_weights = _id_weights(self.ebc_linear(features).values().float())
        assert id_weights is not None
        logit = id_weights + self.bias
        if self.dense is not None:
            logit = logit + self.dense(dense).squeeze(-1)
        return logit
