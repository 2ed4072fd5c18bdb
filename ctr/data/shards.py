"""Reading a prepared split's parquet shards into a :class:`~ctr.data.columnar.ColumnarSplit`, each shard
checked against the feature map on the way in (columns, dtypes, nulls, ``0 <= id < cardinality``, row counts).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq

from ctr.data.columnar import ColumnarSplit, CSRColumn
from features.schema import FeatureMap, FeatureMapError


class ShardError(FeatureMapError):
    """A shard of a prepared dataset is unreadable (truncated, corrupt) or does not match its feature map;
    the message starts with the shard's path."""


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn Arrow's errors on a damaged file (``ArrowInvalid``: no footer; ``OSError``: an undecodable page)
    into a :class:`ShardError` naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not the file's content: a missing file, no permission (the CLI names the file)
        problem = " ".join(str(e).split())  # one line
        raise ShardError(f"{path}: unreadable parquet shard, truncated or corrupt ({problem})") from e


def _check_counts(root: Path, split: str, paths: list[Path], counts: list[int]) -> None:
    """The rows the footers hold add up to what ``prepare`` wrote (``report.json``, when there is one)."""
    report = root / "report.json"
    try:
        written = json.loads(report.read_text())["rows_written"][split]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no report (data written by other means) or not one of ours: nothing to compare with
    if isinstance(written, int) and written != sum(counts):
        raise ShardError(
            f"{paths[0].parent if paths else root}: the shards of split {split!r} hold {sum(counts)} rows, "
            f"{report} says {written} were written"
        )


def load_split(data_dir: str | Path, fm: FeatureMap, split: str, *, standardize: bool = True) -> ColumnarSplit:
    """Read every shard of ``split`` into one :class:`ColumnarSplit`, validating each shard.

    With ``standardize`` the dense columns are standardised with the feature map's training mean and std
    (the transforms already made them log-scaled; this puts them on the scale the dense layers expect).

    A split with no shards, or with empty shards, gives a split of 0 rows. Columns not in the feature map
    are ignored. A missing column, a wrong dtype, a null, or an id outside ``[0, cardinality)`` raises
    :class:`ShardError` (a ``ValueError``) naming the shard file, the column and the bad value; so does a
    truncated or corrupt shard, or shards holding another number of rows than ``report.json`` says.
    """
    if split not in fm.splits:
        raise ValueError(f"split {split!r} is not in the feature map; its splits are {sorted(fm.splits)}")
    root = Path(data_dir)
    paths = [root / rel for rel in fm.splits[split]]
    counts: list[int] = []
    for path in paths:  # pass 1: schemas and row counts, from the parquet footers only
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard of split {split!r} listed in the feature map is missing")
        with _reading(path):
            meta = pq.ParquetFile(path)
        _check_schema(meta.schema_arrow, fm, path)
        counts.append(int(meta.metadata.num_rows))
    _check_counts(root, split, paths, counts)

    n = sum(counts)
    single = [f for f in fm.categorical if not f.multi_valued]
    dense = np.empty((n, len(fm.dense)), dtype=np.float32)
    labels = np.empty(n, dtype=np.float32)
    sparse = np.empty((n, len(single)), dtype=np.int32)
    multi_parts: dict[str, tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int32]]]] = {
        f.name: ([np.zeros(1, dtype=np.int64)], []) for f in fm.categorical if f.multi_valued
    }
    columns = [fm.label, *fm.dense_names, *fm.sparse_names]
    row = 0
    for path, count in zip(paths, counts, strict=True):  # pass 2: data, written straight into place
        with _reading(path):
            table = pq.read_table(path, columns=columns)
        if table.num_rows != count:
            raise ShardError(f"{path}: holds {table.num_rows} rows, its footer says {count}")
        stop = row + count
        labels[row:stop] = _plain(table, fm.label, path)
        for j, name in enumerate(fm.dense_names):
            dense[row:stop, j] = _plain(table, name, path)
        for j, f in enumerate(single):
            ids = _plain(table, f.name, path)
            _check_range(ids, f.cardinality, path, f.name)
            sparse[row:stop, j] = ids
        for name, (offsets, values) in multi_parts.items():
            card = fm.field(name).cardinality
            shard_offsets, shard_values = _csr(table, name, path)
            _check_range(shard_values, card, path, name, shard_offsets)
            offsets.append(shard_offsets[1:] + offsets[-1][-1])
            values.append(shard_values)
        row = stop

    multi = {
        name: CSRColumn(np.concatenate(offsets), np.concatenate(values) if values else np.empty(0, np.int32))
        for name, (offsets, values) in multi_parts.items()
    }
    if standardize and fm.dense:
        mean = np.array([f.mean for f in fm.dense], dtype=np.float32)
        std = np.array([f.std if f.std > 0 else 1.0 for f in fm.dense], dtype=np.float32)
        dense -= mean
        dense /= std
    return ColumnarSplit(fm, dense=dense, labels=labels, sparse=sparse, multi=multi)


def _check_schema(schema: pa.Schema, fm: FeatureMap, path: Path) -> None:
    expected: list[tuple[str, str, bool]] = [(fm.label, "label", False)]
    expected += [(name, "dense field", False) for name in fm.dense_names]
    expected += [(f.name, "categorical field", f.multi_valued) for f in fm.categorical]
    for name, role, multi_valued in expected:
        if schema.get_field_index(name) < 0:
            raise ShardError(f"{path}: missing column {name!r} ({role}); the shard has columns {schema.names}")
        got = schema.field(name).type
        if role == "categorical field":
            want = "list<int32> (multi_valued=True)" if multi_valued else "int32"
            ok = (
                (pa.types.is_list(got) or pa.types.is_large_list(got)) and got.value_type == pa.int32()
                if multi_valued
                else got == pa.int32()
            )
        else:
            want, ok = "float32", got == pa.float32()
        if not ok:
            raise ShardError(f"{path}: column {name!r} ({role}) has dtype {got}, expected {want}")


def _plain(table: pa.Table, name: str, path: Path) -> npt.NDArray[Any]:
    col = table.column(name)
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{path}: column {name!r} has {col.null_count} null(s), first at row {first}")
    return np.asarray(col.to_numpy())


def _csr(table: pa.Table, name: str, path: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    arr = table.column(name).combine_chunks()
    if arr.null_count:
        first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{path}: column {name!r} has {arr.null_count} null list(s), first at row {first}")
    flat = arr.flatten()  # respects slicing, unlike ``.values``
    if flat.null_count:
        raise ShardError(f"{path}: column {name!r} has {flat.null_count} null id(s) inside its lists")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], np.ascontiguousarray(flat.to_numpy(), dtype=np.int32)


def _check_range(
    ids: npt.NDArray[np.int32],
    cardinality: int,
    path: Path,
    name: str,
    offsets: npt.NDArray[np.int64] | None = None,
) -> None:
    if ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < cardinality):
        return
    pos = int(np.flatnonzero((ids < 0) | (ids >= cardinality))[0])
    row = pos if offsets is None else int(np.searchsorted(offsets, pos, side="right") - 1)
    raise ShardError(
        f"{path}: column {name!r} has id {int(ids[pos])} at row {row}, outside [0, {cardinality}) "
        f"(the field's cardinality is {cardinality})"
    )
