"""FBGEMM's CPU table kernels for float32 against float16 rows (``model.table_dtype``), one core.

The tables are one ``SplitTableBatchedEmbeddingBagsCodegen`` (the kernel TorchRec's CPU sharding builds):
one table per categorical field of a prepared dataset, at DeepFM's row width of the training benchmark
(16 embedding + 4 first-order columns), with the fused EXACT_ROWWISE_ADAGRAD update. Each step pools one
real batch of 4096 rows (the training loader's batches, in order) and runs backward with a gradient of ones,
which applies the update. Forward and backward + update are timed separately, for float32 rows, float16 rows,
and, for scale, float32 rows under plain SGD (the same gather and scatter without the Adagrad state).

The variants alternate batch by batch, round after round, so the VM's drift hits them alike; the script prints
each variant's median times and the float16 / float32 ratio.

Why float16 is faster here: for float32 rows FBGEMM's CPU backward goes through its JIT-generated SpMDM and
row-wise SparseAdaGrad kernels, in blocks of 64 unique rows; float16 rows take its plain per-row loop, which
this measures to be about twice as fast on 26 tables with 741k rows (FBGEMM 1.8.0,
``embedding_backward_split_cpu_template.cpp``).

Example:
    >>> # python benchmarks/table_dtype.py --data scratch/train-bench/prepared   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from fbgemm_gpu.split_embedding_configs import EmbOptimType, SparseType
from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
from fbgemm_gpu.split_table_batched_embeddings_ops_training import ComputeDevice, SplitTableBatchedEmbeddingBagsCodegen

from ctr.data.loader import make_loader
from ctr.data.shards import load_split
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic

WIDTH = 20  # DeepFM at dim 16 with its 4 first-order columns
VARIANTS = {
    "float32 rows, row-wise Adagrad": (SparseType.FP32, EmbOptimType.EXACT_ROWWISE_ADAGRAD),
    "float16 rows, row-wise Adagrad": (SparseType.FP16, EmbOptimType.EXACT_ROWWISE_ADAGRAD),
    "float32 rows, SGD": (SparseType.FP32, EmbOptimType.EXACT_SGD),
}


def _tables(rows: list[int], precision: SparseType, optimizer: EmbOptimType) -> SplitTableBatchedEmbeddingBagsCodegen:
    specs = [(r, WIDTH, EmbeddingLocation.HOST, ComputeDevice.CPU) for r in rows]
    return SplitTableBatchedEmbeddingBagsCodegen(
        specs, optimizer=optimizer, learning_rate=0.01, pooling_mode=PoolingMode.SUM, weights_precision=precision
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, help="a prepared directory (default: synthesize --rows Criteo rows)")
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batches", type=int, default=40, help="batches per round (the first 5 of round 1 warm up)")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="ctr-table-dtype-") as tmp:
        data = args.data
        if data is None:
            raw = Path(tmp) / "synth.tsv"
            write_synthetic(args.rows, raw, seed=0)
            data = Path(tmp) / "prepared"
            prepare(builtin_spec("criteo"), [raw], data, PrepareOptions(progress=False, min_count=1))
        fm = FeatureMap.load(data)
        batches = []
        for batch in make_loader(load_split(data, fm, "train"), 4096, shuffle=True, seed=0):
            batches.append((batch.sparse_features.values().long(), batch.sparse_features.offsets().long()))
            if len(batches) == args.batches:
                break
    rows = [f.cardinality for f in fm.categorical]
    modules = {name: _tables(rows, *spec) for name, spec in VARIANTS.items()}
    fwd: dict[str, list[float]] = {name: [] for name in modules}
    bwd: dict[str, list[float]] = {name: [] for name in modules}
    for round_no in range(args.rounds):
        for i, (ids, offsets) in enumerate(batches):
            for name, module in modules.items():
                t0 = time.perf_counter()
                out = module(ids, offsets)
                t1 = time.perf_counter()
                out.backward(torch.ones_like(out))
                t2 = time.perf_counter()
                if round_no or i >= 5:
                    fwd[name].append(t1 - t0)
                    bwd[name].append(t2 - t1)
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    print(f"## FBGEMM CPU tables: float32 vs float16 rows ({date}, {platform.machine()}, torch {torch.__version__})")
    print(f"- {len(rows)} tables, {sum(rows):,} rows of width {WIDTH}; batch 4096; one thread")
    print(f"- {len(fwd[next(iter(fwd))])} timed steps per variant, alternated step by step")
    print()
    print("| variant | forward ms (median) | backward + update ms (median) |")
    print("|---|---:|---:|")
    for name in modules:
        print(f"| {name} | {statistics.median(fwd[name]) * 1e3:.1f} | {statistics.median(bwd[name]) * 1e3:.1f} |")
    f32, f16 = "float32 rows, row-wise Adagrad", "float16 rows, row-wise Adagrad"
    ratio = statistics.median(bwd[f32]) / statistics.median(bwd[f16])
    print()
    print(f"backward + update, float32 / float16 rows: {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
