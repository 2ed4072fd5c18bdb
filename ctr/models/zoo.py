"""The model zoo: LR, FM, DeepFM, FNN, IPNN, DCN, DCNv2 and DLRM on one :class:`CTRModel` base.

Every model maps a ``torchrec.datasets.utils.Batch`` to LOGITS ``[B]`` (no sigmoid; the training module
owns the loss). The base holds the embedding arches; a subclass only adds its interaction/head:

==========  =====================================================================================
``lr``      first-order term (:class:`~ctr.tables.embedding.LinearArch`) only
``fm``      first-order + :class:`~ctr.models.layers.FMInteraction`
``deepfm``  first-order + FM + MLP(flatten) -> 1
``fnn``     MLP(flatten) -> 1
``ipnn``    MLP([flatten, :class:`~ctr.models.layers.InnerProduct`]) -> 1
``dcn``     Linear([:class:`~ctr.models.layers.CrossNet` (flatten), MLP(flatten)]) -> 1
``dcnv2``   the same with :class:`~ctr.models.layers.CrossNetV2`
``dlrm``    top MLP(:class:`~ctr.models.layers.DotInteraction` (bottom MLP(dense), sparse embeddings)) -> 1
==========  =====================================================================================

"Fields" are the categorical fields (``model.sparse_arch``, zero-padded to the largest dim ``D``) followed by
one field per dense feature (``model.dense_arch``, a :class:`~ctr.tables.embedding.DenseEmbedding`); DLRM replaces
the dense fields by one bottom-MLP vector, and needs every categorical dim equal to ``embedding_dim``.

The EBCs are direct submodules: ``model.sparse_arch.ebc`` and, for LR, ``model.linear_arch.ebc_linear``
(:meth:`CTRModel.embedding_modules`; FM and DeepFM keep their first-order weights in the main tables, see
:mod:`ctr.tables.embedding`). Built with ``device=torch.device("meta")``, the whole model is on meta;
``DistributedModelParallel`` shards the EBCs and materialises the dense modules on its device (each dense
module owning parameters has a ``reset_parameters``). The fused optimiser belongs on
``[p for m in model.embedding_modules() for p in m.parameters()]``; the rest is
:meth:`CTRModel.dense_parameters`.

Example:
    >>> from features.schema import CategoricalField, DenseField, FeatureMap
    >>> from torchrec import KeyedJaggedTensor
    >>> from torchrec.datasets.utils import Batch
    >>> fm = FeatureMap(
    ...     dataset="toy", label="y", splits={}, source_spec={}, seed=0, split_method="random",
    ...     dense=(DenseField("x", "none", 0.0, 0.0, 1.0),),
    ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5, True)),
    ... )
    >>> model = build_model(fm, ModelConfig(name="deepfm", embedding_dim=8, mlp=(16,)))
    >>> kjt = KeyedJaggedTensor.from_lengths_sync(
    ...     keys=["a", "b"], values=torch.tensor([1, 2, 3, 4, 0]), lengths=torch.tensor([1, 1, 2, 1]),
    ... )
    >>> batch = Batch(dense_features=torch.randn(2, 1), sparse_features=kjt, labels=torch.zeros(2))
    >>> model(batch).shape, [type(m).__name__ for m in model.embedding_modules()]
    (torch.Size([2]), ['EmbeddingBagCollection'])
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from torchrec import EmbeddingBagCollection
from torchrec.datasets.utils import Batch

from config.model import MODEL_NAMES, ModelConfig
from config.strict import ConfigError
from ctr.models.layers import MLP, CrossNet, CrossNetV2, DotInteraction, FMInteraction, InnerProduct, LearnedVector
from ctr.tables.embedding import (
    FIRST_ORDER_MODELS,
    FOLDED_MODELS,
    LINEAR_ONLY_MODELS,
    DenseEmbedding,
    LinearArch,
    SparseArch,
    field_dims,
)
from ctr.tables.layout import TableLayout
from features.schema import FeatureMap

__all__ = [
    "DCN",
    "DLRM",
    "FM",
    "FNN",
    "IPNN",
    "LR",
    "MODELS",
    "CTRModel",
    "DCNv2",
    "DeepFM",
    "build_model",
]


class CTRModel(nn.Module):
    """Base of the zoo: embedding arches, the first-order term and the forward skeleton.

    ``forward(batch) = first_order(batch) (if any) + head(fields(batch))`` with ``fields -> [B, F, D]``
    (``F = self.num_fields``, ``D = self.embedding_dim``). Subclasses set ``name``, build their head in
    ``__init__`` after ``super().__init__`` and implement :meth:`head`.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> model = FNN(fm, ModelConfig(name="fnn", embedding_dim=8, mlp=(16,)))
        >>> model.num_fields, model.embedding_dim, model.linear_arch is None
        (2, 8, True)
    """

    name: ClassVar[str]
    equal_dims: ClassVar[bool] = False  # True where every categorical field must have the one embedding_dim

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__()
        if config.name != self.name:
            raise ValueError(f"{type(self).__name__} is model {self.name!r}, but config.name is {config.name!r}")
        self.config = config
        self.layout = layout  # the tables' strategy (ctr.tables.layout); None: one full table per field
        folded = config.name in FOLDED_MODELS  # first-order weights in the main tables
        self.sparse_arch = (
            None if config.name in LINEAR_ONLY_MODELS else SparseArch(fm, config, device, layout, first_order=folded)
        )
        self.linear_arch = (
            LinearArch(fm, config, device, layout, own_tables=not folded) if config.name in FIRST_ORDER_MODELS else None
        )
        self.dense_arch: nn.Module | None = None
        self.num_fields = 0
        self.embedding_dim = 0
        self.field_transform: nn.Module | None = None  # e.g. OptEmbed's row pruning + dimension sampling
        if self.sparse_arch is not None:
            self.embedding_dim = self.sparse_arch.embedding_dim
            self.dense_arch, num_dense_fields = self._build_dense_arch(fm, config, device)
            self.num_fields = self.sparse_arch.num_fields + num_dense_fields

    @property
    def flat_dim(self) -> int:
        """Width of the flattened fields, ``num_fields * embedding_dim``."""
        return self.num_fields * self.embedding_dim

    def _build_dense_arch(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None
    ) -> tuple[nn.Module | None, int]:
        """The module turning ``[B, n_dense]`` into ``[B, k, D]`` extra fields, and ``k``. Default: one per field."""
        if not fm.dense:
            return None, 0
        return DenseEmbedding(len(fm.dense), self.embedding_dim, device), len(fm.dense)

    def embed(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fields (see :meth:`fields`) and, for :data:`FOLDED_MODELS`, ``sum_f w_f(ids_f)`` (else ``None``)."""
        if self.sparse_arch is None:
            raise RuntimeError(f"{type(self).__name__} has no field embeddings")
        dense = None if self.dense_arch is None else self.dense_arch(batch.dense_features)
        if self.field_transform is None:  # the dense fields are placed while the fields are assembled
            out: tuple[torch.Tensor, torch.Tensor | None] = self.sparse_arch(batch.sparse_features, dense)
            return out
        sparse, id_weights = self.sparse_arch(batch.sparse_features)
        sparse = self.field_transform(sparse)
        return (sparse if dense is None else torch.cat([sparse, dense], dim=1)), id_weights

    def fields(self, batch: Batch) -> torch.Tensor:
        """``[B, num_fields, embedding_dim]``: categorical fields in feature-map order, then the dense fields."""
        return self.embed(batch)[0]

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        """The model-specific part: ``[B, num_fields, embedding_dim] -> [B]`` logits."""
        raise NotImplementedError(f"{type(self).__name__} does not define head()")

    def forward(self, batch: Batch) -> torch.Tensor:
        fields, id_weights = self.embed(batch)
        logits = self.head(fields)
        if self.linear_arch is not None:
            logits = logits + self.linear_arch(batch.sparse_features, batch.dense_features, id_weights)
        return logits

    def score(self, batch: Batch) -> torch.Tensor:
        """Inference only (no gradient): :meth:`forward`'s logits, computed with fewer operations where the model can
        (:meth:`score_head`). The same function; the float32 rounding may differ from :meth:`forward`'s (about 1e-7).
        Training and validation call :meth:`forward`."""
        fields, id_weights = self.embed(batch)
        logits = self.score_head(fields, batch.dense_features)
        if self.linear_arch is not None:
            logits = logits + self.linear_arch(batch.sparse_features, batch.dense_features, id_weights)
        return logits

    def score_head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """:meth:`head` for :meth:`score`, given the dense values ``[B, n_dense]`` the batch's fields came from."""
        return self.head(fields)

    def _dense_weight(self) -> torch.Tensor | None:
        """``v`` ``[n_dense, D]`` when the last fields are the dense values' ``x_j * v_j`` (:class:`DenseEmbedding`)."""
        return self.dense_arch.weight if isinstance(self.dense_arch, DenseEmbedding) else None

    def embedding_modules(self) -> list[EmbeddingBagCollection]:
        """The EBCs (main, then first-order), i.e. what DMP shards and the fused optimiser updates."""
        modules: list[EmbeddingBagCollection] = []
        if self.sparse_arch is not None:
            modules.append(self.sparse_arch.ebc)
        if self.linear_arch is not None and self.linear_arch.ebc_linear is not None:
            modules.append(self.linear_arch.ebc_linear)
        return modules

    def dense_parameters(self) -> list[nn.Parameter]:
        """Every parameter outside :meth:`embedding_modules` (MLPs, cross nets, dense embeddings, biases)."""
        sparse = {id(p) for m in self.embedding_modules() for p in m.parameters()}
        return [p for p in self.parameters() if id(p) not in sparse]


class _Tower(nn.Module):
    """``MLP(config.mlp) -> Linear(., 1)``: ``[B, in_dim] -> [B]`` logits.

    Example:
        >>> tower = _Tower(8, ModelConfig(name="fnn", mlp=(4,)))
        >>> tower(torch.randn(3, 8)).shape
        torch.Size([3])
    """

    def __init__(self, in_dim: int, config: ModelConfig, device: torch.device | None = None) -> None:
        super().__init__()
        self.mlp = MLP(in_dim, config.mlp, config.dropout, config.batch_norm, device)
        self.out = nn.Linear(self.mlp.out_dim, 1, device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.mlp(x)).squeeze(-1)
        return out

    def folded(self, fields: torch.Tensor, dense: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """``forward(fields.flatten(1))`` when the last ``n`` fields are ``dense[:, j] * weight[j]`` (``weight``
        ``[n, D]``), with those fields' first-layer weights folded: ``W_j x_j v_j = x_j (W_j v_j)``, so the first
        layer reads ``n`` numbers instead of ``n * D`` (DeepFM on Criteo: 13 instead of 208 of its 624 inputs, 14 %
        of the tower's multiply-adds). The same function; float32 rounding differs (about 1e-7).

        Example:
            >>> tower = _Tower(3 * 2, ModelConfig(name="fnn", mlp=(4,)))
            >>> sparse, x, v = torch.randn(5, 1, 2), torch.randn(5, 2), torch.randn(2, 2)
            >>> fields = torch.cat([sparse, x.unsqueeze(-1) * v], dim=1)
            >>> torch.allclose(tower.folded(fields, x, v), tower(fields.flatten(1)), atol=1e-6)
            True
        """
        first = self.mlp.layers[0]
        assert isinstance(first, nn.Linear)  # MLP starts with its first Linear (a tower has hidden layers)
        n, dim = weight.shape
        sparse = fields[:, : fields.shape[1] - n].flatten(1)  # a view: the fields are contiguous
        k = sparse.shape[1]
        w = first.weight
        folded = (w[:, k:].reshape(w.shape[0], n, dim) * weight).sum(dim=2)  # [H, n]: W_j v_j
        h = F.linear(sparse, w[:, :k], first.bias)
        # in place unless autocast made h bfloat16 (then addmm casts all three)
        h = h.addmm_(dense, folded.t()) if h.dtype == dense.dtype else torch.addmm(h, dense, folded.t())
        for layer in list(self.mlp.layers)[1:]:
            h = layer(h)
        out: torch.Tensor = self.out(h).squeeze(-1)
        return out


class LR(CTRModel):
    """Logistic regression: the first-order term only (``linear_arch``; no ``sparse_arch``).

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10),),
        ... )
        >>> LR(fm, ModelConfig(name="lr")).sparse_arch is None
        True
    """

    name = "lr"

    def forward(self, batch: Batch) -> torch.Tensor:
        assert self.linear_arch is not None  # LR is in FIRST_ORDER_MODELS
        logits: torch.Tensor = self.linear_arch(batch.sparse_features, batch.dense_features)
        return logits

    def score(self, batch: Batch) -> torch.Tensor:
        return self.forward(batch)


class FM(CTRModel):
    """Factorisation machine: first-order + :class:`~ctr.models.layers.FMInteraction` over all fields.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> type(FM(fm, ModelConfig(name="fm")).interaction).__name__
        'FMInteraction'
    """

    name = "fm"

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__(fm, config, device, layout)
        self.interaction = FMInteraction()

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.interaction(fields)
        return out


class DeepFM(FM):
    """DeepFM: FM plus a deep tower on the flattened fields (shared embeddings).

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> DeepFM(fm, ModelConfig(name="deepfm", embedding_dim=4, mlp=(8,))).deep.mlp.out_dim
        8
    """

    name = "deepfm"

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__(fm, config, device, layout)
        self.deep = _Tower(self.flat_dim, config, device)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        deep: torch.Tensor = self.deep(fields.flatten(1))
        return super().head(fields) + deep

    def score_head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        weight = self._dense_weight()
        if weight is None or not self.config.mlp:
            return self.head(fields)
        return super().head(fields) + self.deep.folded(fields, dense, weight)


class FNN(CTRModel):
    """FNN: a deep tower on the flattened fields.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> FNN(fm, ModelConfig(name="fnn", embedding_dim=4, mlp=(8,))).flat_dim
        8
    """

    name = "fnn"

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__(fm, config, device, layout)
        self.deep = _Tower(self.flat_dim, config, device)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.deep(fields.flatten(1))
        return out

    def score_head(self, fields: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        weight = self._dense_weight()
        return self.head(fields) if weight is None or not self.config.mlp else self.deep.folded(fields, dense, weight)


class IPNN(CTRModel):
    """IPNN: a deep tower on ``[flattened fields, all pairwise field inner products]``.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=tuple(CategoricalField(n, "vocab", 10) for n in "abc"),
        ... )
        >>> IPNN(fm, ModelConfig(name="ipnn", embedding_dim=4, mlp=(8,))).product.out_dim
        3
    """

    name = "ipnn"

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__(fm, config, device, layout)
        self.product = InnerProduct(self.num_fields)
        self.deep = _Tower(self.flat_dim + self.product.out_dim, config, device)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.deep(torch.cat([fields.flatten(1), self.product(fields)], dim=1))
        return out


class DCN(CTRModel):
    """Deep & Cross: ``Linear([cross(x), MLP(x)]) -> 1`` on the flattened fields ``x`` (parallel towers).

    Subclasses swap the cross network by overriding :meth:`_build_cross`.

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> DCN(fm, ModelConfig(name="dcn", embedding_dim=4, mlp=(8,), cross_layers=2)).cross.weight.shape
        torch.Size([2, 8])
    """

    name = "dcn"

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        super().__init__(fm, config, device, layout)
        self.cross = self._build_cross(config, device)
        self.deep = MLP(self.flat_dim, config.mlp, config.dropout, config.batch_norm, device)
        self.out = nn.Linear(self.flat_dim + self.deep.out_dim, 1, device=device)

    def _build_cross(self, config: ModelConfig, device: torch.device | None) -> nn.Module:
        return CrossNet(self.flat_dim, config.cross_layers, device)

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        x = fields.flatten(1)
        out: torch.Tensor = self.out(torch.cat([self.cross(x), self.deep(x)], dim=1)).squeeze(-1)
        return out


class DCNv2(DCN):
    """DCN-V2 (parallel): DCN with :class:`~ctr.models.layers.CrossNetV2` (optionally low-rank, ``config.low_rank``).

    Example:
        >>> from features.schema import CategoricalField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> cfg = ModelConfig(name="dcnv2", embedding_dim=4, mlp=(8,), cross_layers=2, low_rank=3)
        >>> DCNv2(fm, cfg).cross.weight.shape
        torch.Size([2, 3, 8])
    """

    name = "dcnv2"

    def _build_cross(self, config: ModelConfig, device: torch.device | None) -> nn.Module:
        return CrossNetV2(self.flat_dim, config.cross_layers, config.low_rank, device)


class DLRM(CTRModel):
    """DLRM: top MLP over :class:`~ctr.models.layers.DotInteraction` of the bottom-MLP dense vector and the embeddings.

    The bottom MLP (``config.dense_mlp`` then a last layer of ``embedding_dim``, ReLU throughout, no batch
    norm) is ``dense_arch``; its vector is the last field. On data without numeric fields the bottom vector is a
    learned one (:class:`~ctr.models.layers.LearnedVector`, the bottom MLP of a constant input), so the top MLP
    still sees each field's projection on it and every pairwise dot. Needs every categorical dim equal to
    ``embedding_dim``.

    Example:
        >>> from features.schema import CategoricalField, DenseField, FeatureMap
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", splits={}, source_spec={}, seed=0, split_method="random",
        ...     dense=(DenseField("x", "none", 0.0, 0.0, 1.0),),
        ...     categorical=(CategoricalField("a", "vocab", 10), CategoricalField("b", "vocab", 5)),
        ... )
        >>> model = DLRM(fm, ModelConfig(name="dlrm", embedding_dim=4, mlp=(8,), dense_mlp=(8,)))
        >>> model.num_fields, model.interaction.out_dim(4)
        (3, 7)
    """

    name = "dlrm"
    equal_dims = True  # the dot interaction pairs every field with every other

    def __init__(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None = None, layout: TableLayout | None = None
    ) -> None:
        dims = dict(zip(fm.sparse_names, field_dims(fm, config), strict=True))
        if any(d != config.embedding_dim for d in dims.values()):
            raise ConfigError(
                f"--model dlrm: DLRM needs every categorical dim equal to embedding_dim={config.embedding_dim}, "
                f"got {dims}"
            )
        super().__init__(fm, config, device, layout)
        assert self.sparse_arch is not None  # DLRM is not in LINEAR_ONLY_MODELS
        self.interaction = DotInteraction(self.sparse_arch.num_fields)
        self.top = _Tower(self.interaction.out_dim(self.embedding_dim), config, device)

    def _build_dense_arch(
        self, fm: FeatureMap, config: ModelConfig, device: torch.device | None
    ) -> tuple[nn.Module | None, int]:
        if not fm.dense:
            return LearnedVector(self.embedding_dim, device), 1
        bottom = MLP(len(fm.dense), (*config.dense_mlp, self.embedding_dim), batch_norm=False, device=device)
        return nn.Sequential(bottom, nn.Unflatten(1, (1, self.embedding_dim))), 1

    def head(self, fields: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.top(self.interaction(fields[:, -1], fields[:, :-1]))
        return out


MODELS: dict[str, type[CTRModel]] = {cls.name: cls for cls in (LR, FM, DeepFM, FNN, IPNN, DCN, DCNv2, DLRM)}
assert set(MODELS) == set(MODEL_NAMES), f"MODELS {sorted(MODELS)} != ModelConfig names {sorted(MODEL_NAMES)}"


_CPU = torch.device("cpu")


def build_model(
    fm: FeatureMap, config: ModelConfig, device: torch.device = _CPU, layout: TableLayout | None = None
) -> CTRModel:
    """The model named by ``config.name`` on ``fm``; ``device=torch.device("meta")`` for DMP to shard.

    ``layout`` replaces the one-full-table-per-field embeddings by a table method (:mod:`ctr.tables.layout`); the
    model then reads the batch's virtual features (``layout.transform`` of the data).
    """
    return MODELS[config.name](fm, config, device, layout)
