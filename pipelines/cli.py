"""The ``ctr`` command: one thin sub-command per stage; each parses, loads config and calls the library.

Bad input ends with one line on stderr naming the file and the problem, and exit code 1.
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import json
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from config.registry import BENCH_METHODS, DATASETS, MODELS, VARIANTS

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """Reports a bad command line as every bad input is reported: ``ctr <stage>: error: <option>: <problem>``,
    one line, exit code 1 (argparse's own is usage lines and exit code 2). ``--help`` still exits 0."""

    def error(self, message: str) -> NoReturn:
        self.exit(1, f"{self.prog}: error: {message.removeprefix('argument ')}\n")


def _int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (argparse puts the option's name before the problem)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be >= {low}, got {value}")
        return value

    return parse


_POSITIVE = _int_at_least(1)
_NON_NEGATIVE = _int_at_least(0)


def _prepare(args: argparse.Namespace) -> None:
    from config.strict import ConfigError
    from features.prepare import GivenSplits, PrepareOptions, prepare
    from features.spec import builtin_spec, load_spec

    if args.dataset == "custom" and args.spec is None:
        raise ConfigError("--spec: --dataset custom needs --spec FILE")
    inputs: list[Path] | GivenSplits = [Path(p) for p in args.input or ()]
    if args.train is None:
        for name in ("valid", "test"):
            if getattr(args, name) is not None:
                raise ConfigError(f"--{name}: goes with --train (pre-split inputs), not with --input")
    else:
        for option in ("split", "seed"):
            if getattr(args, option) is not None:
                raise ConfigError(f"--{option}: the splits are given (--train/--valid/--test); drop --{option}")
        files = {name: tuple(Path(p) for p in getattr(args, name) or ()) for name in ("train", "valid", "test")}
        inputs = GivenSplits(**files)
    spec = load_spec(args.spec) if args.spec is not None else builtin_spec(args.dataset)
    options = PrepareOptions(
        split="given" if args.train is not None else args.split or "random",
        seed=args.seed or 0,
        min_count=args.min_count,
        shard_rows=args.shard_rows,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    report = prepare(spec, inputs, Path(args.out), options)
    print(json.dumps({k: report[k] for k in ("rows_read", "rows_rejected", "rows_written", "seconds")}))


def _apply(args: argparse.Namespace) -> None:
    from features.prepare import apply_feature_map

    report = apply_feature_map(
        Path(args.feature_map),
        [Path(p) for p in args.input],
        Path(args.out),
        args.split_name,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    print(json.dumps({k: report[k] for k in ("rows_read", "rows_rejected", "rows_written", "seconds")}))


def _train(args: argparse.Namespace) -> None:
    from ctr.runs import train_run
    from ctr.training.defaults import load_run_config

    sections = ("supernet",) if args.command == "supernet" else ()
    processes = args.ray_workers if args.ray_workers is not None else args.nproc
    config = load_run_config(
        args.config, args.set, data=args.data, model=args.model, sections=sections, processes=processes
    )
    # One config file may serve the whole OptEmbed pipeline: each command reads only its own sections.
    config = dataclasses.replace(config, search=None, retrain=None)
    if args.command == "train":
        config = dataclasses.replace(config, supernet=None)
    if args.ray_workers is not None:
        from pipelines.ray_train import train_on_ray

        metrics = train_on_ray(
            config, Path(args.out), workers=args.ray_workers, resume=args.resume, address=args.address
        )
    else:
        metrics = train_run(config, Path(args.out), nproc=args.nproc, resume=args.resume)
    _report(metrics)


def _report(metrics: dict[str, Any]) -> None:
    """The run's metrics as one JSON line, from rank 0 only (ranks > 0 of ``--nproc N`` re-run the command)."""
    from features.outputs import is_secondary_rank

    if not is_secondary_rank():
        print(json.dumps(metrics))


def _run_config(args: argparse.Namespace, sections: Sequence[str] = ()) -> Any:
    from ctr.training.defaults import load_run_config

    sets = list(args.set)
    if getattr(args, "search_workers", None) is not None:
        sets.append(f"search.workers={args.search_workers}")
    if getattr(args, "multi_objective", False):
        sets.append("search.multi_objective=true")
    data, processes = getattr(args, "data", None), getattr(args, "nproc", 1)
    return load_run_config(args.config, sets, data=data, model=args.model, sections=sections, processes=processes)


def _optembed(args: argparse.Namespace) -> None:
    from ctr.optembed.variants import variant
    from pipelines.optembed import run_optembed

    config = _run_config(args, ("supernet", "search", "retrain"))
    result = run_optembed(
        config,
        Path(args.out),
        variant(args.variant),
        storage=args.storage,
        study=args.study,
        address=args.address,
        nproc=args.nproc,
        int8=args.int8,
        progress=not args.quiet,
    )
    if result:  # ranks > 0 of --nproc N (they re-run the command) train only; rank 0 reports
        print(json.dumps({k: result[k] for k in ("baseline", "final", "params_ratio", "sparsity", "row_sparsity")}))


def _search(args: argparse.Namespace) -> None:
    from ctr.optembed.variants import variant
    from ctr.training.defaults import load_run_config
    from ctr.training.restore import read_run_config
    from pipelines.optembed import search_stage

    supernet = read_run_config(args.supernet)
    sets = [*args.set, *([f"search.workers={args.search_workers}"] if args.search_workers is not None else [])]
    sets += ["search.multi_objective=true"] if args.multi_objective else []
    config = load_run_config(
        args.config, sets, data=supernet.data.path, model=supernet.model.name, sections=("search",)
    ).search
    assert config is not None
    summary = search_stage(
        Path(args.supernet),
        Path(args.out),
        variant(args.variant),
        config,
        storage=args.storage,
        study=args.study,
        address=args.address,
        progress=not args.quiet,
    )
    print(json.dumps({k: summary.get(k) for k in ("dims", "embedding_params", "sparsity", "row_sparsity", "trials")}))


def _retrain(args: argparse.Namespace) -> None:
    from ctr.optembed.plan import EmbeddingPlan
    from ctr.optembed.pruned import PLAN_FILE
    from ctr.runs import train_run
    from ctr.training.defaults import load_run_config

    # a missing or broken plan.json: one line, before --out is made (the masks are read once, by the retraining)
    EmbeddingPlan.load(Path(args.plan) / PLAN_FILE)
    sets = [*args.set, f"retrain.supernet={args.supernet}", f"retrain.plan={args.plan}"]
    sets += [f"retrain.init={args.init}"] if args.init else []
    # Default: the supernet's own settings (model, optimiser, trainer), without its supernet section.
    source = args.config if args.config is not None else str(Path(args.supernet) / "config.yaml")
    config = load_run_config(source, sets, data=args.data, model=None, processes=args.nproc)
    config = dataclasses.replace(config, supernet=None, search=None)
    _report(train_run(config, Path(args.out), nproc=args.nproc, resume=args.resume))


def _tune(args: argparse.Namespace) -> None:
    from search.tune import TuneOptions, run_tune
    from search.tune_space import load_space

    config = _run_config(args)
    config = dataclasses.replace(config, supernet=None, search=None, retrain=None)
    space = load_space(args.space, config)
    options = TuneOptions(
        trials=args.trials,
        timeout=args.timeout,
        workers=args.workers,
        storage=args.storage,
        address=args.address,
        study=args.study,
    )
    summary = run_tune(config, space, Path(args.out), options)
    keys = ("best_trial", "best_val_auc", "best_test_auc", "best_params", "states")
    print(json.dumps({k: summary.get(k) for k in keys}))


def _export(args: argparse.Namespace) -> None:
    from ctr.artifact.export import export_run

    print(json.dumps(export_run(Path(args.run), Path(args.out), int8=args.int8, overwrite=args.overwrite)))


def _predict(args: argparse.Namespace) -> None:
    from ctr.artifact.predict import predict_files

    summary = predict_files(
        Path(args.model),
        [Path(p) for p in args.input],
        Path(args.out),
        batch_size=args.batch_size,
        progress=not args.quiet,
        overwrite=args.overwrite,
        bf16=args.bf16,
        threads=args.threads,
    )
    print(json.dumps(summary))


def _serve(args: argparse.Namespace) -> None:
    from pipelines.serve import ServeOptions, run_serve

    run_serve(ServeOptions(args.model, args.host, args.port, args.replicas, args.address, args.max_batch_size))


def _compress_bench(args: argparse.Namespace) -> None:
    from config.strict import ConfigError
    from pipelines.compress_bench import run_compress_bench

    config = _run_config(args)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        budgets = [float(b) for b in args.budgets.split(",") if b.strip()]
    except ValueError as e:
        raise ConfigError(f"--budgets {args.budgets!r}: {e}") from None
    records = run_compress_bench(config, Path(args.out), methods, budgets, progress=not args.quiet)
    print(json.dumps(records))


def _synth(args: argparse.Namespace) -> None:
    from features.synth import write_synthetic

    truth = write_synthetic(args.rows, Path(args.out), seed=args.seed, progress=not args.quiet)
    print(json.dumps({"rows": args.rows, "out": args.out, "bayes_auc": truth.bayes_auc, "ctr": truth.ctr}))


def _search_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--search-workers", type=_NON_NEGATIVE, metavar="N", help="Ray evaluator actors (0: no Ray; default 1)"
    )
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite file in the search dir)")
    p.add_argument("--study", default="optembed", metavar="NAME", help="Optuna study name")
    p.add_argument("--multi-objective", action="store_true", help="maximise AUC and minimise parameters (Pareto)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ctr", description="CTR models whose embedding tables find their own shape.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="raw CSV/TSV/parquet logs -> encoded parquet shards + feature_map.json")
    p.add_argument("--dataset", required=True, choices=[*DATASETS, "custom"])
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--input", nargs="+", metavar="FILE", help="input files to split (MovieLens: u.data)")
    source.add_argument("--train", nargs="+", metavar="FILE", help="pre-split inputs: the training files (fitted on)")
    p.add_argument("--valid", nargs="+", metavar="FILE", help="pre-split inputs: the validation files")
    p.add_argument("--test", nargs="+", metavar="FILE", help="pre-split inputs: the test files")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--spec", metavar="FILE", help="dataset spec YAML (required for custom; overrides built-ins)")
    p.add_argument("--min-count", type=_POSITIVE, metavar="N", help="default vocabulary min-count (spec default: 1)")
    p.add_argument("--split", choices=["random", "time"], help="8:1:1 random (default), or by time")
    p.add_argument("--seed", type=_NON_NEGATIVE, metavar="S", help="seed of the random split (default 0)")
    p.add_argument("--shard-rows", type=_POSITIVE, default=1_000_000, metavar="N", help="rows per parquet shard")
    p.add_argument("--overwrite", action="store_true", help="replace a dataset that `ctr prepare` wrote there")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("apply", help="encode new raw data with a fitted feature map (unseen values -> OOV)")
    p.add_argument("--feature-map", required=True, metavar="PATH", help="feature_map.json or its directory")
    p.add_argument("--input", required=True, nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--split-name", default="apply", metavar="NAME", help="name of the output split")
    p.add_argument("--overwrite", action="store_true", help="replace a split that `ctr apply` wrote there")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_apply)

    for name, text in [
        ("train", "train a CTR model (TorchRec + FBGEMM under Lightning) on prepared data"),
        ("supernet", "train an OptEmbed supernet: learnable row pruning + dimension sampling (supernet.* keys)"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", required=True, metavar="DIR", help="output directory of `ctr prepare`")
        p.add_argument("--model", required=True, choices=MODELS)
        p.add_argument("--out", required=True, metavar="RUN", help="run directory (metrics.json, checkpoints, logs)")
        p.add_argument("--config", metavar="FILE", help="YAML run config (data, model, optim, trainer, supernet)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=0.01")
        p.add_argument("--nproc", type=_POSITIVE, default=1, metavar="N", help="processes (tables sharded across them)")
        p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
        p.add_argument(
            "--ray-workers",
            type=_POSITIVE,
            metavar="N",
            help="train with N Ray Train workers instead of --nproc processes",
        )
        p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else local)")
        p.set_defaults(func=_train)

    p = sub.add_parser("optembed", help="OptEmbed end to end: baseline, supernet, search, retrain, export, result.json")
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of `ctr prepare`")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--out", required=True, metavar="RUN", help="pipeline directory (one sub-directory per stage)")
    p.add_argument(
        "--config", metavar="FILE", help="YAML config (data, model, optim, trainer, supernet, search, retrain)"
    )
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. search.generations=5"
    )
    p.add_argument(
        "--variant", choices=VARIANTS, default="optembed", help="rows and dims, rows only (-e), dims only (-d)"
    )
    _search_args(p)
    p.add_argument("--nproc", type=_POSITIVE, default=1, metavar="N", help="training processes")
    p.add_argument("--int8", action="store_true", help="export int8 embedding tables")
    p.add_argument("--quiet", action="store_true", help="no search progress bar")
    p.set_defaults(func=_optembed)

    p = sub.add_parser("search", help="evolutionary search of per-field dims on a trained supernet (Optuna + Ray)")
    p.add_argument("--supernet", required=True, metavar="RUN", help="run directory of `ctr supernet`")
    p.add_argument("--out", required=True, metavar="DIR", help="plan.json, masks.npz, search.json, plots/")
    p.add_argument("--config", metavar="FILE", help="YAML with a `search` section")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. search.population=10"
    )
    p.add_argument("--variant", choices=VARIANTS, default="optembed")
    _search_args(p)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_search, model=None)

    p = sub.add_parser("retrain", help="retrain the pruned, mixed-dimension table of a search's plan")
    p.add_argument("--supernet", required=True, metavar="RUN", help="run directory of `ctr supernet`")
    p.add_argument("--plan", required=True, metavar="DIR", help="output directory of `ctr search`")
    p.add_argument("--out", required=True, metavar="RUN")
    p.add_argument("--data", metavar="DIR", help="prepared data (default: the supernet's)")
    p.add_argument("--init", choices=["rewind", "fresh", "inherit"], help="initial weights (default: rewind)")
    p.add_argument("--config", metavar="FILE", help="YAML run config (default: the supernet's settings)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--nproc", type=_POSITIVE, default=1, metavar="N")
    p.add_argument("--resume", action="store_true")
    p.set_defaults(func=_retrain)

    p = sub.add_parser("tune", help="tune the training knobs: an Optuna study, trials pruned per epoch, run on Ray")
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of `ctr prepare`")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--out", required=True, metavar="DIR", help="best.yaml, tune.json, study.db, trials/N/")
    p.add_argument("--trials", type=_POSITIVE, default=20, metavar="N", help="COMPLETE+PRUNED trials (default 20)")
    p.add_argument("--timeout", type=_POSITIVE, metavar="S", help="start no trial after S seconds")
    p.add_argument("--workers", type=_NON_NEGATIVE, default=1, metavar="W", help="Ray tasks at once (0: no Ray)")
    p.add_argument("--storage", metavar="URL", help="Optuna storage URL (default: sqlite file DIR/study.db)")
    p.add_argument("--study", default="tune", metavar="NAME", help="Optuna study name")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else local Ray)")
    p.add_argument("--config", metavar="FILE", help="YAML run config: the trials' settings before tuning")
    p.add_argument("--space", metavar="FILE", help="search space YAML (default: configs/tune/MODEL.yaml)")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. trainer.max_epochs=5"
    )
    p.set_defaults(func=_tune)

    p = sub.add_parser("export", help="export any trained run as one strictly loading artifact")
    p.add_argument(
        "--run",
        required=True,
        metavar="RUN",
        help="run directory of `ctr train`, `ctr retrain` or a compress-bench run",
    )
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--int8", action="store_true", help="int8 embedding tables (TorchRec/FBGEMM quantisation)")
    p.add_argument("--overwrite", action="store_true", help="replace an artifact that `ctr export` wrote there")
    p.set_defaults(func=_export)

    p = sub.add_parser("predict", help="score raw files with an exported model (parquet: file, line, probability)")
    p.add_argument("--model", required=True, metavar="ARTIFACT", help="output directory of `ctr export`")
    p.add_argument("--input", required=True, nargs="+", metavar="FILE", help="raw files in the data set's format")
    p.add_argument("--out", required=True, metavar="SCORES", help="parquet file; rejects to SCORES.rejects.parquet")
    p.add_argument(
        "--batch-size",
        type=_POSITIVE,
        default=65536,
        metavar="N",
        help="rows per row group of SCORES (read, encoded and scored in chunks of at most 8192)",
    )
    p.add_argument("--overwrite", action="store_true", help="replace scores that `ctr predict` wrote there")
    p.add_argument(
        "--bf16", action="store_true", help="dense layers under bfloat16 autocast: faster, scores off by up to ~1e-2"
    )
    p.add_argument(
        "--threads",
        type=_POSITIVE,
        default=None,
        metavar="N",
        help="scoring threads, each running the model on one core (default: OMP_NUM_THREADS, else one per core; "
        "1 on a busy shared machine)",
    )
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_predict)

    p = sub.add_parser("serve", help="serve an exported model over HTTP with Ray Serve (JSON records in, scores out)")
    p.add_argument("--model", required=True, metavar="ARTIFACT", help="output directory of `ctr export`")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=_POSITIVE, default=8000)
    p.add_argument("--replicas", type=_POSITIVE, default=1, metavar="N", help="model replicas (Ray actors)")
    p.add_argument("--address", metavar="ADDR", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--max-batch-size", type=_POSITIVE, default=256, metavar="N", help="requests batched per call")
    p.set_defaults(func=_serve)

    p = sub.add_parser("compress-bench", help="every embedding-compression method at every budget: AUC vs parameters")
    p.add_argument("--data", required=True, metavar="DIR", help="output directory of `ctr prepare`")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--out", required=True, metavar="DIR", help="results.json, results.md, auc_vs_params.png, runs/")
    p.add_argument(
        "--budgets",
        default="1,0.1,0.01",
        metavar="R,R",
        help="fractions of the full model's embedding parameters (every method sized to fit)",
    )
    p.add_argument(
        "--methods",
        default=",".join(m for m in BENCH_METHODS if m != "optembed-unified"),
        metavar="M,M",
        help=", ".join(BENCH_METHODS),
    )
    p.add_argument("--config", metavar="FILE", help="YAML run config (also `tables`, `supernet`, `search` sections)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_compress_bench)

    from pipelines.dashboard import add_parser as add_dashboard_parser

    add_dashboard_parser(sub)

    p = sub.add_parser("synth", help="planted-signal Criteo-format data with its ground truth")
    p.add_argument("--rows", required=True, type=_POSITIVE, metavar="N")
    p.add_argument("--out", required=True, metavar="FILE", help="TSV output; truth goes to FILE.truth.json")
    p.add_argument("--seed", type=_NON_NEGATIVE, default=0, metavar="S")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_synth)
    return parser


# Failures of the user's files, disks and permissions, not of the platform: reported as one line.
_USER_ERRNOS = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.EFBIG,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENAMETOOLONG,
    }
)
# Only a write fails so: without a file name in the error, the file is the stage's output (--out).
_WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
_RUST_ERRNO = re.compile(r"\(os error (\d+)\)")  # Polars' I/O errors: "File too large (os error 27)"


def _os_error(e: OSError, out: str | None) -> str | None:
    """``<path>: <strerror>`` for an OSError the user's files or disk caused; None for any other (a bug)."""
    code = e.errno
    if code is None and (found := _RUST_ERRNO.search(str(e))):
        code = int(found.group(1))
    if code not in _USER_ERRNOS:
        return str(e) if isinstance(e, FileNotFoundError) and code is None else None  # ours name the file
    if e.filename is not None:
        return f"{e.filename}: {os.strerror(code)}"
    if code in _WRITE_ERRNOS and out is not None:
        return f"{out}: {os.strerror(code)}"
    return None


def main(argv: Sequence[str] | None = None) -> None:
    """Run one stage; a failure the user caused (bad input, config, file or disk) is one line on stderr and
    exit code 1: ``ctr <stage>: error: <file or option>: <problem>``. Anything else keeps its traceback."""
    from config.strict import ConfigError
    from features.schema import FeatureMapError
    from features.spec import InputError

    args = _build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    errors: tuple[type[Exception], ...] = (InputError, ConfigError, FeatureMapError)
    stages = ("train", "supernet", "optembed", "search", "retrain", "export", "compress-bench", "tune")
    if args.command in (*stages, "predict", "serve"):
        from ctr.training.module import NonFiniteLossError
        from ctr.training.strategy import CheckpointError

        errors += (CheckpointError, NonFiniteLossError)
    try:
        func(args)
    except errors as e:
        _fail(args.command, str(e))
    except OSError as e:
        line = _os_error(e, getattr(args, "out", None))
        if line is None:
            raise
        _fail(args.command, line)


def _fail(command: str, message: str) -> NoReturn:
    print(f"ctr {command}: error: {message}", file=sys.stderr)
    raise SystemExit(1) from None


if __name__ == "__main__":
    main()
