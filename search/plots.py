"""PNG plots of a search: best AUC per generation, and AUC against embedding parameters.

Example:
    >>> plot_search(outcome, scored, Path("runs/optembed/plots"))  # doctest: +SKIP
    [PosixPath('runs/optembed/plots/generations.png'), PosixPath('runs/optembed/plots/pareto.png')]
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from search.driver import Scored, SearchOutcome

__all__ = ["plot_generations", "plot_pareto", "plot_search", "save_figure"]


def plot_generations(outcome: SearchOutcome, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(range(len(outcome.best_per_generation)), outcome.best_per_generation, "o-")
    ax.set_xlabel("generation")
    ax.set_ylabel("best validation AUC so far")
    ax.set_title(f"{outcome.trials} candidates")
    return save_figure(fig, path)


def plot_pareto(scored: Sequence[Scored], outcome: SearchOutcome, path: Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.scatter([s.embedding_params for s in scored], [s.val_auc for s in scored], s=8, alpha=0.4, label="candidates")
    front = outcome.pareto
    ax.plot([s.embedding_params for s in front], [s.val_auc for s in front], "o-", color="tab:red", label="Pareto")
    ax.set_xlabel("embedding parameters")
    ax.set_ylabel("validation AUC")
    ax.legend()
    return save_figure(fig, path)


def plot_search(outcome: SearchOutcome, scored: Sequence[Scored], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    return [plot_generations(outcome, out / "generations.png"), plot_pareto(scored, outcome, out / "pareto.png")]


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG and close it."""
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
