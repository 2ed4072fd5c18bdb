"""The OptEmbed pipeline: baseline -> supernet -> search -> retrain -> export -> ``result.json`` and plots.

Every stage writes into its own directory under ``RUN`` and can run alone (``ctr supernet``, ``ctr search``,
``ctr retrain``, ``ctr export``). Run again after an interruption, the pipeline resumes: a finished stage (its
``metrics.json`` or ``search.json`` exists) is not redone, a training stage with a checkpoint continues from
it, and the search continues its Optuna study without re-evaluating finished candidates.

::

    RUN/baseline/   the base model with full tables            (metrics.json)
    RUN/supernet/   the OptEmbed supernet                       (metrics.json, plan.json of kept rows)
    RUN/search/     plan.json + masks.npz, search.json, study.db (default SQLite storage),
                    plots/dims.png, plots/generations.png, plots/pareto.png
    RUN/retrain/    the pruned, mixed-dimension model           (metrics.json)
    RUN/export/     the inference artifact                      (see ctr.artifact.export)
    RUN/result.json baseline vs final, sparsity, per-field dims and rows

Example:
    >>> result = run_optembed(load_run_config("optembed.yaml"), Path("runs/oe"), VARIANTS["optembed"])  # doctest: +SKIP
    >>> result["final"]["embedding_params"] / result["baseline"]["embedding_params"]  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import optuna

from config.run import RetrainConfig, RunConfig, SearchConfig, SupernetConfig
from config.tables import TablesConfig
from ctr.artifact.export import export_run
from ctr.optembed.frozen import freeze
from ctr.optembed.plot import plot_dims
from ctr.optembed.pruned import PrunedTables
from ctr.optembed.variants import Variant, for_model
from ctr.runs import command_of, train_run
from ctr.training.restore import read_run_config
from ctr.training.strategy import complete_checkpoint
from ctr.training.threads import torch_threads
from features.outputs import is_secondary_rank, owned_dir, remove_owned
from search.driver import Scored, SearchOutcome, SearchSpace, run_search, scored_trials
from search.pick import pick, shrink
from search.plots import plot_search
from search.sample_size import sized_sample
from search.storage import PlanNote, attach_plots

__all__ = ["run_optembed", "search_stage", "train_stage"]


def train_stage(config: RunConfig, out: Path, *, nproc: int = 1) -> dict[str, Any]:
    """Train into ``out``, or return its metrics when it is done, or resume it from its last checkpoint."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        loaded: dict[str, Any] = json.loads(metrics.read_text())
        return loaded
    resume = complete_checkpoint(out / "checkpoints" / "last.ckpt") is not None
    if not resume and not is_secondary_rank():  # rank 0 holds the folder (ranks > 0 re-run the pipeline)
        remove_owned(out, command_of(config))  # started, but killed before its first checkpoint
    return train_run(config, out, nproc=nproc, resume=resume)


def _rank0_search(out: Path, poll_s: float = 0.5) -> dict[str, Any]:
    """A rank > 0 of ``--nproc N`` (it re-runs the pipeline to join the training stages): rank 0 searches, this
    rank waits for its ``search.json``, or ends when rank 0 is gone (it was started by rank 0)."""
    parent = os.getppid()
    while not (out / "search.json").is_file():
        if os.getppid() != parent:
            raise SystemExit(1)
        time.sleep(poll_s)
    loaded: dict[str, Any] = json.loads((out / "search.json").read_text())
    return loaded


def _fitted(variant: Variant, model: str) -> Variant:
    """:func:`for_model`'s variant; its note, if any, on stderr."""
    fitted, note = for_model(variant, model)
    if note is not None:
        print(note, file=sys.stderr, flush=True)
    return fitted


def search_stage(
    supernet: Path,
    out: Path,
    variant: Variant,
    config: SearchConfig,
    *,
    storage: str | None = None,
    study: str = "optembed",
    address: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Freeze the supernet's row masks, search per-field dims (if the variant does), write the plan into ``out``.

    ``out`` is created, or must be empty or a folder of ``ctr search`` (resumed), and is locked meanwhile. The
    stage runs on one torch thread (the candidates are scored one pass each); the caller's thread count is
    restored after (``ctr optembed``'s retraining once ran single-threaded after it: 21k against 31k samples/s on
    1M rows, docs/benchmarks.md)."""
    with owned_dir(out, "ctr search"), torch_threads(1):
        return _search(supernet, out, variant, config, storage=storage, study=study, address=address, progress=progress)


def _search(
    supernet: Path,
    out: Path,
    variant: Variant,
    config: SearchConfig,
    *,
    storage: str | None,
    study: str,
    address: str | None,
    progress: bool,
) -> dict[str, Any]:
    done = out / "search.json"
    if done.is_file():
        loaded: dict[str, Any] = json.loads(done.read_text())
        return loaded
    started = time.perf_counter()
    variant = _fitted(variant, read_run_config(supernet).model.name)  # `ctr search` on a DLRM supernet: rows only
    frozen = freeze(supernet, variant)
    fm, full, tables = frozen.run.feature_map, frozen.full_dim, frozen.tables
    out.mkdir(parents=True, exist_ok=True)
    space = SearchSpace(frozen.fields, tuple(frozen.choices for _ in frozen.rows), frozen.rows, frozen.fixed_params)
    # The budget is a fraction of the full, unpruned table (the baseline's embedding parameters).
    budget = int(config.budget * frozen.full_params) if config.budget is not None else None
    outcome: SearchOutcome | None = None
    scored: list[Scored] = []
    summary: dict[str, Any] = {"variant": variant.name, "supernet": str(supernet)}
    if variant.search_dims:
        scorer = frozen.scorer(config)
        if config.val_rows is None and config.auc_noise is not None:
            scorer, summary["sample"] = sized_sample(scorer, space.choices, config.auc_noise, config.seed)
        url = storage or f"sqlite:///{(out / 'study.db').resolve()}"
        outcome = run_search(
            scorer,
            space,
            config,
            url,
            study,
            spec={"feature_map_hash": fm.content_hash, "supernet": str(Path(supernet).resolve())},
            address=address,
            progress=progress,
            budget_params=budget,
        )
        scored = scored_trials(optuna.load_study(study_name=study, storage=url))
        chosen = pick(scored, config.pick_tolerance)
        dims = chosen.dims
        steps: list[dict[str, Any]] = []
        if config.shrink:
            dims, steps = shrink(scorer, space, dims, config.shrink_floor(outcome.best.val_auc))
        summary["shrink"] = steps
        summary["final_val_auc"] = scorer.score_many([tuple(dims[n] for n in fm.sparse_names)])[0]
        summary |= {
            "storage": url,
            "study": study,
            "trials": outcome.trials,
            "evaluated": outcome.evaluated,
            "best": dataclasses.asdict(outcome.best),
            "chosen": dataclasses.asdict(chosen),
            "pareto": [dataclasses.asdict(s) for s in outcome.pareto],
            "best_per_generation": outcome.best_per_generation,
            "full_dims_val_auc": scorer.score_many([tuple(full for _ in frozen.rows)])[0],
            "scorer_rows": scorer.num_rows,
        }
    else:
        dims = {n: full for n in fm.sparse_names}
    final = tables.with_dims(dims)
    final.save(out)
    summary |= {
        "dims": dims,
        "embedding_params": space.cost(tuple(dims[n] for n in fm.sparse_names)),
        "sparsity": final.plan.sparsity,
        "row_sparsity": final.plan.row_sparsity,
        "seconds": time.perf_counter() - started,
    }
    (out / "plots").mkdir(parents=True, exist_ok=True)
    plots = [plot_dims(final.plan, out / "plots" / "dims.png")]
    plots += plot_search(outcome, scored, out / "plots") if outcome is not None else []
    summary["plots"] = [str(p) for p in plots]
    if outcome is not None:  # the plots as study artifacts, and a note of the plan written, for the dashboard
        summary["artifacts"] = str(out / "artifacts")
        shrunk = tuple(step["field"] for step in summary["shrink"] if step["kept"])
        note = PlanNote(dims, summary["embedding_params"], summary["final_val_auc"], summary["chosen"]["trial"], shrunk)
        attach_plots(summary["storage"], study, plots, out / "artifacts", plan=note)
    done.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def run_optembed(
    config: RunConfig,
    out: Path,
    variant: Variant,
    *,
    storage: str | None = None,
    study: str = "optembed",
    address: str | None = None,
    nproc: int = 1,
    int8: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """The whole flow; returns (and writes) ``RUN/result.json``. ``out`` is locked while it runs. A rank > 0 of
    ``nproc`` (a process Lightning started, re-running the command) joins the training stages only and returns {}.
    A model whose fields must share one dim (DLRM) runs ``optembed`` as ``optembed-e`` (:func:`for_model`)."""
    variant = _fitted(variant, config.model.name)
    with owned_dir(out, "ctr optembed"):
        return _run(
            config,
            out,
            variant,
            storage=storage,
            study=study,
            address=address,
            nproc=nproc,
            int8=int8,
            progress=progress,
        )


def _run(
    config: RunConfig,
    out: Path,
    variant: Variant,
    *,
    storage: str | None,
    study: str,
    address: str | None,
    nproc: int,
    int8: bool,
    progress: bool,
) -> dict[str, Any]:
    seconds: dict[str, float] = {}
    base = dataclasses.replace(config, supernet=None, search=None, retrain=None)

    def timed(name: str, fn: Any, *args: Any, **kw: Any) -> Any:
        print(f"== {name} ==", flush=True)  # each stage's own lines (epochs, search progress) follow
        started = time.perf_counter()
        value = fn(*args, **kw)
        seconds[name] = time.perf_counter() - started
        return value

    supernet = variant.supernet(config.supernet or SupernetConfig())
    multiplexed: TablesConfig | None = None
    if variant.multiplexed:  # baseline: the Unified Embedding table with every field at full width (UE alone)
        multiplexed = dataclasses.replace(config.tables or TablesConfig(), method="unified", probes={})
        base = dataclasses.replace(base, tables=multiplexed)
        chunk, full_dim = multiplexed.chunk, config.model.embedding_dim
        supernet = dataclasses.replace(supernet, candidates=tuple(range(0, full_dim + 1, chunk)))  # k_f in 0..K
    baseline = timed("baseline", train_stage, base, out / "baseline", nproc=nproc)
    if supernet.hold_auc is not None and supernet.reference_auc is None:  # the controller holds the baseline's AUC
        supernet = dataclasses.replace(supernet, reference_auc=baseline["val_auc"])
    supernet_cfg = dataclasses.replace(base, supernet=supernet)
    timed("supernet", train_stage, supernet_cfg, out / "supernet", nproc=nproc)
    if is_secondary_rank():  # only rank 0 searches, exports and writes result.json; this rank joins retraining
        search = timed("search", _rank0_search, out / "search")
    else:
        search = timed(
            "search",
            search_stage,
            out / "supernet",
            out / "search",
            variant,
            config.search or SearchConfig(),
            storage=storage,
            study=study,
            address=address,
            progress=progress,
        )
    plan = PrunedTables.load(out / "search").plan
    if multiplexed is not None:  # the same shared table, each field with its searched number of probes
        probes = {f.name: f.dim // multiplexed.chunk for f in plan.fields}
        final_cfg = dataclasses.replace(base, tables=dataclasses.replace(multiplexed, probes=probes))
    else:
        retrain = dataclasses.replace(
            config.retrain or RetrainConfig(), supernet=str(out / "supernet"), plan=str(out / "search")
        )
        final_cfg = dataclasses.replace(base, retrain=retrain)
    final = timed("retrain", train_stage, final_cfg, out / "retrain", nproc=nproc)
    if is_secondary_rank():
        return {}
    exported = timed("export", export_run, out / "retrain", out / "export", int8=int8, overwrite=True)
    keys = ("test_auc", "test_logloss", "val_auc", "embedding_params", "samples_per_sec")
    result: dict[str, Any] = {
        "variant": variant.name,
        "model": config.model.name,
        "baseline": {k: baseline.get(k) for k in keys},
        "final": {k: final.get(k) for k in keys},
        "params_ratio": final["embedding_params"] / baseline["embedding_params"],
        "auc_change": final["test_auc"] - baseline["test_auc"],
        "sparsity": plan.sparsity,
        "row_sparsity": plan.row_sparsity,
        "fields": [dataclasses.asdict(f) for f in plan.fields],
        "note": None,
        "search": {k: search.get(k) for k in ("trials", "evaluated", "best", "chosen", "storage", "study")},
        "export": exported,
        "seconds": seconds,
    }
    if multiplexed is not None:  # the parameters are the shared table's; the search chose probes, not rows
        full_table = sum(f.rows_total for f in plan.fields) * plan.full_dim
        result["sparsity"] = 1.0 - final["embedding_params"] / full_table
        result["fields"] = [{**f, "probes": f["dim"] // multiplexed.chunk} for f in result["fields"]]
        result["note"] = "multiplexed: one shared table of fixed size (Unified Embedding tables)"
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
