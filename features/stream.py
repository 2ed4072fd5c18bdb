"""Raw rows encoded with a fitted feature map, in one streaming pass and in chunks (scoring, serving).

``ctr prepare`` and ``ctr apply`` stage the parsed rows on disk and encode them in a second pass (the fit needs
every training row first). Scoring needs no fit, so :func:`encoded_chunks` runs the same steps as one query, built
once and run on each window of a few thousand lines (:func:`~features.sources.scan_windows`: line numbers, wrongly
shaped lines), so memory stays flat in the rows, then :func:`~features.transforms.validate`
(label, numbers, ranges), the derived time parts and the fitted encoders of :class:`~features.encode.EncodePlan`
built from the feature map (vocabularies by an ``Enum`` cast in id order, hashes, quantile buckets, dense
transforms: the ids and values ``ctr apply`` writes; unseen values get the OOV id). Each chunk comes back as
the accepted rows (``__file``, ``__line``, ``label`` and the encoded columns) and the rejected ones (``file``,
``line``, ``reason``, ``raw``, as in ``rejects.parquet``), so ``rows read = accepted + rejected`` per chunk.
A file without the label column (header or parquet) is scored with a null label.

:class:`RecordEncoder` encodes in-memory records (a list of dicts of raw values, as a JSON API receives them) the
same way, with the query built once and run per request, after :func:`check_records` has refused a missing
field, a wrong type or an unknown column by record index and field name.

Example:
    >>> for chunk in encoded_chunks(Path("artifact"), [Path("day_1.tsv")], scratch, 65536):  # doctest: +SKIP
    ...     score(chunk.rows); keep(chunk.rejects)
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from config.strict import from_dict
from features.encode import EncodePlan
from features.records import RecordFastPath
from features.schema import FeatureMap
from features.sources import scan_windows
from features.spec import DatasetSpec, InputError
from features.transforms import derive_time_parts, rejected_reasons, validate

__all__ = ["EncodedChunk", "Encoder", "RecordEncoder", "check_records", "encoded_chunks"]

_KEEP = ("__file", "__line", "__reason", "__raw")
# Lines parsed and encoded per run of the query. Polars' working memory grows with a run's rows (a 65,536-line run
# held about 170 MB more than 8,192-line runs, which cost about 1 us more per row: docs/benchmarks.md).
WINDOW_LINES = 8192


@dataclass(frozen=True)
class EncodedChunk:
    rows: pl.DataFrame  # accepted: __file, __line, label (null when the input has none), dense, categorical ids
    rejects: pl.DataFrame  # file, line, reason, raw


@dataclass(frozen=True)
class Encoder:
    """A fitted feature map ready to encode raw rows: its dataset spec (as read for scoring) and encoders."""

    feature_map: FeatureMap
    spec: DatasetSpec  # the fitted spec without its split time column (not encoded)
    plan: EncodePlan

    @classmethod
    def load(cls, root: Path, feature_map: FeatureMap | None = None) -> Encoder:
        fm = feature_map if feature_map is not None else FeatureMap.load(root)
        spec = from_dict(DatasetSpec, fm.source_spec, where=f"{root}: source_spec")
        return cls(fm, dataclasses.replace(spec, time=None), EncodePlan.from_feature_map(spec, fm, root))

    @property
    def columns(self) -> tuple[str, ...]:
        """The raw columns a record must have (the label may be left out)."""
        return self.spec.required_columns

    def encode(self, rows: pl.LazyFrame) -> pl.LazyFrame:
        """Validated, encoded rows of a scanned frame (``scan_inputs``' columns), rejected ones with a ``__reason``."""
        lf = rows.pipe(validate, self.spec, unlabelled=True).pipe(derive_time_parts, self.spec)
        lf = lf.with_columns(rejected_reasons(self.spec).alias("__reason"))
        return self.plan.encode(lf, keep=_KEEP)


_NO_REJECTS = pl.DataFrame(schema={"file": pl.String, "line": pl.UInt64, "reason": pl.String, "raw": pl.String})


def _split(frame: pl.DataFrame) -> EncodedChunk:
    bad = frame["__reason"].is_not_null()
    rejects = frame.filter(bad).select(
        pl.col("__file").alias("file"), pl.col("__line").alias("line"), pl.col("__reason").alias("reason"), "__raw"
    )
    return EncodedChunk(frame.filter(~bad).drop("__reason", "__raw"), rejects.rename({"__raw": "raw"}))


def encoded_chunks(
    root: Path,
    inputs: Sequence[Path],
    scratch: Path,
    chunk_rows: int,
    encoder: Encoder | None = None,
    window_lines: int | None = None,
) -> Iterator[EncodedChunk]:
    """Chunks of at most ``chunk_rows`` input rows of ``inputs``, in input order, encoded with the feature map
    in ``root``. Each file is read and encoded in windows of ``window_lines`` lines (default ``WINDOW_LINES``; at
    most ``chunk_rows``), whose rows are gathered into chunks (a window of a header alone adds none).
    ``scratch``: a folder for repaired copies of files with invalid UTF-8 lines (the caller deletes it once the
    iterator is exhausted)."""
    enc = encoder if encoder is not None else Encoder.load(root)
    lines = min(chunk_rows, window_lines if window_lines is not None else WINDOW_LINES)
    query: _FrameQuery | None = None
    held: list[pl.DataFrame] = []
    for window in scan_windows(enc.spec, list(inputs), scratch, lines, optional=(enc.spec.label.column,)):
        rows = window.collect()
        query = query if query is not None else _FrameQuery(rows.schema, enc.encode)
        frame = query.run(rows)
        if held and sum(f.height for f in held) + frame.height > chunk_rows:
            yield _split(pl.concat(held))
            held = []
        if frame.height:
            held.append(frame)
    if held:
        yield _split(pl.concat(held))


def check_records(records: Any, columns: Sequence[str], label: str) -> list[dict[str, str | None]]:
    """``records`` as rows of strings, or :class:`~features.spec.InputError` naming the first bad record and field.

    Each record must be an object with every column of ``columns`` (the label may be left out) and no other key;
    a value is a string, a number or null (missing). Numbers become the text a raw file would hold."""
    if not isinstance(records, list):
        raise InputError(f"expected a JSON list of records, got {type(records).__name__}")
    allowed = set(columns)
    rows: list[dict[str, str | None]] = []
    for i, record in enumerate(records):
        if not isinstance(record, Mapping):
            raise InputError(f"record {i}: expected an object of raw fields, got {type(record).__name__}")
        unknown = sorted(str(k) for k in record if k not in allowed)
        if unknown:
            raise InputError(f"record {i}: field {unknown[0]!r}: unknown column (expected {', '.join(columns)})")
        row: dict[str, str | None] = {}
        for name in columns:
            if name not in record:
                if name == label:
                    row[name] = None
                    continue
                raise InputError(f"record {i}: field {name!r}: missing")
            row[name] = _text(record[name], i, name)
        rows.append(row)
    return rows


def _text(value: Any, i: int, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InputError(f"record {i}: field {name!r}: expected a string, a number or null, got {type(value).__name__}")
    return repr(value) if isinstance(value, float) else str(value)


class _FrameQuery:
    """A lazy query built once over a Polars IO source that yields the frame of the current :meth:`run`.

    A fitted map's query is hundreds of expressions, with an ``Enum`` of every vocabulary: building it costs far
    more than running it on a few records (and about 0.1 s per window of a file). Runs are serialised (a lock)."""

    def __init__(self, schema: pl.Schema, build: Callable[[pl.LazyFrame], pl.LazyFrame]) -> None:
        from polars.io.plugins import register_io_source

        self._frame: pl.DataFrame | None = None
        self._lock = threading.Lock()

        def source(
            with_columns: list[str] | None, predicate: pl.Expr | None, n_rows: int | None, batch_size: int | None
        ) -> Iterator[pl.DataFrame]:
            assert self._frame is not None, "collected outside _FrameQuery.run"
            frame = self._frame.select(with_columns) if with_columns is not None else self._frame
            frame = frame.filter(predicate) if predicate is not None else frame
            yield frame.head(n_rows) if n_rows is not None else frame

        self._query = build(register_io_source(source, schema=schema, is_pure=False))

    def run(self, frame: pl.DataFrame) -> pl.DataFrame:
        with self._lock:
            self._frame = frame
            try:
                return self._query.collect()
            finally:
                self._frame = None


class RecordEncoder:
    """Encodes in-memory records (:func:`check_records`) with one query built once (a :class:`_FrameQuery`
    over the records of the current call)."""

    def __init__(self, encoder: Encoder) -> None:
        self.encoder = encoder
        self.fast = RecordFastPath(encoder.spec, encoder.plan)
        columns = encoder.columns
        self._query = _FrameQuery(
            pl.Schema(dict.fromkeys(columns, pl.String())),
            lambda raw: encoder.encode(
                raw.select(
                    pl.lit("request").alias("__file"),
                    pl.lit(0, dtype=pl.UInt64).alias("__file_idx"),
                    pl.int_range(pl.len(), dtype=pl.UInt64).alias("__line"),
                    pl.lit(None, dtype=pl.String).alias("__raw"),
                    pl.lit(None, dtype=pl.String).alias("__reject"),
                    pl.lit(None, dtype=pl.String).alias("__sep"),
                    pl.lit(None, dtype=pl.Int64).alias("__ncols"),
                    *columns,
                )
            ),
        )

    def encode(self, rows: Sequence[Mapping[str, str | None]]) -> EncodedChunk:
        """Rows of raw strings encoded as one chunk; ``line`` is the record's index (from 0). The records go
        through :class:`~features.records.RecordFastPath` (the same ids and values in plain Python) where it
        takes them all, else through the query."""
        fast = self.fast.encode(rows)
        if fast is not None:
            return EncodedChunk(fast, _NO_REJECTS)
        return self.encode_query(rows)

    def encode_query(self, rows: Sequence[Mapping[str, str | None]]) -> EncodedChunk:
        """:meth:`encode` through the feature map's query alone."""
        data = {c: pl.Series(c, [r.get(c) for r in rows], dtype=pl.String) for c in self.encoder.columns}
        return _split(self._query.run(pl.DataFrame(data)))
