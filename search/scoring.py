"""What the search needs of whatever scores its candidates: the fields a candidate gives dims to, and a score.

The search knows no model: OptEmbed's :class:`~ctr.optembed.scorer.CandidateScorer` (validation AUC of the trained
supernet at a candidate's dims) is one implementation; a scorer must pickle, since Ray actors hold copies of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

__all__ = ["Scorer"]


class Scorer(Protocol):
    @property
    def fields(self) -> Sequence[str]:
        """The fields, in the order a candidate lists their dims."""

    def score(self, candidate: Sequence[int]) -> float:
        """The candidate's validation AUC (higher is better)."""

    def score_many(self, candidates: Sequence[Sequence[int]]) -> list[float]:
        """The candidates' validation AUCs, in their order (scored together: the evaluators call this)."""
