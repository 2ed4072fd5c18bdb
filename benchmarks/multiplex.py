"""Lookup throughput: one multiplexed Unified Embedding table against one table per field.

Both arms are :class:`ctr.tables.embedding.SparseArch` modules on the same batches of a synthetic Criteo feature map
(26 fields, ``--rows`` rows of ids drawn from the fields' vocabularies), dim 16, sum pooling, with FBGEMM's
fused row-wise Adagrad applied in backward through ``DistributedModelParallel`` in one process:

* **per-field**: 26 tables (``t_C1`` ... ``t_C26``) of their full vocabularies, one lookup per field;
* **unified**: one table of ``M = r N 16 / 4`` rows of width 4 (``--budget r``), 4 salted probes per field
  (104 virtual features, one FBGEMM kernel), concatenated to 16 dims.

The ids of the unified arm are hashed before the clock starts (that is the data path's job). Timed: forward
+ backward (the fused update included) over ``--steps`` batches after ``--warmup``; prints samples/s of both
and the ratio, in one JSON line.

Example:
    >>> # python benchmarks/multiplex.py --batch 4096 --steps 50   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, Topology
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from config.model import ModelConfig
from config.tables import TablesConfig
from ctr.data.shards import load_split
from ctr.tables.embedding import SparseArch
from ctr.tables.layout import TableLayout
from ctr.tables.methods import build_layout
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic


def _arm(fm: FeatureMap, layout: TableLayout | None) -> DistributedModelParallel:
    arch = SparseArch(fm, ModelConfig(name="fnn", embedding_dim=16), torch.device("meta"), layout)
    apply_optimizer_in_backward(RowWiseAdagrad, arch.ebc.parameters(), {"lr": 0.01})
    sharders = [EmbeddingBagCollectionSharder()]
    plan = EmbeddingShardingPlanner(topology=Topology(world_size=1, compute_device="cpu")).collective_plan(
        arch, sharders, dist.GroupMember.WORLD
    )
    return DistributedModelParallel(arch, device=torch.device("cpu"), plan=plan, sharders=sharders)


def _time(model: DistributedModelParallel, batches: list, warmup: int) -> float:  # type: ignore[type-arg]
    for b in batches[:warmup]:
        model(b.sparse_features).sum().backward()
    started = time.perf_counter()
    for b in batches[warmup:]:
        model(b.sparse_features).sum().backward()
    return sum(int(b.labels.numel()) for b in batches[warmup:]) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--budget", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29531")
    dist.init_process_group("gloo", rank=0, world_size=1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        write_synthetic(args.rows, root / "s.tsv", seed=0)
        prepare(builtin_spec("criteo"), [root / "s.tsv"], root / "p", PrepareOptions(progress=False, min_count=2))
        fm = FeatureMap.load(root / "p")
        split = load_split(root / "p", fm, "train")
    layout = build_layout(TablesConfig(method="unified", budget=args.budget), fm, 16)
    virtual = layout.transform(split)
    n = args.batch * (args.steps + args.warmup)
    rows = np.arange(n) % len(split)
    chunks = [rows[i : i + args.batch] for i in range(0, n, args.batch)]
    per_field = _time(_arm(fm, None), [split.batch(c) for c in chunks], args.warmup)
    unified = _time(_arm(fm, layout), [virtual.batch(c) for c in chunks], args.warmup)
    dist.destroy_process_group()
    full_params = sum(f.cardinality for f in fm.categorical) * 16
    print(
        json.dumps(
            {
                "batch": args.batch,
                "threads": args.threads,
                "per_field_tables": len(fm.categorical),
                "per_field_params": full_params,
                "unified_rows": layout.tables[0].rows,
                "unified_params": layout.params,
                "per_field_samples_per_sec": per_field,
                "unified_samples_per_sec": unified,
                "unified_over_per_field": unified / per_field,
            }
        )
    )


if __name__ == "__main__":
    main()
