"""PNG plots of a search: dims per field, best AUC per generation, and AUC against embedding parameters.

Example:
    >>> plot_search(outcome, scored, plan, Path("runs/optembed/plots"))  # doctest: +SKIP
    [PosixPath('runs/optembed/plots/dims.png'), ...]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from ctr.optembed.plan import EmbeddingPlan
from search.driver import Scored, SearchOutcome

__all__ = ["plot_dims", "plot_generations", "plot_pareto", "plot_search"]


def plot_dims(plan: EmbeddingPlan, path: Path) -> Path:
    """Per field: the searched dim (bars) and the share of rows kept (line, right axis)."""
    names = [f.name for f in plan.fields]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.35 * len(names)), 3.5))
    ax.bar(names, [f.dim for f in plan.fields], color="tab:blue", label="dim")
    ax.set_ylabel("embedding dim")
    ax.set_ylim(0, plan.full_dim * 1.05)
    ax.tick_params(axis="x", rotation=90)
    kept = ax.twinx()
    kept.plot(names, [f.rows_kept / max(f.rows_total, 1) for f in plan.fields], "o-", color="tab:red")
    kept.set_ylabel("rows kept (share)", color="tab:red")
    kept.set_ylim(0, 1.05)
    ax.set_title(f"OptEmbed plan: sparsity {plan.sparsity:.3f}, row sparsity {plan.row_sparsity:.3f}")
    return _save(fig, path)


def plot_generations(outcome: SearchOutcome, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(len(outcome.best_per_generation)), outcome.best_per_generation, "o-")
    ax.set_xlabel("generation")
    ax.set_ylabel("best validation AUC so far")
    ax.set_title(f"{outcome.trials} candidates")
    return _save(fig, path)


def plot_pareto(scored: Sequence[Scored], outcome: SearchOutcome, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([s.embedding_params for s in scored], [s.val_auc for s in scored], s=8, alpha=0.4, label="candidates")
    front = outcome.pareto
    ax.plot([s.embedding_params for s in front], [s.val_auc for s in front], "o-", color="tab:red", label="Pareto")
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("validation AUC")
    ax.legend()
    return _save(fig, path)


def plot_search(outcome: SearchOutcome | None, scored: Sequence[Scored], plan: EmbeddingPlan, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = [plot_dims(plan, out / "dims.png")]
    if outcome is not None:
        paths += [plot_generations(outcome, out / "generations.png"), plot_pareto(scored, outcome, out / "pareto.png")]
    return paths


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
