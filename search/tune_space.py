"""The search space of ``ctr tune``: run-config keys, each with an Optuna distribution, loaded strictly from YAML.

A space file names run-config keys (the dotted keys of ``--set``) and how each may vary, plus the sampler's and
the pruner's settings::

    sampler: {startup_trials: 10, seed: 0}            # TPE: random trials before it models the results
    pruner: {kind: median, startup_trials: 5, warmup_epochs: 1}   # median | hyperband | none
    params:
      optim.lr:         {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
      model.embedding_dim: {type: int, low: 8, high: 32, step: 4}
      model.mlp:        {type: categorical, choices: [[200, 200], [400, 400, 400]]}

A ``float`` or ``int`` has ``low`` and ``high`` (``log``: sampled on a log scale; ``step``: an int's spacing); a
``categorical`` has ``choices`` (numbers, strings, booleans, or lists such as MLP sizes). Unknown keys are errors
that suggest the nearest one, and every key must be a valid run-config key taking every value the space allows:
:func:`load_space` builds a config with each bound and choice. Built-in spaces: ``configs/tune/<model>.yaml``.

Example:
    >>> from ctr.training.defaults import load_run_config
    >>> base = load_run_config(None, data="prepared", model="fm")
    >>> space = parse_space({"params": {"optim.sparse_lr": {"type": "float", "low": 0.01, "high": 0.5, "log": True},
    ...                                 "model.mlp": {"type": "categorical", "choices": [[64], [64, 64]]}}},
    ...                     "space.yaml", base)
    >>> sorted(space.distributions())
    ['model.mlp', 'optim.sparse_lr']
    >>> space.values({"optim.sparse_lr": 0.1, "model.mlp": "[64, 64]"})
    {'optim.sparse_lr': 0.1, 'model.mlp': [64, 64]}
    >>> parse_space({"params": {"optim.sparse_lrr": {"type": "float", "low": 0.01, "high": 0.5}}}, "space.yaml", base)
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: space.yaml: params.optim.sparse_lrr: ...: unknown key ... (did you mean 'sparse_lr'?)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from config.run import RunConfig, with_values
from config.strict import ConfigError, from_dict, load_yaml, to_dict

__all__ = ["BUILTIN_SPACES", "ParamSpec", "PrunerSpec", "SamplerSpec", "TuneSpace", "load_space", "parse_space"]

BUILTIN_SPACES = Path(__file__).resolve().parents[1] / "configs" / "tune"

Number = int | float


@dataclass(frozen=True)
class ParamSpec:
    """How one run-config key varies: ``float``/``int`` between ``low`` and ``high``, or one of ``choices``."""

    type: Literal["float", "int", "categorical"]
    low: Number | None = None
    high: Number | None = None
    log: bool = False
    step: int | None = None
    choices: tuple[Any, ...] | None = None

    def __post_init__(self) -> None:
        if self.type == "categorical":
            if not self.choices:
                raise ConfigError("categorical: needs a non-empty list `choices`")
            extra = [k for k in ("low", "high", "step") if getattr(self, k) is not None] + (["log"] if self.log else [])
            if extra:
                raise ConfigError(f"categorical: takes only `choices`, not {', '.join(extra)}")
            for choice in self.choices:
                if not _is_choice(choice):
                    raise ConfigError(f"choices: {choice!r} is not a number, string, boolean or list of them")
            if len({_encode(c) for c in self.choices}) != len(self.choices):
                raise ConfigError(f"choices: {list(self.choices)} repeats a choice")
            return
        if self.choices is not None:
            raise ConfigError(f"{self.type}: takes `low` and `high`, not `choices`")
        if self.low is None or self.high is None:
            raise ConfigError(f"{self.type}: needs `low` and `high`")
        if self.type == "int":
            for name in ("low", "high"):
                value = getattr(self, name)
                if not float(value).is_integer():
                    raise ConfigError(f"{name}: an int parameter needs an integer, got {value!r}")
            if self.step is not None and self.step < 1:
                raise ConfigError(f"step: must be >= 1, got {self.step}")
            if self.log and self.step not in (None, 1):
                raise ConfigError(f"step: a log-scale int takes no step, got {self.step}")
        elif self.step is not None:
            raise ConfigError(f"step: only an int parameter takes a step, got {self.step}")
        if not self.low < self.high:
            raise ConfigError(f"low: must be below high, got low {self.low!r}, high {self.high!r}")
        if self.log and self.low <= 0:
            raise ConfigError(f"low: a log scale needs low > 0, got {self.low!r}")

    def distribution(self) -> BaseDistribution:
        if self.type == "categorical":
            assert self.choices is not None
            return CategoricalDistribution([_encode(c) for c in self.choices])
        assert self.low is not None and self.high is not None
        if self.type == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=self.step or 1)
        return FloatDistribution(float(self.low), float(self.high), log=self.log)

    def value(self, sampled: Any) -> Any:
        """The run-config value of an Optuna parameter (a categorical list is stored as its JSON text)."""
        if self.type == "categorical":
            assert self.choices is not None
            return next(c for c in self.choices if _encode(c) == sampled)
        return int(sampled) if self.type == "int" else float(sampled)

    def extremes(self) -> tuple[Any, ...]:
        """The values that decide whether the run config takes every value of the space."""
        if self.type == "categorical":
            assert self.choices is not None
            return self.choices
        assert self.low is not None and self.high is not None
        if self.type == "float":
            return (float(self.low), float(self.high))
        step = self.step or 1
        top = int(self.low) + (int(self.high) - int(self.low)) // step * step  # Optuna's highest value
        return tuple(dict.fromkeys((int(self.low), int(self.low) + step, top)))


@dataclass(frozen=True)
class SamplerSpec:
    """TPE (multivariate, grouped): ``startup_trials`` random trials first; ``seed`` fixes its draws."""

    startup_trials: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if self.startup_trials < 0 or self.seed < 0:
            raise ConfigError(f"sampler: startup_trials and seed must be >= 0, got {self}")


@dataclass(frozen=True)
class PrunerSpec:
    """Stops unpromising trials after an epoch, from their validation AUC.

    ``median``: a trial whose AUC at an epoch is below the median of earlier trials at that epoch, once
    ``startup_trials`` trials finished and after ``warmup_epochs`` epochs; ``hyperband``: Optuna's
    HyperbandPruner over 1..``trainer.max_epochs`` epochs; ``none``: every trial runs to its end.
    """

    kind: Literal["median", "hyperband", "none"] = "median"
    startup_trials: int = 5
    warmup_epochs: int = 1

    def __post_init__(self) -> None:
        if self.startup_trials < 0 or self.warmup_epochs < 0:
            raise ConfigError(f"pruner: startup_trials and warmup_epochs must be >= 0, got {self}")


@dataclass(frozen=True)
class TuneSpace:
    params: dict[str, ParamSpec]
    sampler: SamplerSpec = field(default_factory=SamplerSpec)
    pruner: PrunerSpec = field(default_factory=PrunerSpec)

    def __post_init__(self) -> None:
        if not self.params:
            raise ConfigError("params: the space tunes nothing (add run-config keys under `params`)")

    def distributions(self) -> dict[str, BaseDistribution]:
        return {key: spec.distribution() for key, spec in self.params.items()}

    def values(self, params: dict[str, Any]) -> dict[str, Any]:
        """Run-config values (``--set`` keys) of a trial's Optuna parameters."""
        return {key: spec.value(params[key]) for key, spec in self.params.items()}

    def spec(self) -> dict[str, Any]:
        """JSON data of the space (what a study records, so that a resumed study searches the same)."""
        data: dict[str, Any] = to_dict(self)
        return data


def _is_choice(value: Any) -> bool:
    if isinstance(value, list | tuple):
        return all(isinstance(v, bool | int | float | str) for v in value)
    return isinstance(value, bool | int | float | str)


def _encode(choice: Any) -> Any:
    """Optuna's categorical choices are scalars: a list is kept as its JSON text (``"[400, 400]"``)."""
    return json.dumps(list(choice)) if isinstance(choice, list | tuple) else choice


def parse_space(data: Any, where: str | Path, base: RunConfig) -> TuneSpace:
    """A space from YAML data, checked against the run config ``base`` (the trials' config before tuning)."""
    params = data.get("params") if isinstance(data, dict) else None
    if isinstance(params, dict):  # each param alone, so that a message names its key
        for key, raw in params.items():
            try:
                from_dict(ParamSpec, raw, f"params.{key}")
            except ConfigError as e:
                text = str(e) if str(e).startswith("params.") else f"params.{key}: {e}"
                raise ConfigError(f"{where}: {text}") from None
    try:
        space = from_dict(TuneSpace, data, "space")
    except ConfigError as e:
        raise ConfigError(f"{where}: {str(e).removeprefix('space: ').removeprefix('space.')}") from None
    for key, spec in space.params.items():
        for value in spec.extremes():
            try:
                with_values(base, {key: list(value) if isinstance(value, tuple) else value})
            except ConfigError as e:
                raise ConfigError(f"{where}: params.{key}: {e}") from None
    return space


def load_space(path: str | Path | None, base: RunConfig) -> TuneSpace:
    """The space file at ``path``, else the built-in space of ``base.model.name`` (``configs/tune/<model>.yaml``)."""
    if path is None:
        path = BUILTIN_SPACES / f"{base.model.name}.yaml"
        if not path.is_file():
            raise ConfigError(f"--space: no built-in space for model {base.model.name!r} ({path} is missing)")
    return parse_space(load_yaml(path), path, base)
