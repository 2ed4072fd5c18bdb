"""Search speed: candidates/s of the batched scorer against the naive full forward pass; Ray 1 vs 2 workers.

Data: a synthetic Criteo TSV (``features.synth.write_synthetic``, ``--rows``, default 1M) prepared into a
temporary directory (or ``--data DIR``, already prepared). A DeepFM supernet (``embedding_dim`` 16, MLP
[400, 400, 400], one epoch, row pruning + dimension sampling) is trained with ``ctr.runs.train``, then frozen.

* **naive**: ``CandidateScorer.score_naive``: for every candidate, the whole model over the validation split
  (table lookups, row masks, the candidate's prefix mask, the head).
* **precomputed**: ``CandidateScorer.score``: the validation embeddings looked up once; a candidate costs its
  mask and the model's own head, one candidate at a time.
* **batched**: ``CandidateScorer.score_many``: all candidates in one call (``ctr.optembed.batched.BatchedHead``: the
  head with BatchNorm folded, ReLU fused and oneDNN matmuls), in float32 and in bfloat16. All score the same
  ``--candidates`` random candidates; precomputed and batched float32 must give the naive AUCs to 1e-6
  (checked), bfloat16's largest difference is reported.
* **sample**: the validation rows ``search.auc_noise`` (default 0.001) would keep (``search.sample_size``).
* **Ray**: ``search.evaluators.RayEvaluator`` with 1 and 2 actors (one thread each) scoring ``--ray-candidates``
  candidates after one warm-up round, against ``LocalEvaluator`` (one thread) in this process.

``--supernet RUN`` scores a supernet already trained (``ctr supernet``, e.g. ``RUN/supernet`` of ``ctr
optembed``) instead of training one. Rates are candidates per second of wall time and per second of this
process's CPU time (``*_cpu``: one thread, so it counts the work, not the waits, on a shared machine).

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
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from config.run import SearchConfig
from ctr.data.shards import load_split
from ctr.optembed.fast_head import bf16_supported
from ctr.optembed.fast_head import onednn_available as fast_head_onednn
from ctr.optembed.module import find_pruning, model_row_masks
from ctr.optembed.scorer import CandidateScorer
from ctr.runs import load_run, train_run
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from search.evaluators import LocalEvaluator, RayEvaluator
from search.sample_size import sized_sample


def _candidates(n: int, fields: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(d) for d in rng.choice(range(4, 17, 4), fields)) for _ in range(n)]


def _rate(fn: Callable[[list[tuple[int, ...]]], list[float]], cands: list[tuple[int, ...]]) -> Rate:
    """Candidates per second of wall time and of CPU time, and the scores."""
    wall, cpu = time.perf_counter(), time.process_time()
    scores = fn(cands)
    return Rate(len(cands) / (time.perf_counter() - wall), len(cands) / (time.process_time() - cpu), scores)


@dataclass(frozen=True)
class Rate:
    wall: float
    cpu: float
    scores: list[float]


def _supernet(args: argparse.Namespace, root: Path) -> Path:
    """The supernet run to score: ``--supernet``, or one trained on ``--data`` (or on ``--rows`` planted rows)."""
    if args.supernet is not None:
        return Path(args.supernet)
    data = args.data
    if data is None:
        write_synthetic(args.rows, root / "s.tsv", seed=0)
        prepare(builtin_spec("criteo"), [root / "s.tsv"], root / "p", PrepareOptions(progress=False, min_count=10))
        data = root / "p"
    sets = ["trainer.progress_bar=false", "trainer.max_epochs=1", "model.embedding_dim=16", "trainer.threads=1"]
    sets += ["supernet.alpha=0.01", "supernet.threshold_lr=0.1", "supernet.relative=false"]
    config = load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",))
    train_run(config, root / "supernet")
    return root / "supernet"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--data", type=Path, help="prepared directory (skips synth + prepare)")
    parser.add_argument("--supernet", type=Path, help="a trained supernet run (skips training)")
    parser.add_argument("--candidates", type=int, default=5)
    parser.add_argument("--ray-candidates", type=int, default=16)
    parser.add_argument("--val-rows", type=int, default=None, help="score on a sample of the validation split")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        run = load_run(_supernet(args, Path(tmp)))
        masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
        split = load_split(run.config.data.path, run.feature_map, "valid")
        started = time.perf_counter()
        scorer = CandidateScorer(run.model, masks, split, max_rows=args.val_rows)
        precompute_s = time.perf_counter() - started
        bf16 = scorer.with_head_dtype(torch.bfloat16)
        cands = _candidates(args.candidates, len(scorer.fields), 0)
        naive = _rate(lambda cs: [scorer.score_naive(c) for c in cs], cands)
        one = _rate(lambda cs: [scorer.score(c) for c in cs], cands)
        scorer.score_many(cands[:1]), bf16.score_many(cands[:1])  # the prepared heads, built once per actor
        fast = _rate(scorer.score_many, cands)
        fast_bf16 = _rate(bf16.score_many, cands)
        for name, rate in (("precomputed", one), ("batched float32", fast)):
            if not np.allclose(naive.scores, rate.scores, rtol=0, atol=1e-6):
                raise SystemExit(f"{name} scores differ from the naive ones: {rate.scores} vs {naive.scores}")
        choices = tuple((4, 8, 12, 16) for _ in scorer.fields)
        _, sample = sized_sample(scorer, choices, SearchConfig().auc_noise or 0.001)
        ray_cands = _candidates(args.ray_candidates, len(scorer.fields), 1)
        local = _rate(LocalEvaluator(scorer), ray_cands)
        ray_rates: dict[int, float] = {}
        for workers in (1, 2):
            with RayEvaluator(scorer, workers) as evaluate:
                evaluate(ray_cands[: 2 * workers])  # warm-up: actors started, scorer fetched, heads prepared
                ray_rates[workers] = _rate(evaluate, ray_cands).wall
    rates = {"naive": naive, "precomputed": one, "batched": fast, "batched_bf16": fast_bf16}
    result = {
        "date": dt.date.today().isoformat(),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} torch thread(s) per process",
        "rows": args.rows if args.data is None and args.supernet is None else None,
        "val_rows": scorer.num_rows,
        "fields": len(scorer.fields),
        "precompute_seconds": precompute_s,
        "onednn": fast_head_onednn(),
        "bf16_supported": bf16_supported(),
        **{f"{name}_candidates_per_sec": rate.wall for name, rate in rates.items()},
        **{f"{name}_candidates_per_cpu_sec": rate.cpu for name, rate in rates.items()},
        "speedup": fast.wall / naive.wall,
        "speedup_bf16": fast_bf16.wall / naive.wall,
        "speedup_cpu": fast.cpu / naive.cpu,
        "speedup_bf16_cpu": fast_bf16.cpu / naive.cpu,
        "max_auc_diff_batched_float32": float(np.abs(np.subtract(fast.scores, naive.scores)).max()),
        "max_auc_diff_bf16": float(np.abs(np.subtract(fast_bf16.scores, naive.scores)).max()),
        "sample": sample,
        "local_candidates_per_sec": local.wall,
        "ray_1_candidates_per_sec": ray_rates[1],
        "ray_2_candidates_per_sec": ray_rates[2],
        "ray_2_over_1": ray_rates[2] / ray_rates[1],
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
