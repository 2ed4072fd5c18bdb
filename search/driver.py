"""The search loop: an Optuna study in RDB storage, the evolutionary sampler, an evaluator (local or Ray).

Each generation is asked as one batch (``sampler.pending``), scored in parallel, and told back; every
candidate is one trial with user attributes ``dims`` (field -> dim), ``embedding_params``, ``val_auc`` and
``generation``, so an optuna-dashboard tells the story. The study records what it searches (``search_spec``:
feature map, supernet, fields, choices, evolution settings): resuming into a study of another search is
refused by name. A search interrupted at any point resumes from its study: stale RUNNING trials are marked
FAIL and asked again, finished candidates are never re-evaluated.

Example:
    >>> outcome = run_search(scorer, space, SearchConfig(), "sqlite:///search.db", "optembed")  # doctest: +SKIP
    >>> outcome.best.dims  # doctest: +SKIP
    {'C1': 16, 'C2': 4, ...}
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import TrialState
from tqdm import tqdm

from config.run import SearchConfig
from config.strict import ConfigError
from search.evaluators import make_evaluator
from search.sampler import EvolutionarySampler
from search.scoring import Scorer
from search.storage import claim_spec

__all__ = ["BudgetUnreachable", "Scored", "SearchOutcome", "SearchSpace", "run_search", "scored_trials"]

log = logging.getLogger(__name__)


class BudgetUnreachable(ConfigError):
    """The search budget is below the smallest candidate: ``smallest`` is that candidate's parameter count."""

    def __init__(self, budget: int, smallest: int) -> None:
        super().__init__(f"search budget of {budget} parameters is below the smallest candidate's {smallest}")
        self.budget, self.smallest = budget, smallest

    def __reduce__(self) -> tuple[type[BudgetUnreachable], tuple[int, int]]:  # picklable across processes
        return BudgetUnreachable, (self.budget, self.smallest)


@dataclass(frozen=True)
class SearchSpace:
    """The fields searched, the dims each may take, and the exact embedding-parameter count of a candidate."""

    fields: tuple[str, ...]
    choices: tuple[tuple[int, ...], ...]
    rows: tuple[int, ...]  # rows of each field's retrained table
    fixed_params: int = 0  # parameters that do not depend on the dims (first-order tables)

    def cost(self, candidate: Sequence[int]) -> int:
        return self.fixed_params + sum(r * d for r, d in zip(self.rows, candidate, strict=True))

    @property
    def full_cost(self) -> int:
        return self.cost(tuple(max(c) for c in self.choices))


@dataclass(frozen=True)
class Scored:
    dims: dict[str, int]
    val_auc: float
    embedding_params: int
    generation: int
    trial: int


@dataclass(frozen=True)
class SearchOutcome:
    best: Scored  # highest validation AUC (among the Pareto front in multi-objective mode)
    pareto: list[Scored]  # the non-dominated candidates (AUC up, parameters down)
    best_per_generation: list[float]  # the global best AUC after each generation
    trials: int  # COMPLETE trials in the study
    evaluated: int  # candidates scored by this call (0 when resuming a finished search)
    study_name: str
    storage: str


def _spec(space: SearchSpace, config: SearchConfig, extra: dict[str, Any]) -> dict[str, Any]:
    evo = {**dataclasses.asdict(config.evolution()), "seed": config.seed}
    return {
        "fields": list(space.fields),
        "choices": [list(c) for c in space.choices],
        "rows": list(space.rows),
        "evolution": evo,
        "multi_objective": config.multi_objective,
        "budget": config.budget,
        **extra,
    }


def _open_study(storage: str, name: str, directions: list[str], spec: dict[str, Any], sampler: Any) -> optuna.Study:
    study = optuna.create_study(
        storage=storage,
        study_name=name,
        directions=[StudyDirection[d.upper()] for d in directions],
        sampler=sampler,
        load_if_exists=True,
    )
    if "search_spec" not in study.user_attrs:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(["val_auc", "embedding_params"][: len(directions)])
    claim_spec(study, "search_spec", spec, storage=storage, what="search")
    if [d.name.lower() for d in study.directions] != directions:
        raise ConfigError(f"study {name!r} has directions {study.directions}, this search needs {directions}")
    stale = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
    for trial in stale:  # left by an interrupted search: asked again
        study.tell(trial.number, state=TrialState.FAIL)
    if stale:
        log.info("study %s: %d interrupted trials marked FAIL and asked again", name, len(stale))
    return study


def run_search(
    scorer: Scorer,
    space: SearchSpace,
    config: SearchConfig,
    storage: str,
    study_name: str,
    *,
    spec: dict[str, Any] | None = None,
    address: str | None = None,
    progress: bool = True,
    on_generation: Callable[[int, list[Scored]], None] | None = None,
    budget_params: int | None = None,
) -> SearchOutcome:
    """Run (or resume) the evolutionary search of ``space`` in study ``study_name`` of ``storage``.

    ``budget_params`` (absolute) overrides ``config.budget`` (a fraction of ``space.full_cost``).
    """
    if tuple(scorer.fields) != space.fields:
        raise ConfigError(f"scorer fields {scorer.fields} differ from the search space's {space.fields}")
    evo = config.evolution()
    if budget_params is None and config.budget is not None:
        budget_params = int(config.budget * space.full_cost)
    budget = budget_params
    if budget is not None and space.cost(tuple(min(c) for c in space.choices)) > budget:
        raise BudgetUnreachable(budget, space.cost(tuple(min(c) for c in space.choices)))
    sampler = EvolutionarySampler(space.fields, space.choices, evo, config.seed, space.cost, budget)
    directions = ["maximize", "minimize"] if config.multi_objective else ["maximize"]
    study = _open_study(storage, study_name, directions, _spec(space, config, spec or {}), sampler)
    evaluated = 0
    bar = tqdm(total=evo.generations, desc="search generations", unit="gen", disable=not progress)
    with make_evaluator(scorer, config.workers, address) as evaluate:
        while batch := sampler.pending(study):
            trials = [study.ask(sampler.distributions) for _ in batch]
            asked = [tuple(int(t.params[f]) for f in space.fields) for t in trials]
            if asked != batch:
                raise RuntimeError(f"the sampler handed out {asked}, not the pending {batch}")
            scores = evaluate(batch)
            generation = sampler.generation_of(study.get_trials(deepcopy=False)[trials[0].number])
            for trial, candidate, auc in zip(trials, batch, scores, strict=True):
                params = space.cost(candidate)
                trial.set_user_attr("dims", dict(zip(space.fields, candidate, strict=True)))
                trial.set_user_attr("embedding_params", params)
                trial.set_user_attr("val_auc", auc)
                trial.set_user_attr("generation", generation)
                study.tell(trial, [auc, params] if config.multi_objective else auc)
            evaluated += len(batch)
            bar.n = generation + 1
            bar.set_postfix(best=f"{max(scored_trials(study), key=lambda s: s.val_auc).val_auc:.4f}")
            bar.refresh()
            if on_generation is not None:
                on_generation(generation, scored_trials(study))
    bar.close()
    return _outcome(study, evaluated, storage)


def scored_trials(study: optuna.Study) -> list[Scored]:
    """Every COMPLETE candidate of a search study, from its trials' user attributes."""
    return [
        Scored(
            dims={k: int(v) for k, v in t.user_attrs["dims"].items()},
            val_auc=float(t.user_attrs["val_auc"]),
            embedding_params=int(t.user_attrs["embedding_params"]),
            generation=int(t.user_attrs["generation"]),
            trial=t.number,
        )
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]


def _best_key(s: Scored) -> tuple[float, int, int]:
    return (s.val_auc, -s.embedding_params, -s.trial)


def _outcome(study: optuna.Study, evaluated: int, storage: str) -> SearchOutcome:
    scored = scored_trials(study)
    if not scored:
        raise RuntimeError(f"study {study.study_name!r} has no finished candidate")
    pareto = [
        s
        for s in scored
        if not any(
            o.val_auc >= s.val_auc
            and o.embedding_params <= s.embedding_params
            and (o.val_auc, o.embedding_params) != (s.val_auc, s.embedding_params)
            for o in scored
        )
    ]
    generations = max(s.generation for s in scored) + 1
    best_so_far, curve = float("-inf"), []
    for g in range(generations):
        best_so_far = max([best_so_far] + [s.val_auc for s in scored if s.generation == g])
        curve.append(best_so_far)
    return SearchOutcome(
        best=max(pareto, key=_best_key),
        pareto=sorted(pareto, key=lambda s: s.embedding_params),
        best_per_generation=curve,
        trials=len(scored),
        evaluated=evaluated,
        study_name=study.study_name,
        storage=storage,
    )
