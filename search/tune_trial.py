"""One trial of ``ctr tune``, where it runs (the tuner's process, or a Ray task): open the study, train, tell.

The tuner asks the study for a trial (its sampler lives in the tuner) and hands a :class:`TrialJob` to a worker.
The worker opens the same RDB study, trains the trial's run config into ``DIR/trials/<number>/`` with
:class:`~search.pruning.PruneOnValAUC` reporting each epoch's validation AUC, and finishes the trial itself:
COMPLETE with the run's validation AUC (its best epoch's), PRUNED when the pruner stopped it, or FAIL when the
trial's settings cannot train (a non-finite loss, a config the run refuses; user attribute ``error``). Every
trial carries user attributes ``run_dir``, ``worker`` (host:pid), ``val_auc``, ``test_auc``, ``epochs`` and
``fit_seconds``, which ``ctr dashboard`` shows. Anything else (a bug) propagates, and the tuner fails the trial.

Example:
    >>> job = TrialJob("sqlite:///out/study.db", "tune", 7, 3, to_dict(config), "out/trials/3", {})  # doctest: +SKIP
    >>> run_trial(job)  # doctest: +SKIP
    'COMPLETE'
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from config.run import RunConfig
from config.strict import ConfigError, from_dict
from ctr.runs import train_run
from ctr.training.module import NonFiniteLossError
from ctr.training.strategy import CheckpointError
from search.pruning import PruneOnValAUC, make_pruner
from search.storage import open_storage
from search.tune_space import PrunerSpec

__all__ = ["TRIAL_ERRORS", "TrialJob", "run_trial"]

# A trial's settings can fail to train: recorded as FAIL with its message, and the study goes on.
TRIAL_ERRORS: tuple[type[Exception], ...] = (NonFiniteLossError, ConfigError, CheckpointError)


@dataclass(frozen=True)
class TrialJob:
    """What a worker needs to run trial ``number`` (``trial_id`` in the storage): plain data, sent to Ray."""

    storage: str
    study: str
    trial_id: int
    number: int
    config: dict[str, Any]  # the trial's RunConfig, as to_dict gives it
    run_dir: str
    pruner: dict[str, Any]  # the space's PrunerSpec, as to_dict gives it


def run_trial(job: TrialJob) -> str:
    """Train the trial and finish it in the study; returns its final state's name."""
    config = from_dict(RunConfig, job.config)
    pruner = make_pruner(from_dict(PrunerSpec, job.pruner), config.trainer.max_epochs)
    study = optuna.load_study(study_name=job.study, storage=open_storage(job.storage), pruner=pruner)
    trial = optuna.Trial(study, job.trial_id)
    trial.set_user_attr("run_dir", job.run_dir)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    prune = PruneOnValAUC(trial)
    try:
        metrics = train_run(config, Path(job.run_dir), callbacks=[prune])
    except TRIAL_ERRORS as e:
        trial.set_user_attr("error", str(e))
        trial.set_user_attr("epochs", len(prune.reported))
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL.name
    for key in ("val_auc", "test_auc", "epochs", "fit_seconds"):
        trial.set_user_attr(key, metrics[key])
    if prune.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        return TrialState.PRUNED.name
    if metrics["val_auc"] is None:  # one class only in the validation split
        trial.set_user_attr("error", "the validation AUC is undefined (one class only)")
        study.tell(trial, state=TrialState.FAIL)
        return TrialState.FAIL.name
    study.tell(trial, float(metrics["val_auc"]))
    return TrialState.COMPLETE.name
