"""Evolutionary search over per-field embedding dimensions (OptEmbed's dimension search), as pure operators.

A *candidate* is one embedding dimension per field, ``choices[f]`` the dimensions field ``f`` may take. The
operators never change their inputs and draw all randomness from the ``random.Random`` they are given, so a
generation is a pure function of ``(generation, scored, choices, config, seed, cost, budget)``: a search that
is interrupted can recompute it exactly. Scores are either one value (validation AUC, maximised) or two
values ``(auc, params)`` (AUC maximised, parameter count minimised; parents are ranked by Pareto front).

Two defects of the official OptEmbed code are not copied: its one-point crossover drew the cut over 1..64
whatever the number of fields (here 1..F-1), and it sorted candidates without their scores (here the
archive sorts ``(candidate, score)`` pairs together).

Example:
    >>> import random
    >>> choices = [(4, 8, 16), (4, 8, 16), (4, 8, 16)]
    >>> crossover((4, 4, 4), (16, 16, 16), random.Random(0), "one_point") in {(4, 16, 16), (4, 4, 16)}
    True
    >>> small = repair((16, 16, 16), choices, cost=sum, budget=30, rng=random.Random(0))
    >>> small, sum(small) <= 30
    ((8, 4, 16), True)
    >>> rank_for_parents([((4, 4, 4), 0.70), ((8, 8, 8), 0.80), ((16, 16, 16), 0.75)], top_k=2)
    [(8, 8, 8), (16, 16, 16)]
    >>> pareto_ranks([(0.80, 10.0), (0.70, 5.0), (0.70, 20.0)])
    [0, 0, 1]
    >>> config = EvolutionConfig(population=4, n_mutation=2, n_crossover=2)
    >>> first = next_generation(0, [], choices, config, seed=7)
    >>> len(first), len(set(first)), first == next_generation(0, [], choices, config, seed=7)
    (4, 4, True)
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from config.evolution import Crossover, EvolutionConfig

__all__ = [
    "Candidate",
    "Crossover",
    "EvolutionConfig",
    "Score",
    "crossover",
    "mutate",
    "next_generation",
    "pareto_ranks",
    "random_candidate",
    "rank_for_parents",
    "repair",
]

Candidate = tuple[int, ...]
"""One embedding dimension per field (immutable; operators return new tuples)."""

Score = float | tuple[float, float]
"""Validation AUC (maximised), or ``(auc, params)``: AUC maximised, parameter count minimised."""


def random_candidate(rng: random.Random, choices: Sequence[Sequence[int]]) -> Candidate:
    """One dimension per field, each drawn uniformly from ``choices[f]``."""
    return tuple(rng.choice(field_choices) for field_choices in choices)


def mutate(parent: Candidate, choices: Sequence[Sequence[int]], prob: float, rng: random.Random) -> Candidate:
    """A new candidate: each field of ``parent`` re-drawn from ``choices[f]`` with probability ``prob``."""
    _check_width(parent, choices)
    return tuple(rng.choice(choices[f]) if rng.random() < prob else dim for f, dim in enumerate(parent))


def crossover(a: Candidate, b: Candidate, rng: random.Random, kind: Crossover = "one_point") -> Candidate:
    """A child of ``a`` and ``b``.

    ``one_point``: ``a[:c] + b[c:]`` with the cut ``c`` uniform in ``1..F-1`` (a copy of ``a`` when ``F == 1``),
    so the child always takes at least one field from each parent. ``uniform``: each field from ``a`` or ``b``
    with probability 1/2.
    """
    if len(a) != len(b):
        raise ValueError(f"crossover: parents have {len(a)} and {len(b)} fields")
    if kind == "uniform":
        return tuple(x if rng.random() < 0.5 else y for x, y in zip(a, b, strict=True))
    if kind != "one_point":
        raise ValueError(f"crossover: unknown kind {kind!r}")
    if len(a) < 2:
        return tuple(a)
    cut = rng.randint(1, len(a) - 1)
    return tuple(a[:cut]) + tuple(b[cut:])


def repair(
    candidate: Candidate,
    choices: Sequence[Sequence[int]],
    cost: Callable[[Candidate], float],
    budget: float,
    rng: random.Random,
) -> Candidate:
    """Shrink ``candidate`` until ``cost(candidate) <= budget``.

    Each step picks a random field whose dimension is not yet its smallest choice and steps it down to the next
    smaller choice. Raises ``ValueError`` when the candidate is over budget and so is the all-smallest one.
    """
    _check_width(candidate, choices)
    repaired = tuple(candidate)
    if cost(repaired) <= budget:
        return repaired
    smallest = tuple(min(field_choices) for field_choices in choices)
    if cost(smallest) > budget:
        raise ValueError(f"repair: even the smallest candidate {smallest} costs {cost(smallest)} > budget {budget}")
    while cost(repaired) > budget:
        shrinkable = [f for f, dim in enumerate(repaired) if dim > smallest[f]]
        if not shrinkable:  # only reachable when cost is not monotone in the dimensions
            raise ValueError(f"repair: cannot bring {candidate} under budget {budget} (cost is not monotone)")
        f = rng.choice(shrinkable)
        smaller = max(dim for dim in choices[f] if dim < repaired[f])
        repaired = (*repaired[:f], smaller, *repaired[f + 1 :])
    return repaired


def pareto_ranks(values: Sequence[tuple[float, float]]) -> list[int]:
    """Non-dominated sorting rank of each ``(maximised, minimised)`` pair; rank 0 is the Pareto front."""
    n = len(values)
    dominates: list[list[int]] = [[] for _ in range(n)]
    dominated_by = [0] * n
    for i in range(n):
        for j in range(i + 1, n):
            if _dominates(values[i], values[j]):
                dominates[i].append(j)
                dominated_by[j] += 1
            elif _dominates(values[j], values[i]):
                dominates[j].append(i)
                dominated_by[i] += 1
    ranks = [0] * n
    front = [i for i in range(n) if dominated_by[i] == 0]
    rank = 0
    while front:
        following = []
        for i in front:
            ranks[i] = rank
            for j in dominates[i]:
                dominated_by[j] -= 1
                if dominated_by[j] == 0:
                    following.append(j)
        front, rank = following, rank + 1
    return ranks


def rank_for_parents(scored: Sequence[tuple[Candidate, Score]], top_k: int) -> list[Candidate]:
    """The global top-``top_k`` archive over all ``(candidate, score)`` pairs, best first.

    One objective: by score descending, ties by candidate ascending. Two objectives ``(auc, params)``: by
    (Pareto rank, -auc, params, candidate). The order is total, so the result does not depend on the order of
    ``scored``. A candidate scored twice counts once, with its best score.
    """
    if not scored:
        return []
    keys = _sort_keys([score for _, score in scored])
    order = sorted(range(len(scored)), key=lambda i: (keys[i], scored[i][0]))
    archive: list[Candidate] = []
    kept: set[Candidate] = set()
    for i in order:
        candidate = tuple(scored[i][0])
        if candidate not in kept:
            kept.add(candidate)
            archive.append(candidate)
            if len(archive) == top_k:
                break
    return archive


def next_generation(
    generation: int,
    scored: Sequence[tuple[Candidate, Score]],
    choices: Sequence[Sequence[int]],
    config: EvolutionConfig,
    seed: int,
    cost: Callable[[Candidate], float] | None = None,
    budget: float | None = None,
) -> list[Candidate]:
    """The candidates of ``generation``, given every candidate ``scored`` in the generations before it.

    Deterministic in its inputs (and independent of the order of ``scored``). Generation 0, or any generation
    with nothing scored yet: ``population`` random candidates. Later: ``n_mutation`` mutants of random parents
    from the ``top_k`` archive, then ``n_crossover`` children of two distinct parents (when there are two). Every
    candidate is repaired to ``budget`` (when given) and is unseen: not in ``scored``, not earlier in this
    generation. A slot that finds no unseen candidate in ``max_tries`` attempts is dropped, so a generation may
    be shorter than planned, or empty once the space is exhausted.
    """
    if generation < 0:
        raise ValueError(f"next_generation: generation must be >= 0, got {generation}")
    if budget is not None and cost is None:
        raise ValueError("next_generation: a budget needs a cost function")
    _check_choices(choices)
    rng = random.Random(seed * 1_000_003 + generation)
    seen = {tuple(candidate) for candidate, _ in scored}
    out: list[Candidate] = []

    def fill(slots: int, draw: Callable[[], Candidate]) -> None:
        for _ in range(slots):
            for _ in range(config.max_tries):
                candidate = draw()
                if budget is not None and cost is not None:
                    candidate = repair(candidate, choices, cost, budget, rng)
                if candidate not in seen:
                    seen.add(candidate)
                    out.append(candidate)
                    break

    parents = rank_for_parents(scored, config.top_k) if generation > 0 else []
    if not parents:
        fill(config.population, lambda: random_candidate(rng, choices))
        return out
    fill(config.n_mutation, lambda: mutate(rng.choice(parents), choices, config.mutation_prob, rng))
    if len(parents) >= 2:

        def child() -> Candidate:
            i, j = rng.sample(range(len(parents)), 2)
            return crossover(parents[i], parents[j], rng, config.crossover)

        fill(config.n_crossover, child)
    return out


def _dominates(p: tuple[float, float], q: tuple[float, float]) -> bool:
    return p[0] >= q[0] and p[1] <= q[1] and (p[0] > q[0] or p[1] < q[1])


def _sort_keys(scores: Sequence[Score]) -> list[tuple[int, float, float]]:
    """Per score, a key that sorts the best first: (Pareto rank, -auc, params); (0, -auc, 0) for one objective."""
    singles = [score for score in scores if not isinstance(score, tuple)]
    if len(singles) == len(scores):
        return [(0, -float(score), 0.0) for score in singles]
    if singles:
        raise ValueError("rank_for_parents: scores mix single values and (auc, params) pairs")
    pairs = [_pair(score) for score in scores]
    ranks = pareto_ranks(pairs)
    return [(rank, -auc, params) for rank, (auc, params) in zip(ranks, pairs, strict=True)]


def _pair(score: Score) -> tuple[float, float]:
    if not isinstance(score, tuple) or len(score) != 2:
        raise ValueError(f"rank_for_parents: expected an (auc, params) pair, got {score!r}")
    return float(score[0]), float(score[1])


def _check_width(candidate: Candidate, choices: Sequence[Sequence[int]]) -> None:
    if len(candidate) != len(choices):
        raise ValueError(f"candidate {candidate} has {len(candidate)} fields, choices have {len(choices)}")


def _check_choices(choices: Sequence[Sequence[int]]) -> None:
    for f, field_choices in enumerate(choices):
        if len(field_choices) == 0:
            raise ValueError(f"choices[{f}] is empty")
