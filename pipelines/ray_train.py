"""Distributed training through Ray Train: a ``TorchTrainer`` whose workers each run ``ctr.runs.train``.

Ray starts ``workers`` worker processes (on one machine or across a cluster), creates their process group
(gloo on CPU, NCCL with GPUs) and sets rank and world size; each worker runs the same Lightning fit as
``ctr train`` with ``RayTorchRecStrategy`` (TorchRec's DMP sharding, DCP checkpoints of every rank's shards)
and reports its final metrics to Ray. The run directory must be on storage every worker can write (one
machine, or a shared volume on a cluster); rank 0 writes ``metrics.json`` as usual.

Connects to the cluster at ``address`` (or ``RAY_ADDRESS``, as inside ``ray job submit``), else starts a local
Ray on 127.0.0.1 and stops it afterwards.

Example:
    >>> train_on_ray(config, Path("runs/deepfm"), workers=2)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from config.run import RunConfig
from config.strict import from_dict, to_dict
from features.outputs import owned_dir

__all__ = ["train_on_ray"]


def _worker_loop(loop_config: dict[str, Any]) -> None:
    import ray.train

    from config.run import RunConfig
    from ctr.runs import train_run

    config = from_dict(RunConfig, loop_config["config"])
    metrics = train_run(config, Path(loop_config["out"]), resume=loop_config["resume"], on_ray=True)
    ray.train.report({k: v for k, v in metrics.items() if isinstance(v, int | float)})


def train_on_ray(
    config: RunConfig, out: Path, *, workers: int, resume: bool = False, address: str | None = None
) -> dict[str, Any]:
    """Train ``config`` into ``out`` with ``workers`` Ray Train workers; returns ``metrics.json``."""
    from ctr.runs import command_of

    if workers < 1:
        raise ValueError(f"train_on_ray needs at least one worker, got {workers}")
    out = out.resolve()
    with owned_dir(out, command_of(config)):  # the workers write into it; this driver holds it
        return _fit_on_ray(config, out, workers=workers, resume=resume, address=address)


def _fit_on_ray(config: RunConfig, out: Path, *, workers: int, resume: bool, address: str | None) -> dict[str, Any]:
    import ray
    import torch
    from ray.train import RunConfig as RayRunConfig
    from ray.train import ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    started = False
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"  # "local": a new Ray, never a stray one
        kwargs: dict[str, Any] = {"address": address, "log_to_driver": True}
        if address == "local":
            kwargs |= {"include_dashboard": False, "_node_ip_address": "127.0.0.1"}
        ray.init(**kwargs)
        started = True
    try:
        gpu = torch.cuda.is_available()
        trainer = TorchTrainer(
            _worker_loop,
            train_loop_config={"config": to_dict(config), "out": str(out), "resume": resume},
            torch_config=TorchConfig(backend="nccl" if gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=workers, use_gpu=gpu),
            run_config=RayRunConfig(name="ctr-train", storage_path=str(out / "ray")),
        )
        trainer.fit()
    finally:
        if started:
            ray.shutdown()
    metrics: dict[str, Any] = json.loads((out / "metrics.json").read_text())
    return metrics
