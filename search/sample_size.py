"""How many validation rows the search needs: as many as make the noise of an AUC difference small enough.

The search compares candidates on the same rows, so what matters is the noise of the *difference* of two
correlated AUCs, not of one AUC. DeLong, DeLong & Clarke-Pearson (1988) give its variance from the
structural components of each AUC (for every positive, the fraction of negatives ranked below it; for every
negative, the fraction of positives ranked above it):

    Var(A_a - A_b) = (S10_aa + S10_bb - 2 S10_ab) / m + (S01_aa + S01_bb - 2 S01_ab) / n

with ``m`` positives, ``n`` negatives and ``S10``/``S01`` the covariance matrices of the components. On a random
sample of the rows it scales as one over the sample size, so the standard error ``se_N`` on all ``N`` rows gives
the sample size that brings it to a target: ``n = N * (se_N / target)^2``.

:func:`rows_for_auc_noise` measures ``se_N`` between the two most different candidates of the space (every field
at its largest dim, every field at its smallest), which bounds the difference's noise between the closer
candidates the search compares.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 4000); a = y + rng.normal(0, 1, 4000); b = a + rng.normal(0, 0.3, 4000)
    >>> round(auc_difference_se(a, b, y), 4)  # a bootstrap of the difference gives 0.0024
    0.0023
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from ctr.optembed.scorer import CandidateScorer

__all__ = ["auc_difference_se", "rows_for_auc_noise", "sized_sample"]

Array = npt.NDArray[np.floating]


def _midranks(x: Array) -> Array:
    """1-based ranks of ``x``, ties sharing their average rank."""
    order = np.argsort(x, kind="mergesort")
    sorted_x = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_x)) + 1]
    ends = np.r_[starts[1:], len(x)]
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def _components(score: Array, positive: npt.NDArray[np.bool_]) -> tuple[Array, Array]:
    """DeLong's structural components: per positive, the fraction of negatives below it (ties half); per
    negative, the fraction of positives above it."""
    m, n = int(positive.sum()), int((~positive).sum())
    ranks = _midranks(score)  # midranks over all rows
    pos, neg = score[positive], score[~positive]
    v10 = (ranks[positive] - _midranks(pos)) / n
    v01 = 1.0 - (ranks[~positive] - _midranks(neg)) / m
    return v10, v01


def auc_difference_se(a: Array, b: Array, labels: Array) -> float:
    """DeLong's standard error of ``AUC(a) - AUC(b)`` on the same rows (``labels`` 0/1); NaN with one class."""
    positive = np.asarray(labels) > 0.5
    m, n = int(positive.sum()), int((~positive).sum())
    if m < 2 or n < 2:
        return float("nan")
    a10, a01 = _components(np.asarray(a, dtype=np.float64), positive)
    b10, b01 = _components(np.asarray(b, dtype=np.float64), positive)
    var = np.var(a10 - b10, ddof=1) / m + np.var(a01 - b01, ddof=1) / n
    return float(math.sqrt(max(float(var), 0.0)))


def rows_for_auc_noise(
    logits: Sequence[Array], labels: Array, target: float, *, min_rows: int = 2000
) -> tuple[int, float]:
    """Rows whose difference noise between ``logits[0]`` and ``logits[1]`` (two candidates' logits on all rows)
    is about ``target``: all of them when already noisier; never fewer than ``min_rows``. Also the noise on all."""
    if target <= 0:
        raise ValueError(f"target AUC noise must be positive, got {target}")
    total = len(labels)
    se = auc_difference_se(logits[0], logits[1], labels)
    if not math.isfinite(se) or se == 0.0:  # one class, or identical candidates: nothing to size by
        return total, se
    rows = math.ceil(total * (se / target) ** 2)
    return max(min(rows, total), min(min_rows, total)), se


def sized_sample(
    scorer: CandidateScorer, choices: Sequence[Sequence[int]], target: float, seed: int = 0, *, min_rows: int = 2000
) -> tuple[CandidateScorer, dict[str, Any]]:
    """``scorer`` on a seeded sample sized by :func:`rows_for_auc_noise` (itself when it needs every row), and
    what decided it: ``rows``, ``of_rows``, ``target`` and ``se_all_rows`` (the difference's noise on all rows)."""
    extremes = [tuple(max(c) for c in choices), tuple(min(c) for c in choices)]
    logits = scorer.logits_many(extremes).numpy()
    rows, se = rows_for_auc_noise([logits[0], logits[1]], scorer.labels, target, min_rows=min_rows)
    info = {"rows": rows, "of_rows": scorer.num_rows, "target_auc_noise": target, "se_all_rows": se}
    return scorer.sample(rows, seed), info
