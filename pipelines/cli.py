"""The ``ctr`` command: one thin sub-command per stage; each parses, loads config and calls the library.

Bad input ends with one line on stderr naming the file and the problem, and exit code 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["main"]


def _prepare(args: argparse.Namespace) -> None:
    from features.prepare import PrepareOptions, prepare
    from features.spec import builtin_spec, load_spec

    if args.dataset == "custom" and args.spec is None:
        raise SystemExit("ctr prepare: error: --dataset custom needs --spec FILE")
    spec = load_spec(args.spec) if args.spec is not None else builtin_spec(args.dataset)
    options = PrepareOptions(
        split=args.split,
        seed=args.seed,
        min_count=args.min_count,
        shard_rows=args.shard_rows,
        progress=not args.quiet,
        overwrite=args.overwrite,
    )
    report = prepare(spec, [Path(p) for p in args.input], Path(args.out), options)
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
    from ctr.run_config import load_run_config
    from ctr.train import train

    sections = ("supernet",) if args.command == "supernet" else ()
    config = load_run_config(args.config, args.set, data=args.data, model=args.model, sections=sections)
    metrics = train(config, Path(args.out), nproc=args.nproc, resume=args.resume)
    print(json.dumps(metrics))


def _synth(args: argparse.Namespace) -> None:
    from features.synth import write_synthetic

    truth = write_synthetic(args.rows, Path(args.out), seed=args.seed, progress=not args.quiet)
    print(json.dumps({"rows": args.rows, "out": args.out, "bayes_auc": truth.bayes_auc, "ctr": truth.ctr}))


MODEL_NAMES = ("lr", "fm", "deepfm", "fnn", "ipnn", "dcn", "dcnv2", "dlrm")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ctr", description="CTR models whose embedding tables find their own shape.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("prepare", help="raw CSV/TSV/parquet logs -> encoded parquet shards + feature_map.json")
    p.add_argument("--dataset", required=True, choices=["criteo", "avazu", "movielens", "custom"])
    p.add_argument("--input", required=True, nargs="+", metavar="FILE", help="input files (MovieLens: u.data)")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--spec", metavar="FILE", help="dataset spec YAML (required for custom; overrides built-ins)")
    p.add_argument("--min-count", type=int, metavar="N", help="default vocabulary min-count (spec default: 1)")
    p.add_argument("--split", choices=["random", "time"], default="random", help="8:1:1 random, or by time")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the random split")
    p.add_argument("--shard-rows", type=int, default=1_000_000, metavar="N", help="rows per parquet shard")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_prepare)

    p = sub.add_parser("apply", help="encode new raw data with a fitted feature map (unseen values -> OOV)")
    p.add_argument("--feature-map", required=True, metavar="PATH", help="feature_map.json or its directory")
    p.add_argument("--input", required=True, nargs="+", metavar="FILE")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--split-name", default="apply", metavar="NAME", help="name of the output split")
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_apply)

    for name, text in [
        ("train", "train a CTR model (TorchRec + FBGEMM under Lightning) on prepared data"),
        ("supernet", "train an OptEmbed supernet: learnable row pruning + dimension sampling (supernet.* keys)"),
    ]:
        p = sub.add_parser(name, help=text)
        p.add_argument("--data", required=True, metavar="DIR", help="output directory of `ctr prepare`")
        p.add_argument("--model", required=True, choices=list(MODEL_NAMES))
        p.add_argument("--out", required=True, metavar="RUN", help="run directory (metrics.json, checkpoints, logs)")
        p.add_argument("--config", metavar="FILE", help="YAML run config (data, model, optim, trainer, supernet)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override, e.g. optim.lr=0.01")
        p.add_argument("--nproc", type=int, default=1, metavar="N", help="processes (tables sharded across them)")
        p.add_argument("--resume", action="store_true", help="continue from RUN/checkpoints/last.ckpt")
        p.set_defaults(func=_train)

    p = sub.add_parser("synth", help="planted-signal Criteo-format data with its ground truth")
    p.add_argument("--rows", required=True, type=int, metavar="N")
    p.add_argument("--out", required=True, metavar="FILE", help="TSV output; truth goes to FILE.truth.json")
    p.add_argument("--seed", type=int, default=0, metavar="S")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=_synth)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    from features.schema import FeatureMapError
    from features.spec import InputError
    from features.strict import ConfigError

    args = _build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], None] = args.func
    errors: tuple[type[Exception], ...] = (InputError, ConfigError, FeatureMapError, FileNotFoundError)
    if args.command in ("train", "supernet"):
        from ctr.lit import NonFiniteLossError
        from ctr.strategy import CheckpointError

        errors += (CheckpointError, NonFiniteLossError)
    try:
        func(args)
    except errors as e:
        print(f"ctr {args.command}: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
