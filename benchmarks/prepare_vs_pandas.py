"""Prepare throughput: ``features.prepare.prepare`` against a pandas baseline of the same transforms.

Both implementations turn one synthetic Criteo TSV (label, I1..I13, C1..C26, no header; 1M rows by
default, written with ``features.synth.write_synthetic`` into a temporary directory unless ``--data`` is
given) into train/valid/test parquet files, in one process, one after the other, ``--repeat`` times each;
the median wall time is reported.

* **polars**: ``prepare(builtin_spec("criteo"), [file], out, PrepareOptions(progress=False))``: one
  streaming parse of the text into a staged copy (validated rows, value codes), then the fit and encode
  passes over that copy; per-row validation with a quarantine file, report and feature map.
* **pandas baseline** (``pandas_prepare`` below; a baseline for this benchmark only, not library code),
  written the way FuxiCTR's ``FeatureProcessor`` and OptEmbed's Criteo preprocessing do it: read the whole
  file with ``read_csv(dtype=str)``; label to float; dense fields ``to_numeric`` with nulls filled by 0,
  then ``Series.apply`` of ``math.log1p(max(v, 0))`` per value (the built-in spec's transform); the platform's
  deterministic 8:1:1 split (the same ``mix64`` hash of file index and 1-based line number); vocabularies
  from ``value_counts`` on the train rows (min_count 1, ids from 2 by descending count, ties by value;
  0 = empty, 1 = out of vocabulary), applied with ``Series.map(dict)``; one ``to_parquet`` per split.

The outputs are then checked to be identical: the polars shards of each split, concatenated, against the
pandas frames, column by column (dense float32 within 1e-6, everything else exactly).

Example:
    >>> # python benchmarks/prepare_vs_pandas.py --rows 1000000 --repeat 3   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import pandas as pd
import polars as pl

from features.hashing import mix64
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from features.transforms import SPLITS

DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *DENSE, *CATEGORICAL]
MISSING_ID, OOV_ID, FIRST_VALUE_ID = 0, 1, 2
DENSE_TOLERANCE = 1e-6
T = TypeVar("T")


# --------------------------------------------------------------------------------------------------
# pandas baseline (benchmark only)
# --------------------------------------------------------------------------------------------------


def _log1p(v: float) -> float:
    """The built-in Criteo spec's transform of one dense value (DLRM's): ``log(1 + max(v, 0))``."""
    return math.log1p(max(v, 0.0))


def _random_split(n: int, seed: int, ratios: tuple[float, float, float], file_idx: int = 0) -> np.ndarray:
    """The split of ``features.transforms.assign_random_split``, recomputed with numpy for ``n`` rows."""
    total = sum(ratios)
    c1, c2 = ratios[0] / total, (ratios[0] + ratios[1]) / total
    line = np.arange(1, n + 1, dtype=np.uint64)
    key = np.uint64(file_idx) * np.uint64(1 << 40) + line
    h = mix64(key ^ mix64(np.full(n, seed, dtype=np.uint64)))
    u = (h >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return np.where(u < c1, "train", np.where(u < c2, "valid", "test"))


def _vocabulary(train_values: pd.Series, min_count: int = 1) -> dict[str, int]:
    """value -> id: non-empty training values with ``count >= min_count``, by descending count, ties by value."""
    counts = train_values[train_values != ""].value_counts()
    table = counts[counts >= min_count].rename_axis("value").reset_index(name="count")
    table = table.sort_values(["count", "value"], ascending=[False, True], kind="stable")
    return dict(zip(table["value"], range(FIRST_VALUE_ID, FIRST_VALUE_ID + len(table)), strict=True))


def pandas_prepare(
    path: Path, out: Path, seed: int = 0, ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
) -> dict[str, pd.DataFrame]:
    """Baseline: the Criteo transforms in pandas; writes ``out/<split>.parquet`` and returns the frames."""
    raw = pd.read_csv(path, sep="\t", header=None, names=COLUMNS, dtype=str, keep_default_na=False)
    df = pd.DataFrame(index=raw.index)
    df["label"] = raw["label"].astype(float).astype(np.float32)
    for c in DENSE:
        v = pd.to_numeric(raw[c], errors="coerce").fillna(0)
        df[c] = v.apply(_log1p).astype(np.float32)
    split = _random_split(len(raw), seed, ratios)
    is_train = split == "train"
    for c in CATEGORICAL:
        vocab = _vocabulary(raw.loc[is_train, c])
        ids = raw[c].map(vocab).fillna(OOV_ID)
        df[c] = ids.where(raw[c] != "", MISSING_ID).astype(np.int32)
    out.mkdir(parents=True, exist_ok=True)
    frames: dict[str, pd.DataFrame] = {}
    for s in SPLITS:
        frames[s] = df[split == s].reset_index(drop=True)
        frames[s].to_parquet(out / f"{s}.parquet", index=False)
    return frames


# --------------------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------------------


def polars_prepare(path: Path, out: Path) -> dict[str, pl.DataFrame]:
    """The platform's pipeline; returns the written shards of each split, concatenated."""
    prepare(builtin_spec("criteo"), [path], out, PrepareOptions(progress=False))
    return {s: pl.read_parquet(sorted((out / s).glob("*.parquet"))) for s in SPLITS}


def compare(ours: dict[str, pl.DataFrame], theirs: dict[str, pd.DataFrame]) -> list[str]:
    """Differences between the two outputs (empty when identical)."""
    problems: list[str] = []
    for s in SPLITS:
        a, b = ours[s], theirs[s]
        if a.columns != list(b.columns):
            problems.append(f"{s}: columns differ: {a.columns} vs {list(b.columns)}")
            continue
        if a.height != len(b):
            problems.append(f"{s}: {a.height} rows vs {len(b)} rows")
            continue
        for c in a.columns:
            x, y = a[c].to_numpy(), b[c].to_numpy()
            if x.dtype != y.dtype:
                problems.append(f"{s}.{c}: dtype {x.dtype} vs {y.dtype}")
            if c in DENSE:
                diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
                bad = int(np.count_nonzero(~(diff <= DENSE_TOLERANCE)))
                if bad:
                    problems.append(f"{s}.{c}: {bad} values differ by > {DENSE_TOLERANCE} (max {diff.max():g})")
            else:
                bad = int(np.count_nonzero(x != y))
                if bad:
                    problems.append(f"{s}.{c}: {bad} values differ")
    return problems


def timed(fn: Callable[[Path], T], root: Path, name: str, repeat: int) -> tuple[list[float], T]:
    """Run ``fn(out_dir)`` ``repeat`` times (fresh output directory each time); times and the last result."""
    times: list[float] = []
    result: T | None = None
    for i in range(repeat):
        out = root / f"{name}-{i}"
        result = None
        gc.collect()
        start = time.perf_counter()
        result = fn(out)
        times.append(time.perf_counter() - start)
        print(f"  {name} run {i + 1}/{repeat}: {times[-1]:.2f} s", file=sys.stderr, flush=True)
        if i + 1 < repeat:
            shutil.rmtree(out)
    assert result is not None, "--repeat must be >= 1"
    return times, result


def machine_info() -> list[str]:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), "?")
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return [
        f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}",
        f"- machine: {platform.machine()}, {cpu}, nproc={usable}, load average at start {load}",
        f"- python {sys.version.split()[0]}, polars {pl.__version__}, pandas {pd.__version__}, numpy {np.__version__}",
        f"- polars thread pool: {pl.thread_pool_size()}",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the synthetic file")
    parser.add_argument("--data", type=Path, help="use this Criteo TSV instead of generating one")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each implementation (median reported)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the synthetic data")
    args = parser.parse_args()
    info = machine_info()

    with tempfile.TemporaryDirectory(prefix="ctr-prepare-bench-") as tmp:
        root = Path(tmp)
        if args.data is not None:
            data = args.data
        else:
            data = root / "criteo.tsv"
            t0 = time.perf_counter()
            write_synthetic(args.rows, data, seed=args.seed)
            print(f"  wrote {data} in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
        with data.open("rb") as f:
            rows = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))
        size = data.stat().st_size

        pol_times, pol_out = timed(lambda out: polars_prepare(data, out), root, "polars", args.repeat)
        pd_times, pd_out = timed(lambda out: pandas_prepare(data, out), root, "pandas", args.repeat)
        problems = compare(pol_out, pd_out)
        split_rows = {s: len(pd_out[s]) for s in SPLITS}

    end_load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print("## Prepare benchmark: polars `prepare` vs a pandas baseline (benchmarks/prepare_vs_pandas.py)\n")
    print("\n".join(info))
    print(f"- load average at end {end_load} (other processes may share the CPU; timings are wall clock)")
    source = str(args.data) if args.data is not None else f"synthetic Criteo TSV (seed {args.seed})"
    print(f"- data: {source}, {rows:,} rows, {size / 1e6:,.1f} MB; split {split_rows}")
    print(f"- {args.repeat} runs of each, in one process, one after the other; median wall seconds\n")
    print("| implementation | seconds (median) | rows/s | speed-up |")
    print("|---|---:|---:|---:|")
    pd_med, pol_med = statistics.median(pd_times), statistics.median(pol_times)
    for label, times, med in (
        ("pandas baseline (read_csv, Series.apply, value_counts, Series.map)", pd_times, pd_med),
        ("polars `features.prepare.prepare`", pol_times, pol_med),
    ):
        all_runs = ", ".join(f"{t:.2f}" for t in times)
        print(f"| {label} [runs: {all_runs}] | {med:.2f} | {rows / med:,.0f} | {pd_med / med:.2f}x |")
    print()
    if problems:
        print(f"Outputs MATCH: no ({len(problems)} differences)")
        for p in problems[:20]:
            print(f"  - {p}")
    else:
        print(
            "Outputs MATCH: yes (train/valid/test: same rows in the same order; label, C1..C26 equal; "
            f"I1..I13 float32 within {DENSE_TOLERANCE})"
        )
    print("\nNotes:")
    print(
        "- The polars pipeline also validates every row (label 0/1, numeric dense values, column count) and "
        "quarantines bad rows with their line numbers in rejects.parquet, checks the row accounting, and writes "
        "feature_map.json, vocab/*.parquet and report.json; the pandas baseline does none of that (a malformed "
        "line would make it fail or silently mis-parse)."
    )
    print(
        "- The polars pipeline parses the file once with the streaming engine into a staged copy (LZ4 Arrow IPC "
        "in its temporary output directory, deleted at the end), which the fit and encode passes read; the pandas "
        "baseline reads it once and holds it all in memory as strings. Peak memory is measured by "
        "benchmarks/prepare_memory.py."
    )


if __name__ == "__main__":
    main()
