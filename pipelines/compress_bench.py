"""``ctr compress-bench``: every embedding-compression method at every memory budget, one model, one dataset.

Methods: the table methods of :mod:`ctr.tables.methods` (``full``, ``hash``, ``shared_hash``, ``qr``, ``mde``,
``unified``), ``optembed`` (the whole OptEmbed pipeline with ``search.budget`` set to the budget) and
``optembed-unified`` (OptEmbed's probe search over a Unified Embedding table of that budget). All runs share the
model, optimisers, seeds and splits of one config; ``full`` runs once (it is the ``r = 1`` reference).

**Equal memory.** The budget ``r`` is a fraction of the *full model's* embedding parameters, every parameter
counted the same way (:func:`ctr.tables.embedding.embedding_params`: the main tables and the first-order columns
or tables of LR/FM/DeepFM), and every method is built with at most ``floor(r x full)`` of them: its size knob is
the largest that fits (:func:`ctr.tables.sizing.fit_budget`). A method that cannot get that small (QR's fewest
rows, MDE's dims of 4, OptEmbed's smallest candidate) is not run: its record says ``unreachable``, with the
method's minimum.

Output, in ``OUT``: ``runs/<method>@<budget>/`` (each a normal run, resumable: a finished one is not redone),
``results.json`` (a list of records: ``method``, ``budget`` (the fraction), ``budget_params`` (its parameter
limit), ``status`` (``ok``, ``unreachable`` or ``error``), ``embedding_params`` (the run's exact count),
``min_params`` (an unreachable method's minimum), ``test_auc``, ``test_logloss``, ``train_samples_per_sec``, and
``error`` when a run could not be made), ``results.md`` (a Markdown table) and ``auc_vs_params.png`` (test AUC
against the real parameter counts, unreachable methods at their minimum).

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
from ctr.tables.sizing import budget_limit, fit_budget
from features.outputs import owned_dir
from features.schema import FeatureMap
from pipelines.optembed import run_optembed, train_stage
from search.driver import BudgetUnreachable

__all__ = ["run_compress_bench"]


def _record(
    method: str, budget: float, limit: int, metrics: dict[str, Any], min_params: int | None = None
) -> dict[str, Any]:
    """One result; a method that is not run at a budget gets ``None`` figures (``min_params`` when it cannot get
    under the limit, else an ``error`` added by the caller)."""
    params = metrics.get("embedding_params")
    status = "unreachable" if min_params is not None else "error" if params is None else "ok"
    if params is not None and params > limit:  # never built so (the sizing and OptEmbed's search keep under)
        raise ConfigError(f"{method} at budget {budget:g}: {params} embedding parameters, over the limit {limit}")
    return {
        "method": method,
        "budget": budget,
        "budget_params": limit,
        "status": status,
        "embedding_params": params,
        "min_params": min_params,
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
    fm = FeatureMap.load(config.data.path)
    records: list[dict[str, Any]] = []
    for method in methods:
        for budget in [1.0] if method == "full" else budgets:
            run = out / "runs" / f"{method}@{budget:g}"
            limit = budget_limit(fm, config.model, budget)
            if method in LEARNED_METHODS:
                record = _learned(config, base, fm, method, budget, run, progress=progress)
            else:
                tables = dataclasses.replace(
                    config.tables or TablesConfig(), method=cast(Method, method), budget=budget
                )
                sized = fit_budget(tables, fm, config.model, budget)
                if not sized.reachable:
                    record = _record(method, budget, limit, {}, min_params=sized.params)
                else:
                    metrics = train_stage(dataclasses.replace(base, tables=sized.tables), run)
                    if metrics["embedding_params"] != sized.params:
                        raise ConfigError(
                            f"{run} holds a run of {metrics['embedding_params']} embedding parameters where "
                            f"{method} at budget {budget:g} is sized to {sized.params} (an older benchmark "
                            "folder, before budgets meant equal memory?): use a new --out"
                        )
                    record = _record(method, budget, limit, metrics)
            records.append(record)
            (out / "results.json").write_text(json.dumps(records, indent=2) + "\n")  # partial results survive
    (out / "results.md").write_text(markdown_table(records))
    plot_auc_vs_params(records, out / "auc_vs_params.png")
    return records


def _learned(
    config: RunConfig, base: RunConfig, fm: FeatureMap, method: str, budget: float, run: Path, *, progress: bool
) -> dict[str, Any]:
    """``optembed`` (its search held to the budget) or ``optembed-unified`` (its shared table sized to it)."""
    limit = budget_limit(fm, config.model, budget)
    unified = method == "optembed-unified"  # the budget sizes the shared table, not the search
    search = config.search or SearchConfig()
    search = dataclasses.replace(search, budget=None if unified or budget == 1 else budget)
    tables = None
    if unified:
        wanted = dataclasses.replace(config.tables or TablesConfig(), method="unified", budget=budget)
        sized = fit_budget(wanted, fm, config.model, budget)
        if not sized.reachable:
            return _record(method, budget, limit, {}, min_params=sized.params)
        tables = sized.tables
    oe = dataclasses.replace(
        base, supernet=config.supernet or SupernetConfig(), search=search, retrain=config.retrain, tables=tables
    )
    try:
        result = run_optembed(oe, run, VARIANTS[method], progress=progress)
    except BudgetUnreachable as e:  # a budget below OptEmbed's smallest table (every dim at 4)
        return {**_record(method, budget, limit, {}, min_params=e.smallest), "error": str(e)}
    except ConfigError as e:
        return {**_record(method, budget, limit, {}), "error": str(e)}
    return _record(method, budget, limit, result["final"])


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| method | budget | params limit | embedding params | test AUC | test logloss | train samples/s |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(records, key=lambda r: (-r["budget"], r["method"])):
        head = f"| {r['method']} | {r['budget']:g} | {r['budget_params']:,} |"
        if r["status"] == "unreachable":
            lines.append(f"{head} unreachable: minimum {r['min_params']:,} | | | |")
        elif r["test_auc"] is None:
            lines.append(f"{head} n/a: {r.get('error', 'not run')} | | | |")
        else:
            lines.append(
                f"{head} {r['embedding_params']:,} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | "
                f"{r['train_samples_per_sec']:,.0f} |"
            )
    return "\n".join(lines) + "\n"


def plot_auc_vs_params(records: Sequence[dict[str, Any]], path: Path) -> Path:
    """Test AUC against each run's real embedding parameters; dotted lines are the budgets' limits, and a method
    that cannot reach a budget is an ``x`` at its minimum on the bottom edge."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    done = [r for r in records if r["test_auc"] is not None]
    colors: dict[str, Any] = {}
    for method in dict.fromkeys(r["method"] for r in done):
        mine = sorted((r for r in done if r["method"] == method), key=lambda r: r["embedding_params"])
        (line,) = ax.plot([r["embedding_params"] for r in mine], [r["test_auc"] for r in mine], "o-", label=method)
        colors[method] = line.get_color()
    for limit in sorted({r["budget_params"] for r in records}):
        ax.axvline(limit, color="0.7", linestyle=":", linewidth=1)
    unreachable: dict[tuple[str, int], list[str]] = {}  # (method, its minimum) -> the budgets it cannot reach
    for r in records:
        if r["status"] == "unreachable":
            unreachable.setdefault((r["method"], r["min_params"]), []).append(f"{r['budget']:g}")
    if unreachable:
        bottom = ax.get_ylim()[0]
        for (method, least), missed in unreachable.items():
            color = colors.get(method, "0.3")
            ax.plot([least], [bottom], "x", color=color, clip_on=False, markersize=8)
            label = f"{method} @{'/'.join(missed)}"
            ax.annotate(label, (least, bottom), fontsize=6, rotation=90, xytext=(2, 4), textcoords="offset points")
        ax.plot([], [], "x", color="0.3", label="unreachable (its minimum)")
    ax.set_xscale("log")
    ax.set_xlabel("embedding parameters (dotted: budget limits)")
    ax.set_ylabel("test AUC")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))  # outside: no point hidden
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
