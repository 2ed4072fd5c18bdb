"""Evolutionary dimension search: the pure operators (search.evolution) and the Optuna sampler (search.sampler)."""

from __future__ import annotations

import doctest
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from optuna.trial import Trial, TrialState

import search.evolution
from config.evolution import EvolutionConfig
from config.strict import ConfigError
from search.evolution import (
    Candidate,
    Score,
    crossover,
    mutate,
    next_generation,
    pareto_ranks,
    random_candidate,
    rank_for_parents,
    repair,
)
from search.sampler import EvolutionarySampler, NoCandidateError

optuna.logging.set_verbosity(optuna.logging.WARNING)

FIELDS = [f"C{i}" for i in range(6)]
CHOICES = [(4, 8, 12, 16, 20, 24, 28, 32)] * 6
TARGET = (8, 28, 16, 4, 32, 20)
SMALL = EvolutionConfig(population=8, n_mutation=4, n_crossover=4, mutation_prob=0.2, generations=5, top_k=6)


def auc_like(candidate: Candidate) -> float:
    return -float(sum((d - t) ** 2 for d, t in zip(candidate, TARGET, strict=True)))


def params_of(trial: Trial | optuna.trial.FrozenTrial) -> Candidate:
    return tuple(int(trial.params[name]) for name in FIELDS)


def run_batches(
    study: optuna.Study, sampler: EvolutionarySampler, objective: Callable[[Candidate], float | tuple[float, float]]
) -> list[list[Candidate]]:
    """The batch ask/tell driver: ask a whole generation, evaluate, tell; returns the batches asked."""
    batches = []
    while batch := sampler.pending(study):
        trials = [study.ask(sampler.distributions) for _ in batch]
        assert [params_of(trial) for trial in trials] == batch  # trial i receives pending()[i]
        for candidate, trial in zip(batch, trials, strict=True):
            study.tell(trial, objective(candidate))
        batches.append(batch)
    assert sampler.finished(study)
    return batches


def completed(study: optuna.Study) -> list[Candidate]:
    return [params_of(t) for t in study.get_trials(deepcopy=False, states=[TrialState.COMPLETE])]


# ---------------------------------------------------------------- config


def test_module_example_runs() -> None:
    result = doctest.testmod(search.evolution, optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0 and result.failed == 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"population": 0}, "population: must be >= 1, got 0"),
        ({"n_mutation": -1}, "n_mutation: must be >= 0, got -1"),
        ({"mutation_prob": 1.5}, "mutation_prob: must be in [0, 1], got 1.5"),
        ({"population": 4, "n_mutation": 3, "n_crossover": 3}, "3 + 3 = 6"),
        ({"n_mutation": 0, "n_crossover": 0}, "0 + 0 = 0"),
        ({"top_k": 0}, "top_k: must be >= 1, got 0"),
        ({"max_tries": 0}, "max_tries: must be >= 1, got 0"),
        ({"crossover": "two_point"}, "'two_point' is not one of one_point, uniform"),
    ],
)
def test_config_rejects_bad_values(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        EvolutionConfig(**kwargs)  # type: ignore[arg-type]
    assert message in str(err.value)


# ---------------------------------------------------------------- operators


def test_mutate_returns_new_tuples_from_choices_and_keeps_the_parent() -> None:
    for seed in range(50):
        rng = random.Random(seed)
        parent = random_candidate(rng, CHOICES)
        saved = tuple(parent)
        child = mutate(parent, CHOICES, 0.5, rng)
        assert parent == saved and type(child) is tuple and len(child) == len(parent)
        assert all(d in CHOICES[f] for f, d in enumerate(child))
    rng = random.Random(0)
    assert mutate(saved, CHOICES, 0.0, rng) == saved
    changed = [mutate(saved, CHOICES, 1.0, rng) for _ in range(20)]
    assert any(c != saved for c in changed)


def test_one_point_crossover_cuts_between_fields() -> None:
    a, b = (1, 2, 3, 4), (5, 6, 7, 8)
    cuts = Counter()
    for seed in range(300):
        child = crossover(a, b, random.Random(seed), "one_point")
        assert a == (1, 2, 3, 4) and b == (5, 6, 7, 8) and type(child) is tuple
        matching = [c for c in range(len(a) + 1) if child == a[:c] + b[c:]]
        assert len(matching) == 1, child
        cuts[matching[0]] += 1
    assert set(cuts) == {1, 2, 3}  # never c=0 (all b) or c=F (all a)
    assert crossover((16,), (4,), random.Random(0), "one_point") == (16,)


def test_uniform_crossover_takes_each_field_from_a_parent() -> None:
    a, b = (1, 2, 3, 4), (5, 6, 7, 8)
    children = {crossover(a, b, random.Random(seed), "uniform") for seed in range(100)}
    assert all(all(c in (x, y) for c, x, y in zip(child, a, b, strict=True)) for child in children)
    assert len(children) > 8  # not stuck on one-point patterns
    with pytest.raises(ValueError, match="3 and 4 fields"):
        crossover((1, 2, 3), a, random.Random(0))


def test_repair_brings_a_candidate_under_budget_by_stepping_down() -> None:
    for seed in range(30):
        rng = random.Random(seed)
        big = random_candidate(rng, CHOICES)
        small = repair(big, CHOICES, sum, 60, rng)
        assert sum(small) <= 60
        assert all(d in CHOICES[f] and d <= big[f] for f, d in enumerate(small))
        if sum(big) <= 60:
            assert small == big
        else:  # stops as soon as it fits: one step down is 4
            assert sum(small) > 60 - 4
    cheap = (4, 8, 4, 4, 4, 4)
    assert repair(cheap, CHOICES, sum, 60, random.Random(0)) == cheap
    with pytest.raises(ValueError, match="smallest candidate"):
        repair((32,) * 6, CHOICES, sum, 23, random.Random(0))


def test_pareto_ranks_on_a_hand_made_front() -> None:
    points = [
        (0.80, 10.0),  # front: cheapest
        (0.90, 30.0),  # front: best AUC
        (0.75, 20.0),  # dominated by (0.80, 10)
        (0.85, 40.0),  # dominated by (0.90, 30)
        (0.70, 50.0),  # dominated by (0.75, 20) as well
    ]
    assert pareto_ranks(points) == [0, 0, 1, 1, 2]
    assert pareto_ranks([(0.8, 10.0), (0.8, 10.0), (0.8, 11.0)]) == [0, 0, 1]
    assert pareto_ranks([]) == []


def test_rank_for_parents_keeps_scores_with_candidates() -> None:
    # The best candidate was scored in generation 0 and has the largest tuple: sorting candidates apart from
    # their scores (the official code's defect) would put it last.
    scored: list[tuple[Candidate, Score]] = [((32, 32), 0.81), ((4, 4), 0.70), ((8, 8), 0.75), ((16, 4), 0.79)]
    assert rank_for_parents(scored, top_k=2) == [(32, 32), (16, 4)]
    assert rank_for_parents(list(reversed(scored)), top_k=10) == [(32, 32), (16, 4), (8, 8), (4, 4)]
    ties: list[tuple[Candidate, Score]] = [((8, 8), 0.7), ((4, 8), 0.7), ((8, 8), 0.9)]
    assert rank_for_parents(ties, top_k=3) == [(8, 8), (4, 8)]  # duplicates count once, with their best score


def test_rank_for_parents_two_objectives_front_first() -> None:
    scored: list[tuple[Candidate, Score]] = [
        ((1,), (0.85, 40.0)),  # rank 1
        ((2,), (0.80, 10.0)),  # rank 0
        ((3,), (0.70, 50.0)),  # rank 2
        ((4,), (0.90, 30.0)),  # rank 0
        ((5,), (0.75, 20.0)),  # rank 1
    ]
    assert rank_for_parents(scored, top_k=5) == [(4,), (2,), (1,), (5,), (3,)]
    with pytest.raises(ValueError, match="mix"):
        rank_for_parents([((1,), 0.5), ((2,), (0.5, 1.0))], top_k=2)


def test_next_generation_is_deterministic_unseen_and_unique() -> None:
    first = next_generation(0, [], CHOICES, SMALL, seed=3)
    assert first == next_generation(0, [], CHOICES, SMALL, seed=3)
    assert first != next_generation(0, [], CHOICES, SMALL, seed=4)
    assert len(first) == SMALL.population == len(set(first))
    scored: list[tuple[Candidate, Score]] = [(c, auc_like(c)) for c in first]
    for generation in range(1, 6):
        children = next_generation(generation, scored, CHOICES, SMALL, seed=3)
        assert children == next_generation(generation, list(reversed(scored)), CHOICES, SMALL, seed=3)
        assert len(children) == len(set(children)) <= SMALL.n_mutation + SMALL.n_crossover
        assert not set(children) & {c for c, _ in scored}
        assert all(all(d in CHOICES[f] for f, d in enumerate(c)) for c in children)
        scored += [(c, auc_like(c)) for c in children]


def test_next_generation_repairs_to_budget_and_runs_dry_when_exhausted() -> None:
    within = next_generation(0, [], CHOICES, SMALL, seed=0, cost=sum, budget=70)
    assert within and all(sum(c) <= 70 for c in within)
    tiny = [(4, 8), (4, 8)]
    everything = next_generation(0, [], tiny, SMALL, seed=0)
    assert sorted(everything) == [(4, 4), (4, 8), (8, 4), (8, 8)]  # 4 of 8 slots: the space has only 4
    assert next_generation(1, [(c, 0.5) for c in everything], tiny, SMALL, seed=0) == []
    with pytest.raises(ValueError, match="budget needs a cost"):
        next_generation(0, [], CHOICES, SMALL, seed=0, budget=70)


# ---------------------------------------------------------------- sampler


def test_sampler_batches_complete_without_repeats_and_improve() -> None:
    for seed in range(3):
        sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=seed)
        study = optuna.create_study(direction="maximize", sampler=sampler)
        batches = run_batches(study, sampler, auc_like)
        done = completed(study)
        assert len(done) == len(set(done)) == sum(len(b) for b in batches)
        assert len(batches) == SMALL.generations and all(len(b) <= SMALL.population for b in batches)
        by_generation = Counter(sampler.generation_of(t) for t in study.trials)
        assert sorted(by_generation) == list(range(SMALL.generations))
        assert by_generation[0] == SMALL.population
        best_of_first = max(auc_like(c) for c in batches[0])
        assert study.best_value > best_of_first, f"seed {seed}: no improvement over generation 0"


def test_sampler_waits_for_running_trials_and_says_when_done() -> None:
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=1)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = sampler.pending(study)
    trials = [study.ask(sampler.distributions) for _ in first]
    assert sampler.pending(study) == [] and not sampler.finished(study)
    with pytest.raises(NoCandidateError, match="RUNNING"):
        study.ask(sampler.distributions)
    study.tell(study.trials[-1].number, state=TrialState.FAIL)  # the refused ask leaves a trial behind
    for trial in trials:
        study.tell(trial, auc_like(params_of(trial)))
    assert len(sampler.pending(study)) > 0
    run_batches(study, sampler, auc_like)
    with pytest.raises(NoCandidateError, match="finished"):
        study.ask(sampler.distributions)


def test_sampler_works_with_optimize_and_extra_params() -> None:
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=2)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    first = sampler.pending(study)

    def objective(trial: Trial) -> float:
        candidate = tuple(trial.suggest_categorical(n, CHOICES[f]) for f, n in enumerate(FIELDS))
        lr = trial.suggest_float("lr", 1e-4, 1e-1, log=True)  # not searched: drawn by the fallback sampler
        assert 1e-4 <= lr <= 1e-1
        return auc_like(candidate)

    study.optimize(objective, n_trials=SMALL.population + 2)
    assert [params_of(t) for t in study.trials[: len(first)]] == first
    assert [sampler.generation_of(t) for t in study.trials] == [0] * len(first) + [1, 1]


def test_sampler_rejects_wrong_directions_and_impossible_budgets() -> None:
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL)
    with pytest.raises(ValueError, match=r"got \[minimize\]"):
        sampler.pending(optuna.create_study(direction="minimize", sampler=sampler))
    with pytest.raises(ValueError, match="costs 24"):
        EvolutionarySampler(FIELDS, CHOICES, SMALL, cost=sum, budget=20)
    with pytest.raises(ValueError, match="5 choice lists"):
        EvolutionarySampler(FIELDS, CHOICES[:5], SMALL)


def test_interrupted_sqlite_study_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    reference_sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=5)
    reference = optuna.create_study(direction="maximize", sampler=reference_sampler)
    run_batches(reference, reference_sampler, auc_like)

    storage = f"sqlite:///{tmp_path / 'search.db'}"
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=5)
    study = optuna.create_study(storage=storage, study_name="evo", direction="maximize", sampler=sampler)
    for _ in range(2):
        batch = sampler.pending(study)
        for candidate in batch:  # one at a time this time
            trial = study.ask(sampler.distributions)
            assert params_of(trial) == candidate
            study.tell(trial, auc_like(candidate))
    third = sampler.pending(study)
    asked = [study.ask(sampler.distributions) for _ in range(6)]
    for trial in asked[:4]:
        study.tell(trial, auc_like(params_of(trial)))
    study.tell(asked[4], state=TrialState.FAIL)  # asked[5] stays RUNNING: the process was killed
    assert sampler.pending(study) == [third[4], *third[6:]]

    resumed = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=5)
    study = optuna.load_study(study_name="evo", storage=storage, sampler=resumed)
    study.tell(asked[5].number, state=TrialState.FAIL)  # the stale RUNNING trial
    assert resumed.pending(study) == [third[4], third[5], *third[6:]]
    run_batches(study, resumed, auc_like)

    done = completed(study)
    assert len(done) == len(set(done)), "a candidate was evaluated twice"
    assert set(done) == set(completed(reference))
    assert study.best_value == reference.best_value


def test_two_objective_study_ranks_by_pareto_front() -> None:
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=0)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    run_batches(study, sampler, lambda c: (auc_like(c), float(sum(c))))
    done = completed(study)
    assert len(done) == len(set(done)) and len(done) > SMALL.population
    front = study.best_trials
    for p in front:
        for q in front:
            better_or_equal = p.values[0] >= q.values[0] and p.values[1] <= q.values[1]
            assert not (better_or_equal and p.values != q.values), (p.values, q.values)
    assert any(sampler.generation_of(t) > 0 for t in front)  # the later generations pushed the front


def test_budget_mode_asks_only_affordable_candidates() -> None:
    sampler = EvolutionarySampler(FIELDS, CHOICES, SMALL, seed=0, cost=sum, budget=72)
    study = optuna.create_study(direction="maximize", sampler=sampler)
    batches = run_batches(study, sampler, auc_like)
    asked = [c for batch in batches for c in batch]
    assert len(asked) > SMALL.population
    assert all(sum(c) <= 72 for c in asked)
    assert all(sum(params_of(t)) <= 72 for t in study.trials)
