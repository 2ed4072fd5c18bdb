"""Embedding-table layouts, one interface over the table methods: which tables exist, which ids they read, cost.

A table method turns a feature map into a :class:`TableLayout`, the boundary type between the data path and
the model: TorchRec tables (:class:`TableSpec`), each fed by one or more *virtual features*, and for every
categorical field the virtual features its vector is made of (:class:`FieldSlots`). The data path rewrites
each field's ids into its virtual features' ids once, vectorised (:meth:`TableLayout.transform`); the model
looks every virtual feature up in one ``EmbeddingBagCollection`` (one FBGEMM kernel per table group) and
assembles each field from its slots (:class:`~ctr.tables.embedding.SparseArch`).

The methods (``full``, ``hash``, ``shared_hash``, ``qr``, ``mde``, ``unified``) are classes of their own in
:mod:`ctr.tables.methods`, each making a layout; :func:`ctr.tables.methods.build_layout` picks one by name. How a
virtual feature's ids are made from its field's ids is a rule object (:mod:`ctr.tables.rules`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from config.strict import ConfigError
from ctr.data.columnar import ColumnarSplit, CSRColumn
from ctr.tables.rules import IdRule
from features.schema import CategoricalField, FeatureMap

__all__ = ["FieldSlots", "TableLayout", "TableSpec"]


IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class TableSpec:
    name: str
    rows: int
    dim: int
    features: tuple[str, ...]


@dataclass(frozen=True)
class FieldSlots:
    """Field ``field``'s vector: its virtual features' pooled vectors, concatenated or multiplied."""

    field: str
    features: tuple[str, ...]
    combine: Literal["concat", "product"]
    width: int


@dataclass(frozen=True)
class TableLayout:
    method: str
    tables: tuple[TableSpec, ...]
    fields: tuple[FieldSlots, ...]
    rules: Mapping[str, IdRule]  # how each virtual feature's ids are made from its field's ids

    @property
    def params(self) -> int:
        """Exact number of embedding parameters of the main tables."""
        return sum(t.rows * t.dim for t in self.tables)

    @property
    def features(self) -> tuple[str, ...]:
        return tuple(f for t in self.tables for f in t.features)

    @property
    def width(self) -> int:
        return max(s.width for s in self.fields)

    def __post_init__(self) -> None:
        if not any(s.features for s in self.fields):
            raise ConfigError(f"{self.method} layout: every field has 0 probes (nothing to embed)")

    def virtual_ids(self, feature: str, ids: npt.NDArray[np.integer]) -> npt.NDArray[np.int32]:
        return self.rules[feature].apply(ids.astype(np.int64)).astype(np.int32)

    def feature_map(self, fm: FeatureMap) -> FeatureMap:
        """The virtual features as a feature map: one categorical field per virtual feature, in table order."""
        rows = {f: t.rows for t in self.tables for f in t.features}
        source = {f: fm.field(self.rules[f].field) for f in self.features}
        fields = tuple(
            CategoricalField(name=f, kind="virtual", cardinality=rows[f], multi_valued=source[f].multi_valued)
            for f in self.features
        )
        return dataclasses.replace(fm, categorical=fields).with_hash()

    def transform(self, split: ColumnarSplit) -> ColumnarSplit:
        """``split`` with its ids rewritten into the virtual features' ids (vectorised, one pass per feature)."""
        fm = split.feature_map
        virtual = self.feature_map(fm)
        single = [f.name for f in fm.categorical if not f.multi_valued]
        column = {name: j for j, name in enumerate(single)}
        out_single = [f.name for f in virtual.categorical if not f.multi_valued]
        sparse = np.empty((len(split), len(out_single)), dtype=np.int32)
        multi: dict[str, CSRColumn] = {}
        for f in virtual.categorical:
            source = self.rules[f.name].field
            if f.multi_valued:
                col = split.multi[source]
                multi[f.name] = CSRColumn(col.offsets, self.virtual_ids(f.name, col.values))
            else:
                sparse[:, out_single.index(f.name)] = self.virtual_ids(f.name, split.sparse[:, column[source]])
        return ColumnarSplit(virtual, split.dense, split.labels, sparse, multi)
