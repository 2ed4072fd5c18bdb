"""``ctr tune``: an Optuna study over a model's training knobs, trials pruned per epoch, run in parallel on Ray.

The tuner holds ``DIR`` (a ``ctr tune`` folder, locked while it runs) and the study's sampler (TPE, multivariate
and grouped); each trial trains in ``DIR/trials/<number>/`` (:mod:`search.tune_trial`), in this process
(``workers=0``) or as a Ray task (:mod:`search.tune_runners`), at most ``workers`` at a time::

    DIR/study.db      the study (default storage; any SQLAlchemy URL, e.g. PostgreSQL, with ``storage``)
    DIR/trials/N/     trial N's run (config.yaml, metrics.json, checkpoints/, logs/)
    DIR/best.yaml     the best trial's whole run config: ``ctr train --config DIR/best.yaml`` takes it as is
    DIR/tune.json     best params, its validation AUC and its run's test AUC, trials by state

Resumable: run again, the study goes on until it holds ``trials`` COMPLETE + PRUNED trials. A trial left
RUNNING (its tuner was killed) is marked FAIL and its parameters are asked again, as is a trial whose Ray worker
died; a trial whose settings cannot train (non-finite loss) stays FAIL, and the tuner gives up after
``max(trials, 3)`` failures in one run. The study records its model, base run config, space and ``DIR``:
resuming it with others is refused by name. ``timeout``: no new trial starts after that many seconds (running
ones finish).

Example:
    >>> run_tune(load_run_config(None, data="prepared", model="fm"), space, Path("runs/tune"), TuneOptions(trials=20))
    ... # doctest: +SKIP
    {'best_trial': 13, 'best_val_auc': 0.7712, 'best_test_auc': 0.7695, 'states': {'COMPLETE': 15, 'PRUNED': 5}, ...}
"""

from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

from config.run import RunConfig, with_values
from config.strict import ConfigError, to_dict
from features.outputs import owned_dir
from features.schema import FeatureMap
from search.pruning import make_pruner
from search.storage import claim_spec, open_storage, redact
from search.tune_runners import TrialLost, make_runner
from search.tune_space import TuneSpace
from search.tune_trial import TrialJob

__all__ = ["TuneOptions", "run_tune"]

COUNTED = (TrialState.COMPLETE, TrialState.PRUNED)


@dataclass(frozen=True)
class TuneOptions:
    """``trials``: COMPLETE + PRUNED trials the study should hold; ``workers``: Ray tasks at once (0: here)."""

    trials: int = 20
    timeout: float | None = None
    workers: int = 1
    storage: str | None = None
    address: str | None = None
    study: str = "tune"
    progress: bool = True  # one line per finished trial on stderr

    def __post_init__(self) -> None:
        if self.trials < 1:
            raise ConfigError(f"--trials: must be >= 1, got {self.trials}")
        if self.workers < 0:
            raise ConfigError(f"--workers: must be >= 0, got {self.workers}")
        if self.timeout is not None and not self.timeout > 0:
            raise ConfigError(f"--timeout: must be > 0 seconds, got {self.timeout}")


def run_tune(base: RunConfig, space: TuneSpace, out: Path, options: TuneOptions) -> dict[str, Any]:
    """Run (or resume) the study; write ``best.yaml`` and ``tune.json`` into ``out``; return ``tune.json``."""
    FeatureMap.load(base.data.path)  # a missing or foreign data folder fails here, not in every trial
    base = with_values(base, {"data.path": str(Path(base.data.path).resolve())})  # trials may run elsewhere
    out = Path(out).resolve()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial instead (``progress``)
    with owned_dir(out, "ctr tune"):
        return _tune(base, space, out, options)


def _tune(base: RunConfig, space: TuneSpace, out: Path, options: TuneOptions) -> dict[str, Any]:
    started = time.monotonic()
    url = options.storage or f"sqlite:///{out / 'study.db'}"
    study = _open_study(url, base, space, out, options.study)
    ran = failed = 0
    last_error: str | None = None
    inflight: dict[Any, optuna.Trial] = {}
    with make_runner(options.workers, options.address) as runner:
        try:
            while True:
                while (
                    len(inflight) < max(options.workers, 1)
                    and _counted(study) + len(inflight) < options.trials
                    and failed < max(options.trials, 3)
                    and (options.timeout is None or time.monotonic() - started < options.timeout)
                ):
                    trial = study.ask(space.distributions())
                    try:
                        job = _job(trial, base, space, out, url, options.study)
                    except ConfigError as e:  # a sampled value the run config refuses
                        trial.set_user_attr("error", str(e))
                        study.tell(trial, state=TrialState.FAIL)
                        failed, last_error = failed + 1, str(e)
                        continue
                    inflight[runner.submit(job)] = trial
                if not inflight:
                    break
                handle, outcome = runner.wait(list(inflight))
                trial = inflight.pop(handle)
                ran += 1
                if isinstance(outcome, BaseException):
                    _fail(study, trial, outcome)
                    if not isinstance(outcome, TrialLost):
                        raise outcome
                frozen = study.get_trials(deepcopy=False)[trial.number]
                if frozen.state == TrialState.FAIL:
                    failed, last_error = failed + 1, str(frozen.user_attrs.get("error"))
                if options.progress:
                    _report(study, frozen)
        finally:
            if inflight and hasattr(runner, "cancel"):
                runner.cancel(list(inflight))
    return _finish(study, base, space, out, url, ran, started, last_error)


def _open_study(url: str, base: RunConfig, space: TuneSpace, out: Path, name: str) -> optuna.Study:
    with warnings.catch_warnings():  # multivariate/group TPE and metric names are "experimental"
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(
            multivariate=True, group=True, seed=space.sampler.seed, n_startup_trials=space.sampler.startup_trials
        )
        study = optuna.create_study(
            storage=open_storage(url, create=True),
            study_name=name,
            direction="maximize",
            sampler=sampler,
            pruner=make_pruner(space.pruner, base.trainer.max_epochs),
            load_if_exists=True,
        )
        if "tune_spec" not in study.user_attrs:
            trials = out / "trials"
            if trials.is_dir() and any(trials.iterdir()):
                raise ConfigError(f"{trials}: holds the trials of another study; use a new --out")
            study.set_metric_names(["val_auc"])
    if study.directions != [StudyDirection.MAXIMIZE]:
        raise ConfigError(f"study {name!r} in {redact(url)} is not a ctr tune study (directions {study.directions})")
    spec = {"model": base.model.name, "base": to_dict(base), "space": space.spec()["params"], "out": str(out)}
    claim_spec(study, "tune_spec", spec, storage=url, what="tune")
    for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):  # left by a killed tuner
        study.tell(stale.number, state=TrialState.FAIL)
        study.enqueue_trial(stale.params, user_attrs={"retry_of": stale.number})
    return study


def _fail(study: optuna.Study, trial: optuna.Trial, error: BaseException) -> None:
    """Finish a trial whose worker raised ``error`` or died (then its parameters are asked again)."""
    if study.get_trials(deepcopy=False)[trial.number].state.is_finished():
        return  # it died after telling its result
    trial.set_user_attr("error", f"{type(error).__name__}: {error}")
    study.tell(trial, state=TrialState.FAIL)
    if isinstance(error, TrialLost):
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})


def _counted(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=COUNTED))


def _job(trial: optuna.Trial, base: RunConfig, space: TuneSpace, out: Path, url: str, study: str) -> TrialJob:
    values = space.values(trial.params)
    trial.set_user_attr("values", values)
    config = with_values(base, values | {"trainer.progress_bar": False})
    run_dir = out / "trials" / str(trial.number)
    return TrialJob(url, study, trial._trial_id, trial.number, to_dict(config), str(run_dir), to_dict(space.pruner))


def _report(study: optuna.Study, trial: FrozenTrial) -> None:
    auc, epochs = trial.user_attrs.get("val_auc"), trial.user_attrs.get("epochs")
    line = f"ctr tune: trial {trial.number} {trial.state.name}"
    line += f": val_auc {auc:.5f}, epochs {epochs}" if auc is not None else ""
    line += f" ({trial.user_attrs['error']})" if "error" in trial.user_attrs else ""
    if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        line += f"; best {study.best_value:.5f} (trial {study.best_trial.number})"
    print(line, file=sys.stderr, flush=True)


def _finish(
    study: optuna.Study,
    base: RunConfig,
    space: TuneSpace,
    out: Path,
    url: str,
    ran: int,
    started: float,
    last_error: str | None,
) -> dict[str, Any]:
    trials = study.get_trials(deepcopy=False)
    states = {s.name: n for s in TrialState if (n := sum(t.state == s for t in trials))}
    summary: dict[str, Any] = {
        "study": study.study_name,
        "storage": redact(url),
        "model": base.model.name,
        "states": states,
        "ran": ran,
        "seconds": time.monotonic() - started,
    }
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        best = study.best_trial
        values = space.values(best.params)
        summary |= {
            "best_trial": best.number,
            "best_params": values,
            "best_val_auc": best.value,
            "best_test_auc": best.user_attrs.get("test_auc"),
            "best_epochs": best.user_attrs.get("epochs"),
            "best_run": str(Path(best.user_attrs["run_dir"]).relative_to(out)),
        }
        header = f"# ctr tune: trial {best.number} of study {study.study_name!r}, val_auc {best.value:.6f}\n"
        (out / "best.yaml").write_text(header + yaml.safe_dump(to_dict(with_values(base, values)), sort_keys=False))
    (out / "tune.json").write_text(json.dumps(summary, indent=2) + "\n")
    if not complete:
        detail = f"; the last failure: {last_error}" if last_error else ""
        raise ConfigError(f"{out}: no trial of study {study.study_name!r} completed ({states}){detail}")
    return summary
