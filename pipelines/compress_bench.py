"""``ctr compress-bench``: every embedding-compression method at every memory budget, one model, one dataset.

Methods: the table methods of :mod:`ctr.tables.methods` (``full``, ``hash``, ``shared_hash``, ``qr``, ``mde``,
``unified``), ``optembed`` (the whole OptEmbed pipeline with ``search.budget`` set to the budget) and
``optembed-unified`` (OptEmbed's probe search over a Unified Embedding table of that budget). The
budget ``r`` is a fraction of the full tables' embedding parameters; ``full`` runs once (it is the ``r = 1``
reference). All runs share the model, optimisers, seeds and splits of one config.

Output, in ``OUT``: ``runs/<method>@<budget>/`` (each a normal run, resumable: a finished one is not redone),
``results.json`` (a list of records: ``method``, ``budget``, ``embedding_params``, ``test_auc``,
``test_logloss``, ``train_samples_per_sec``), ``results.md`` (a Markdown table) and ``auc_vs_params.png``.

Example:
    >>> run_compress_bench(config, Path("bench"), ["hash", "unified"], [0.1, 0.01])  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from config.registry import BENCH_METHODS, LEARNED_METHODS
from config.run import RunConfig, SearchConfig, SupernetConfig
from config.strict import ConfigError
from config.tables import Method, TablesConfig
from ctr.optembed.variants import VARIANTS
from features.outputs import owned_dir
from pipelines.optembed import run_optembed, train_stage

__all__ = ["run_compress_bench"]


def _record(method: str, budget: float, metrics: dict[str, Any]) -> dict[str, Any]:
    """One result; a method that cannot run at a budget gets ``None`` figures (and an ``error``)."""
    return {
        "method": method,
        "budget": budget,
        "embedding_params": metrics.get("embedding_params"),
        "test_auc": metrics.get("test_auc"),
        "test_logloss": metrics.get("test_logloss"),
        "train_samples_per_sec": metrics.get("samples_per_sec"),
    }


def run_compress_bench(
    config: RunConfig, out: Path, methods: Sequence[str], budgets: Sequence[float], *, progress: bool = True
) -> list[dict[str, Any]]:
    unknown = sorted(set(methods) - set(BENCH_METHODS))
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; choose from {', '.join(BENCH_METHODS)}")
    bad = [b for b in budgets if not 0.0 < b <= 1.0]
    if bad:
        raise ConfigError(f"budgets must be fractions in (0, 1], got {bad}")
    with owned_dir(out, "ctr compress-bench"):
        return _bench(config, out, methods, budgets, progress=progress)


def _bench(
    config: RunConfig, out: Path, methods: Sequence[str], budgets: Sequence[float], *, progress: bool
) -> list[dict[str, Any]]:
    base = dataclasses.replace(config, supernet=None, search=None, retrain=None, tables=None)
    records: list[dict[str, Any]] = []
    for method in methods:
        for budget in [1.0] if method == "full" else budgets:
            run = out / "runs" / f"{method}@{budget:g}"
            if method in LEARNED_METHODS:
                unified = method == "optembed-unified"  # the budget sizes the shared table, not the search
                search = config.search or SearchConfig()
                search = dataclasses.replace(search, budget=None if unified or budget == 1 else budget)
                tables = dataclasses.replace(config.tables or TablesConfig(), method="unified", budget=budget)
                oe = dataclasses.replace(
                    base,
                    supernet=config.supernet or SupernetConfig(),
                    search=search,
                    retrain=config.retrain,
                    tables=tables if unified else None,
                )
                try:
                    result = run_optembed(oe, run, VARIANTS[method], progress=progress)
                except ConfigError as e:  # e.g. a budget below OptEmbed's smallest table (every dim at 4)
                    records.append({**_record(method, budget, {}), "error": str(e)})
                    continue
                metrics = result["final"]
            else:
                name = cast(Method, method)
                tables = dataclasses.replace(config.tables or TablesConfig(), method=name, budget=budget)
                metrics = train_stage(dataclasses.replace(base, tables=tables), run)
            records.append(_record(method, budget, metrics))
            (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")  # partial results survive
    (out / "results.md").write_text(markdown_table(records))
    plot_auc_vs_params(records, out / "auc_vs_params.png")
    return records


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| method | budget | embedding params | test AUC | test logloss | train samples/s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (-r["budget"], r["method"])):
        if r["test_auc"] is None:
            lines.append(f"| {r['method']} | {r['budget']:g} | n/a: {r.get('error', 'not run')} | | | |")
            continue
        lines.append(
            f"| {r['method']} | {r['budget']:g} | {r['embedding_params']:,} | {r['test_auc']:.4f} | "
            f"{r['test_logloss']:.4f} | {r['train_samples_per_sec']:,.0f} |"
        )
    return "\n".join(lines) + "\n"


def plot_auc_vs_params(records: Sequence[dict[str, Any]], path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(6, 4))
    done = [r for r in records if r["test_auc"] is not None]
    for method in dict.fromkeys(r["method"] for r in done):
        mine = sorted((r for r in done if r["method"] == method), key=lambda r: r["embedding_params"])
        ax.plot([r["embedding_params"] for r in mine], [r["test_auc"] for r in mine], "o-", label=method)
    ax.set_xscale("log")
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
