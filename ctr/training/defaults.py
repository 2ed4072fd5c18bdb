"""Data-aware defaults: the training settings a run's config leaves unset, chosen from the training split's size.

Fixed defaults cannot suit both 8,000 and 1,000,000 training rows: a batch of 4096 gives an 8k split 2 optimiser
steps an epoch, and 5 epochs with patience 1 stop a run while its validation AUC still rises. These rules follow
FuxiCTR's training loop (early stopping on validation AUC with patience 2, the learning rates divided by 10
after an epoch without a new best, the best epoch's weights kept) and size the batch so that every split gets
enough steps an epoch to reach its plateau. On large splits the first epoch decides: the tables memorise the
training rows from the second epoch on, so the model must learn what generalises within one pass, which takes
many small steps (the batch cap) and a dense learning rate above Adam's usual 1e-3. docs/defaults.md holds the
measurements behind each value.

=====================  ==========================================================================================
``data.batch_size``    a power of two near ``rows / STEPS_PER_EPOCH``, within [``MIN_BATCH``, ``MAX_BATCH``], shared
                       by the processes (each takes its part: N processes take the steps of one); 800k rows get
                       1,562 steps an epoch
``trainer.max_epochs``  ``MAX_EPOCHS``: a bound, not a target; early stopping ends the run at its plateau
``trainer.patience``   2 (FuxiCTR's ``early_stop_patience``); 1 for the OptEmbed pipeline from ``ONE_PASS_ROWS``
                       training rows: there every stage's best epoch is its first, and without the restore the
                       epochs after a bad one go on from the memorised tables (1M planted rows: baseline validation
                       AUC 0.787, 0.715, 0.693), so a second bad epoch only costs time
``optim.scheduler``    ``plateau`` (FuxiCTR's ``reduce_lr_on_plateau``: x0.1 after an epoch without a new best),
                       with ``optim.plateau_restore`` ``True``: after such an epoch the weights also go back to the
                       best epoch's, so the decayed epochs fine-tune the best model, not one that has memorised
``optim.lr``           ``DENSE_LR`` (Adam on the dense weights)
``optim.sparse_lr``    ``SPARSE_LR`` (row-wise Adagrad on the tables); ``FM_SPARSE_LR`` for the models with a
                       factorization machine (``fm``, ``deepfm``), whose pairwise term overfits faster
``optim.embedding_l2`` ``EMBEDDING_L2`` (L2 on the rows a batch looks up: FuxiCTR's ``embedding_regularizer``)
``model.batch_norm``   ``False``: the MLPs overfitted small splits sooner with it (docs/defaults.md)
``model.init_std``     ``INIT_STD`` for ``fm`` and ``deepfm`` below ``SMALL_START_ROWS`` training rows: their tables
                       start near zero (FuxiCTR's normal(0, 1e-4)), so the pairwise term starts at zero and grows
                       only as far as the data supports it; on 800k rows the uniform start did better (the
                       pairwise term has a single epoch to grow), and the other models keep it at every size
=====================  ==========================================================================================

For the OptEmbed pipeline (a config with a ``supernet`` or ``retrain`` section) the two ``model.*`` keys,
``optim.lr`` and ``optim.plateau_restore`` are not filled and the batch cap is ``OPTEMBED_MAX_BATCH``: its
threshold defaults, timings and figures were measured with TorchRec's uniform initialisation, batch norm, Adam at
1e-3, that cap and no restore (docs/optembed.md).

Only keys absent from the YAML and the ``--set`` overrides are filled; the run writes the values it used into
``RUN/config.yaml``. A config built in code (``RunConfig(...)``) keeps the dataclasses' fixed defaults.

Example:
    >>> chosen = data_aware_defaults(6_400)
    >>> chosen["data.batch_size"], chosen["trainer.patience"], chosen["optim.scheduler"]
    (128, 2, 'plateau')
    >>> chosen["optim.sparse_lr"], data_aware_defaults(6_400, model="deepfm")["optim.sparse_lr"]
    (0.05, 0.01)
    >>> data_aware_defaults(30_000)["data.batch_size"], data_aware_defaults(30_000, processes=2)["data.batch_size"]
    (256, 128)
    >>> data_aware_defaults(1_000_000)["data.batch_size"], data_aware_defaults(1_000_000)["optim.lr"]
    (512, 0.003)
    >>> data_aware_defaults(6_400, model="deepfm")["model.init_std"], "model.init_std" in data_aware_defaults(6_400)
    (0.0001, False)
    >>> "model.init_std" in data_aware_defaults(800_000, model="deepfm")
    False
    >>> optembed = data_aware_defaults(1_000_000, optembed=True)
    >>> optembed["data.batch_size"], "optim.lr" in optembed, "optim.plateau_restore" in optembed
    (4096, False, False)
    >>> optembed["trainer.patience"], data_aware_defaults(100_000, optembed=True)["trainer.patience"]
    (1, 2)
    >>> data_aware_defaults(6_400)["optim.plateau_restore"]
    True
    >>> data_aware_defaults(6_400)["model.batch_norm"], "model.batch_norm" in data_aware_defaults(6_400, optembed=True)
    (False, False)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Unpack

import pyarrow as pa
import pyarrow.parquet as pq

from config.run import ConfigSources, RunConfig, _set, parse_run_config
from features.schema import FeatureMap, FeatureMapError

__all__ = ["data_aware_defaults", "load_run_config", "train_rows"]

STEPS_PER_EPOCH = 100  # optimiser steps an epoch the batch size aims at
MIN_BATCH = 128
MAX_BATCH = 512
OPTEMBED_MAX_BATCH = 4096  # the OptEmbed pipeline's cap: its thresholds and search were measured with it
MAX_EPOCHS = 50
DENSE_LR = 3e-3
SPARSE_LR = 0.05
FM_SPARSE_LR = 0.01
FM_MODELS = ("fm", "deepfm")
EMBEDDING_L2 = 0.0
INIT_STD = 1e-4
SMALL_START_ROWS = 250_000  # below it fm/deepfm tables start at INIT_STD; at and above it, uniform
ONE_PASS_ROWS = 500_000  # from here the OptEmbed pipeline's stages stop at their first epoch without a new best


def data_aware_defaults(
    rows: int, processes: int = 1, model: str | None = None, optembed: bool = False
) -> dict[str, Any]:
    """The settings for ``model`` on a training split of ``rows`` rows trained by ``processes`` processes
    (``optembed``: for the OptEmbed pipeline, which keeps the model section's own defaults)."""
    target = max(rows / STEPS_PER_EPOCH, 1.0)
    batch = min(max(2 ** round(math.log2(target)), MIN_BATCH), OPTEMBED_MAX_BATCH if optembed else MAX_BATCH)
    start: dict[str, Any] = {}
    if not optembed:
        start["model.batch_norm"] = False
        start["optim.lr"] = DENSE_LR
        start["optim.plateau_restore"] = True
        if model in FM_MODELS and rows < SMALL_START_ROWS:
            start["model.init_std"] = INIT_STD
    return start | {
        "data.batch_size": max(batch // processes, 1),  # per process
        "trainer.max_epochs": MAX_EPOCHS,
        "trainer.patience": 1 if optembed and rows >= ONE_PASS_ROWS else 2,
        "optim.scheduler": "plateau",
        "optim.sparse_lr": FM_SPARSE_LR if model in FM_MODELS else SPARSE_LR,
        "optim.embedding_l2": EMBEDDING_L2,
    }


def train_rows(data: str | Path) -> int:
    """Rows of the prepared data's training split, from the shards' parquet footers (no data is read)."""
    root = Path(data)
    fm = FeatureMap.load(root)
    return sum(int(pq.ParquetFile(root / rel).metadata.num_rows) for rel in fm.splits.get("train", ()))


def _has(tree: dict[str, Any], dotted: str) -> bool:
    node: Any = tree
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _fill_data_aware_defaults(tree: dict[str, Any], processes: int) -> None:
    """Fill the keys the config leaves unset from the training split's size (:mod:`ctr.training.defaults`).

    Without readable prepared data nothing is filled: the stage that reads the data reports the problem."""
    path = tree.get("data", {}).get("path") if isinstance(tree.get("data"), dict) else None
    if not isinstance(path, str):
        return
    try:
        rows = train_rows(path)
    except (FeatureMapError, OSError, ValueError, pa.ArrowException):
        return
    model = tree.get("model", {}).get("name") if isinstance(tree.get("model"), dict) else None
    optembed = "supernet" in tree or "retrain" in tree
    chosen = data_aware_defaults(rows, max(processes, 1), model if isinstance(model, str) else None, optembed)
    for key, value in chosen.items():
        if not _has(tree, key):
            _set(tree, key, value)


def load_run_config(
    path: str | Path | None,
    overrides: Sequence[str] = (),
    *,
    processes: int = 1,
    **sources: Unpack[ConfigSources],
) -> RunConfig:
    """A command's run config: :func:`config.run.parse_run_config`, with the training settings left unset chosen
    from the training split's size (:func:`data_aware_defaults`).

    ``processes``: how many processes will train (the data-aware batch is shared by them).
    """
    fill = functools.partial(_fill_data_aware_defaults, processes=processes)
    return parse_run_config(path, overrides, fill=fill, **sources)
