"""After the evolution: which candidate to keep, and how far each field can still shrink.

:func:`pick` takes the smallest candidate whose validation AUC is within a tolerance of the best one;
:func:`shrink` then steps each field (largest table first) down to its smallest dim wherever the score stays above
a floor, so fields the AUC does not depend on end at the smallest dim even when their table is too small for the
evolution to notice.

Example:
    >>> a = Scored(dims={"x": 8}, val_auc=0.80, embedding_params=80, generation=0, trial=0)
    >>> b = Scored(dims={"x": 4}, val_auc=0.799, embedding_params=40, generation=0, trial=1)
    >>> pick([a, b], tolerance=0.0).trial, pick([a, b], tolerance=0.002).trial
    (0, 1)
"""

from __future__ import annotations

from typing import Any

from search.driver import Scored, SearchSpace
from search.scoring import Scorer

__all__ = ["pick", "shrink"]


def pick(scored: list[Scored], tolerance: float) -> Scored:
    """The smallest candidate within ``tolerance`` of the best validation AUC (ties: higher AUC, earlier trial)."""
    best = max(s.val_auc for s in scored)
    near = [s for s in scored if s.val_auc >= best - tolerance]
    return min(near, key=lambda s: (s.embedding_params, -s.val_auc, s.trial))


def shrink(
    scorer: Scorer, space: SearchSpace, dims: dict[str, int], floor: float
) -> tuple[dict[str, int], list[dict[str, Any]]]:
    """Step each field (largest table first) to its smallest dim where the validation AUC stays >= ``floor``."""
    current = [dims[f] for f in space.fields]
    steps: list[dict[str, Any]] = []
    for i in sorted(range(len(space.fields)), key=lambda i: (-space.rows[i], i)):
        smallest = min(space.choices[i])
        if current[i] == smallest:
            continue
        trial = [*current[:i], smallest, *current[i + 1 :]]
        auc = scorer.score_many([trial])[0]
        kept = auc >= floor
        steps.append({"field": space.fields[i], "from": current[i], "to": smallest, "val_auc": auc, "kept": kept})
        if kept:
            current = trial
    return dict(zip(space.fields, current, strict=True)), steps
