"""``EvolutionarySampler``: OptEmbed's evolutionary dimension search as an Optuna sampler.

Every trial is one candidate (one embedding dimension per field; the parameter names are the field names). Its
generation and candidate are stored in trial system attrs, the way Optuna's NSGA-II sampler stores generations.
Nothing else is kept between calls: the candidate list of generation ``g`` is recomputed by
:func:`search.evolution.next_generation` from the COMPLETE trials of the generations before ``g``, which is
deterministic, so a new sampler on the storage of an interrupted study resumes it exactly and never
re-evaluates a finished candidate. FAILED (and PRUNED) trials do not count: their candidates are asked again.

The current generation is the first whose list still holds a candidate that is neither COMPLETE nor RUNNING in
that generation. A generation whose candidates are all handed out but not all finished blocks the next one (its
parents are not known yet): :meth:`EvolutionarySampler.pending` is then empty and asking raises
:class:`NoCandidateError`. After an interruption, mark the stale RUNNING trials FAIL
(``study.tell(number, state=TrialState.FAIL)``) before resuming. Trials are meant to be asked by one process.

Directions: ``["maximize"]`` (validation AUC) or ``["maximize", "minimize"]`` (AUC, parameter count; parents
are then ranked by Pareto front).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study, StudyDirection
from optuna.trial import FrozenTrial, TrialState

from config.evolution import EvolutionConfig
from search.evolution import Candidate, Score, next_generation

__all__ = ["CANDIDATE_KEY", "DEFAULT_CONFIG", "GENERATION_KEY", "EvolutionarySampler", "NoCandidateError"]

DEFAULT_CONFIG = EvolutionConfig()
GENERATION_KEY = "evolution:generation"
CANDIDATE_KEY = "evolution:candidate"

_SINGLE = [StudyDirection.MAXIMIZE]
_PAIR = [StudyDirection.MAXIMIZE, StudyDirection.MINIMIZE]


class NoCandidateError(RuntimeError):
    """A trial was asked while the sampler has no candidate to give; the message says why."""


@dataclass(frozen=True)
class _Position:
    """Where the search stands: the current generation, its candidates still to ask, its running trials."""

    generation: int
    todo: list[Candidate]
    running: int


@dataclass
class _GenerationTrials:
    scored: list[tuple[Candidate, Score]]
    taken: set[Candidate]
    running: int = 0


class EvolutionarySampler(BaseSampler):
    """Proposes the candidates of :func:`search.evolution.next_generation`, one per trial, generation by generation.

    All fields are sampled relatively (``infer_relative_search_space`` is the fixed space of all fields). Any
    other parameter an objective suggests is not part of the search and is drawn by a seeded ``RandomSampler``.
    With ``budget``, every candidate is repaired until ``cost(candidate) <= budget``.

    A batch driver: ``while batch := sampler.pending(study)``, ask ``len(batch)`` trials with
    ``study.ask(sampler.distributions)`` (trial ``i`` gets ``batch[i]``), evaluate, tell; stop when
    :meth:`finished`. ``study.optimize`` works too, one trial at a time, for at most the planned trials.
    """

    def __init__(
        self,
        fields: Sequence[str],
        choices: Sequence[Sequence[int]],
        config: EvolutionConfig = DEFAULT_CONFIG,
        seed: int = 0,
        cost: Callable[[Candidate], int] | None = None,
        budget: int | None = None,
    ) -> None:
        _check_space(fields, choices)
        if budget is not None:
            smallest = tuple(min(field_choices) for field_choices in choices)
            if cost is None:
                raise ValueError("EvolutionarySampler: a budget needs a cost function")
            if cost(smallest) > budget:
                raise ValueError(f"EvolutionarySampler: the smallest candidate {smallest} costs {cost(smallest)}")
        self._fields = tuple(fields)
        self._choices = tuple(tuple(field_choices) for field_choices in choices)
        self._config = config
        self._seed = seed
        self._cost = cost
        self._budget = budget
        self._random = RandomSampler(seed=seed)
        self._cache: dict[tuple[int, int, int], list[Candidate]] = {}

    @property
    def distributions(self) -> dict[str, BaseDistribution]:
        """The search space: one ``CategoricalDistribution(choices[f])`` per field name."""
        return {name: CategoricalDistribution(c) for name, c in zip(self._fields, self._choices, strict=True)}

    def infer_relative_search_space(self, study: Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return self.distributions

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        if CANDIDATE_KEY in trial.system_attrs:  # already assigned (the trial object was rebuilt)
            return dict(zip(self._fields, trial.system_attrs[CANDIDATE_KEY], strict=True))
        position = self._position(study, exclude=trial._trial_id)
        if not position.todo:
            raise NoCandidateError(self._why_empty(position))
        candidate = position.todo[0]
        study._storage.set_trial_system_attr(trial._trial_id, GENERATION_KEY, position.generation)
        study._storage.set_trial_system_attr(trial._trial_id, CANDIDATE_KEY, list(candidate))
        return dict(zip(self._fields, candidate, strict=True))

    def sample_independent(
        self, study: Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        """Parameters outside the fields are not searched: they are drawn by a seeded ``RandomSampler``."""
        return self._random.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._random.reseed_rng()

    def pending(self, study: Study) -> list[Candidate]:
        """Candidates of the current generation still to ask, in the order the next trials receive them.

        Empty when the search is over (all ``config.generations`` generations done, or the space exhausted) and
        also while the current generation is all handed out but some of its trials are still RUNNING: tell
        :meth:`finished` apart from that.
        """
        return self._position(study).todo

    def finished(self, study: Study) -> bool:
        """Whether the search is over: nothing to ask and no trial of it still RUNNING."""
        position = self._position(study)
        return not position.todo and position.running == 0

    def generation_of(self, trial: FrozenTrial) -> int:
        """The generation this sampler assigned ``trial`` to."""
        if GENERATION_KEY not in trial.system_attrs:
            raise ValueError(f"trial {trial.number} was not proposed by an EvolutionarySampler")
        return int(trial.system_attrs[GENERATION_KEY])

    def candidate_of(self, trial: FrozenTrial) -> Candidate:
        """The candidate this sampler assigned ``trial``."""
        if CANDIDATE_KEY not in trial.system_attrs:
            raise ValueError(f"trial {trial.number} was not proposed by an EvolutionarySampler")
        return tuple(int(dim) for dim in trial.system_attrs[CANDIDATE_KEY])

    def _position(self, study: Study, exclude: int | None = None) -> _Position:
        two_objectives = self._objectives(study) == 2
        by_generation = self._group(study.get_trials(deepcopy=False), two_objectives, exclude)
        scored_before: list[tuple[Candidate, Score]] = []
        fingerprint = 0
        for generation in range(self._config.generations):
            trials = by_generation.get(generation, _GenerationTrials([], set()))
            candidates = self._generation(generation, scored_before, fingerprint)
            todo = [candidate for candidate in candidates if candidate not in trials.taken]
            if todo or trials.running or not candidates:
                return _Position(generation, todo, trials.running)
            scored_before += trials.scored
            fingerprint = hash((fingerprint, tuple(trials.scored)))
        return _Position(self._config.generations, [], 0)

    def _generation(self, generation: int, scored: list[tuple[Candidate, Score]], fingerprint: int) -> list[Candidate]:
        key = (generation, len(scored), fingerprint)
        if key not in self._cache:
            self._cache[key] = next_generation(
                generation, scored, self._choices, self._config, self._seed, self._cost, self._budget
            )
        return self._cache[key]

    def _group(
        self, trials: Sequence[FrozenTrial], two_objectives: bool, exclude: int | None
    ) -> dict[int, _GenerationTrials]:
        groups: dict[int, _GenerationTrials] = {}
        for trial in trials:
            if trial._trial_id == exclude or CANDIDATE_KEY not in trial.system_attrs:
                continue
            if trial.state not in (TrialState.COMPLETE, TrialState.RUNNING):
                continue
            group = groups.setdefault(self.generation_of(trial), _GenerationTrials([], set()))
            candidate = self.candidate_of(trial)
            group.taken.add(candidate)
            if trial.state == TrialState.RUNNING:
                group.running += 1
            else:
                group.scored.append((candidate, _score(trial, two_objectives)))
        return groups

    def _objectives(self, study: Study) -> int:
        directions = list(study.directions)
        if directions == _SINGLE:
            return 1
        if directions == _PAIR:
            return 2
        raise ValueError(
            f"EvolutionarySampler: directions must be [maximize] (AUC) or [maximize, minimize] (AUC, params), "
            f"got [{', '.join(d.name.lower() for d in directions)}]"
        )

    def _why_empty(self, position: _Position) -> str:
        if position.running:
            return (
                f"generation {position.generation} is all asked; waiting for its {position.running} RUNNING "
                "trial(s) (mark stale ones FAIL to re-ask them)"
            )
        if position.generation >= self._config.generations:
            return f"the search is finished: all {self._config.generations} generations are done"
        return f"the search space is exhausted at generation {position.generation}"


def _score(trial: FrozenTrial, two_objectives: bool) -> Score:
    values = trial.values
    if two_objectives:
        return float(values[0]), float(values[1])
    return float(values[0])


def _check_space(fields: Sequence[str], choices: Sequence[Sequence[int]]) -> None:
    if len(fields) != len(choices):
        raise ValueError(f"EvolutionarySampler: {len(fields)} fields but {len(choices)} choice lists")
    if not fields:
        raise ValueError("EvolutionarySampler: no fields")
    if len(set(fields)) != len(fields):
        raise ValueError(f"EvolutionarySampler: duplicate field names in {list(fields)}")
    for name, field_choices in zip(fields, choices, strict=True):
        if len(field_choices) == 0 or len(set(field_choices)) != len(field_choices):
            raise ValueError(f"EvolutionarySampler: choices of {name!r} must be non-empty and distinct")
