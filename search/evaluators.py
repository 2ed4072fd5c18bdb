"""Where candidates are scored: in this process, or in parallel by Ray actors that each hold the scorer.

Both evaluators take a list of candidates and return their scores in the same order. :class:`RayEvaluator`
puts the :class:`~search.scorer.CandidateScorer` in the object store once; each actor fetches it at start and
then scores candidates from its precomputed tensors. Actors restart when their process dies and Ray retries
the interrupted call on the new actor (scoring is pure, so a retry gives the same value): a killed evaluator
loses no candidate, and the driver records each one exactly once.

Example:
    >>> with RayEvaluator(scorer, workers=2) as evaluate:  # doctest: +SKIP
    ...     evaluate([(16, 8), (4, 4)])
    [0.781, 0.702]
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from types import TracebackType
from typing import Any, Protocol

from search.scorer import CandidateScorer

__all__ = ["Evaluator", "LocalEvaluator", "RayEvaluator", "make_evaluator"]


class Evaluator(Protocol):
    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]: ...

    def close(self) -> None: ...


class _Context:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()  # type: ignore[attr-defined]


class LocalEvaluator(_Context):
    """Scores in this process, one candidate after another (``search.workers = 0``)."""

    def __init__(self, scorer: CandidateScorer) -> None:
        self.scorer = scorer

    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]:
        return [self.scorer.score(c) for c in candidates]

    def close(self) -> None:
        pass


class _ScorerActor:
    """A Ray actor holding one scorer; its process's torch runs single-threaded (one CPU per actor)."""

    def __init__(self, scorer: CandidateScorer) -> None:
        import torch

        torch.set_num_threads(1)
        self.scorer = scorer

    def score(self, candidate: tuple[int, ...]) -> float:
        return self.scorer.score(candidate)

    def pid(self) -> int:
        return os.getpid()


class RayEvaluator(_Context):
    """Scores on ``workers`` Ray actors: the local Ray by default, or the cluster at ``address``.

    Connects to a running cluster when ``address`` (or ``RAY_ADDRESS``) is set, else starts a local Ray bound
    to 127.0.0.1 without the dashboard, and shuts down only a Ray it started.
    """

    def __init__(
        self, scorer: CandidateScorer, workers: int, address: str | None = None, *, max_restarts: int = 3
    ) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"RayEvaluator needs at least one worker, got {workers}")
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or "local"  # "local": a new Ray, never a stray one
            kwargs: dict[str, Any] = {"address": address, "log_to_driver": False}
            if address is None:
                kwargs |= {"include_dashboard": False, "num_cpus": max(workers, os.cpu_count() or 1)}
                kwargs["_node_ip_address"] = "127.0.0.1"
            ray.init(**kwargs)
            self._started = True
        actor = ray.remote(num_cpus=1, max_restarts=max_restarts, max_task_retries=max_restarts)(_ScorerActor)
        self._scorer_ref = ray.put(scorer)  # kept in scope: a restarted actor fetches it again
        self.actors: list[Any] = [actor.remote(self._scorer_ref) for _ in range(workers)]

    def pids(self) -> list[int]:
        import ray

        return [int(p) for p in ray.get([a.pid.remote() for a in self.actors])]

    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]:
        import ray

        # Round-robin over the actors: equal candidates cost the same, so static balance is good enough.
        refs = [self.actors[i % len(self.actors)].score.remote(c) for i, c in enumerate(candidates)]
        return [float(x) for x in ray.get(refs)]

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def make_evaluator(scorer: CandidateScorer, workers: int, address: str | None = None) -> LocalEvaluator | RayEvaluator:
    """No workers: score here; else Ray actors."""
    return LocalEvaluator(scorer) if workers == 0 else RayEvaluator(scorer, workers, address)
