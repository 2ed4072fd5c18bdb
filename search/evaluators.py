"""Where candidates are scored: in this process, or in parallel by Ray actors that each hold the scorer.

Both evaluators take a list of candidates and return their scores in the same order. :class:`RayEvaluator`
puts the :class:`~search.scoring.Scorer` in the object store once; each actor fetches it at start and
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
import sys
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, Protocol

from config.strict import ConfigError
from search.scoring import Scorer

__all__ = ["Evaluator", "LocalEvaluator", "RayEvaluator", "make_evaluator"]

_ACTOR_CPUS = 1


class Evaluator(Protocol):
    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]: ...

    def close(self) -> None: ...


class _Context:
    def __enter__(self) -> Any:
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None) -> None:
        self.close()  # type: ignore[attr-defined]


class LocalEvaluator(_Context):
    """Scores in this process, all candidates in one :meth:`~search.scoring.Scorer.score_many` call
    (``search.workers = 0``)."""

    def __init__(self, scorer: Scorer) -> None:
        self.scorer = scorer

    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]:
        return self.scorer.score_many(candidates)

    def close(self) -> None:
        pass


class _ScorerActor:
    """A Ray actor holding one scorer; its process's torch runs single-threaded (one CPU per actor)."""

    def __init__(self, scorer: Scorer) -> None:
        import torch

        torch.set_num_threads(1)
        self.scorer = scorer

    def score_many(self, candidates: list[tuple[int, ...]]) -> list[float]:
        return self.scorer.score_many(candidates)

    def pid(self) -> int:
        return os.getpid()


class RayEvaluator(_Context):
    """Scores on ``workers`` Ray actors: the local Ray by default, or the cluster at ``address``.

    Connects to a running cluster when ``address`` (or ``RAY_ADDRESS``) is set, else starts a local Ray bound
    to 127.0.0.1 without the dashboard, and shuts down only a Ray it started. The pool is as large as the cluster
    can place (one CPU per actor): fewer free CPUs than ``workers`` means fewer actors and a one-line notice on
    stderr, none is a :class:`~config.strict.ConfigError`; an actor not started within ``start_timeout`` seconds
    is dropped.
    """

    def __init__(
        self,
        scorer: Scorer,
        workers: int,
        address: str | None = None,
        *,
        max_restarts: int = 3,
        start_timeout: float = 300.0,
    ) -> None:
        import ray

        if workers < 1:
            raise ValueError(f"RayEvaluator needs at least one worker, got {workers}")
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS")
            kwargs: dict[str, Any] = {"address": address or "local", "log_to_driver": False}  # never a stray Ray
            if address is None:
                kwargs |= {"include_dashboard": False, "num_cpus": max(workers, os.cpu_count() or 1)}
                kwargs["_node_ip_address"] = "127.0.0.1"
            ray.init(**kwargs)
            self._started = True
        self.actors: list[Any] = []
        try:
            self.actors = self._start(scorer, workers, max_restarts, start_timeout)
        except BaseException:
            self.close()
            raise

    def _start(self, scorer: Scorer, workers: int, max_restarts: int, timeout: float) -> list[Any]:
        """As many actors as the cluster can place (at most ``workers``), once started; those not started within
        ``timeout`` seconds are dropped: an actor that is never placed would hold its candidates forever.

        A dead actor is replaced here (:meth:`_retried`), not by Ray's ``max_restarts``: Ray logs an ERROR line on
        every run for a restartable actor whose constructor argument is in the object store
        (ray-project/ray#53727), and the scorer must be (it holds the model)."""
        import ray

        count = _placeable(workers)
        self._max_restarts = max_restarts
        self._actor_class: Any = ray.remote(num_cpus=_ACTOR_CPUS, max_restarts=0)(_ScorerActor)
        self._scorer_ref = ray.put(scorer)  # kept in scope: a replacement actor fetches it again
        actors: list[Any] = [self._actor_class.remote(self._scorer_ref) for _ in range(count)]
        pings = [a.pid.remote() for a in actors]
        ready, _ = ray.wait(pings, num_returns=count, timeout=timeout)
        started = [i for i, ping in enumerate(pings) if ping in ready]
        for i in sorted(set(range(count)) - set(started)):
            ray.kill(actors[i])
        if not started:
            raise ConfigError(f"search.workers={workers}: no evaluator actor started on Ray in {timeout:g}s")
        if len(started) < count:
            _notice(f"search.workers={workers}: {len(started)} of {count} evaluator actors started in {timeout:g}s")
        self.actors = [actors[i] for i in started]
        for slot, i in enumerate(started):  # an actor whose constructor fails raises here (after max_restarts)
            self._retried(slot, pings[i], lambda actor: actor.pid.remote())
        return self.actors

    def pids(self) -> list[int]:
        import ray

        return [int(p) for p in ray.get([a.pid.remote() for a in self.actors])]

    def __call__(self, candidates: Sequence[tuple[int, ...]]) -> list[float]:
        # One share per actor, scored in one pass: equal candidates cost the same, so static balance is enough.
        shares = [list(candidates[i :: len(self.actors)]) for i in range(len(self.actors))]
        refs = {i: self.actors[i].score_many.remote(share) for i, share in enumerate(shares) if share}
        scores: list[float] = [0.0] * len(candidates)
        for i, ref in refs.items():
            share_scores = self._retried(i, ref, _scoring(shares[i]))
            scores[i :: len(self.actors)] = [float(x) for x in share_scores]
        return scores

    def _retried(self, i: int, ref: Any, call: Callable[[Any], Any]) -> Any:
        """The result of ``ref``, a call to actor ``i``; if that actor died, a new actor takes its place and
        ``call(actor)`` runs again (at most ``max_restarts`` times in a row), so a lost process loses no candidate."""
        import ray

        for attempt in range(self._max_restarts + 1):
            try:
                return ray.get(ref)
            except ray.exceptions.RayActorError:
                if attempt == self._max_restarts:
                    raise
                self.actors[i] = self._actor_class.remote(self._scorer_ref)
                ref = call(self.actors[i])
        raise AssertionError("unreachable")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []
        if self._started:
            ray.shutdown()
            self._started = False


def _scoring(share: list[tuple[int, ...]]) -> Callable[[Any], Any]:
    """The call that scores ``share`` on an actor (for :meth:`RayEvaluator._retried`)."""
    return lambda actor: actor.score_many.remote(share)


def _placeable(workers: int) -> int:
    """``workers``, or fewer when the Ray cluster has fewer free CPUs (a notice says so): actors that can never
    be placed would hold their share of the candidates forever."""
    import ray

    free = int(ray.available_resources().get("CPU", 0.0) // _ACTOR_CPUS)  # type: ignore[no-untyped-call]
    if free < 1:
        total = ray.cluster_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
        raise ConfigError(f"search.workers={workers}: the Ray cluster has no free CPU for an evaluator (of {total:g})")
    if free < workers:
        _notice(f"search.workers={workers}: the Ray cluster has {free} free CPUs; scoring on {free} evaluator actors")
    return min(workers, free)


def _notice(text: str) -> None:
    print(f"search: notice: {text}", file=sys.stderr, flush=True)


def make_evaluator(scorer: Scorer, workers: int, address: str | None = None) -> LocalEvaluator | RayEvaluator:
    """No workers: score here; else Ray actors."""
    return LocalEvaluator(scorer) if workers == 0 else RayEvaluator(scorer, workers, address)
