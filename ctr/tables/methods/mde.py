"""``mde``: mixed dimensions by frequency. Full rows; field ``f`` gets ``d_f`` proportional to ``V_f^-alpha``
(``tables.mde_alpha``), scaled to the budget, in multiples of 4 of at least 4 (so small budgets cannot be met)."""

from __future__ import annotations

from collections.abc import Mapping

from config.tables import TablesConfig
from ctr.tables.methods.base import PerFieldTables
from ctr.tables.rules import Identity, IdRule

__all__ = ["MixedDims", "mde_dims"]


class MixedDims(PerFieldTables):
    name = "mde"

    def field_table(self, index: int, field: str, rows: int, config: TablesConfig) -> tuple[int, IdRule]:
        return rows, Identity(field)

    def widths(self, cards: dict[str, int], dim: int, config: TablesConfig) -> dict[str, int]:
        return mde_dims(cards, dim, config.budget, config.mde_alpha)


def mde_dims(cards: Mapping[str, int], dim: int, r: float, alpha: float) -> dict[str, int]:
    """Mixed dims ``d_f = lambda * V_f^-alpha`` (multiples of 4 in [4, dim]), ``lambda`` fitted to ``r N dim``."""
    budget = r * sum(cards.values()) * dim

    def dims(scale: float) -> dict[str, int]:
        return {n: int(min(dim, max(4, 4 * round(scale * v**-alpha / 4)))) for n, v in cards.items()}

    lo, hi = 0.0, float(dim) * max(cards.values()) ** alpha
    for _ in range(60):  # the largest scale whose dims fit the budget
        mid = (lo + hi) / 2
        if sum(cards[n] * d for n, d in dims(mid).items()) <= budget:
            lo = mid
        else:
            hi = mid
    return dims(lo)
