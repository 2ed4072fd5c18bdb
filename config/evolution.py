"""The evolutionary search's sizes (OptEmbed's defaults); the operators live in :mod:`search.evolution`."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from config.strict import ConfigError

__all__ = ["Crossover", "EvolutionConfig"]

Crossover = Literal["one_point", "uniform"]


@dataclass(frozen=True)
class EvolutionConfig:
    """Sizes of the evolutionary search (OptEmbed defaults).

    ``population``: size of generation 0 and the upper bound of every generation, so
    ``n_mutation + n_crossover <= population``. Later generations hold ``n_mutation`` mutants of and
    ``n_crossover`` children of the global ``top_k`` archive. ``mutation_prob``: chance that a mutant re-draws a
    field. ``max_tries``: attempts to produce an unseen candidate for one slot before that slot is dropped.
    """

    population: int = 20
    n_mutation: int = 10
    n_crossover: int = 10
    mutation_prob: float = 0.1
    generations: int = 30
    top_k: int = 15
    crossover: Crossover = "one_point"
    max_tries: int = 100

    def __post_init__(self) -> None:
        for name in ("population", "generations", "top_k", "max_tries"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{type(self).__name__}.{name}: must be >= 1, got {getattr(self, name)}")
        for name in ("n_mutation", "n_crossover"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{type(self).__name__}.{name}: must be >= 0, got {getattr(self, name)}")
        offspring = self.n_mutation + self.n_crossover
        if not 1 <= offspring <= self.population:
            raise ConfigError(
                f"{type(self).__name__}: n_mutation + n_crossover must be in [1, population={self.population}], "
                f"got {self.n_mutation} + {self.n_crossover} = {offspring}"
            )
        if not 0.0 <= self.mutation_prob <= 1.0:
            raise ConfigError(f"{type(self).__name__}.mutation_prob: must be in [0, 1], got {self.mutation_prob}")
        if self.crossover not in get_args(Crossover):
            raise ConfigError(
                f"{type(self).__name__}.crossover: {self.crossover!r} is not one of {', '.join(get_args(Crossover))}"
            )
