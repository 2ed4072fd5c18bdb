"""Load a finished run's model, whole and unsharded, on the CPU (for the search, retraining and export).

A run directory holds ``config.yaml`` (the resolved :class:`~config.run.RunConfig`), ``metrics.json``
(which checkpoint is the best) and ``checkpoints/`` (``torch.distributed.checkpoint`` directories). The
checkpoint may have been written by any number of ranks with any sharding: DCP reads every shard into the
plain tensors of a model built here, in one process. Its spec (config and feature-map hash) is checked
before any weight is read, and every key must load (strict).

Example:
    >>> run = load_weights(SupernetModule(read_run_config("runs/sn"), fm), "runs/sn", fm)  # doctest: +SKIP
    >>> run.model(batch)  # doctest: +SKIP
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.distributed.checkpoint.filesystem import FileSystemReader

from config.run import RunConfig
from config.strict import ConfigError, from_dict, load_yaml
from ctr.models.zoo import CTRModel
from ctr.training.module import CTRModule
from ctr.training.strategy import META_FILE, CheckpointError, complete_checkpoint, read_shards
from features.schema import FeatureMap

__all__ = ["TrainedRun", "load_weights", "read_run_config"]


@dataclass(frozen=True)
class TrainedRun:
    path: Path
    config: RunConfig
    feature_map: FeatureMap
    model: CTRModel  # on the CPU, in eval mode
    metrics: dict[str, object]


def read_run_config(run: str | Path) -> RunConfig:
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"{path}: missing (is {run} a finished run directory?)")
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return from_dict(RunConfig, raw, where=str(path))


def load_weights(
    module: CTRModule, run: str | Path, feature_map: FeatureMap, checkpoint: str | None = None
) -> TrainedRun:
    """``module``'s model (built unsharded on the CPU) with the weights of ``run``'s best checkpoint (or
    ``checkpoint``, relative to the run directory). ``feature_map`` is the data's (a retraining module's own is
    the reduced one). :func:`ctr.runs.load_run` builds the module a run's config asks for and calls this.
    """
    root = Path(run)
    config = module.config
    metrics_path = root / "metrics.json"
    if not metrics_path.is_file():
        raise ConfigError(f"{metrics_path}: missing (the run did not finish)")
    metrics = json.loads(metrics_path.read_text())
    ckpt = complete_checkpoint(root / (checkpoint or str(metrics["best_checkpoint"])))
    if ckpt is None:
        raise CheckpointError(f"{root}: no complete checkpoint {checkpoint or metrics['best_checkpoint']!r}")
    try:
        meta = torch.load(ckpt / META_FILE, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{ckpt / META_FILE}: corrupt checkpoint metadata ({type(e).__name__}: {e})") from e
    module.check_checkpoint_spec(meta, str(ckpt), resuming=False)  # any world size reads into one process
    model = module.build_unsharded(torch.device("cpu"))
    state = {"state_dict": {f"model.{k}": v for k, v in model.state_dict().items()}}
    saved = {k for k in FileSystemReader(str(ckpt)).read_metadata().state_dict_metadata if k.startswith("state_dict.")}
    want = {f"state_dict.{k}" for k in state["state_dict"]}
    if saved != want:
        raise CheckpointError(
            f"{ckpt}: checkpoint keys differ from the model's: missing {sorted(want - saved)[:5]}, "
            f"unexpected {sorted(saved - want)[:5]}"
        )
    read_shards(state, ckpt, "corrupt checkpoint shards", no_dist=True)
    model.load_state_dict({k.removeprefix("model."): v for k, v in state["state_dict"].items()}, strict=True)
    return TrainedRun(root, config, feature_map, model.eval(), metrics)
