"""Fitting and applying the per-field encoders (vocabulary, stable hash, quantile buckets, dense).

``fit_plan`` counts the values of every vocabulary field and takes the statistics of every dense field, on
the training rows only.
``EncodePlan.encode`` turns the fitted state into the query that writes the shards; the same plan
can be rebuilt from a saved ``FeatureMap`` to encode new data identically.

Example:
    >>> import polars as pl
    >>> from features.spec import CategoricalSpec, DatasetSpec, LabelSpec
    >>> spec = DatasetSpec("toy", LabelSpec("y"), categorical=(CategoricalSpec("c", min_count=2),))
    >>> vocab = _vocab_table(pl.DataFrame({"value": ["b", "a", "z"], "len": [2, 3, 1]}), min_count=2)
    >>> vocab.rows()  # 'z' is below min-count: it will map to the OOV id 1
    [('a', 3, 2), ('b', 2, 3)]
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl

from features.hashing import hash_expr
from features.schema import FIRST_VALUE_ID, MISSING_ID, OOV_ID, CategoricalField, DenseField, FeatureMap
from features.spec import DatasetSpec, DenseSpec
from features.transforms import dense_transform, parsed

__all__ = ["Codes", "EncodePlan", "fit_plan"]


@dataclass(frozen=True)
class _Source:
    """Where a categorical field's values come from, as a String (or List[String]) expression."""

    name: str
    value: pl.Expr
    multi: bool
    dense: DenseSpec | None = None


def _sources(spec: DatasetSpec) -> list[_Source]:
    out: list[_Source] = []
    for d in spec.dense:
        if d.encode == "categorical":
            t = dense_transform(pl.col(parsed(d.name)), d.transform)
            as_str = pl.when(t == t.floor()).then(t.cast(pl.Int64).cast(pl.String)).otherwise(t.cast(pl.String))
            out.append(_Source(d.name, as_str, False, d))
        elif d.encode == "quantile":
            out.append(_Source(d.name, dense_transform(pl.col(parsed(d.name)), d.transform), False, d))
    for c in spec.categorical:
        raw = pl.col(c.name)
        value = pl.when(raw == "").then(pl.lit(None, dtype=pl.String)).otherwise(raw)
        if c.separator is not None:
            value = value.str.split(c.separator).list.eval(pl.element().filter(pl.element() != ""))
        out.append(_Source(c.name, value, c.separator is not None))
    for p in spec.derive:
        out += [_Source(p.prefix + part, pl.col(p.prefix + part), False) for part in p.parts]
    return out


def _coded(spec: DatasetSpec) -> list[str]:
    """The single-valued vocabulary fields: staged as codes (see ``Codes``)."""
    hashed = {c.name for c in spec.categorical if c.hash_buckets is not None}
    quantile = {d.name for d in spec.dense if d.encode == "quantile"}
    return [s.name for s in _sources(spec) if not s.multi and s.name not in hashed | quantile]


def code_column(name: str) -> str:
    return f"__code_{name}"


class Codes:
    """A string dictionary per single-valued vocabulary field, alive for one run.

    Staged rows hold each value's code (``UInt32``, from a ``pl.Categorical`` with its own categories)
    instead of the string, so each string is hashed once, while it is parsed: the vocabulary counts are
    then an ``np.bincount`` of the codes and the ids a gather from a code -> id array. (Strings cost two
    hash lookups per value, a ``group_by`` in the fit and an ``Enum`` cast or join in the encode.) Codes
    come in order of first appearance and mean nothing outside this object; vocabularies stay keyed by
    the strings.
    """

    def __init__(self, spec: DatasetSpec) -> None:
        self.spec = spec
        self.names = _coded(spec)
        self._categories = {name: pl.Categories.random() for name in self.names}
        # Polars frees categories that no data uses; the staged codes are plain integers, so keep them alive.
        self._alive = [pl.Series(dtype=pl.Categorical(c)) for c in self._categories.values()]

    def stage(self) -> list[pl.Expr]:
        """The code columns, from the validated rows."""
        sources = {s.name: s for s in _sources(self.spec)}
        return [
            sources[n].value.cast(pl.Categorical(self._categories[n])).to_physical().alias(code_column(n))
            for n in self.names
        ]

    def strings(self, name: str) -> pl.Series:
        """The value of each code of ``name`` (index = code)."""
        return self._categories[name].to_series().cast(pl.String)


def _lookup(ids: np.ndarray, codes: np.ndarray, size: int) -> np.ndarray:
    """code -> id (Int32): ``ids`` at ``codes``, OOV elsewhere; index ``size`` (a null code) is MISSING."""
    table = np.full(size + 1, OOV_ID, dtype=np.int32)
    table[codes] = ids
    table[size] = MISSING_ID
    return table


def _gather(name: str, table: np.ndarray) -> pl.Expr:
    """The ids of a coded field: a numpy gather per batch (vectorised; null codes -> MISSING)."""
    missing = len(table) - 1

    def ids(codes: pl.Series) -> pl.Series:
        return pl.Series(name, table[codes.fill_null(missing).to_numpy()])

    return pl.col(code_column(name)).map_batches(ids, return_dtype=pl.Int32, is_elementwise=True)


def _count_codes(rows: pl.LazyFrame, strings: dict[str, pl.Series], batch_rows: int = 500_000) -> dict[str, np.ndarray]:
    """Occurrences of every code of each field in ``rows`` (nulls not counted): ``np.bincount`` over
    streamed batches, since the codes are dense integers below ``len(strings[field])``."""
    counts = {name: np.zeros(len(s) + 1, dtype=np.int64) for name, s in strings.items()}
    if not strings:
        return {}
    for batch in rows.select([code_column(n) for n in strings]).collect_batches(chunk_size=batch_rows):
        for name, total in counts.items():
            null = len(total) - 1
            total += np.bincount(batch[code_column(name)].fill_null(null).to_numpy(), minlength=len(total))
    return {name: total[:-1] for name, total in counts.items()}


def _vocab_table(counts: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """value, count, id (and any other column of ``counts``, e.g. ``code``): kept values in descending
    count (ties by value), ids from FIRST_VALUE_ID."""
    kept = counts.filter(pl.col("len") >= min_count).sort(["len", "value"], descending=[True, False])
    return kept.select(
        pl.col("value"),
        pl.col("len").cast(pl.Int64).alias("count"),
        (pl.int_range(pl.len(), dtype=pl.Int32) + FIRST_VALUE_ID).alias("id"),
        pl.exclude("value", "len"),
    )


@dataclass(frozen=True)
class EncodePlan:
    """Fitted encoders for every field, in feature-map order.

    ``lookups`` (code -> id per coded field) tie the plan to one ``Codes``: ``fit_plan`` fills them, and
    ``bind`` makes them for a plan loaded from a feature map.
    """

    spec: DatasetSpec
    dense_fields: tuple[DenseField, ...]
    categorical_fields: tuple[CategoricalField, ...]
    vocabs: dict[str, pl.DataFrame] = field(default_factory=dict)
    lookups: dict[str, np.ndarray] = field(default_factory=dict)

    @classmethod
    def from_feature_map(cls, spec: DatasetSpec, fm: FeatureMap, root: Path) -> EncodePlan:
        vocabs = {f.name: pl.read_parquet(root / f.vocab_file) for f in fm.categorical if f.vocab_file is not None}
        return cls(spec, fm.dense, fm.categorical, vocabs)

    @cached_property
    def _enums(self) -> dict[str, pl.Enum]:
        """Each vocabulary as an ``Enum`` in id order, built once per plan (a plan encodes many chunks)."""
        return {name: pl.Enum(vocab["value"]) for name, vocab in self.vocabs.items()}

    def bind(self, codes: Codes) -> EncodePlan:
        """This plan with the lookups for rows staged with ``codes``."""
        lookups = {}
        for name in codes.names:
            strings = codes.strings(name)
            found = pl.DataFrame({"value": strings}).with_row_index("code").join(self.vocabs[name], on="value")
            lookups[name] = _lookup(found["id"].to_numpy(), found["code"].to_numpy(), len(strings))
        return replace(self, lookups=lookups)

    def encode(self, staged: pl.LazyFrame, keep: Sequence[str] = ()) -> pl.LazyFrame:
        """Output columns (``keep``, label, dense floats, categorical ids) of staged rows, as one streaming
        query."""
        sources = {s.name: s for s in _sources(self.spec)}
        exprs = [pl.col(k) for k in keep] + [pl.col("__label").alias("label")]
        for d in self.dense_fields:
            v = pl.col(parsed(d.name)).fill_null(d.fill_null)
            exprs.append(dense_transform(v, d.transform).cast(pl.Float32).alias(d.name))  # type: ignore[arg-type]
        for f in self.categorical_fields:
            if f.name in self.lookups:
                exprs.append(_gather(f.name, self.lookups[f.name]).alias(f.name))
            else:
                exprs.append(self._ids(f, sources[f.name]).alias(f.name))
        return staged.select(exprs)

    def _ids(self, f: CategoricalField, src: _Source) -> pl.Expr:
        if f.kind == "quantile":
            v = src.value
            bucket = pl.sum_horizontal([(v >= b).cast(pl.Int32) for b in f.boundaries]) if f.boundaries else pl.lit(0)
            return pl.when(v.is_null()).then(MISSING_ID).otherwise(bucket + FIRST_VALUE_ID).cast(pl.Int32)
        if f.kind == "hash":
            assert f.hash_buckets is not None
            buckets = f.hash_buckets

            def one(e: pl.Expr) -> pl.Expr:
                return (hash_expr(e) % buckets + FIRST_VALUE_ID).cast(pl.Int32)

        else:
            # A multi-valued vocabulary: an Enum whose categories are in id order (the cast is an elementwise
            # hash lookup that streams, unlike ``replace_strict``); values outside it cast to null, the OOV id.
            enum = self._enums[f.name]

            def one(e: pl.Expr) -> pl.Expr:
                code = e.cast(enum, strict=False).to_physical().cast(pl.Int32)
                return (code + FIRST_VALUE_ID).fill_null(OOV_ID)

        if src.multi:
            return src.value.list.eval(one(pl.element())).fill_null(pl.lit([], dtype=pl.List(pl.Int32)))
        return pl.when(src.value.is_null()).then(pl.lit(MISSING_ID, dtype=pl.Int32)).otherwise(one(src.value))


def fit_plan(spec: DatasetSpec, train: pl.LazyFrame, work: Path, codes: Codes) -> EncodePlan:
    """Fit every encoder on the staged ``train`` rows; vocabularies go to ``work/vocab/<field>.parquet``.

    Coded fields are counted together over streamed batches of their codes (``np.bincount``); a
    multi-valued field takes a streaming ``group_by`` of its exploded strings. Then one query for the dense
    statistics and quantiles. Memory holds the counts, not the rows.
    """
    sources = {s.name: s for s in _sources(spec)}
    min_counts = {c.name: c.min_count or spec.min_count for c in spec.categorical}
    min_counts |= {d.name: d.min_count or spec.min_count for d in spec.dense}
    min_counts |= {p.prefix + part: spec.min_count for p in spec.derive for part in p.parts}
    hashed = {c.name: c.hash_buckets for c in spec.categorical if c.hash_buckets is not None}
    quantiles = {d.name: d for d in spec.dense if d.encode == "quantile"}
    vocab_names = [n for n in sources if n not in hashed and n not in quantiles]

    (work / "vocab").mkdir(parents=True, exist_ok=True)
    vocabs: dict[str, pl.DataFrame] = {}
    lookups: dict[str, np.ndarray] = {}
    coded = {name: codes.strings(name) for name in vocab_names if name in codes.names}
    for name, occurrences in _count_codes(train, coded).items():
        strings = coded[name]
        seen = np.flatnonzero(occurrences)
        present = pl.DataFrame({"value": strings.gather(seen), "len": occurrences[seen], "code": seen})
        vocab = _vocab_table(present, min_counts[name])
        lookups[name] = _lookup(vocab["id"].to_numpy(), vocab["code"].to_numpy(), len(strings))
        vocabs[name] = vocab.drop("code")
    for name in vocab_names:
        if name not in coded:  # multi-valued: a group_by on the exploded strings
            value = sources[name].value.explode() if sources[name].multi else sources[name].value
            found = train.select(value.alias("value")).drop_nulls().group_by("value").len()
            vocabs[name] = _vocab_table(found.collect(engine="streaming"), min_counts[name])
    for name in vocab_names:
        vocabs[name].write_parquet(work / "vocab" / f"{name}.parquet")

    # Each transformed value once (mean and std of one expression would compute it twice), then the stats.
    values = [
        dense_transform(pl.col(parsed(d.name)).fill_null(d.fill_null), d.transform).alias(d.name)
        for d in spec.dense
        if d.encode == "dense"
    ]
    values += [sources[name].value.alias(name) for name in quantiles]
    dense_stats = []
    for d in spec.dense:
        if d.encode == "dense":
            dense_stats += [pl.col(d.name).mean().alias(f"{d.name}.mean"), pl.col(d.name).std().alias(f"{d.name}.std")]
    for name, d in quantiles.items():
        v = pl.col(name)
        dense_stats += [v.quantile(i / d.buckets, "nearest").alias(f"{name}.q{i}") for i in range(1, d.buckets)]
    stats = train.select(values).select(dense_stats).collect(engine="streaming").row(0, named=True) if values else {}

    dense_fields = tuple(
        DenseField(
            d.name,
            d.transform,
            d.fill_null,
            float(stats[f"{d.name}.mean"] or 0.0),
            float(stats[f"{d.name}.std"] or 0.0),
        )
        for d in spec.dense
        if d.encode == "dense"
    )
    categorical: list[CategoricalField] = []
    for name, src in sources.items():
        transform = src.dense.transform if src.dense is not None else "none"
        if name in hashed:
            n = hashed[name]
            categorical.append(CategoricalField(name, "hash", n + FIRST_VALUE_ID, src.multi, hash_buckets=n))
        elif name in quantiles:
            qs = [stats[f"{name}.q{i}"] for i in range(1, quantiles[name].buckets)]
            bounds = tuple(sorted({float(q) for q in qs if q is not None}))
            categorical.append(
                CategoricalField(
                    name, "quantile", len(bounds) + FIRST_VALUE_ID + 1, boundaries=bounds, transform=transform
                )
            )
        else:
            size = vocabs[name].height
            categorical.append(
                CategoricalField(
                    name,
                    "vocab",
                    size + FIRST_VALUE_ID,
                    src.multi,
                    min_count=min_counts[name],
                    vocab_file=f"vocab/{name}.parquet",
                    vocab_size=size,
                    transform=transform,
                )
            )
    return EncodePlan(spec, dense_fields, tuple(categorical), vocabs, lookups)
