"""Equal memory: a table method sized so that the whole model's embedding parameters fit a budget.

A budget ``b`` is a fraction of the full model's embedding parameters, and every layout is counted by the same
function, :func:`ctr.tables.embedding.embedding_params`: the main tables plus whatever the model stores per row
besides (the :data:`~ctr.tables.embedding.LINEAR_DIM` first-order columns of FM/DeepFM, LR's first-order tables),
so QR's quotient and remainder tables, Unified Embedding's shared table and hashing's buckets are all counted with
their first-order columns. :func:`fit_budget` picks the method's size knob (:meth:`TableMethod.knob`: rows,
buckets, QR's remainder rows, MDE's allowance) as the largest whose layout fits ``floor(b x full)`` parameters, by
bisection; a method that cannot get that small is :attr:`Sized.reachable` ``False``, with its minimum.

Example:
    >>> from config.model import ModelConfig
    >>> from features.schema import CategoricalField, FeatureMap
    >>> fm = FeatureMap(
    ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
    ...     categorical=(CategoricalField("a", "vocab", 90), CategoricalField("b", "vocab", 10)),
    ... )
    >>> deepfm = ModelConfig(name="deepfm", embedding_dim=16)
    >>> s = fit_budget(TablesConfig(method="unified"), fm, deepfm, 0.1)  # full: 100 rows x (16 + 4)
    >>> s.full, s.limit, s.tables.size, s.params  # 25 shared rows x (chunk 4 + 4 first-order columns)
    (2000, 200, 25, 200)
    >>> fit_budget(TablesConfig(method="qr"), fm, deepfm, 0.01).reachable
    False
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from fractions import Fraction

from config.model import ModelConfig
from config.tables import TablesConfig
from ctr.tables.embedding import embedding_params
from ctr.tables.layout import TableLayout
from ctr.tables.methods import TABLE_METHODS, build_layout
from features.schema import FeatureMap

__all__ = ["Sized", "budget_limit", "fit_budget", "layout_params", "method_layout"]


@dataclass(frozen=True)
class Sized:
    """A method at a budget: ``tables`` (its knob in ``size``; unset for ``full``) and what its layout costs.

    ``params`` is the layout's embedding parameters (:func:`layout_params`); when ``reachable`` is ``False`` it is
    the method's minimum, above ``limit``, and nothing should be built under the budget's name.
    """

    tables: TablesConfig
    fraction: float
    full: int  # the full model's embedding parameters
    limit: int  # floor(fraction x full)
    params: int
    reachable: bool


def method_layout(tables: TablesConfig, fm: FeatureMap, model: ModelConfig) -> TableLayout | None:
    """The layout a run of ``tables`` builds (None for ``full``: the model's own per-field tables)."""
    return None if tables.method == "full" else build_layout(tables, fm, model.embedding_dim)


def layout_params(tables: TablesConfig, fm: FeatureMap, model: ModelConfig) -> int:
    """Embedding parameters of ``model`` over ``tables``'s layout on ``fm`` (what its run reports)."""
    return embedding_params(fm, model, method_layout(tables, fm, model))


def budget_limit(fm: FeatureMap, model: ModelConfig, fraction: float) -> int:
    """``floor(fraction x full)``, exact for the decimal ``fraction`` is written as (``0.3`` is 3/10)."""
    return math.floor(Fraction(repr(fraction)) * embedding_params(fm, model))


def fit_budget(tables: TablesConfig, fm: FeatureMap, model: ModelConfig, fraction: float) -> Sized:
    """``tables.method`` with the largest size knob whose layout fits ``fraction`` of the full model's parameters."""
    full = embedding_params(fm, model)
    limit = budget_limit(fm, model, fraction)
    knob = TABLE_METHODS[tables.method].knob(fm, model.embedding_dim)
    if knob is None:  # full: nothing to choose
        params = layout_params(tables, fm, model)
        return Sized(tables, fraction, full, limit, params, params <= limit)

    def at(step: int) -> tuple[TablesConfig, int]:
        sized = dataclasses.replace(tables, size=knob.at(step))
        return sized, layout_params(sized, fm, model)

    best, params = at(0)
    if params > limit:
        return Sized(best, fraction, full, limit, params, False)
    top, top_params = at(knob.steps)
    if top_params <= limit:
        return Sized(top, fraction, full, limit, top_params, True)
    lo, hi = 0, knob.steps  # at(lo) fits, at(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        candidate, cost = at(mid)
        if cost <= limit:
            lo, best, params = mid, candidate, cost
        else:
            hi = mid
    return Sized(best, fraction, full, limit, params, True)
