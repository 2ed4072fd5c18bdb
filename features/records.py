"""A few records encoded in plain Python, with the same ids and values as the Polars query, or not at all.

:class:`~features.stream.RecordEncoder` runs the fitted feature map's query (hundreds of expressions) on each
request; on one record that costs about 6 ms, most of a served request's budget. :class:`RecordFastPath` encodes
the same records field by field with dictionaries and ``math``: vocabularies as ``value -> id`` dicts, the stable
hash (:func:`features.hashing.stable_hash`), quantile buckets by bisection, the dense transforms. It takes only
what it can encode exactly as the query does and answers ``None`` otherwise, so the caller runs the query:

- every number must be plain decimal text (``-1``, ``2.5``, ``1e-05``: :data:`NUMBER`), which Polars' cast and
  Python's ``float`` read to the same double; anything else (``inf``, `` 3``, ``0x10``, ``abc``) goes to the query,
  which parses or rejects it with its message;
- a record the query would reject (a bad label, a number out of range) goes to the query too, for its message;
- a dense value sent through a vocabulary (``encode: categorical``) must be integral after its transform (the
  query prints other floats in Polars' own format);
- the parts derived from a time column (Avazu's ``hour``) come from the query itself, run once per distinct time
  value and remembered (at most :data:`TIME_CACHE` values).

The dense transforms are computed in float64 and stored as float32, like the query (``log1p`` and ``ln`` may
differ from Rust's in the last bit of the double, far below float32's precision). ``tests/test_records.py``
checks equality with the query on every built-in data set's records and on a spec with every kind of field.

Example:
    >>> fast = RecordFastPath(encoder.spec, encoder.plan)  # doctest: +SKIP
    >>> fast.encode([{"label": "0", "I1": "3", "C1": "68fd1e64", ...}])  # doctest: +SKIP
    shape: (1, 42) ...
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl

from features.encode import EncodePlan
from features.hashing import stable_hash
from features.schema import FIRST_VALUE_ID, MISSING_ID, OOV_ID, CategoricalField
from features.spec import DatasetSpec, DenseSpec, TimePartsSpec
from features.transforms import derive_time_parts, parse_time, parsed

__all__ = ["NUMBER", "TIME_CACHE", "RecordFastPath"]

NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?")
TIME_CACHE = 100_000  # distinct time values whose derived parts are remembered
_EXACT_INT = 2.0**53  # integral doubles below it print as their integer


class _Fallback(Exception):
    """A value the fast path does not encode exactly like the query: the caller runs the query."""


def _number(text: str | None) -> float | None:
    """The parsed value of a dense field's raw text (None: missing), or :class:`_Fallback`."""
    if text is None or text == "":
        return None
    if NUMBER.fullmatch(text) is None:
        raise _Fallback
    value = float(text)
    if not math.isfinite(value):  # 1e999: the query rejects it
        raise _Fallback
    return value


def _transform(value: float, transform: str) -> float:
    if transform == "log1p":
        return math.log1p(max(value, 0.0))
    if transform == "log_square":
        return float(math.floor(math.log(value) ** 2)) if value > 2 else value
    return value


class RecordFastPath:
    """The fitted encoders of ``plan`` (for raw rows of ``spec``) in plain Python; :meth:`encode` gives the query's
    frame or None."""

    def __init__(self, spec: DatasetSpec, plan: EncodePlan) -> None:
        self.spec = spec
        self._dense_specs = {d.name: d for d in spec.dense}
        self._vocabs: dict[str, dict[str, int]] = {}
        for name, vocab in plan.vocabs.items():
            self._vocabs[name] = dict(zip(vocab["value"].to_list(), vocab["id"].to_list(), strict=True))
        self._times: dict[tuple[str, str | None], dict[str, str | None] | None] = {}
        self._multi = {c.name: c.separator for c in spec.categorical if c.separator is not None}
        self.dense_fields = plan.dense_fields
        self.categorical_fields = plan.categorical_fields
        self._schema: dict[str, Any] = {"__file": pl.String, "__line": pl.UInt64, "label": pl.Float32}
        self._schema |= {d.name: pl.Float32 for d in plan.dense_fields}
        for f in plan.categorical_fields:
            self._schema[f.name] = pl.List(pl.Int32) if f.multi_valued else pl.Int32

    def encode(self, rows: Sequence[Mapping[str, str | None]]) -> pl.DataFrame | None:
        """The accepted rows of :meth:`features.stream.RecordEncoder.encode` for ``rows`` (every one accepted), or
        None where the query must answer (a value outside the fast path, or a record it would reject)."""
        try:
            columns: dict[str, Any] = {
                "__file": ["request"] * len(rows),
                "__line": list(range(len(rows))),
                "label": [self._label(r.get(self.spec.label.column)) for r in rows],
            }
            numbers = {d.name: [self._checked(d, r.get(d.name)) for r in rows] for d in self.spec.dense}
            for d in self.dense_fields:
                columns[d.name] = [_transform(d.fill_null if v is None else v, d.transform) for v in numbers[d.name]]
            times = self._time_parts(rows)
            for f in self.categorical_fields:
                columns[f.name] = self._ids(f, rows, numbers, times)
        except _Fallback:
            return None
        return pl.DataFrame(columns, schema=self._schema)

    def _label(self, text: str | None) -> float | None:
        label = self.spec.label
        if text is None:
            return None
        value = _number(text)
        if value is None:
            raise _Fallback
        if label.threshold is None:
            if value not in (0.0, 1.0):
                raise _Fallback
            return value
        return 1.0 if value >= label.threshold else 0.0

    @staticmethod
    def _checked(d: DenseSpec, text: str | None) -> float | None:
        value = _number(text)
        if value is None:
            return None
        if abs(value) > d.max_abs:
            if not d.clip:
                raise _Fallback
            value = min(max(value, -d.max_abs), d.max_abs)
        return value

    def _time_parts(self, rows: Sequence[Mapping[str, str | None]]) -> dict[str, list[str | None]]:
        """Each derived field's values (strings, as the query derives them) for ``rows``."""
        out: dict[str, list[str | None]] = {}
        for p in self.spec.derive:
            raw = [r.get(p.column) for r in rows]
            missing = sorted({v for v in raw if (v, p.format) not in self._times}, key=str)
            if missing:
                self._remember(p, missing)
            found = [self._times[(v, p.format)] for v in raw]  # type: ignore[index]
            if any(parts is None for parts in found):
                raise _Fallback  # an unparseable time: the query rejects the record
            for part in p.parts:
                out[p.prefix + part] = [parts[p.prefix + part] for parts in found]  # type: ignore[index]
        return out

    def _remember(self, p: TimePartsSpec, values: list[str | None]) -> None:
        if len(self._times) + len(values) > TIME_CACHE:
            self._times.clear()
        frame = pl.DataFrame({p.column: values}, schema={p.column: pl.String})
        derived = frame.lazy().with_columns(parse_time(pl.col(p.column), p.format).alias(parsed(p.column)))
        single = dataclasses.replace(self.spec, derive=(p,))
        names = [p.prefix + part for part in p.parts]
        table = derived.pipe(derive_time_parts, single).collect()
        for value, when, *parts in table.select(p.column, parsed(p.column), *names).iter_rows():
            self._times[(value, p.format)] = None if when is None else dict(zip(names, parts, strict=True))

    def _ids(
        self,
        f: CategoricalField,
        rows: Sequence[Mapping[str, str | None]],
        numbers: dict[str, list[float | None]],
        times: dict[str, list[str | None]],
    ) -> list[Any]:
        if f.name in numbers:  # a dense source: a vocabulary of its transformed values, or quantile buckets
            d = self._dense_specs[f.name]
            values = [None if v is None else _transform(v, d.transform) for v in numbers[f.name]]
            if f.kind == "quantile":
                bounds = list(f.boundaries)
                return [MISSING_ID if v is None else bisect.bisect_right(bounds, v) + FIRST_VALUE_ID for v in values]
            texts: list[str | None] = [None if v is None else _integral(v) for v in values]
        elif f.name in times:
            texts = times[f.name]
        else:
            texts = [r.get(f.name) for r in rows]
            texts = [None if t == "" else t for t in texts]
        if f.multi_valued:
            sep = self._multi[f.name]
            lists = [[] if t is None else [v for v in t.split(sep) if v != ""] for t in texts]
            flat = iter(self._lookup(f, [v for values in lists for v in values]))
            return [[next(flat) for _ in values] for values in lists]
        found = iter(self._lookup(f, [t for t in texts if t is not None]))
        return [MISSING_ID if t is None else next(found) for t in texts]

    def _lookup(self, f: CategoricalField, values: list[str]) -> list[int]:
        """The ids of present ``values`` of ``f``: one stable-hash call for all of them, or vocabulary lookups."""
        if f.kind == "hash":
            assert f.hash_buckets is not None
            hashes = stable_hash(pl.Series(values, dtype=pl.String)) % np.uint64(f.hash_buckets)
            ids: list[int] = (hashes.astype(np.int64) + FIRST_VALUE_ID).tolist()
            return ids
        vocab = self._vocabs[f.name]
        return [vocab.get(v, OOV_ID) for v in values]


def _integral(value: float) -> str:
    """A dense value's text as the query writes it for a vocabulary, where that is its integer."""
    if value != math.floor(value) or abs(value) >= _EXACT_INT:
        raise _Fallback
    return str(int(value))
