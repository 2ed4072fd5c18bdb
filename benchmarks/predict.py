"""``ctr predict`` end to end (parse + encode + score a raw Criteo TSV) against the two-step path it replaces.

Setup (not timed): planted Criteo-format rows (``ctr synth``), prepared; a DeepFM with the data-aware defaults
trained a few steps (the speed of scoring does not depend on how well the model learned); its float export; and
an int8 export of a retrained plan (a hand-made OptEmbed-style plan: about 60 % of each field's rows kept, dims 8
and 16 alternating, retrained with ``init=fresh``; not a searched plan).

Timed, on a fresh raw file of ``--rows`` rows, each variant in the same process, alternating over ``--rounds``:

* ``ctr predict`` (:func:`ctr.artifact.predict.predict_files`): one streaming pass, scores and rejects written;
* the baseline, the two steps a user had before: ``ctr apply`` (stage, encode, write parquet shards) then
  ``load_split`` + ``load_exported(...).predict`` on the encoded split, scores written to parquet;
* ``ctr predict`` with the int8 artifact;
* ``ctr predict --bf16`` (dense layers under bfloat16 autocast) with the float artifact.

Then peak memory: ``ctr predict`` as a subprocess (the real CLI) on ``--memory-rows`` files of growing size; flat
memory means the peak does not grow with the rows.

Example:
    >>> # python benchmarks/predict.py --rows 1000000 --rounds 3   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from config.run import RetrainConfig
from ctr.artifact.export import export_run, load_exported
from ctr.artifact.predict import predict_files
from ctr.data.shards import load_split
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from ctr.optembed.pruned import PrunedTables
from ctr.runs import train_run
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, apply_feature_map, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic

TRAIN = ["trainer.progress_bar=false", "trainer.max_epochs=1", "trainer.limit_train_batches=20"]


def _artifacts(root: Path, train_rows: int) -> tuple[Path, Path, dict[str, Any]]:
    write_synthetic(train_rows, root / "train.tsv", seed=1)
    prepare(builtin_spec("criteo"), [root / "train.tsv"], root / "prepared", PrepareOptions(progress=False))
    data = str(root / "prepared")
    config = load_run_config(None, TRAIN, data=data, model="deepfm")
    train_run(config, root / "deepfm")
    export_run(root / "deepfm", root / "deepfm-export")
    fm = FeatureMap.load(root / "prepared")
    rng = np.random.default_rng(0)
    masks = {f.name: rng.random(f.cardinality) < 0.6 for f in fm.categorical}
    for m in masks.values():
        m[:2] = True
    dim = config.model.embedding_dim
    fields = tuple(
        FieldPlan(f.name, dim if i % 2 else max(4, dim // 2), int(masks[f.name].sum()), f.cardinality)
        for i, f in enumerate(fm.categorical)
    )
    PrunedTables(EmbeddingPlan(fm.content_hash, dim, fields), masks).save(root / "plan")
    retrain = RetrainConfig(init="fresh", supernet=str(root / "deepfm"), plan=str(root / "plan"))
    train_run(dataclasses.replace(config, retrain=retrain), root / "retrain")
    export_run(root / "retrain", root / "int8-export", int8=True)
    model = {"embedding_dim": dim, "mlp": list(config.model.mlp), "batch_size": config.data.batch_size}
    return root / "deepfm-export", root / "int8-export", model


def _predict(artifact: Path, raw: Path, work: Path, bf16: bool = False) -> float:
    out = work / "scores.parquet"
    started = time.perf_counter()
    summary = predict_files(artifact, [raw], out, progress=False, overwrite=True, bf16=bf16)
    seconds = time.perf_counter() - started
    assert summary["rows_rejected"] == 0
    return seconds


def _two_step(artifact: Path, raw: Path, work: Path) -> float:
    applied = work / "applied"
    started = time.perf_counter()
    apply_feature_map(artifact, [raw], applied, split="score", progress=False, overwrite=True)
    model = load_exported(artifact)
    shards = tuple(str(p.relative_to(applied)) for p in sorted((applied / "score").glob("*.parquet")))
    fm = dataclasses.replace(model.feature_map, splits={"score": shards})  # ctr apply's shards, as its report lists
    p = model.predict(load_split(applied, fm, "score"), batch_size=65536)
    pl.DataFrame({"probability": p}).write_parquet(work / "baseline.parquet")
    return time.perf_counter() - started


def _peak_rss_mb(artifact: Path, raw: Path, out: Path) -> tuple[float, float]:
    """Peak RSS of one `ctr predict` subprocess (the children's maximum: run each in a fresh shell)."""
    code = (
        "import resource, subprocess, sys, time; t = time.perf_counter(); "
        "subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL, timeout=3600); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, time.perf_counter() - t)"
    )
    cmd = [sys.executable, "-m", "pipelines.cli", "predict", "--model", str(artifact), "--input", str(raw)]
    cmd += ["--out", str(out), "--quiet", "--overwrite"]
    done = subprocess.run([sys.executable, "-c", code, *cmd], capture_output=True, text=True, check=True, timeout=3600)
    rss, seconds = done.stdout.split()
    return float(rss), float(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows of the raw file scored")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-rows", default="1000000,4000000", help="file sizes for the peak-memory runs")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-predict-", dir=args.work))
    try:
        float_artifact, int8_artifact, model = _artifacts(root, args.train_rows)
        raw = root / "score.tsv"
        write_synthetic(args.rows, raw, seed=7)
        times: dict[str, list[float]] = {
            "ctr predict": [],
            "apply + predict (baseline)": [],
            "ctr predict, int8": [],
            "ctr predict --bf16": [],
        }
        for _ in range(args.rounds):
            times["ctr predict"].append(_predict(float_artifact, raw, root))
            times["ctr predict --bf16"].append(_predict(float_artifact, raw, root, bf16=True))
            times["apply + predict (baseline)"].append(_two_step(float_artifact, raw, root))
            times["ctr predict, int8"].append(_predict(int8_artifact, raw, root))
        rates = {k: [args.rows / s for s in v] for k, v in times.items()}
        memory = []
        for n in [int(x) for x in args.memory_rows.split(",") if x]:
            big = root / f"memory-{n}.tsv"
            write_synthetic(n, big, seed=11)
            rss, seconds = _peak_rss_mb(float_artifact, big, root / "memory.parquet")
            memory.append({"rows": n, "peak_rss_mb": round(rss, 1), "seconds": round(seconds, 2)})
            big.unlink()
        base = statistics.median(rates["apply + predict (baseline)"])
        report = {
            "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            "rows": args.rows,
            "model": model,
            "rows_per_sec": {
                k: {"median": round(statistics.median(v)), "min": round(min(v)), "max": round(max(v))}
                for k, v in rates.items()
            },
            "ratio_vs_baseline": {k: round(statistics.median(v) / base, 2) for k, v in rates.items()},
            "memory": memory,
            "self_peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        print(json.dumps(report, indent=2))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
