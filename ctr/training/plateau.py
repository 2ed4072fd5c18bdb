"""``optim.scheduler: plateau``: FuxiCTR's ``reduce_lr_on_plateau`` for both the dense and the table optimiser.

FuxiCTR (``rank_model.py``) checks the validation AUC after every epoch: a new best resets the count of bad
epochs, anything else is a bad epoch, which multiplies every learning rate by ``factor`` (0.1) down to
``min_lr`` (1e-6); training stops after ``patience`` bad epochs in a row and the best epoch's weights are
reloaded. Here the stop is the trainer's ``EarlyStopping`` (same patience, same "a new best is strictly
greater" rule, so both count the same epochs), the reload is the final evaluation of ``checkpoints/best.ckpt``
(:func:`ctr.runs.train`), and :class:`PlateauDecay` does the decay: every dense parameter group and the fused
FBGEMM table optimiser (:meth:`ctr.training.module.CTRModule.set_table_lr`). Decaying only after ``patience`` bad epochs
would coincide with the stop, so the decay comes at each bad epoch within the patience window, as FuxiCTR's.

With ``optim.plateau_restore`` (a data-aware default of ``ctr train``: docs/defaults.md) a bad epoch also sends the
weights back to the best checkpoint's, which FuxiCTR does only at the end: the next epoch then fine-tunes the best
model at the decayed rates. On small splits a DeepFM's best epoch is often its first, and its second memorises
the training rows; without the restore, the decayed epochs continue from the memorised weights.

Its state (best AUC, bad epochs, the table learning rate) goes into the checkpoint, so a resumed run decays as
an uninterrupted one; the dense learning rates are in the dense optimiser's own state.

Example:
    >>> PlateauDecay(factor=0.1, min_lr=1e-6).state_dict()
    {'best': None, 'bad_epochs': 0, 'table_lr': None}
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.trainer.states import TrainerFn

from ctr.training.module import CTRModule
from ctr.training.strategy import read_shards

__all__ = ["PlateauDecay"]


class PlateauDecay(Callback):
    def __init__(self, factor: float, min_lr: float, monitor: str = "val_auc", restore: bool = False) -> None:
        self.factor = factor
        self.restore = restore
        self.min_lr = min_lr
        self.monitor = monitor
        self.best: float | None = None
        self.bad_epochs = 0
        self.table_lr: float | None = None  # set by a decay or a restored checkpoint; None: the configured one

    def _decayed(self, lr: float) -> float:
        return max(lr * self.factor, self.min_lr) if lr > self.min_lr else lr

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        assert isinstance(pl_module, CTRModule)
        if self.table_lr is not None:  # resumed: the fused optimiser's state does not carry FBGEMM's lr
            pl_module.set_table_lr(self.table_lr)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            return
        assert isinstance(pl_module, CTRModule)
        value = float(trainer.callback_metrics[self.monitor])
        if self.best is None or value > self.best:
            self.best, self.bad_epochs = value, 0
            return
        self.bad_epochs += 1
        for optimizer in trainer.optimizers:
            for group in optimizer.param_groups:
                group["lr"] = self._decayed(float(group["lr"]))
        self.table_lr = self._decayed(pl_module.table_lr)
        pl_module.set_table_lr(self.table_lr)
        if self.restore:
            self._restore_best(trainer, pl_module)

    @staticmethod
    def _restore_best(trainer: pl.Trainer, pl_module: CTRModule) -> None:
        """The best checkpoint's weights read into the live (sharded) model in place, by every rank: its shards
        of the tables and the replicated dense weights (the optimisers' states are not touched)."""
        path = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if not path:
            return
        state = {"state_dict": pl_module.state_dict()}
        problem = (
            "the best checkpoint, read back after an epoch without a new best (optim.plateau_restore), is corrupt or "
            "incomplete; was it changed during the run? Rerun, or set optim.plateau_restore=false"
        )
        read_shards(state, path, problem)
        pl_module.load_state_dict(state["state_dict"])

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs, "table_lr": self.table_lr}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.best = state_dict["best"]
        self.bad_epochs = int(state_dict["bad_epochs"])
        self.table_lr = state_dict["table_lr"]
