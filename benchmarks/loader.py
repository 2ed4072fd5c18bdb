"""Loader throughput: ``ctr.data.loader.make_loader`` against a per-row ``TensorDataset`` baseline.

Writes a synthetic prepared directory (13 dense fields, 26 single-valued categorical fields with
cardinalities in [1000, 100000], one multi-valued field with 0-5 ids per row; 4 train shards) with Polars
into a temporary directory, then times, in one process:

* ``load_split`` of the train split;
* one shuffled epoch of ``make_loader`` at batch 4096 (vectorised ``ColumnarSplit.batch``);
* a baseline: ``TensorDataset`` + the default ``DataLoader`` fetching rows one by one and a collate
  function that builds the same KJT with per-row Python, the way generic loaders do (first N batches only).

Both run with ``num_workers=0``; the figures are printed as a Markdown table.

Example:
    >>> # python benchmarks/loader.py --rows 1000000 --baseline-batches 50   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import torch
import torchrec
from torch.utils.data import DataLoader, TensorDataset
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from ctr.data.columnar import ColumnarSplit
from ctr.data.loader import make_loader
from ctr.data.shards import load_split
from features.schema import CategoricalField, DenseField, FeatureMap

N_DENSE, N_SINGLE, MAX_MULTI, MULTI_AT, MULTI_CARD = 13, 26, 5, 13, 1000


def build_dataset(root: Path, rows: int, shards: int, seed: int) -> FeatureMap:
    """Write ``shards`` train shards and ``feature_map.json`` under ``root``; return the map."""
    rng = np.random.default_rng(seed)
    cards = rng.integers(1000, 100_001, size=N_SINGLE)
    lens = rng.integers(0, MAX_MULTI + 1, size=rows)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    multi = pa.LargeListArray.from_arrays(
        pa.array(offsets), pa.array(rng.integers(0, MULTI_CARD, size=int(offsets[-1]), dtype=np.int32))
    )
    columns: dict[str, Any] = {"label": (rng.random(rows) < 0.25).astype(np.float32)}
    columns |= {f"I{i}": rng.standard_normal(rows, dtype=np.float32) for i in range(N_DENSE)}
    categorical: list[CategoricalField] = []
    for i, card in enumerate(cards):
        if i == MULTI_AT:  # one multi-valued field in the middle of the key order
            columns["M0"] = pl.Series("M0", multi, dtype=pl.List(pl.Int32))
            categorical.append(CategoricalField("M0", "vocab", MULTI_CARD, multi_valued=True))
        columns[f"C{i}"] = rng.integers(0, card, size=rows, dtype=np.int32)
        categorical.append(CategoricalField(f"C{i}", "vocab", int(card)))
    frame = pl.DataFrame(columns)
    bounds = np.linspace(0, rows, shards + 1).astype(int)
    paths = []
    for s in range(shards):
        rel = f"train/part-{s}.parquet"
        (root / "train").mkdir(parents=True, exist_ok=True)
        frame.slice(int(bounds[s]), int(bounds[s + 1] - bounds[s])).write_parquet(root / rel)
        paths.append(rel)
    fm = FeatureMap(
        dataset="synthetic",
        label="label",
        dense=tuple(DenseField(f"I{i}", "none", 0.0, 0.0, 1.0) for i in range(N_DENSE)),
        categorical=tuple(categorical),
        splits={"train": tuple(paths)},
        source_spec={"generator": "benchmarks/loader.py", "rows": rows, "seed": seed},
        seed=seed,
        split_method="none",
    )
    fm.save(root / "feature_map.json")
    return FeatureMap.load(root)


def baseline_dataset(split: ColumnarSplit) -> TensorDataset:
    """Row-wise tensors, as a generic pipeline would hold them: multi-valued ids padded to MAX_MULTI."""
    name = next(iter(split.multi))
    offsets, values = split.multi[name]
    lens = np.diff(offsets)
    padded = np.zeros((len(split), MAX_MULTI), dtype=np.int64)
    padded[np.arange(MAX_MULTI) < lens[:, None]] = values
    return TensorDataset(
        torch.from_numpy(split.dense),
        torch.from_numpy(split.labels),
        torch.from_numpy(split.sparse.astype(np.int64)),
        torch.from_numpy(padded),
        torch.from_numpy(lens.astype(np.int64)),
    )


class PerRowCollate:
    """Builds the KJT from a list of per-row samples with per-row Python (the generic-loader way)."""

    def __init__(self, fm: FeatureMap) -> None:
        self.keys = list(fm.sparse_names)
        single = [f.name for f in fm.categorical if not f.multi_valued]
        self.slots = [None if f.multi_valued else single.index(f.name) for f in fm.categorical]

    def __call__(self, rows: list[tuple[torch.Tensor, ...]]) -> Batch:
        sparse = [r[2].tolist() for r in rows]
        multi = [r[3][: int(r[4])].tolist() for r in rows]
        values: list[int] = []
        lengths: list[int] = []
        for slot in self.slots:
            if slot is None:
                for ids in multi:
                    values.extend(ids)
                    lengths.append(len(ids))
            else:
                values.extend(row[slot] for row in sparse)
                lengths.extend([1] * len(rows))
        kjt = KeyedJaggedTensor(
            keys=self.keys,
            values=torch.tensor(values, dtype=torch.int64),
            lengths=torch.tensor(lengths, dtype=torch.int32),
        )
        return Batch(
            dense_features=torch.stack([r[0] for r in rows]),
            sparse_features=kjt,
            labels=torch.stack([r[1] for r in rows]),
        )


def timed_epoch(loader: DataLoader[Batch], max_batches: int | None) -> tuple[int, int, float]:
    batches = samples = 0
    start = time.perf_counter()
    for batch in loader:
        batches += 1
        samples += int(batch.labels.shape[0])
        if max_batches is not None and batches >= max_batches:
            break
    return batches, samples, time.perf_counter() - start


def check_same_batch(split: ColumnarSplit, dataset: TensorDataset, collate: PerRowCollate) -> None:
    idx: npt.NDArray[np.int64] = np.random.default_rng(1).permutation(len(split))[:512]
    ours, ref = split.batch(idx), collate([dataset[int(i)] for i in idx])
    assert torch.equal(ours.sparse_features.values(), ref.sparse_features.values())
    assert torch.equal(ours.sparse_features.lengths(), ref.sparse_features.lengths())
    assert torch.equal(ours.dense_features, ref.dense_features) and torch.equal(ours.labels, ref.labels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--baseline-batches", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="ctr-loader-bench-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        fm = build_dataset(root, args.rows, args.shards, args.seed)
        t_build = time.perf_counter() - t0
        t0 = time.perf_counter()
        split = load_split(root, fm, "train")
        t_load = time.perf_counter() - t0

    loader = make_loader(split, args.batch_size, shuffle=True, seed=args.seed)
    loader.sampler.set_epoch(0)  # type: ignore[attr-defined]
    ours = timed_epoch(loader, None)

    dataset = baseline_dataset(split)
    collate = PerRowCollate(fm)
    check_same_batch(split, dataset, collate)
    naive = DataLoader(dataset, batch_size=args.batch_size, shuffle=True, collate_fn=collate)
    base = timed_epoch(naive, args.baseline_batches)

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), "?")
    print("## Loader benchmark (benchmarks/loader.py)\n")
    print(f"- machine: {platform.machine()}, {cpu}, nproc={os.cpu_count()}, torch threads={torch.get_num_threads()}")
    print(
        f"- python {sys.version.split()[0]}, torch {torch.__version__}, torchrec {torchrec.__version__}, "
        f"numpy {np.__version__}, polars {pl.__version__}, pyarrow {pa.__version__}"
    )
    print(
        f"- data: {args.rows:,} rows, {N_DENSE} dense, {N_SINGLE} single-valued + 1 multi-valued "
        f"(0-{MAX_MULTI} ids) categorical, {args.shards} shards; batch {args.batch_size}, shuffle, "
        "num_workers=0"
    )
    print(f"- write shards (polars): {t_build:.2f} s; load_split: {t_load:.2f} s\n")
    print("| loader | batches | samples | seconds | batches/s | samples/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, (b, n, s) in (
        ("make_loader (vectorised, full epoch)", ours),
        (f"TensorDataset + per-row collate (first {args.baseline_batches} batches)", base),
    ):
        print(f"| {label} | {b} | {n:,} | {s:.2f} | {b / s:,.1f} | {n / s:,.0f} |")
    print(f"\nspeed-up (samples/s): {(ours[1] / ours[2]) / (base[1] / base[2]):.1f}x")


if __name__ == "__main__":
    main()
