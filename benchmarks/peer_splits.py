"""The splits of one ``ctr prepare`` output as CSV files, so that every system trains on the same rows.

``export_splits(prepared, out)`` writes ``out/{train,valid,test}.csv`` and ``out/columns.json``. Each CSV row is
one row of the prepared parquet shards, in the order of ``feature_map.json``'s shard lists (the order ``ctr
train`` reads them): row ``i`` of ``train.csv`` is row ``i`` of the training split, so the row sets are the same by
construction, not by a second split. ``columns.json`` records each split's row and positive counts, which the peer
runners check against what they loaded.

Values are the platform's encoded ids (``features.schema``: 0 missing, 1 out of vocabulary, 2.. by training
frequency), written as tokens. A vocabulary fitted on train with ``min_count`` 1 is a one-to-one renaming of the
raw values seen in training, and maps every value unseen in training to one id, so a peer that fits its own
vocabulary on ``train.csv`` (FuxiCTR's ``min_categr_count: 1``, a one-hot encoder) sees the same partition of the
values as on the raw file. Dense fields are written as BARS' ``convert_to_bucket`` for Criteo_x1 (floor(ln(v)^2)
for v > 2, v otherwise), to be read as categorical tokens as BARS does: a ``log_square`` field as stored, a
``log1p`` field (the built-in Criteo spec's, which ctr reads as a number) from its value recovered as
round(exp(x) - 1), exact for the integers below 1e5 and within a bucket above (negative values were clipped to 0
by the transform, so they share the bucket of 0).
Multi-valued fields are joined with ``^`` (FuxiCTR's sequence splitter).

Example:
    >>> columns = export_splits(Path("prepared"), Path("csv"))  # doctest: +SKIP
    >>> train_rows = pl.scan_parquet("prepared/train/*.parquet").select(pl.len()).collect().item()  # doctest: +SKIP
    >>> columns["rows"]["train"] == train_rows  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl

from features.schema import FeatureMap

__all__ = ["SEPARATOR", "export_splits"]

SEPARATOR = "^"  # joins the ids of a multi-valued field
_SPLITS = ("train", "valid", "test")


def _as_tokens(fm: FeatureMap) -> list[pl.Expr]:
    exprs = [pl.col(fm.label).cast(pl.Int8).alias("label")]
    for d in fm.dense:
        # a whole number is written without ".0", so a bucket reads as the same token in every split
        value = pl.col(d.name)
        if d.transform == "log1p":
            raw = value.cast(pl.Float64).exp().sub(1.0).round(0)
            value = pl.when(raw > 2).then(raw.log().pow(2).floor()).otherwise(raw)
        whole = value.round(0) == value
        text = pl.when(whole).then(value.cast(pl.Int64).cast(pl.String)).otherwise(value.cast(pl.String))
        exprs.append(text.fill_null("").alias(d.name))
    for c in fm.categorical:
        col = pl.col(c.name)
        text = col.cast(pl.List(pl.String)).list.join(SEPARATOR) if c.multi_valued else col.cast(pl.String)
        exprs.append(text.fill_null("").alias(c.name))
    return exprs


def export_splits(prepared: Path, out: Path) -> dict[str, Any]:
    """Write ``out/<split>.csv`` and ``out/columns.json`` from the prepared dataset ``prepared``; return the latter."""
    fm = FeatureMap.load(prepared / "feature_map.json")
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, int] = {}
    positives: dict[str, int] = {}
    for split in _SPLITS:
        files = [prepared / f for f in fm.splits.get(split, [])]
        if not files:
            raise FileNotFoundError(f"{prepared}: no {split} shards in feature_map.json")
        frame = pl.concat([pl.read_parquet(f) for f in files]).select(_as_tokens(fm))
        frame.write_csv(out / f"{split}.csv")
        rows[split] = frame.height
        positives[split] = int(frame["label"].sum())
    columns = {
        "label": "label",
        "categorical": [d.name for d in fm.dense] + [c.name for c in fm.categorical if not c.multi_valued],
        "sequence": [c.name for c in fm.categorical if c.multi_valued],
        "separator": SEPARATOR,
        "rows": rows,
        "positives": positives,
        "feature_map_hash": fm.content_hash,
    }
    (out / "columns.json").write_text(json.dumps(columns, indent=2) + "\n")
    return columns
