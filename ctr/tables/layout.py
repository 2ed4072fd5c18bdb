"""Embedding-table strategies under one interface: which tables exist, which ids they read, what it costs.

A strategy turns a feature map into a :class:`TableLayout`, the boundary type between the data path and
the model: TorchRec tables (:class:`TableSpec`), each fed by one or more *virtual features*, and for every
categorical field the virtual features its vector is made of (:class:`FieldSlots`). The data path rewrites
each field's ids into its virtual features' ids once, vectorised (:meth:`TableLayout.transform`); the model
looks every virtual feature up in one ``EmbeddingBagCollection`` (one FBGEMM kernel per table group) and
assembles each field from its slots (:class:`~ctr.tables.embedding.SparseArch`).

==================  =============================================================================
``full``            one table per field, ``V_f`` rows (collisionless; the reference)
``hash``            one table per field of ``ceil(r V_f)`` rows; ids hashed into it, salted per field
``shared_hash``     one table of ``ceil(r N)`` rows for all fields; ``(offset_f + id) mod M`` (the
                    VLDB'24 benchmark's default Hash baseline, with its wrap-around collisions)
``qr``              quotient-remainder compositional embeddings: per field a quotient table of
                    ``ceil(V_f / m)`` rows and a remainder table of ``m = ceil(1/r)`` rows, multiplied;
                    below QR's reach (``2 sqrt(V_f)`` rows) ``m = ceil(sqrt(V_f))``, and a field whose full
                    table is no larger keeps it, so small budgets are not always met
``mde``             mixed dimensions by frequency: full rows, ``d_f`` proportional to ``V_f^-alpha``,
                    scaled to the budget (multiples of 4, at least 4: small budgets cannot be met)
``unified``         Unified Embedding (feature multiplexing): ONE table of ``M = r N D / c`` rows of width
                    ``c``; field ``f`` takes ``k_f`` probes, probe ``j`` hashed with salt ``(f, j)``; the
                    field's vector is its probes concatenated (``k_f c`` dims)
==================  =============================================================================

``r`` is the budget: the fraction of the full table's parameters ``N D`` (``N = sum V_f``). Ids are the feature
map's encoded ids (a bijection of the raw values above min-count), hashed with :func:`salted_bucket`:
SplitMix64 over ``id XOR mix64(salt)``, pure uint64 numpy arithmetic, so identical across runs, processes
and library versions.

Example:
    >>> salted_bucket(np.array([0, 1, 2, 3]), salt=7, buckets=10).tolist()
    [1, 5, 1, 3]
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from config.strict import ConfigError
from config.tables import TablesConfig
from ctr.data.columnar import ColumnarSplit, CSRColumn
from features.hashing import mix64
from features.schema import CategoricalField, FeatureMap

__all__ = [
    "FieldSlots",
    "TableLayout",
    "TableSpec",
    "build_layout",
    "salted_bucket",
]


IntArray = npt.NDArray[np.int64]


def salted_bucket(ids: npt.NDArray[np.integer], salt: int, buckets: int) -> IntArray:
    """``mix64(id XOR mix64(salt)) mod buckets``, elementwise (ids must be >= 0)."""
    key = mix64(np.array([salt], dtype=np.uint64))[0]
    out: IntArray = (mix64(ids.astype(np.uint64) ^ key) % np.uint64(buckets)).astype(np.int64)
    return out


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
    # how each virtual feature's ids are made from its field's ids: (field, kind, salt, buckets, offset)
    rules: Mapping[str, tuple[str, str, int, int, int]]

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
        _, kind, salt, buckets, offset = self.rules[feature]
        x = ids.astype(np.int64)
        if kind == "id":
            out = x
        elif kind == "hash":
            out = salted_bucket(x, salt, buckets)
        elif kind == "modulo":
            out = (x + offset) % buckets
        elif kind == "quotient":
            out = x // buckets
        elif kind == "remainder":
            out = x % buckets
        else:
            raise ValueError(f"unknown id rule {kind!r} for virtual feature {feature!r}")
        return out.astype(np.int32)

    def feature_map(self, fm: FeatureMap) -> FeatureMap:
        """The virtual features as a feature map: one categorical field per virtual feature, in table order."""
        rows = {f: t.rows for t in self.tables for f in t.features}
        source = {f: fm.field(self.rules[f][0]) for f in self.features}
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
            source = self.rules[f.name][0]
            if f.multi_valued:
                col = split.multi[source]
                multi[f.name] = CSRColumn(col.offsets, self.virtual_ids(f.name, col.values))
            else:
                sparse[:, out_single.index(f.name)] = self.virtual_ids(f.name, split.sparse[:, column[source]])
        return ColumnarSplit(virtual, split.dense, split.labels, sparse, multi)


def _field_probes(config: TablesConfig, fm: FeatureMap, dim: int) -> dict[str, int]:
    unknown = sorted(set(config.probes) - set(fm.sparse_names))
    if unknown:
        raise ConfigError(f"TablesConfig.probes: unknown field(s) {unknown}")
    if dim % config.chunk:
        raise ConfigError(f"embedding_dim {dim} is not a multiple of the Unified Embedding chunk {config.chunk}")
    return {name: config.probes.get(name, dim // config.chunk) for name in fm.sparse_names}


def build_layout(config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
    """The layout of ``config.method`` at ``config.budget`` for ``fm`` with full embedding dim ``dim``."""
    if dim % 4:
        raise ConfigError(f"model.embedding_dim: {dim} is not a multiple of 4, which table strategies need")
    r = config.budget
    cards = {f.name: f.cardinality for f in fm.categorical}
    total = sum(cards.values())
    tables: list[TableSpec] = []
    slots: list[FieldSlots] = []
    rules: dict[str, tuple[str, str, int, int, int]] = {}
    method = config.method
    if method in ("full", "hash", "mde"):
        dims = _mde_dims(cards, dim, r, config.mde_alpha) if method == "mde" else dict.fromkeys(cards, dim)
        for i, (name, v) in enumerate(cards.items()):
            rows = max(1, math.ceil(r * v)) if method == "hash" else v
            tables.append(TableSpec(f"t_{name}", rows, dims[name], (name,)))
            slots.append(FieldSlots(name, (name,), "concat", dims[name]))
            rules[name] = (name, "hash", i, rows, 0) if method == "hash" else (name, "id", 0, v, 0)
    elif method == "shared_hash":
        rows = max(1, math.ceil(r * total))
        offset = 0
        for name, v in cards.items():
            rules[name] = (name, "modulo", 0, rows, offset)
            slots.append(FieldSlots(name, (name,), "concat", dim))
            offset += v
        tables.append(TableSpec("t_shared", rows, dim, tuple(cards)))
    elif method == "qr":
        for name, v in cards.items():
            m = max(1, math.ceil(1 / r))
            if math.ceil(v / m) + m > r * v:  # below QR's reach (2 sqrt(V) rows): the fewest rows it can do
                m = min(m, math.ceil(math.sqrt(v)))
            if math.ceil(v / m) + m >= v:  # a small field: its full table is no larger than Q + R
                tables.append(TableSpec(f"t_{name}", v, dim, (name,)))
                rules[name] = (name, "id", 0, v, 0)
                slots.append(FieldSlots(name, (name,), "concat", dim))
                continue
            q, rem = f"{name}@q", f"{name}@r"
            tables += [TableSpec(f"t_{q}", math.ceil(v / m), dim, (q,)), TableSpec(f"t_{rem}", m, dim, (rem,))]
            rules[q], rules[rem] = (name, "quotient", 0, m, 0), (name, "remainder", 0, m, 0)
            slots.append(FieldSlots(name, (q, rem), "product", dim))
    elif method == "unified":
        probes = _field_probes(config, fm, dim)
        rows = max(1, int(r * total * dim) // config.chunk)
        feats: list[str] = []
        for i, name in enumerate(cards):
            mine = tuple(f"{name}@p{j}" for j in range(probes[name]))
            for j, feature in enumerate(mine):
                rules[feature] = (name, "hash", i * 1024 + j, rows, 0)
            feats += mine
            slots.append(FieldSlots(name, mine, "concat", probes[name] * config.chunk))
        tables.append(TableSpec("t_unified", rows, config.chunk, tuple(feats)))
    else:  # pragma: no cover - TablesConfig validates the method
        raise ConfigError(f"unknown table method {method!r}")
    return TableLayout(method, tuple(tables), tuple(slots), rules)


def _mde_dims(cards: Mapping[str, int], dim: int, r: float, alpha: float) -> dict[str, int]:
    """Mixed dims ``d_f = lambda * V_f^-alpha`` (multiples of 4 in [4, dim]), ``lambda`` fitted to ``r N dim``."""
    budget = r * sum(cards.values()) * dim

    def dims(scale: float) -> dict[str, int]:
        return {n: int(min(dim, max(4, 4 * round(scale * v**-alpha / 4)))) for n, v in cards.items()}

    lo, hi = 0.0, float(dim) * max(cards.values()) ** alpha
    for _ in range(60):  # the largest scale whose dims fit the budget
        mid = (lo + hi) / 2
        if sum(cards[n] * d for n, d in dims(mid).items()) <= budget:
            lo = mid
        else:
            hi = mid
    return dims(lo)
