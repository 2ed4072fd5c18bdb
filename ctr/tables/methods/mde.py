"""``mde``: mixed dimensions by frequency. Full rows; field ``f`` gets ``d_f`` proportional to ``V_f^-alpha``
(``tables.mde_alpha``), scaled to the budget (``r N dim`` parameters in the main tables, or ``tables.size`` when
set), in multiples of 4 of at least 4 (so small budgets cannot be met). Narrow fields are zero-padded to the full
width (:class:`~ctr.tables.embedding.SparseArch`): there are no projection matrices to store."""

from __future__ import annotations

from collections.abc import Mapping

from config.tables import TablesConfig
from ctr.tables.methods.base import Knob, PerFieldTables, cardinalities
from ctr.tables.rules import Identity, IdRule
from features.schema import FeatureMap

__all__ = ["MixedDims", "mde_dims"]


class MixedDims(PerFieldTables):
    name = "mde"

    def field_table(self, index: int, field: str, cards: Mapping[str, int], config: TablesConfig) -> tuple[int, IdRule]:
        return cards[field], Identity(field)

    def widths(self, cards: dict[str, int], dim: int, config: TablesConfig) -> dict[str, int]:
        allowance = config.size if config.size is not None else config.budget * sum(cards.values()) * dim
        return mde_dims(cards, dim, allowance, config.mde_alpha)

    def knob(self, fm: FeatureMap, dim: int) -> Knob:
        return Knob(smallest=1, largest=sum(cardinalities(fm).values()) * dim)


def mde_dims(cards: Mapping[str, int], dim: int, allowance: float, alpha: float) -> dict[str, int]:
    """Mixed dims ``d_f = lambda * V_f^-alpha`` (multiples of 4 in [4, dim]), ``lambda`` the largest whose tables
    ``sum V_f d_f`` fit ``allowance`` parameters (every dim 4 when even those do not fit)."""

    def dims(scale: float) -> dict[str, int]:
        return {n: int(min(dim, max(4, 4 * round(scale * v**-alpha / 4)))) for n, v in cards.items()}

    lo, hi = 0.0, float(dim) * max(cards.values()) ** alpha
    for _ in range(60):  # the largest scale whose dims fit the allowance
        mid = (lo + hi) / 2
        if sum(cards[n] * d for n, d in dims(mid).items()) <= allowance:
            lo = mid
        else:
            hi = mid
    return dims(lo)
