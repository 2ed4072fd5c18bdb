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
    RUN/export/     the inference artifact                      (see ctr.export)
    RUN/result.json baseline vs final, sparsity, per-field dims and rows

Example:
    >>> result = run_optembed(load_run_config("optembed.yaml"), Path("runs/oe"), VARIANTS["optembed"])  # doctest: +SKIP
    >>> result["final"]["embedding_params"] / result["baseline"]["embedding_params"]  # doctest: +SKIP
    0.41
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from ctr.data import load_split
from ctr.embedding import FIRST_ORDER_MODELS, LINEAR_DIM, embedding_params
from ctr.export import export_run
from ctr.layouts import TablesConfig
from ctr.plan import EmbeddingPlan, FieldPlan
from ctr.pruned import PrunedTables
from ctr.restore import load_run
from ctr.run_config import RetrainConfig, RunConfig, SearchConfig, SupernetConfig
from ctr.strategy import complete_checkpoint
from ctr.supernet_module import find_pruning, model_row_masks
from ctr.train import command_of, train
from ctr.variants import Variant
from features.outputs import owned_dir, remove_owned
from features.strict import ConfigError
from search.driver import Scored, SearchOutcome, SearchSpace, run_search, scored_trials
from search.plots import plot_search
from search.scorer import CandidateScorer
from search.storage import PlanNote, attach_plots

__all__ = ["run_optembed", "search_stage", "train_stage"]


def train_stage(config: RunConfig, out: Path, *, nproc: int = 1) -> dict[str, Any]:
    """Train into ``out``, or return its metrics when it is done, or resume it from its last checkpoint."""
    metrics = out / "metrics.json"
    if metrics.is_file():
        loaded: dict[str, Any] = json.loads(metrics.read_text())
        return loaded
    resume = complete_checkpoint(out / "checkpoints" / "last.ckpt") is not None
    if not resume:
        remove_owned(out, command_of(config))  # started, but killed before its first checkpoint
    return train(config, out, nproc=nproc, resume=resume)


def _choices(config: RunConfig) -> tuple[int, ...]:
    supernet = config.supernet or SupernetConfig()
    full = config.model.embedding_dim
    return tuple(supernet.candidates) if supernet.candidates is not None else tuple(range(4, full + 1, 4))


def _pick(scored: list[Scored], tolerance: float) -> Scored:
    """The smallest candidate within ``tolerance`` of the best validation AUC (ties: higher AUC, earlier trial)."""
    best = max(s.val_auc for s in scored)
    near = [s for s in scored if s.val_auc >= best - tolerance]
    return min(near, key=lambda s: (s.embedding_params, -s.val_auc, s.trial))


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

    ``out`` is created, or must be empty or a folder of ``ctr search`` (resumed), and is locked meanwhile."""
    with owned_dir(out, "ctr search"):
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
    run = load_run(supernet)
    fm, model_config = run.feature_map, run.config.model
    scfg = run.config.supernet
    if scfg is None:
        raise ConfigError(f"{supernet}: not a supernet run (its config has no `supernet` section)")
    if scfg.prune_rows != variant.prune_rows or (variant.search_dims and not scfg.sample_dims):
        raise ConfigError(
            f"{supernet}: its supernet (prune_rows={scfg.prune_rows}, sample_dims={scfg.sample_dims}) "
            f"was not trained for variant {variant.name!r}"
        )
    layout = run.model.layout
    if variant.multiplexed != (layout is not None and layout.method == "unified"):
        raise ConfigError(f"{supernet}: variant {variant.name!r} needs a supernet over a Unified Embedding table")
    full = model_config.embedding_dim
    if layout is None:
        masks = model_row_masks(run.model, fm, find_pruning(run.model))
    else:  # one shared table: nothing is pruned per field, every field keeps its vocabulary
        masks = {f.name: torch.ones(f.cardinality, dtype=torch.bool) for f in fm.categorical}
    plan = EmbeddingPlan(
        fm.content_hash, full, tuple(FieldPlan(n, full, int(m.sum()), int(m.numel())) for n, m in masks.items())
    )
    tables = PrunedTables(plan, {n: m.numpy() for n, m in masks.items()})
    out.mkdir(parents=True, exist_ok=True)
    if layout is None:
        rows = tuple(int(tables.kept_ids(n).shape[0]) for n in fm.sparse_names)
        fixed = LINEAR_DIM * sum(rows) if model_config.name in FIRST_ORDER_MODELS else 0
    else:  # the shared table's size does not depend on the probe counts: the cost is constant
        rows, fixed = tuple(0 for _ in fm.sparse_names), embedding_params(fm, model_config, layout)
    space = SearchSpace(tuple(fm.sparse_names), tuple(_choices(run.config) for _ in rows), rows, fixed)
    # The budget is a fraction of the full, unpruned table (the baseline's embedding parameters).
    full_params = sum(f.rows_total for f in plan.fields) * (full + (LINEAR_DIM if fixed else 0))
    budget = int(config.budget * full_params) if config.budget is not None else None
    outcome: SearchOutcome | None = None
    scored: list[Scored] = []
    summary: dict[str, Any] = {"variant": variant.name, "supernet": str(supernet)}
    if variant.search_dims:
        torch.set_num_threads(1)
        split = load_split(run.config.data.path, fm, "valid")
        if layout is not None:
            split = layout.transform(split)
        scorer = CandidateScorer(
            run.model,
            masks if layout is None else None,
            split,
            batch_size=config.eval_batch_size,
            max_rows=config.val_rows,
            seed=config.seed,
        )
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
        chosen = _pick(scored, config.pick_tolerance)
        dims = chosen.dims
        steps: list[dict[str, Any]] = []
        if config.shrink:
            floor = outcome.best.val_auc - config.pick_tolerance
            dims, steps = _shrink(scorer, space, dims, floor)
        summary["shrink"] = steps
        summary["final_val_auc"] = scorer.score(tuple(dims[n] for n in fm.sparse_names))
        summary |= {
            "storage": url,
            "study": study,
            "trials": outcome.trials,
            "evaluated": outcome.evaluated,
            "best": dataclasses.asdict(outcome.best),
            "chosen": dataclasses.asdict(chosen),
            "pareto": [dataclasses.asdict(s) for s in outcome.pareto],
            "best_per_generation": outcome.best_per_generation,
            "full_dims_val_auc": scorer.score(tuple(full for _ in rows)),
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
    plots = plot_search(outcome, scored, final.plan, out / "plots")
    summary["plots"] = [str(p) for p in plots]
    if outcome is not None:  # the plots as study artifacts, and a note of the plan written, for the dashboard
        summary["artifacts"] = str(out / "artifacts")
        shrunk = tuple(step["field"] for step in summary["shrink"] if step["kept"])
        note = PlanNote(dims, summary["embedding_params"], summary["final_val_auc"], summary["chosen"]["trial"], shrunk)
        attach_plots(summary["storage"], study, plots, out / "artifacts", plan=note)
    done.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _shrink(
    scorer: CandidateScorer, space: SearchSpace, dims: dict[str, int], floor: float
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Step each field (largest table first) to its smallest dim where the validation AUC stays >= ``floor``."""
    current = [dims[f] for f in space.fields]
    steps: list[dict[str, Any]] = []
    for i in sorted(range(len(space.fields)), key=lambda i: (-space.rows[i], i)):
        smallest = min(space.choices[i])
        if current[i] == smallest:
            continue
        trial = [*current[:i], smallest, *current[i + 1 :]]
        auc = scorer.score(trial)
        kept = auc >= floor
        steps.append({"field": space.fields[i], "from": current[i], "to": smallest, "val_auc": auc, "kept": kept})
        if kept:
            current = trial
    return dict(zip(space.fields, current, strict=True)), steps


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
    """The whole flow; returns (and writes) ``RUN/result.json``. ``out`` is locked while it runs."""
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
    exported: dict[str, Any] | None = None
    if multiplexed is not None:  # the same shared table, each field with its searched number of probes
        probes = {f.name: f.dim // multiplexed.chunk for f in plan.fields}
        final_cfg = dataclasses.replace(base, tables=dataclasses.replace(multiplexed, probes=probes))
        final = timed("retrain", train_stage, final_cfg, out / "retrain", nproc=nproc)
    else:
        retrain = dataclasses.replace(
            config.retrain or RetrainConfig(), supernet=str(out / "supernet"), plan=str(out / "search")
        )
        final = timed("retrain", train_stage, dataclasses.replace(base, retrain=retrain), out / "retrain", nproc=nproc)
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
        result["note"] = "multiplexed: one shared table of fixed size; no export (Unified Embedding tables)"
    (out / "result.json").write_text(json.dumps(result, indent=2) + "\n")
    return result
