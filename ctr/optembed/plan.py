"""``EmbeddingPlan``: which rows and how many dimensions each field's table keeps (``plan.json``).

The boundary type between the OptEmbed search and retraining/export. A plan names the feature map it was
made for (by content hash) and, per field, the kept dimension and row count; the kept rows themselves live
beside it as boolean masks (``masks.npz``) when rows are pruned. Sizes follow the OptEmbed paper:

    sparsity     = 1 - sum_f(rows_kept_f * dim_f) / sum_f(rows_total_f * full_dim)
    row_sparsity = 1 - sum_f(rows_kept_f) / sum_f(rows_total_f)

Example:
    >>> fields = (FieldPlan("C1", dim=4, rows_kept=5, rows_total=10), FieldPlan("C2", dim=8, rows_kept=2, rows_total=2))
    >>> plan = EmbeddingPlan(feature_map_hash="abc", full_dim=8, fields=fields)
    >>> plan.embedding_params, plan.sparsity, round(plan.row_sparsity, 4)
    (36, 0.625, 0.4167)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from config.strict import ConfigError, from_dict, load_json, to_dict

__all__ = ["EmbeddingPlan", "FieldPlan"]


@dataclass(frozen=True)
class FieldPlan:
    name: str
    dim: int
    rows_kept: int
    rows_total: int

    def __post_init__(self) -> None:
        if self.dim < 0 or self.dim % 4:
            raise ConfigError(f"field {self.name!r}: dim {self.dim} is not a multiple of 4 (FBGEMM needs it)")
        if not 0 <= self.rows_kept <= self.rows_total:
            raise ConfigError(f"field {self.name!r}: rows_kept {self.rows_kept} not in [0, {self.rows_total}]")


@dataclass(frozen=True)
class EmbeddingPlan:
    """Per-field kept rows and dims, for the feature map with hash ``feature_map_hash``."""

    feature_map_hash: str
    full_dim: int
    fields: tuple[FieldPlan, ...]

    def __post_init__(self) -> None:
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ConfigError(f"plan lists a field twice: {sorted({n for n in names if names.count(n) > 1})}")
        too_wide = [f.name for f in self.fields if f.dim > self.full_dim]
        if too_wide:
            raise ConfigError(f"plan fields {too_wide} are wider than full_dim {self.full_dim}")

    @property
    def embedding_params(self) -> int:
        return sum(f.rows_kept * f.dim for f in self.fields)

    @property
    def sparsity(self) -> float:
        full = sum(f.rows_total for f in self.fields) * self.full_dim
        return 1.0 - self.embedding_params / full if full else 0.0

    @property
    def row_sparsity(self) -> float:
        total = sum(f.rows_total for f in self.fields)
        return 1.0 - sum(f.rows_kept for f in self.fields) / total if total else 0.0

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(to_dict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path, feature_map_hash: str | None = None) -> EmbeddingPlan:
        """Load strictly; with ``feature_map_hash``, refuse a plan made for another feature map."""
        plan = from_dict(cls, load_json(path, "plan"), where=str(path))
        if feature_map_hash is not None and plan.feature_map_hash != feature_map_hash:
            raise ConfigError(
                f"{path}: plan was made for feature map {plan.feature_map_hash[:12]}, not {feature_map_hash[:12]}"
            )
        return plan
