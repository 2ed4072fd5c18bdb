"""Pruning ``ctr tune``'s trials per epoch: a Lightning callback that feeds the validation AUC to an Optuna trial.

After each epoch's validation the callback reports ``val_auc`` at step = epoch (0-based) and asks the study's
pruner; when the pruner says so, it stops the fit as early stopping does (``trainer.should_stop``), so the run
still ends normally: its best epoch is evaluated on valid and test and ``metrics.json`` is written. The tuner
then records the trial as PRUNED (``pruned_at`` says after which epoch).

Example:
    >>> train(config, out, callbacks=[prune := PruneOnValAUC(trial)])  # doctest: +SKIP
    >>> prune.pruned_at  # doctest: +SKIP
    0
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import optuna
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from search.tune_space import PrunerSpec

__all__ = ["PruneOnValAUC", "make_pruner"]


class PruneOnValAUC(Callback):
    """Reports each epoch's ``val_auc`` to ``trial`` and stops the fit when ``trial.should_prune()``."""

    def __init__(self, trial: optuna.Trial, monitor: str = "val_auc") -> None:
        self.trial = trial
        self.monitor = monitor
        self.pruned_at: int | None = None
        self.reported: dict[int, float] = {}

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return  # the validation of the best checkpoint after the fit is no epoch of the trial
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        epoch = trainer.current_epoch
        self.reported[epoch] = float(value)
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.pruned_at = epoch
            trainer.should_stop = True


def make_pruner(spec: PrunerSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner of a space's ``pruner`` section for trials of at most ``max_epochs`` epochs."""
    if spec.kind == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=spec.startup_trials, n_warmup_steps=spec.warmup_epochs)
    if spec.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs)
    return optuna.pruners.NopPruner()
