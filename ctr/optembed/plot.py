"""The plan as a picture: each field's searched dim and the share of its rows kept (``plots/dims.png``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from ctr.optembed.plan import EmbeddingPlan

__all__ = ["plot_dims"]


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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
