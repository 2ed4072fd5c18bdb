"""Raw logs to encoded parquet shards + ``feature_map.json`` + ``report.json``, streamed by Polars.

Three streaming passes over the input, each one lazy query:

1. **fit**: scan -> validate -> split -> vocabulary counts (one ``group_by`` over (field, value) pairs),
   dense statistics and quantiles on the train split. (``--split time`` adds a pass for the time quantiles.)
2. **count**: scan -> validate -> the row count and the quarantined rows (kept apart from the fit query:
   sharing one scan between unequal consumers makes Polars buffer rows, and memory grows with the input).
3. **encode**: scan -> validate -> split -> ids (joins against the vocabularies) and transforms -> one
   parquet sink partitioned by split.

Peak memory is bounded by the vocabularies and Polars' streaming buffers, not by the number of rows.

Output goes to a temporary sibling directory that is renamed into place at the end, so an interrupted
run never leaves a half-written dataset behind. The row accounting is checked from the written files:
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
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import polars as pl
import pyarrow.parquet as pq
from tqdm import tqdm

from features.encode import EncodePlan, fit_plan
from features.schema import FeatureMap
from features.sources import scan_inputs
from features.spec import DatasetSpec, InputError
from features.strict import from_dict, to_dict
from features.transforms import (
    SPLITS,
    assign_random_split,
    assign_time_split,
    derive_time_parts,
    parsed,
    reject_reason,
    validate,
)

__all__ = ["PrepareOptions", "apply_feature_map", "prepare"]


@dataclass(frozen=True)
class PrepareOptions:
    """How to split and encode; ``min_count`` overrides the spec's default for fields without their own."""

    split: Literal["random", "time"] = "random"
    seed: int = 0
    ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    min_count: int | None = None
    shard_rows: int = 1_000_000
    progress: bool = True
    overwrite: bool = False

    def __post_init__(self) -> None:
        if len(self.ratios) != 3 or min(self.ratios) < 0 or sum(self.ratios) <= 0:
            raise ValueError(f"split ratios must be three non-negative numbers, got {self.ratios}")
        if self.min_count is not None and self.min_count < 1:
            raise ValueError(f"min_count must be >= 1, got {self.min_count}")


class _Progress:
    """Counts rows as Polars streams them (rows and rows/s); thread-safe. A context manager."""

    def __init__(self, desc: str, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = tqdm(desc=desc, unit=" rows", unit_scale=True, disable=not enabled, mininterval=0.5)
        self._lock = threading.Lock()

    def hook(self, expr: pl.Expr) -> pl.Expr:
        def tick(s: pl.Series) -> pl.Series:
            with self._lock:
                self._bar.update(len(s))
            return s

        return expr.map_batches(tick, return_dtype=pl.String, is_elementwise=True)

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._bar.close()


def _base(spec: DatasetSpec, inputs: list[Path], progress: _Progress | None) -> pl.LazyFrame:
    lf = scan_inputs(spec, inputs)
    if progress is not None and progress.enabled:  # the label column is read by every query, so the hook always runs
        lf = lf.with_columns(progress.hook(pl.col(spec.label.column)))
    return lf.pipe(validate, spec)


def _time_cuts(valid: pl.LazyFrame, column: str, ratios: tuple[float, float, float]) -> tuple[int, int]:
    total = sum(ratios)
    t = pl.col(parsed(column)).dt.epoch("us")
    q = valid.select(
        t.quantile(ratios[0] / total, "lower").alias("c1"),
        t.quantile((ratios[0] + ratios[1]) / total, "lower").alias("c2"),
    ).collect(engine="streaming")
    if q["c1"][0] is None:
        raise InputError("time split: no valid rows with a time value")
    # Rows at the cut time go to the later split, so no timestamp is shared between splits.
    return int(q["c1"][0]), int(q["c2"][0])


def _splitter(
    valid: pl.LazyFrame, spec: DatasetSpec, options: PrepareOptions
) -> tuple[Callable[[pl.LazyFrame], pl.LazyFrame], dict[str, Any]]:
    """The step that derives time parts and assigns ``__split``, fixed once (the time cuts cost a pass)."""
    if options.split == "time":
        if spec.time is None:
            raise InputError(f"--split time needs a time column; dataset {spec.name!r} has none")
        column = spec.time.column
        cuts = _time_cuts(valid, column, options.ratios)
        return (
            lambda lf: lf.pipe(derive_time_parts, spec).pipe(assign_time_split, column, *cuts),
            {"time_cuts_us": list(cuts)},
        )
    return (
        lambda lf: lf.pipe(derive_time_parts, spec).pipe(assign_random_split, options.seed, options.ratios),
        {"ratios": list(options.ratios)},
    )


def prepare(spec: DatasetSpec, inputs: list[Path], out: Path, options: PrepareOptions | None = None) -> dict[str, Any]:
    """Fit and encode ``inputs`` into ``out``; returns the report (also written to ``out/report.json``)."""
    options = options or PrepareOptions()
    if options.min_count is not None:
        spec = DatasetSpec(**{**spec.__dict__, "min_count": options.min_count})
    started = time.perf_counter()
    with _staged(out, options.overwrite) as work:
        with _Progress("fit", options.progress) as bar:
            base = _base(spec, inputs, bar)
            valid = base.filter(pl.col("__reject").is_null())
            split, split_info = _splitter(valid, spec, options)
            plan, _ = fit_plan(spec, split(valid).filter(pl.col("__split") == "train"), work)
        rows_read = _count_and_quarantine(spec, base, work)
        with _Progress("encode", options.progress) as bar:
            base = _base(spec, inputs, bar)
            splits = _encode(plan, split(base.filter(pl.col("__reject").is_null())), work, SPLITS, options.shard_rows)
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
        report = _report(spec, inputs, work, fm, rows_read, started)
        report["split"] = {"method": options.split, "seed": options.seed, **split_info}
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def apply_feature_map(
    feature_map: Path,
    inputs: list[Path],
    out: Path,
    split: str = "apply",
    *,
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Encode new rows (validation, test, serving) with a fitted map; unseen values get the OOV id."""
    fm = FeatureMap.load(feature_map)
    root = feature_map if feature_map.is_dir() else feature_map.parent
    spec = from_dict(DatasetSpec, fm.source_spec, where=f"{feature_map}: source_spec")
    plan = EncodePlan.from_feature_map(spec, fm, root)
    started = time.perf_counter()
    with _staged(out, overwrite) as work:
        rows_read = _count_and_quarantine(spec, _base(spec, inputs, None), work)
        with _Progress("encode", progress) as bar:
            base = _base(spec, inputs, bar)
            valid = base.filter(pl.col("__reject").is_null()).pipe(derive_time_parts, spec)
            splits = _encode(plan, valid.with_columns(pl.lit(split).alias("__split")), work, (split,), 1_000_000)
        applied = FeatureMap(**{**fm.__dict__, "splits": splits})
        report = _report(spec, inputs, work, applied, rows_read, started)
        report["feature_map"] = str(feature_map)
        report["feature_map_hash"] = fm.content_hash
        (work / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


@contextmanager
def _staged(out: Path, overwrite: bool) -> Iterator[Path]:
    """A temporary sibling of ``out`` that replaces it on success and disappears on any failure."""
    _check_out(out, overwrite)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield work
        if out.exists():
            shutil.rmtree(out)
        work.rename(out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _count_and_quarantine(spec: DatasetSpec, base: pl.LazyFrame, work: Path) -> int:
    """Count every row and write the rejects, in a query of its own (sharing the fit query's scan makes
    Polars buffer rows). Returns ``rows_read``."""
    count, rejects = pl.collect_all([base.select(pl.len()), _rejects(spec, base)], engine="streaming")
    rejects.write_parquet(work / "rejects.parquet")
    return int(count.item())


def _check_out(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError(f"{out}: output directory is not empty (use --overwrite to replace it)")
    out.parent.mkdir(parents=True, exist_ok=True)


def _rejects(spec: DatasetSpec, base: pl.LazyFrame) -> pl.LazyFrame:
    """Quarantined rows with file, line, readable reason and the raw text."""
    return base.filter(pl.col("__reject").is_not_null()).select(
        pl.col("__file").alias("file"),
        pl.col("__line").alias("line"),
        reject_reason(spec).alias("reason"),
        pl.col("__raw").alias("raw"),
    )


def _encode(
    plan: EncodePlan, valid: pl.LazyFrame, work: Path, splits: tuple[str, ...], shard_rows: int
) -> dict[str, tuple[str, ...]]:
    """One streaming sink partitioned by split (separate sinks would each re-read the input)."""
    encoded = plan.encode(valid, keep=["__split"])
    target = pl.PartitionBy(work / "parts", key="__split", include_key=False, max_rows_per_file=shard_rows)
    encoded.sink_parquet(target, mkdir=True)
    for s in splits:
        part = work / "parts" / f"__split={s}"
        if part.exists():
            part.rename(work / s)
        else:
            (work / s).mkdir()
    shutil.rmtree(work / "parts", ignore_errors=True)
    return {s: tuple(str(p.relative_to(work)) for p in sorted((work / s).glob("*.parquet"))) for s in splits}


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
