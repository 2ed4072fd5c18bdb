"""Fitting and applying the per-field encoders (vocabulary, stable hash, quantile buckets, dense).

``fit_plan`` runs one lazy query for all fields at once (``pl.collect_all`` shares the scan): value
counts of every vocabulary field and the statistics of every dense field, on the training rows only.
``EncodePlan.exprs`` turns the fitted state into the expressions that write the shards; the same plan
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
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from features.hashing import hash_expr
from features.schema import FIRST_VALUE_ID, MISSING_ID, OOV_ID, CategoricalField, DenseField, FeatureMap
from features.spec import DatasetSpec, DenseSpec
from features.transforms import dense_transform, parsed

__all__ = ["EncodePlan", "fit_plan"]


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


def _vocab_table(counts: pl.DataFrame, min_count: int) -> pl.DataFrame:
    """value, count, id: kept values in descending count (ties by value), ids from FIRST_VALUE_ID."""
    kept = counts.filter(pl.col("len") >= min_count).sort(["len", "value"], descending=[True, False])
    return kept.select(
        pl.col("value"),
        pl.col("len").cast(pl.Int64).alias("count"),
        (pl.int_range(pl.len(), dtype=pl.Int32) + FIRST_VALUE_ID).alias("id"),
    )


@dataclass(frozen=True)
class EncodePlan:
    """Fitted encoders for every field, in feature-map order."""

    spec: DatasetSpec
    dense_fields: tuple[DenseField, ...]
    categorical_fields: tuple[CategoricalField, ...]
    vocabs: dict[str, pl.DataFrame] = field(default_factory=dict)

    @classmethod
    def from_feature_map(cls, spec: DatasetSpec, fm: FeatureMap, root: Path) -> EncodePlan:
        vocabs = {f.name: pl.read_parquet(root / f.vocab_file) for f in fm.categorical if f.vocab_file is not None}
        return cls(spec, fm.dense, fm.categorical, vocabs)

    def encode(self, lf: pl.LazyFrame, keep: Sequence[str] = ()) -> pl.LazyFrame:
        """Output columns (``keep``, label, dense floats, categorical ids) as one streaming query.

        Single-valued vocabulary fields are encoded by a left join against the vocabulary: the join streams
        with memory bounded by the vocabulary (``replace_strict`` with a Series argument does not stream).
        """
        sources = {s.name: s for s in _sources(self.spec)}
        joined = [f for f in self.categorical_fields if f.kind == "vocab" and not sources[f.name].multi]
        lf = lf.with_columns([sources[f.name].value.alias(f"__val_{f.name}") for f in joined])
        for f in joined:
            vocab = (
                self.vocabs[f.name]
                .lazy()
                .select(pl.col("value").alias(f"__val_{f.name}"), pl.col("id").alias(f"__id_{f.name}"))
            )
            lf = lf.join(vocab, on=f"__val_{f.name}", how="left", maintain_order="left")
        exprs = [pl.col(k) for k in keep] + [pl.col("__label").alias("label")]
        for d in self.dense_fields:
            v = pl.col(parsed(d.name)).fill_null(d.fill_null)
            exprs.append(dense_transform(v, d.transform).cast(pl.Float32).alias(d.name))  # type: ignore[arg-type]
        for f in self.categorical_fields:
            if f in joined:
                found = pl.col(f"__id_{f.name}").fill_null(OOV_ID)
                ids = pl.when(pl.col(f"__val_{f.name}").is_null()).then(MISSING_ID).otherwise(found)
                exprs.append(ids.cast(pl.Int32).alias(f.name))
            else:
                exprs.append(self._ids(f, sources[f.name]).alias(f.name))
        return lf.select(exprs)

    def _ids(self, f: CategoricalField, src: _Source) -> pl.Expr:
        if f.kind == "quantile":
            v = src.value
            bucket = pl.sum_horizontal([(v >= b).cast(pl.Int32) for b in f.boundaries]) if f.boundaries else pl.lit(0)
            return pl.when(v.is_null()).then(MISSING_ID).otherwise(bucket + FIRST_VALUE_ID).cast(pl.Int32)

        def one(e: pl.Expr) -> pl.Expr:
            if f.kind == "hash":
                assert f.hash_buckets is not None
                return (hash_expr(e) % f.hash_buckets + FIRST_VALUE_ID).cast(pl.Int32)
            vocab = self.vocabs[f.name]
            return e.replace_strict(vocab["value"], vocab["id"], default=OOV_ID, return_dtype=pl.Int32)

        if src.multi:
            return src.value.list.eval(one(pl.element())).fill_null(pl.lit([], dtype=pl.List(pl.Int32)))
        return pl.when(src.value.is_null()).then(pl.lit(MISSING_ID, dtype=pl.Int32)).otherwise(one(src.value))


def fit_plan(
    spec: DatasetSpec, train: pl.LazyFrame, work: Path, also: Sequence[pl.LazyFrame] = ()
) -> tuple[EncodePlan, list[pl.DataFrame]]:
    """Fit every encoder on ``train`` in one shared scan, collecting the ``also`` queries in the same pass.

    Vocabularies are written to ``work/vocab/<field>.parquet``. Returns the plan and the ``also`` results.
    """
    sources = {s.name: s for s in _sources(spec)}
    min_counts = {c.name: c.min_count or spec.min_count for c in spec.categorical}
    min_counts |= {d.name: d.min_count or spec.min_count for d in spec.dense}
    min_counts |= {p.prefix + part: spec.min_count for p in spec.derive for part in p.parts}
    hashed = {c.name: c.hash_buckets for c in spec.categorical if c.hash_buckets is not None}
    quantiles = {d.name: d for d in spec.dense if d.encode == "quantile"}
    vocab_names = [n for n in sources if n not in hashed and n not in quantiles]

    queries: list[pl.LazyFrame] = list(also)
    # One group_by over (field, value) pairs for all single-valued fields: 26 separate group_bys on one
    # shared scan hold rows back and make memory grow with the input.
    single = [n for n in vocab_names if not sources[n].multi]
    multi = [n for n in vocab_names if sources[n].multi]
    if single:
        pairs = train.select([sources[n].value.alias(n) for n in single]).unpivot(
            on=single, variable_name="field", value_name="value"
        )
        queries.append(pairs.drop_nulls("value").group_by("field", "value").len())
    for name in multi:
        queries.append(train.select(sources[name].value.explode().alias("value")).drop_nulls().group_by("value").len())
    dense_stats = []
    for d in spec.dense:
        if d.encode == "dense":
            v = dense_transform(pl.col(parsed(d.name)).fill_null(d.fill_null), d.transform)
            dense_stats += [v.mean().alias(f"{d.name}.mean"), v.std().alias(f"{d.name}.std")]
    for name, d in quantiles.items():
        v = sources[name].value
        dense_stats += [v.quantile(i / d.buckets, "nearest").alias(f"{name}.q{i}") for i in range(1, d.buckets)]
    if dense_stats:
        queries.append(train.select(dense_stats))
    results = pl.collect_all(queries, engine="streaming")
    side, results = results[: len(also)], results[len(also) :]
    stats = results[-1].row(0, named=True) if dense_stats else {}

    (work / "vocab").mkdir(parents=True, exist_ok=True)
    vocabs: dict[str, pl.DataFrame] = {}
    counts_of: dict[str, pl.DataFrame] = {}
    if single:
        pair_counts = results[0]
        for name in single:
            counts_of[name] = pair_counts.filter(pl.col("field") == name).select("value", "len")
    first = 1 if single else 0
    for name, counts in zip(multi, results[first : first + len(multi)], strict=True):
        counts_of[name] = counts
    for name in vocab_names:
        vocab = _vocab_table(counts_of[name], min_counts[name])
        vocab.write_parquet(work / "vocab" / f"{name}.parquet")
        vocabs[name] = vocab

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
    return EncodePlan(spec, dense_fields, tuple(categorical), vocabs), side
