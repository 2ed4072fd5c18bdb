"""What a run prints: one line per epoch with its metrics, and none of the libraries' routine noise.

:func:`quiet_libraries` silences what Lightning, TorchRec, FBGEMM and torch print on every normal run (device
banners, tips, deprecation and planner warnings, FBGEMM's INFO lines on the root logger); real warnings and
errors still show. :class:`EpochLine` is the progress bar: a transient bar over the training batches (when
``trainer.progress_bar``) and, at each epoch's end, one line on stdout::

    epoch 3/20  train_loss 0.4512  val_auc 0.7534 *  val_logloss 0.4723  lr 0.001  31.2k samples/s  4.1 s

(``*``: the best validation AUC so far, whose weights the run keeps).
"""

from __future__ import annotations

import logging
import math
import sys
import time
import warnings
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm
from lightning.pytorch.trainer.states import TrainerFn

__all__ = ["EpochLine", "quiet_libraries"]

_NOISE = [  # (warning message regex, category): known-harmless on every normal run
    (r".*It is recommended to use `self.log\(.*sync_dist=True", Warning),  # metrics gather from every rank
    (r".*Please use DTensor instead and we are deprecating ShardedTensor", Warning),  # DCP of TorchRec shards
    (r".*HeuristicalStorageReservation is known to cause issues", FutureWarning),  # TorchRec's own planner
    (r".*isinstance\(treespec, LeafSpec\)", Warning),  # Lightning 2.6 against torch 2.13
    (r".*is smaller than the logging interval", Warning),  # small data: fewer batches than log_every_n_steps
    (r"(?s).*split_table_batched_embeddings_ops is now DEPRECATED", Warning),  # TorchRec imports the old name
    (r"(?s).*Failed to import: fbgemm_gpu\.", Warning),  # GPU-only FBGEMM kernels absent from the CPU build
    (r".*does not have many workers which may be a bottleneck", Warning),  # in-memory batches need none
    (r".*torch.distributed is disabled, unavailable or uninitialized", UserWarning),  # DCP read in one process
]
_QUIET_LOGGERS = {
    "lightning.pytorch": logging.WARNING,  # GPU/TPU banners, litlogger tip, "Restoring states", "fit stopped"
    "lightning.fabric": logging.WARNING,  # "Initializing distributed", the process-group banner
    "torchrec.distributed.planner": logging.ERROR,
    "torch.fx._symbolic_trace": logging.ERROR,  # is_fx_tracing notice, once per process
}


class _LibraryInfo(logging.Filter):
    """Drops FBGEMM's INFO records (``Successfully loaded``, ``[TBE=...]``), which it logs on the root logger."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.levelno <= logging.INFO and "fbgemm_gpu" in record.pathname)


_done = False


def quiet_libraries() -> None:
    """Install the filters once per process (every rank and Ray worker imports ctr.training.train, which calls this)."""
    global _done
    if _done:
        return
    _done = True
    for message, category in _NOISE:
        warnings.filterwarnings("ignore", message=message, category=category)
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().addFilter(_LibraryInfo())


def _fmt(value: Any, digits: int = 4) -> str:
    v = float(value)
    return "nan" if math.isnan(v) else f"{v:.{digits}f}"


def _rate(samples_per_sec: float) -> str:
    return f"{samples_per_sec / 1000:.1f}k samples/s" if samples_per_sec >= 1000 else f"{samples_per_sec:.0f} samples/s"


class EpochLine(TQDMProgressBar):
    """A transient bar over each epoch's training batches (``bar=True`` and standard output a terminal: in a log
    file the bar's carriage-return updates would be noise) and one line per epoch on stdout."""

    def __init__(self, *, bar: bool) -> None:
        bar = bar and sys.stdout.isatty()  # Lightning's bars write to stdout, where the epoch lines go
        super().__init__(refresh_rate=10 if bar else 0, leave=True)  # leave: a new bar per epoch, closed at its end
        self._best = -math.inf
        self._started = time.perf_counter()

    def init_train_tqdm(self) -> Tqdm:
        bar = super().init_train_tqdm()
        bar.leave = False  # erased when the epoch ends: its line replaces it
        return bar

    def init_validation_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_test_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def init_sanity_tqdm(self) -> Tqdm:
        return Tqdm(disable=True)

    def get_metrics(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule
    ) -> dict[str, int | str | float | dict[str, float]]:
        """The bar shows the running loss and speed; the epoch's line has the rest."""
        keep = {"train_loss": "loss", "samples_per_sec": "samples/s"}
        return {keep[k]: v for k, v in super().get_metrics(trainer, pl_module).items() if k in keep}

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self._started = time.perf_counter()
        super().on_train_epoch_start(trainer, *args)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and trainer.is_global_zero:
            Tqdm.write(self.line(trainer))

    def line(self, trainer: pl.Trainer) -> str:
        """The epoch's line; marks a new best validation AUC with ``*``."""
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        if "train_loss" in m:
            parts.append(f"train_loss {_fmt(m['train_loss'])}")
        if "val_auc" in m:
            auc = float(m["val_auc"])
            parts.append(f"val_auc {_fmt(auc)}{' *' if auc > self._best else ''}")
            self._best = max(self._best, auc)
        if "val_logloss" in m:
            parts.append(f"val_logloss {_fmt(m['val_logloss'])}")
        if trainer.optimizers:
            parts.append(f"lr {trainer.optimizers[0].param_groups[0]['lr']:.3g}")
        if "samples_per_sec" in m:
            parts.append(_rate(float(m["samples_per_sec"])))
        parts.append(f"{time.perf_counter() - self._started:.1f} s")
        return "  ".join(parts)
