"""Raw inputs as one lazy frame of strings, with provenance for every row.

Every source yields the same shape, so validation and encoding never care where rows came from::

    __file   String   input file name
    __line   UInt64   1-based line number in that file (row number for parquet)
    __raw    String   the raw line (null for parquet)
    __reject String   null, or a code for why the row cannot be parsed ("columns", "empty line")
    __sep    String   the file's delimiter, __ncols Int64 its expected column count (for messages)
    <col>    String   one column per ``spec.required_columns``

Delimited files are read line by line (``scan_lines``) and split with the delimiter, so a row with the
wrong number of columns is caught and quarantined with its line number instead of being padded or
dropped by a CSV reader. Quoted fields that contain the delimiter are therefore not supported.
:func:`scan_inputs` is one frame over whole files (``ctr prepare``; Polars' line scanner holds memory that grows
with the file); :func:`scan_windows` gives the same rows as frames over windows of a bounded number of lines
(``features.textfile.line_windows``), so a streaming reader's memory stays flat in the rows (``ctr predict``).
A missing, empty, compressed or wrongly shaped file, or a file given twice, raises ``InputError`` naming the
file. A UTF-8 byte-order mark is dropped; a line that is not valid UTF-8 is rejected (``encoding``) with its
number, read from a repaired copy in ``scratch`` (see ``features.textfile``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow.parquet as pq

from features.spec import DatasetSpec, InputError
from features.textfile import TextFile, check_distinct, check_not_packed, line_windows, read_text

__all__ = ["scan_inputs", "scan_windows"]

_SNIFF_LINES = 20


def scan_inputs(
    spec: DatasetSpec, inputs: list[Path], scratch: Path, *, optional: tuple[str, ...] = ()
) -> pl.LazyFrame:
    """One lazy frame over all input files (see module docstring for its columns).

    ``scratch``: a folder for repaired copies of files with invalid UTF-8 lines, which the frame reads; the
    caller deletes it after running the frame. ``optional``: required columns a file with a header (or a
    parquet file) may lack; they are then null in its rows."""
    return pl.concat([source.scan() for source in _sources(spec, inputs, scratch, optional)], how="vertical")


def scan_windows(
    spec: DatasetSpec, inputs: list[Path], scratch: Path, lines: int, *, optional: tuple[str, ...] = ()
) -> Iterator[pl.LazyFrame]:
    """The rows of :func:`scan_inputs`, as lazy frames over windows of at most ``lines`` input lines (rows of a
    parquet file), file by file, in order: what is read at once is bounded by the window, not by the file.

    Line numbers count from each file's first line across its windows; a header (first line) is read once per
    file. The files are checked (and their layouts resolved) here, before the first window is read; a
    MovieLens-100K input (joined with its side files) is one window."""
    if lines < 1:
        raise ValueError(f"lines: must be >= 1, got {lines}")
    sources = _sources(spec, inputs, scratch, optional)
    return (window for source in sources for window in source.windows(lines))


@dataclass(frozen=True)
class _Delimited:
    """A delimited file with its layout resolved: read whole (``scan``) or in windows of lines."""

    text: TextFile
    sep: str
    header: bool
    columns: tuple[str, ...]
    wanted: tuple[str, ...]
    file_idx: int

    def scan(self) -> pl.LazyFrame:
        return self._split(pl.scan_lines(self.text.scan, name="__raw", row_index_name="__line", row_index_offset=1))

    def windows(self, lines: int) -> Iterator[pl.LazyFrame]:
        for first, block in line_windows(self.text.scan, lines):
            yield self._split(pl.scan_lines(block, name="__raw", row_index_name="__line", row_index_offset=first))

    def _split(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return _split_lines(lf, self.text, self.sep, self.header, self.columns, self.wanted, self.file_idx)


@dataclass(frozen=True)
class _Parquet:
    """A parquet file with the columns checked: read whole (``scan``) or in batches of rows (``windows``)."""

    path: Path
    schema: pl.Schema
    wanted: tuple[str, ...]
    file_idx: int

    def scan(self) -> pl.LazyFrame:
        return self._select(pl.scan_parquet(self.path).with_row_index("__line", offset=1))

    def windows(self, lines: int) -> Iterator[pl.LazyFrame]:
        columns = [c for c in self.wanted if c in self.schema]
        first = 1
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=lines, columns=columns):
            frame = pl.DataFrame(pl.from_arrow(batch))
            yield self._select(frame.lazy().with_row_index("__line", offset=first))
            first += frame.height

    def _select(self, lf: pl.LazyFrame) -> pl.LazyFrame:
        return lf.select(
            pl.lit(self.path.name).alias("__file"),
            pl.lit(self.file_idx, dtype=pl.UInt64).alias("__file_idx"),
            pl.col("__line").cast(pl.UInt64),
            pl.lit(None, dtype=pl.String).alias("__raw"),
            pl.lit(None, dtype=pl.String).alias("__reject"),
            pl.lit(None, dtype=pl.String).alias("__sep"),
            pl.lit(None, dtype=pl.Int64).alias("__ncols"),
            *(pl.col(c).cast(pl.String) if c in self.schema else pl.lit(None, pl.String).alias(c) for c in self.wanted),
        )


@dataclass(frozen=True)
class _Whole:
    """An input read as one frame (MovieLens-100K: its ratings joined with the side files)."""

    frame: pl.LazyFrame

    def scan(self) -> pl.LazyFrame:
        return self.frame

    def windows(self, lines: int) -> Iterator[pl.LazyFrame]:
        yield self.frame


def _sources(
    spec: DatasetSpec, inputs: list[Path], scratch: Path, optional: tuple[str, ...]
) -> list[_Delimited | _Parquet | _Whole]:
    """Each input checked, its layout resolved (InputError naming the file otherwise)."""
    if not inputs:
        raise InputError("no input files given")
    for path in inputs:
        if not path.exists():
            raise InputError(f"{path}: input file not found")
        if path.is_dir():
            raise InputError(f"{path}: is a directory, expected a file")
        if path.stat().st_size == 0:
            raise InputError(f"{path}: input file is empty")
        check_not_packed(path)
    check_distinct(inputs)
    if spec.format == "parquet":
        return [_parquet(spec, p, i, optional) for i, p in enumerate(inputs)]
    if spec.format == "movielens-100k":
        return [_Whole(_scan_movielens(spec, inputs, scratch))]
    return [_delimited(spec, read_text(p, scratch, i), spec.columns, i, optional) for i, p in enumerate(inputs)]


def _first_lines(path: Path, n: int) -> list[str]:
    lines: list[str] = []
    with path.open("rb") as f:
        for raw in f:
            lines.append(raw.decode("utf-8", errors="replace").rstrip("\r\n"))
            if len(lines) >= n:
                break
    if lines:
        lines[0] = lines[0].removeprefix("\ufeff")
    return lines


def _delimited(
    spec: DatasetSpec, text: TextFile, columns: tuple[str, ...], file_idx: int, optional: tuple[str, ...]
) -> _Delimited:
    sep, header, columns = _resolve_layout(spec, text.path, columns, optional=optional)
    return _Delimited(text, sep, header, columns, spec.required_columns, file_idx)


def _sniff_delimiter(head: list[str], columns: tuple[str, ...]) -> str:
    """The candidate that gives most sniffed lines the expected column count (tab, then comma, on ties)."""
    candidates = ["\t", ",", ";", "|"]
    if not columns:
        return next((c for c in candidates if c in head[0]), ",")
    fits = [sum(len(line.split(c)) == len(columns) for line in head) for c in candidates]
    return candidates[fits.index(max(fits))]


def _resolve_layout(
    spec: DatasetSpec,
    path: Path,
    columns: tuple[str, ...],
    delimiter: str | None = None,
    *,
    optional: tuple[str, ...] = (),
) -> tuple[str, bool, tuple[str, ...]]:
    """Delimiter, header and column names of one file; raises InputError when the file does not fit."""
    head = _first_lines(path, _SNIFF_LINES)
    if not any(line.strip() for line in head):
        raise InputError(f"{path}: input file has no data")
    first = head[0]
    sep = delimiter or spec.delimiter
    if sep == "auto":
        sep = _sniff_delimiter(head, columns)
    first_fields = first.split(sep)
    header = spec.header if delimiter is None else False
    if header is None:
        header = first_fields == list(columns) if columns else spec.label.column in first_fields
        if not header and optional and columns:  # a header of the spec's columns without optional ones
            header = first_fields == [c for c in columns if c not in optional]
    if header:
        columns = tuple(first_fields)
        missing = [c for c in spec.required_columns if c not in columns and c not in optional]
        if missing:
            raise InputError(f"{path}: header lacks columns {missing} required by dataset {spec.name!r}")
    elif not columns:
        raise InputError(f"{path}: no header line and dataset {spec.name!r} lists no `columns`")
    body = [line for line in (head[1:] if header else head) if line]
    if header and not body:
        raise InputError(f"{path}: input file has a header but no rows")
    counts = sorted({len(line.split(sep)) for line in body})
    if len(columns) not in counts:
        raise InputError(
            f"{path}: lines have {counts} columns (separator {sep!r}), dataset {spec.name!r} expects {len(columns)}"
        )
    return sep, header, columns


def _split_lines(
    lf: pl.LazyFrame,
    text: TextFile,
    sep: str,
    header: bool,
    columns: tuple[str, ...],
    wanted: tuple[str, ...],
    file_idx: int,
) -> pl.LazyFrame:
    """``lf``'s lines (``__raw``, 1-based ``__line`` in ``text``) split into the columns of :func:`scan_inputs`."""
    n = len(columns)
    raw = pl.col("__raw")
    line = pl.col("__line")
    if header:
        lf = lf.filter(line > 1)
    lf = lf.with_columns(raw.str.strip_suffix("\r"))
    if text.bom and not header:
        lf = lf.with_columns(pl.when(line == 1).then(raw.str.strip_prefix("\ufeff")).otherwise(raw))
    fields = pl.col("__fields")
    reject = (
        pl.when(raw == "")
        .then(pl.lit("empty line"))
        .when(fields.list.len() != n)
        .then(pl.lit("columns"))
        .otherwise(pl.lit(None, dtype=pl.String))
    )
    if text.bad_lines:
        bad = pl.Series(text.bad_lines, dtype=pl.UInt64).implode()
        reject = pl.when(line.cast(pl.UInt64).is_in(bad)).then(pl.lit("encoding")).otherwise(reject)
    index = {c: i for i, c in enumerate(columns)}
    return lf.with_columns(raw.str.split(sep).alias("__fields")).select(
        pl.lit(text.path.name).alias("__file"),
        pl.lit(file_idx, dtype=pl.UInt64).alias("__file_idx"),
        line.cast(pl.UInt64),
        raw,
        reject.alias("__reject"),
        pl.lit(sep).alias("__sep"),
        pl.lit(n, dtype=pl.Int64).alias("__ncols"),
        # Only the columns the spec reads; a wrongly shaped row is rejected, so its values never matter. A column
        # the file lacks (only an optional one gets here) is null.
        *(
            fields.list.get(index[c], null_on_oob=True).alias(c) if c in index else pl.lit(None, pl.String).alias(c)
            for c in wanted
        ),
    )


def _parquet(spec: DatasetSpec, path: Path, file_idx: int, optional: tuple[str, ...]) -> _Parquet:
    try:
        schema = pl.scan_parquet(path).collect_schema()
    except pl.exceptions.PolarsError as e:
        raise InputError(f"{path}: not a readable parquet file ({type(e).__name__})") from e
    missing = [c for c in spec.required_columns if c not in schema and c not in optional]
    if missing:
        raise InputError(f"{path}: parquet file lacks columns {missing} required by dataset {spec.name!r}")
    return _Parquet(path, schema, spec.required_columns, file_idx)


def _scan_movielens(spec: DatasetSpec, inputs: list[Path], scratch: Path) -> pl.LazyFrame:
    """MovieLens-100K as CTR rows: u.data joined with u.user and u.item (found beside u.data)."""
    by_name = {p.name: p for p in inputs}
    data = by_name.get("u.data") or inputs[0]
    user = by_name.get("u.user", data.parent / "u.user")
    item = by_name.get("u.item", data.parent / "u.item")
    for side in (user, item):
        if not side.is_file():
            raise InputError(f"{side}: MovieLens side file not found (expected beside {data.name})")
    rating_cols = ("user_id", "item_id", "rating", "timestamp")
    sep, header, cols = _resolve_layout(spec, data, rating_cols, delimiter="\t")
    text = read_text(data, scratch, 0)
    ratings = _Delimited(text, sep, header, cols, rating_cols, 0).scan()
    users = pl.read_csv(
        user,
        separator="|",
        has_header=False,
        new_columns=["user_id", "age", "gender", "occupation", "zip_code"],
        schema_overrides={c: pl.String for c in ["user_id", "age", "gender", "occupation", "zip_code"]},
    )
    genre_cols = [f"g{i}" for i in range(19)]
    items = pl.read_csv(
        item,
        separator="|",
        has_header=False,
        encoding="utf8-lossy",
        quote_char=None,
        new_columns=["item_id", "title", "release", "video_release", "url", *genre_cols],
        schema_overrides={"item_id": pl.String, "release": pl.String},
    )
    genre_names = (
        "unknown Action Adventure Animation Children Comedy Crime Documentary Drama Fantasy Film-Noir "
        "Horror Musical Mystery Romance Sci-Fi Thriller War Western"
    ).split()
    items = items.select(
        "item_id",
        pl.col("release").str.slice(-4).alias("release_year"),
        pl.concat_str(
            [pl.when(pl.col(g) == 1).then(pl.lit(name)) for g, name in zip(genre_cols, genre_names, strict=True)],
            separator="|",
            ignore_nulls=True,
        ).alias("genres"),
    )
    return (
        ratings.join(users.lazy(), on="user_id", how="left", maintain_order="left")
        .join(items.lazy(), on="item_id", how="left", maintain_order="left")
        .select("__file", "__file_idx", "__line", "__raw", "__reject", "__sep", "__ncols", *spec.required_columns)
    )
