"""Peer benchmark: ``ctr train`` with its defaults against FuxiCTR 2.3.10's BARS DeepFM and scikit-learn LR.

Every system trains on the same rows. Per dataset, ``ctr prepare`` runs once (random 8:1:1, seed 0); its splits
are exported row for row to CSV (``benchmarks/peer_splits.py``: row ``i`` of ``train.csv`` is row ``i`` of the
prepared training split, and each peer checks its row counts against ``columns.json``). Then:

* **sklearn / lr**: ``benchmarks/peer/sklearn_lr.py``, one-hot LR with C picked on the validation split;
* **fuxictr / deepfm**: ``benchmarks/peer/fuxictr_deepfm.py``, the zoo's DeepFM built from fuxictr's layers,
  trained with the BARS recipe (batch 4096; ``--peer-batch-sizes 4096,512`` adds a row per extra batch size,
  named ``deepfm@512``); ``embedding_regularizer`` as BARS sets it for the data family (``DATASETS``);
* **ctr / MODEL**: ``ctr train --data PREPARED --model MODEL --out RUN``, no other flag, through the CLI.

The peers run in their own environment (``.venv-peer/``, ``make bench-peer`` creates it from
``benchmarks/requirements-peer.txt``); the platform runs in the interpreter that runs this script. Every child
process gets one thread (``OMP_NUM_THREADS=1`` ...) and they run one after another.

Results go to ``--results`` (JSON: machine, date, datasets with their row counts and feature-map hash, one row per
data x system x model) and, as a table, between the markers of ``--doc`` (``docs/quality.md``). ``--only ctr``
reruns the platform against the peer rows already in ``--results`` (refused when the prepared data's hash
differs from the one they were measured on); ``--only peer`` the reverse. ``--datasets`` and ``--models`` pick.

Example:
    >>> # make bench-peer                                                     # doctest: +SKIP
    >>> # .venv/bin/python benchmarks/vs_fuxictr.py --only ctr --models deepfm,dcnv2   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from benchmarks.peer_splits import export_splits  # noqa: E402
from benchmarks.peer_table import render, write_section  # noqa: E402
from config.registry import MODELS as MODEL_NAMES  # noqa: E402

_ONE_THREAD = {v: "1" for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS")}
_ONE_THREAD["POLARS_MAX_THREADS"] = "1"


@dataclass(frozen=True)
class Dataset:
    """One benchmark dataset: how ``ctr prepare`` reads it and the BARS embedding regulariser of its family.

    ``inputs`` are relative to the shared data folder; a planted dataset has none and is made by ``ctr synth``
    with ``synth_rows`` rows (seed 0) in the work folder.
    """

    builtin: str
    inputs: tuple[str, ...]
    embedding_regularizer: float
    bars_source: str
    synth_rows: int = 0


DATASETS = {
    "avazu": Dataset(
        "avazu",
        ("avazu_head10k/train_9000.csv", "avazu_head10k/test_1000_noheader.csv"),
        0.1,
        "BARS DeepFM_avazu_x1 (best of its tuner grid)",
    ),
    "movielens": Dataset(
        "movielens",
        ("movielens_100k/grouplens_original/u.data",),
        0.01,
        "BARS DeepFM_movielenslatest_x1 (best of its tuner grid)",
    ),
    "criteo": Dataset(
        "criteo", ("criteo_deepctr_sample/criteo_sample.txt",), 1e-5, "BARS DeepFM_criteo_x1 (its only config)"
    ),
    "planted": Dataset("criteo", (), 1e-5, "Criteo format: BARS DeepFM_criteo_x1", synth_rows=100_000),
}
DEFAULT_MODELS = MODEL_NAMES
PEER_LR = ("sklearn", "lr")


class BenchError(Exception):
    """A bad option or a missing prerequisite: reported as one line."""


def _run(cmd: Sequence[str], log: Path, env: dict[str, str] | None = None) -> float:
    """Run ``cmd`` from the repository root with one thread, its output to ``log``; return its wall seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            list(cmd), cwd=REPO, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **_ONE_THREAD, **(env or {})}
        )
    if done.returncode != 0:
        raise BenchError(f"{' '.join(cmd[:4])} ... failed (exit {done.returncode}); see {log}")
    return time.perf_counter() - started


def _ctr(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipelines.cli", *args]


def _fresh(path: Path) -> Path:
    """``path`` emptied: only ever a folder under this benchmark's own work folder."""
    if path.exists():
        shutil.rmtree(path)
    return path


def prepare_dataset(name: str, data_root: Path, work: Path) -> dict[str, Any]:
    """``ctr synth`` (planted data) and ``ctr prepare`` into ``work/name/prepared``; return the dataset's facts."""
    spec = DATASETS[name]
    folder = work / name
    info: dict[str, Any] = {"bars_embedding_regularizer": spec.embedding_regularizer, "bars_source": spec.bars_source}
    if spec.synth_rows:
        raw = folder / "planted.tsv"
        _run(_ctr("synth", "--rows", str(spec.synth_rows), "--out", str(raw), "--quiet"), folder / "synth.log")
        truth = json.loads(Path(f"{raw}.truth.json").read_text())
        inputs = [raw]
        info |= {"bayes_auc": truth["bayes_auc"], "synth_rows": spec.synth_rows}
    else:
        inputs = [data_root / p for p in spec.inputs]
        missing = [str(p) for p in inputs if not p.is_file()]
        if missing:
            raise BenchError(f"--data-root {data_root}: missing {', '.join(missing)}")
        info["inputs"] = list(spec.inputs)
    prepared = folder / "prepared"
    cmd = ["prepare", "--dataset", spec.builtin, "--input", *map(str, inputs), "--out", str(prepared)]
    _run(_ctr(*cmd, "--overwrite", "--quiet"), folder / "prepare.log")
    fm = json.loads((prepared / "feature_map.json").read_text())
    report = json.loads((prepared / "report.json").read_text())
    return info | {"rows": report["rows_written"], "feature_map_hash": fm["content_hash"]}


def run_peers(name: str, work: Path, peer_python: Path, batch_sizes: Sequence[int]) -> list[dict[str, Any]]:
    """sklearn LR and FuxiCTR's DeepFM (one row per batch size) on the exported splits of ``name``."""
    folder = work / name
    splits = folder / "csv"
    export_splits(folder / "prepared", _fresh(splits))
    rows = []
    out = folder / "sklearn_lr.json"
    wall = _run([str(peer_python), "benchmarks/peer/sklearn_lr.py", "--splits", str(splits), "--out", str(out)],
                folder / "sklearn_lr.log")  # fmt: skip
    result = json.loads(out.read_text())
    rows.append(_row(name, *PEER_LR, result, None, result["fit_seconds"], wall, {"C": result["C"]}))
    for batch in batch_sizes:
        model = "deepfm" if batch == 4096 else f"deepfm@{batch}"
        out = folder / f"fuxictr_{model}.json"
        cmd = [str(peer_python), "benchmarks/peer/fuxictr_deepfm.py", "--splits", str(splits)]
        cmd += ["--work", str(_fresh(folder / f"fuxictr_{model}")), "--out", str(out)]
        cmd += ["--embedding-regularizer", str(DATASETS[name].embedding_regularizer), "--batch-size", str(batch)]
        wall = _run(cmd, folder / f"fuxictr_{model}.log")
        result = json.loads(out.read_text())
        config = result["recipe"] | {"best_epoch": result["best_epoch"], "prepare_seconds": result["prepare_seconds"]}
        rows.append(_row(name, "fuxictr", model, result, result["epochs"], result["fit_seconds"], wall, config))
    return rows


def run_ctr(name: str, work: Path, models: Sequence[str]) -> list[dict[str, Any]]:
    """``ctr train --model M`` with no other flag, for each model, on the prepared data of ``name``.

    A model that fails (DLRM on data without a dense field) gets a row with its error and no metrics.
    """
    folder = work / name
    rows = []
    for model in models:
        run = _fresh(folder / "ctr" / model)
        cmd = _ctr("train", "--data", str(folder / "prepared"), "--model", model, "--out", str(run))
        log = folder / "ctr" / f"{model}.log"
        try:
            wall = _run(cmd, log)
        except BenchError:
            rows.append(_failed(name, "ctr", model, _last_error(log)))
            continue
        metrics = json.loads((run / "metrics.json").read_text())
        used = yaml.safe_load((run / "config.yaml").read_text())
        config = {k: used[k] for k in ("data", "model", "optim", "trainer") if k in used}
        config["data"].pop("path", None)
        rows.append(_row(name, "ctr", model, metrics, metrics["epochs"], metrics["fit_seconds"], wall, config))
    return rows


def _last_error(log: Path) -> str:
    """The last line of ``log`` that names an error (the exception's message), else its last line."""
    lines = [ln.strip() for ln in log.read_text(errors="replace").splitlines() if ln.strip()]
    errors = [ln for ln in lines if "Error" in ln or "error:" in ln]
    line = (errors or lines or ["no output"])[-1]
    return line.removeprefix("[rank0]:").strip()


def _failed(data: str, system: str, model: str, error: str) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "data": data,
        "system": system,
        "model": model,
        "test_auc": None,
        "test_logloss": None,
        "val_auc": None,
        "epochs": None,
        "seconds": None,
        "error": error,
    }


def _row(
    data: str,
    system: str,
    model: str,
    result: dict[str, Any],
    epochs: int | None,
    seconds: float,
    wall: float,
    config: dict[str, Any],
) -> dict[str, Any]:
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d"),
        "data": data,
        "system": system,
        "model": model,
        "test_auc": result["test_auc"],
        "test_logloss": result["test_logloss"],
        "val_auc": result["val_auc"],
        "epochs": epochs,
        "seconds": seconds,
        "wall_seconds": wall,
        "config": config,
    }


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln.split(":", 1)[1].strip() for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    return f"{cpu}, {os.cpu_count()} cores, one thread per process, runs one at a time"


def _load(path: Path) -> dict[str, Any]:
    if path.is_file():
        results: dict[str, Any] = json.loads(path.read_text())
        return results
    return {"datasets": {}, "results": []}


def stale(results: dict[str, Any], name: str, info: dict[str, Any]) -> bool:
    """Whether ``results`` holds rows of ``name`` measured on other prepared data (another feature-map hash)."""
    old = results["datasets"].get(name)
    return old is not None and old["feature_map_hash"] != info["feature_map_hash"]


def merge(results: dict[str, Any], name: str, info: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``results`` with ``name``'s facts replaced, and ``rows`` replacing the rows of the same data, system and model.

    The other rows of ``name`` are kept, unless they were measured on other prepared data (:func:`stale`): then
    they are dropped.
    """
    done = {(r["system"], r["model"]) for r in rows}
    kept = [r for r in results["results"] if not (r["data"] == name and (r["system"], r["model"]) in done)]
    if stale(results, name, info):
        kept = [r for r in kept if r["data"] != name]
    return {**results, "datasets": {**results["datasets"], name: info}, "results": kept + rows}


def _names(text: str, allowed: Sequence[str], option: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in allowed]
    if unknown or not names:
        raise BenchError(f"{option}: unknown {unknown or text!r}; choose from {', '.join(allowed)}")
    return names


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, of {', '.join(DATASETS)}")
    p.add_argument("--models", default=",".join(DEFAULT_MODELS), help="ctr models, comma-separated")
    p.add_argument("--only", choices=["ctr", "peer"], help="run one side, keep the other's rows from --results")
    p.add_argument("--peer-batch-sizes", default="4096", help="FuxiCTR batch sizes (4096 is BARS'), e.g. 4096,512")
    shared = Path(os.environ.get("CTR_SHARED_DATA", REPO.parent / "shared/data"))
    p.add_argument("--data-root", type=Path, default=shared, help="the shared data folder (CTR_SHARED_DATA)")
    p.add_argument("--work", type=Path, default=REPO / "runs/bench-peer", help="prepared data, splits, runs, logs")
    p.add_argument("--peer-python", type=Path, default=REPO / ".venv-peer/bin/python")
    p.add_argument("--results", type=Path, default=REPO / "benchmarks/results/vs_fuxictr.json")
    p.add_argument("--doc", type=Path, default=REPO / "docs/quality.md")
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    try:
        datasets = _names(args.datasets, list(DATASETS), "--datasets")
        models = _names(args.models, MODEL_NAMES, "--models")
        try:
            batches = [int(b) for b in args.peer_batch_sizes.split(",")]
        except ValueError:
            raise BenchError(f"--peer-batch-sizes: expected integers, got {args.peer_batch_sizes!r}") from None
        systems = {"ctr": ["ctr"], "peer": ["sklearn", "fuxictr"], None: ["sklearn", "fuxictr", "ctr"]}[args.only]
        if "fuxictr" in systems and not args.peer_python.is_file():
            raise BenchError(f"--peer-python {args.peer_python}: not found; `make bench-peer` creates .venv-peer/")
        results = _load(args.results)
        for name in datasets:
            print(f"{name}: prepare", flush=True)
            info = prepare_dataset(name, args.data_root, args.work)
            if args.only is not None and stale(results, name, info):
                raise BenchError(
                    f"--only {args.only}: {args.results} holds {name} rows measured on other prepared data "
                    f"(feature map {results['datasets'][name]['feature_map_hash'][:12]}, now "
                    f"{info['feature_map_hash'][:12]}); rerun without --only"
                )
            rows: list[dict[str, Any]] = []
            if "fuxictr" in systems:
                print(f"{name}: sklearn LR, FuxiCTR DeepFM", flush=True)
                rows += run_peers(name, args.work, args.peer_python, batches)
            if "ctr" in systems:
                print(f"{name}: ctr train {', '.join(models)}", flush=True)
                rows += run_ctr(name, args.work, models)
            results = merge(results, name, info, rows)
            results |= {"machine": _machine(), "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")}
            args.results.parent.mkdir(parents=True, exist_ok=True)
            args.results.write_text(json.dumps(results, indent=2) + "\n")
            write_section(args.doc, render(results, MODEL_NAMES))
    except BenchError as e:
        print(f"vs_fuxictr: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
