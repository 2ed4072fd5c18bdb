"""Search speed: candidates/s with precomputed embeddings against the naive full forward pass; Ray 1 vs 2 workers.

Data: a synthetic Criteo TSV (``features.synth.write_synthetic``, ``--rows``, default 1M) prepared into a
temporary directory (or ``--data DIR``, already prepared). A DeepFM supernet (``embedding_dim`` 16, MLP
[400, 400, 400], one epoch, row pruning + dimension sampling) is trained with ``ctr.train.train``, then frozen.

* **naive**: ``CandidateScorer.score_naive``: for every candidate, the whole model over the validation split
  (table lookups, row masks, the candidate's prefix mask, the head).
* **precomputed**: ``CandidateScorer.score``: the validation embeddings looked up once; a candidate costs its
  mask and the head. Both score the same ``--candidates`` random candidates, and must agree (checked).
* **Ray**: ``search.evaluators.RayEvaluator`` with 1 and 2 actors (one thread each) scoring ``--ray-candidates``
  candidates after one warm-up round, against ``LocalEvaluator`` (one thread) in this process.

Prints one JSON line with every figure and the ratios.

Example:
    >>> # python benchmarks/search_speed.py --rows 1000000   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from ctr.data import load_split
from ctr.restore import load_run
from ctr.run_config import load_run_config
from ctr.supernet_module import find_pruning, model_row_masks
from ctr.train import train
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from search.evaluators import LocalEvaluator, RayEvaluator
from search.scorer import CandidateScorer


def _candidates(n: int, fields: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(d) for d in rng.choice(range(4, 17, 4), fields)) for _ in range(n)]


def _rate(fn: object, cands: list[tuple[int, ...]]) -> tuple[float, list[float]]:
    started = time.perf_counter()
    scores = [fn(c) for c in cands]  # type: ignore[operator]
    return len(cands) / (time.perf_counter() - started), scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, help="prepared directory (skips synth + prepare)")
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--ray-candidates", type=int, default=16)
    parser.add_argument("--val-rows", type=int, default=None, help="score on a sample of the validation split")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data = args.data
        if data is None:
            write_synthetic(args.rows, root / "s.tsv", seed=0)
            prepare(builtin_spec("criteo"), [root / "s.tsv"], root / "p", PrepareOptions(progress=False, min_count=10))
            data = root / "p"
        sets = ["trainer.progress_bar=false", "trainer.max_epochs=1", "model.embedding_dim=16", "trainer.threads=1"]
        sets += ["supernet.alpha=0.01", "supernet.threshold_lr=0.1", "supernet.relative=false"]
        config = load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",))
        train(config, root / "supernet")
        run = load_run(root / "supernet")
        masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
        split = load_split(data, run.feature_map, "valid")
        started = time.perf_counter()
        scorer = CandidateScorer(run.model, masks, split, max_rows=args.val_rows)
        precompute_s = time.perf_counter() - started
        cands = _candidates(args.candidates, len(scorer.fields), 0)
        naive, naive_scores = _rate(scorer.score_naive, cands)
        fast, fast_scores = _rate(scorer.score, cands)
        if not np.allclose(naive_scores, fast_scores, atol=1e-9):
            raise SystemExit(f"precomputed scores differ from the naive ones: {fast_scores} vs {naive_scores}")
        ray_cands = _candidates(args.ray_candidates, len(scorer.fields), 1)
        started = time.perf_counter()
        LocalEvaluator(scorer)(ray_cands)
        local = len(ray_cands) / (time.perf_counter() - started)
        ray_rates: dict[int, float] = {}
        for workers in (1, 2):
            with RayEvaluator(scorer, workers) as evaluate:
                evaluate(ray_cands[: 2 * workers])  # warm-up: actors started, scorer fetched
                started = time.perf_counter()
                evaluate(ray_cands)
                ray_rates[workers] = len(ray_cands) / (time.perf_counter() - started)
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) per process",
        "rows": args.rows if args.data is None else None,
        "val_rows": scorer.num_rows,
        "fields": len(scorer.fields),
        "precompute_seconds": precompute_s,
        "naive_candidates_per_sec": naive,
        "precomputed_candidates_per_sec": fast,
        "speedup": fast / naive,
        "local_candidates_per_sec": local,
        "ray_1_candidates_per_sec": ray_rates[1],
        "ray_2_candidates_per_sec": ray_rates[2],
        "ray_2_over_1": ray_rates[2] / ray_rates[1],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
