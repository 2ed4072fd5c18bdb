"""Raw logs to encoded parquet shards + ``feature_map.json`` + ``report.json``, streamed by Polars.

The input text is parsed once, into a staged copy that the later passes read:

1. **stage**: scan -> split lines -> validate -> derive time parts -> (random) split -> LZ4 Arrow IPC files
   under ``.staged/`` in the temporary output directory, one folder per split and one for the rejected rows.
   They hold the parsed label and dense values and, for every single-valued vocabulary field, the value's
   code (``features.encode.Codes``: each string is hashed once, here); rejected rows keep their raw line
   and the reject message. Deleted once the shards are written.
2. **fit** (training rows): value counts by ``np.bincount`` of the codes, dense statistics and quantiles.
   (``--split time`` first reads the time quantiles, then filters instead of reading split folders.)
3. **encode**: ids by gathering from a code -> id array, dense transforms -> one parquet sink per split.

``rows_read`` is the staged row count; the quarantine file is the rejected folder. Peak memory is bounded
by the vocabularies, the value dictionaries and Polars' streaming buffers, not by the number of rows
(staged files hold at most ``_STAGE_ROWS`` rows, since a scan memory-maps a whole file).

Output goes to a temporary sibling directory that is renamed into place at the end, so an interrupted
run never leaves a half-written dataset behind (:func:`features.outputs.replaced_dir`: only a folder that
``ctr prepare`` made is ever replaced, with ``overwrite``, and the folder is locked while it is written).
The row accounting is checked from the written files:
``rows_read == sum(rows_written) + rows_rejected`` or the run fails.

Example:
    >>> report = prepare(builtin_spec("criteo"), [Path("day_0.tsv")], Path("prepared"))  # doctest: +SKIP
    >>> report["rows_read"] == sum(report["rows_written"].values()) + report["rows_rejected"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import json
import resource
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from fractions import Fraction
from functools import partial
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow.parquet as pq
from tqdm import tqdm

from config.strict import ConfigError, from_dict, to_dict
from features.encode import Codes, EncodePlan, fit_plan
from features.outputs import replaced_dir
from features.schema import FeatureMap
from features.sources import scan_inputs
from features.spec import DatasetSpec, InputError
from features.transforms import (
    SPLITS,
    TimeCut,
    assign_random_split,
    assign_time_split,
    derive_time_parts,
    parsed,
    rejected_reasons,
    time_columns,
    validate,
)

__all__ = ["GivenSplits", "PrepareOptions", "apply_feature_map", "prepare"]


@dataclass(frozen=True)
class PrepareOptions:
    """How to split and encode; ``min_count`` overrides the spec's default for fields without their own.

    ``split``: ``random`` (seeded hash of each row's file and line), ``time`` (ordered by time, cut by position),
    or ``given`` (the inputs come as :class:`GivenSplits`; ``seed`` and ``ratios`` are then unused).
    ``shard_rows``: at most this many rows per parquet shard (at least 1).
    """

    split: Literal["random", "time", "given"] = "random"
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_count: int | None = None
    shard_rows: int = 1_000_000
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or min(self.ratios) < 0 or sum(self.ratios) <= 0:
            raise ConfigError(f"split ratios must be three non-negative numbers, got {self.ratios}")
        if self.min_count is not None and self.min_count < 1:
            raise ConfigError(f"min_count must be >= 1, got {self.min_count}")
        if self.shard_rows < 1:  # Polars would read 0 as "no limit"
            raise ConfigError(f"shard_rows must be >= 1, got {self.shard_rows}")
        if self.seed < 0:
            raise ConfigError(f"seed must be >= 0, got {self.seed}")


@dataclass(frozen=True)
class GivenSplits:
    """Pre-split inputs, as BARS data sets ship them: every row of a file goes to that file's split.

    The vocabularies, min-counts, dense statistics and quantiles are fitted on the ``train`` files alone.
    Each split needs at least one file, and no file may be given twice (in one split or across splits).

    Example:
        >>> given = GivenSplits(train=(Path("train.csv"),), valid=(Path("valid.csv"),), test=(Path("test.csv"),))
        >>> [p.name for p in given.files]
        ['train.csv', 'valid.csv', 'test.csv']
    """

    train: tuple[Path, ...]
    valid: tuple[Path, ...]
    test: tuple[Path, ...]

    def __post_init__(self) -> None:
        for name in SPLITS:
            if not getattr(self, name):
                raise ConfigError(f"--{name}: pre-split inputs need at least one {name} file")

    @property
    def files(self) -> list[Path]:
        """Every input, train files first, then valid, then test: ``__file_idx`` indexes this list."""
        return [*self.train, *self.valid, *self.test]

    def split_of_file(self) -> list[str]:
        """The split of each of :attr:`files`, in order."""
        return [name for name in SPLITS for _ in getattr(self, name)]


def _assign_given_split(lf: pl.LazyFrame, given: GivenSplits) -> pl.LazyFrame:
    """``__split`` from the input file's position in ``given.files``."""
    by_file = dict(enumerate(given.split_of_file()))
    return lf.with_columns(pl.col("__file_idx").replace_strict(by_file, return_dtype=pl.String).alias("__split"))


class _Progress:
    """Counts rows as Polars streams them (rows and rows/s); thread-safe. A context manager."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.enabled = enabled
        # delay: a run that fails at once (a bad input file) shows no bar, only its one error line
        self._bar = tqdm(desc=desc, unit=" rows", unit_scale=True, disable=not enabled, mininterval=0.5, delay=1.0)
        self._lock = threading.Lock()

    def hook(self, expr: pl.Expr, dtype: pl.DataType) -> pl.Expr:
        def tick(s: pl.Series) -> pl.Series:
            with self._lock:
                self._bar.update(len(s))
            return s

        return expr.map_batches(tick, return_dtype=dtype, is_elementwise=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


_REJECTED = "rejected"
_STAGE_ROWS = 250_000  # rows per staged file: the scans memory-map a whole file, so this bounds that
# LZ4: 91 MB per million Criteo rows instead of 271 MB, at no measurable cost in time.
_STAGE_COMPRESSION: Literal["uncompressed", "lz4", "zstd"] = "lz4"


@dataclass(frozen=True)
class _Stage:
    """The parsed input, as Arrow IPC files under ``work/.staged/__part=<part>/``: one part per split
    (``valid`` when the split is decided later) and ``rejected``."""

    root: Path
    schema: pl.Schema

    def files(self, part: str) -> list[Path]:
        return sorted((self.root / f"__part={part}").glob("*.ipc"))

    def scan(self, part: str) -> pl.LazyFrame:
        files = self.files(part)
        if not files:
            return pl.LazyFrame(schema=self.schema)
        return pl.scan_ipc(files, hive_partitioning=False)

    def rows(self) -> int:
        files = sorted(self.root.glob("__part=*/*.ipc"))
        return int(pl.scan_ipc(files, hive_partitioning=False).select(pl.len()).collect().item()) if files else 0


def _stage(
    spec: DatasetSpec,
    inputs: list[Path],
    work: Path,
    codes: Codes,
    split: Callable[[pl.LazyFrame], pl.LazyFrame] | None,
    progress: _Progress,
    *,
    unlabelled: bool = False,
) -> _Stage:
    """Parse and validate ``inputs`` once into ``work/.staged``, the only pass over the input text.

    With a ``split`` that depends only on the row's file and position (random, given), rows are staged by
    split, so the fit reads the training rows alone and nothing filters; without one they are all staged as
    ``valid``. Single-valued vocabulary fields are staged as ``codes``; the raw line is kept for rejected rows
    only, with the reason. ``unlabelled``: a file may lack the label column, whose rows then get a null label
    (``ctr apply`` on serving data).
    """
    root = work / ".staged"
    optional = (spec.label.column,) if unlabelled else ()
    lf = scan_inputs(spec, inputs, root / "repaired", optional=optional)  # deleted with the staged files
    if progress.enabled:
        lf = lf.with_columns(progress.hook(pl.col("__line"), pl.UInt64()))
    lf = lf.pipe(validate, spec, unlabelled=unlabelled).pipe(derive_time_parts, spec)
    rejected = pl.col("__reject").is_not_null()
    part: pl.Expr = pl.lit("valid")
    if split is not None:
        lf = lf.pipe(split)
        part = pl.col("__split")
    staged = lf.select(
        pl.when(rejected).then(pl.col("__file")).alias("__file"),
        pl.when(rejected).then(pl.col("__raw")).alias("__raw"),
        rejected_reasons(spec).alias("__reason"),
        pl.col("__file_idx"),
        pl.col("__line"),
        pl.col("__label"),
        *(pl.col(parsed(d.name)) for d in spec.dense),
        *(pl.col(parsed(c)) for c in time_columns(spec)),
        *codes.stage(),
        *(pl.col(c.name) for c in spec.categorical if c.name not in codes.names),
        pl.when(rejected).then(pl.lit(_REJECTED)).otherwise(part).alias("__part"),
    )
    target = pl.PartitionBy(root, key="__part", include_key=False, max_rows_per_file=_STAGE_ROWS)
    staged.sink_ipc(target, compression=_STAGE_COMPRESSION, mkdir=True)
    return _Stage(root, staged.drop("__part").collect_schema())


def cut_positions(n: int, ratios: tuple[float, float, float]) -> tuple[int, int]:
    """Rows before the two cuts of ``n`` rows: ``floor(n * r1 / sum)`` and ``floor(n * (r1 + r2) / sum)``,
    in exact arithmetic on the ratios as written (``0.8`` is 4/5, not the float below it).

    Example:
        >>> cut_positions(10, (0.8, 0.1, 0.1)), cut_positions(7, (8, 1, 1))
        ((8, 9), (5, 6))
    """
    r1, r2, r3 = (Fraction(repr(r)) for r in ratios)
    total = r1 + r2 + r3
    return int(n * r1 / total), int(n * (r1 + r2) / total)


def _time_cuts(valid: pl.LazyFrame, column: str, ratios: tuple[float, float, float]) -> tuple[TimeCut, TimeCut]:
    """The two cuts of the ``(time, file, line)`` order at :func:`cut_positions` (see ``assign_time_split``).

    Reads the time column of every row (as the quantiles did before), then the file and line of the rows
    that share the cut's timestamp."""
    t = pl.col(parsed(column)).dt.epoch("us")
    times = valid.select(t.alias("t")).collect(engine="streaming")["t"].sort()
    if times.len() == 0:
        raise InputError("--split time: no valid rows with a time value")
    k1, k2 = cut_positions(times.len(), ratios)
    return _cut_at(valid, t, times, k1), _cut_at(valid, t, times, k2)


def _cut_at(valid: pl.LazyFrame, t: pl.Expr, times: pl.Series, k: int) -> TimeCut:
    """The ``(time, file, line)`` of the row at position ``k`` of the order (None past the last row)."""
    if k >= times.len():
        return None
    at = int(times[k])
    earlier = int(times.search_sorted(at, side="left"))  # rows strictly before ``at``
    ties = valid.filter(t == at).select("__file_idx", "__line").sort("__file_idx", "__line").collect()
    file, line = ties.row(k - earlier)
    return at, int(file), int(line)


def prepare(
    spec: DatasetSpec, inputs: list[Path] | GivenSplits, out: Path, options: PrepareOptions | None = None
) -> dict[str, Any]:
    """Fit and encode ``inputs`` into ``out``; returns the report (also written to ``out/report.json``).

    ``inputs`` is a list of files that ``options.split`` splits, or :class:`GivenSplits` with
    ``options.split == "given"``."""
    options = options or PrepareOptions()
    if isinstance(inputs, GivenSplits) != (options.split == "given"):
        raise ConfigError(f"split {options.split!r} does not fit the inputs: pre-split inputs go with split 'given'")
    if options.min_count is not None:
        spec = DatasetSpec(**{**spec.__dict__, "min_count": options.min_count})
    if options.split == "time" and spec.time is None:
        raise InputError(f"--split time needs a time column; dataset {spec.name!r} has none")
    files = inputs.files if isinstance(inputs, GivenSplits) else inputs
    if isinstance(inputs, GivenSplits) and spec.format == "movielens-100k":
        raise InputError(f"{inputs.train[0]}: pre-split inputs are not supported for the MovieLens-100K format")
    started = time.perf_counter()
    with replaced_dir(out, "ctr prepare", overwrite=options.overwrite, inputs=files) as work:
        split: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None
        if isinstance(inputs, GivenSplits):
            split = partial(_assign_given_split, given=inputs)
        elif options.split == "random":
            split = partial(assign_random_split, seed=options.seed, ratios=options.ratios)
        with _Progress("read", options.progress) as bar:
            codes = Codes(spec)
            stage = _stage(spec, files, work, codes, split, bar)
        if split is not None:
            parts = {s: stage.scan(s) for s in SPLITS}
        else:
            assert spec.time is not None
            valid = stage.scan("valid")
            cuts = _time_cuts(valid, spec.time.column, options.ratios)
            timed = valid.pipe(assign_time_split, spec.time.column, *cuts)
            parts = {s: timed.filter(pl.col("__split") == s) for s in SPLITS}
        split_info = _split_info(inputs, options, stage, cuts if split is None else None)
        plan = fit_plan(spec, parts["train"], work, codes)
        rows_read = _count_and_quarantine(stage, work)
        with _Progress("encode", options.progress) as bar:
            splits = _encode(plan, parts, work, options.shard_rows, bar)
        shutil.rmtree(stage.root)
        fm = FeatureMap(
            dataset=spec.name,
            label="label",
            dense=plan.dense_fields,
            categorical=plan.categorical_fields,
            splits=splits,
            source_spec=to_dict(spec),
            seed=options.seed,
            split_method=options.split,
        )
        fm.save(work / "feature_map.json")
        report = _report(spec, files, work, fm, rows_read, started)
        report["split"] = split_info
        if isinstance(inputs, GivenSplits):
            _check_given_rows(report)
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _split_info(
    inputs: list[Path] | GivenSplits, options: PrepareOptions, stage: _Stage, cuts: tuple[TimeCut, TimeCut] | None
) -> dict[str, Any]:
    """``report.json``'s ``split``: the method and what decided it (seed and ratios, time cuts, or the files
    with each split's staged and rejected rows, read before the staged files go)."""
    if isinstance(inputs, GivenSplits):
        rejected = dict(stage.scan(_REJECTED).group_by("__file_idx").len().collect().iter_rows())
        of_file = inputs.split_of_file()
        info: dict[str, Any] = {"method": "given"}
        for name in SPLITS:
            idx = [i for i, s in enumerate(of_file) if s == name]
            staged = stage.scan(name).select(pl.len()).collect().item()
            bad = sum(int(rejected.get(i, 0)) for i in idx)
            info[name] = {
                "files": [str(inputs.files[i]) for i in idx],
                "rows_read": int(staged) + bad,
                "rows_rejected": bad,
            }
        return info
    if cuts is None:
        return {"method": "random", "seed": options.seed, "ratios": list(options.ratios)}
    return {
        "method": "time",
        "ratios": list(options.ratios),
        # the time of each later split's first row (null: that split is empty)
        "time_cuts_us": [None if c is None else c[0] for c in cuts],
    }


def _check_given_rows(report: dict[str, Any]) -> None:
    """Per split, as for the whole: rows read = rows written + rows rejected."""
    for name in SPLITS:
        info = report["split"][name]
        written = report["rows_written"][name]
        if info["rows_read"] != written + info["rows_rejected"]:
            raise RuntimeError(f"row accounting failed for split {name}: {info}, written {written}; output discarded")


def apply_feature_map(
    feature_map: Path,
    inputs: list[Path],
    out: Path,
    split: str = "apply",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Encode new rows (validation, test, serving) with a fitted map; unseen values get the OOV id.

    Reads only the columns the map encodes, and the label: not the split's time column (unless a field
    derives from it). A file without the label column (serving data, header or parquet) applies too: its rows
    get a null ``label``. A file that has the label column has it checked as in ``prepare``.
    """
    fm = FeatureMap.load(feature_map)
    root = feature_map if feature_map.is_dir() else feature_map.parent
    spec = from_dict(DatasetSpec, fm.source_spec, where=f"{feature_map}: source_spec")
    plan = EncodePlan.from_feature_map(spec, fm, root)
    read = replace(spec, time=None)  # the split's time column is not encoded
    started = time.perf_counter()
    with replaced_dir(out, "ctr apply", overwrite=overwrite, inputs=[*inputs, feature_map]) as work:
        with _Progress("read", progress) as bar:
            codes = Codes(spec)
            stage = _stage(read, inputs, work, codes, None, bar, unlabelled=True)
        plan = plan.bind(codes)
        rows_read = _count_and_quarantine(stage, work)
        with _Progress("encode", progress) as bar:
            splits = _encode(plan, {split: stage.scan("valid")}, work, 1_000_000, bar)
        shutil.rmtree(stage.root)
        applied = FeatureMap(**{**fm.__dict__, "splits": splits})
        report = _report(spec, inputs, work, applied, rows_read, started)
        report["feature_map"] = str(feature_map)
        report["feature_map_hash"] = fm.content_hash
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _count_and_quarantine(stage: _Stage, work: Path) -> int:
    """Write the staged rejects to ``rejects.parquet``; returns ``rows_read`` (every staged row).

    Runs after the fit, so ``rejects.parquet`` appearing marks the start of the encode pass (which
    ``benchmarks/prepare_memory.py`` uses to split its memory samples by phase)."""
    _rejects(stage.scan(_REJECTED)).collect().write_parquet(work / "rejects.parquet")
    return stage.rows()


def _rejects(rejected: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantined rows with file, line, readable reason and the raw text."""
    return rejected.select(
        pl.col("__file").alias("file"),
        pl.col("__line").alias("line"),
        pl.col("__reason").alias("reason"),
        pl.col("__raw").alias("raw"),
    )


def _encode(
    plan: EncodePlan, parts: dict[str, pl.LazyFrame], work: Path, shard_rows: int, progress: _Progress
) -> dict[str, tuple[str, ...]]:
    """One streaming sink per split, into ``work/<split>/`` in shards of at most ``shard_rows`` rows."""
    for s, rows in parts.items():
        if progress.enabled:
            rows = rows.with_columns(progress.hook(pl.col("__label"), pl.Float32()))
        target = pl.PartitionBy(work / s, max_rows_per_file=shard_rows)
        # zstd level 1: the same size as the default level on these shards, for a third less CPU.
        plan.encode(rows).sink_parquet(target, compression="zstd", compression_level=1, mkdir=True)
        for empty in [p for p in (work / s).glob("*.parquet") if _rows(p) == 0]:  # an empty split has no shards
            empty.unlink()
    return {s: tuple(str(p.relative_to(work)) for p in sorted((work / s).glob("*.parquet"))) for s in parts}


def _rows(path: Path) -> int:
    return int(pq.ParquetFile(path).metadata.num_rows)


def _report(
    spec: DatasetSpec, inputs: list[Path], work: Path, fm: FeatureMap, rows_read: int, started: float
) -> dict[str, Any]:
    written = {s: sum(_rows(work / p) for p in files) for s, files in fm.splits.items()}
    rejected = _rows(work / "rejects.parquet")
    if rows_read != sum(written.values()) + rejected:
        raise RuntimeError(
            f"row accounting failed: read {rows_read}, written {written}, rejected {rejected}; output discarded"
        )
    by_reason = (
        pl.scan_parquet(work / "rejects.parquet")
        .group_by(pl.col("reason").str.split(":").list.first().alias("reason"))
        .len()
        .sort("len", descending=True)
        .collect()
    )
    seconds = time.perf_counter() - started
    return {
        "dataset": spec.name,
        "inputs": [{"path": str(p), "bytes": p.stat().st_size} for p in inputs],
        "rows_read": rows_read,
        "rows_rejected": rejected,
        "rows_written": written,
        "rejects_by_reason": dict(zip(by_reason["reason"].to_list(), by_reason["len"].to_list(), strict=True)),
        "fields": {
            "dense": [f.name for f in fm.dense],
            "categorical": {f.name: f.cardinality for f in fm.categorical},
        },
        "embedding_rows": sum(f.cardinality for f in fm.categorical),
        "seconds": round(seconds, 3),
        "rows_per_sec": round(rows_read / seconds, 1) if seconds > 0 else None,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
