"""The module a run config asks for, and the two things done with it: train it, and load a finished run back.

A config with a ``supernet`` section trains OptEmbed's supernet (:class:`~ctr.optembed.module.SupernetModule`),
one with a ``retrain`` section retrains an OptEmbed plan (:class:`~ctr.optembed.retrain.RetrainModule`), any
other a base model (:class:`~ctr.training.module.CTRModule`). The training loop (:func:`ctr.runs.train`)
and the checkpoint reader (:func:`ctr.training.restore.load_weights`) are handed the module and know none of
the kinds.

Example:
    >>> config = load_run_config("configs/deepfm.yaml", data="prepared")  # doctest: +SKIP
    >>> metrics = train_run(config, Path("runs/deepfm"))  # doctest: +SKIP
    >>> load_run("runs/deepfm").model  # doctest: +SKIP
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Unpack

from config.run import RunConfig
from ctr.optembed.module import SupernetModule
from ctr.optembed.retrain import RetrainModule
from ctr.training.module import CTRModule
from ctr.training.restore import TrainedRun, load_weights, read_run_config
from ctr.training.train import TrainOptions, train
from features.schema import FeatureMap

__all__ = ["build_module", "command_of", "load_run", "module_class", "train_run"]


def module_class(config: RunConfig) -> type[CTRModule]:
    """The LightningModule class a config asks for: a supernet, a retraining of an OptEmbed plan, or a base model."""
    if config.supernet is not None:
        return SupernetModule
    if config.retrain is not None:
        return RetrainModule
    return CTRModule


def build_module(config: RunConfig, fm: FeatureMap) -> CTRModule:
    return module_class(config)(config, fm)


def command_of(config: RunConfig) -> str:
    """The command whose run ``config`` describes (the marker of its run folder, see features.outputs)."""
    return module_class(config).command


def train_run(config: RunConfig, out: Path, **options: Unpack[TrainOptions]) -> dict[str, Any]:
    """Build the module ``config`` asks for and train it (:func:`ctr.training.train.train`, which takes the same
    ``options``); returns ``metrics.json``."""
    module = build_module(config, FeatureMap.load(config.data.path))
    return train(module, out, **options)


def load_run(run: str | Path, checkpoint: str | None = None, feature_map: FeatureMap | None = None) -> TrainedRun:
    """The model of ``run`` at its best checkpoint (or ``checkpoint``, relative to the run directory), whole and
    unsharded on the CPU. ``feature_map`` overrides the one in the config's data path."""
    config = read_run_config(run)
    fm = feature_map if feature_map is not None else FeatureMap.load(config.data.path)
    return load_weights(build_module(config, fm), run, fm, checkpoint)
