"""One training run: Lightning Trainer + TorchRec strategy, early stopping, checkpoints, logs, metrics.json.

Layout of a run directory::

    RUN/config.yaml          the resolved config (written before training starts)
    RUN/checkpoints/         DCP checkpoint directories (best by val_auc, and last.ckpt)
    RUN/logs/                CSV metrics;  RUN/tb/ TensorBoard events
    RUN/metrics.json         val/test AUC and logloss of the best checkpoint, calibration, NE,
                             embedding_params, samples_per_sec, world_size, device ("cpu" or "cuda")

``resume=True`` continues from ``RUN/checkpoints/last.ckpt`` exactly where it stopped: the weights, both
optimisers' state, the loop counters and the data loader's position within the epoch. A config that changes the
model or the order of the training samples is refused by name (``CTRModule.check_checkpoint_spec``); the resumed
run's ``config.yaml`` is written only once its checkpoint was accepted, so a refused resume leaves it as it was.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypedDict

import lightning.pytorch as pl
import pyarrow.parquet as pq
import torch
import yaml
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger

from config.run import RunConfig
from config.strict import ConfigError, to_dict
from ctr.data.datamodule import CTRDataModule
from ctr.data.loader import ResumableLoader
from ctr.training.console import EpochLine, quiet_libraries
from ctr.training.memory import keep_freed_memory
from ctr.training.module import CTRModule
from ctr.training.plateau import PlateauDecay
from ctr.training.strategy import CheckpointError, TorchRecStrategy, complete_checkpoint, ray_strategy
from features.outputs import is_secondary_rank, owned_dir
from features.schema import FeatureMap

__all__ = ["LoaderProgress", "SaveConfig", "Throughput", "TrainOptions", "train"]

quiet_libraries()  # every rank and Ray worker imports this module


class LoaderProgress(Callback):
    """Keeps the train loader's ``batches_done`` equal to the batches trained this epoch (for resume)."""

    def on_train_batch_end(self, trainer: pl.Trainer, *args: Any) -> None:
        # at run time the training batch progress is a _ProcessedTracker (typed as its base class)
        done = trainer.fit_loop.epoch_loop.batch_progress.current.processed  # type: ignore[attr-defined]
        for loader in trainer.fit_loop._combined_loader.flattened if trainer.fit_loop._combined_loader else []:
            if isinstance(loader, ResumableLoader):
                loader.batches_done = done

    def on_train_epoch_start(self, trainer: pl.Trainer, *args: Any) -> None:
        self.on_train_batch_end(trainer)


class SaveConfig(Callback):
    """Writes ``RUN/config.yaml`` as training starts: on resume, after the checkpoint (and its spec) was accepted."""

    def __init__(self, config: RunConfig, out: Path) -> None:
        self.config = config
        self.out = out

    def write(self) -> None:
        (self.out / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))

    def on_train_start(self, trainer: pl.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            self.write()


class Throughput(Callback):
    """Training samples per second over all ranks (forward + backward + update), shown in the progress bar."""

    def __init__(self) -> None:
        self.samples = 0
        self.seconds = 0.0
        self._start = 0.0

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, *args: Any) -> None:
        self._start = time.perf_counter()

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, *args: Any
    ) -> None:
        if pl_module.device.type == "cuda":  # count the step's kernels, not just their launches
            torch.cuda.synchronize(pl_module.device)
        self.seconds += time.perf_counter() - self._start
        self.samples += int(batch.labels.numel()) * trainer.world_size
        if self.seconds > 0:
            pl_module.log("samples_per_sec", self.samples / self.seconds, prog_bar=True, rank_zero_only=True)

    @property
    def samples_per_sec(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else float("nan")


def _trainer(
    config: RunConfig, out: Path, nproc: int, callbacks: list[Callback], *, fitting: bool, on_ray: bool = False
) -> pl.Trainer:
    t = config.trainer
    plugins: list[Any] = []
    if on_ray:  # a worker of a Ray Train TorchTrainer: Ray owns the processes and the process group
        from ray.train.lightning import RayLightningEnvironment

        plugins.append(RayLightningEnvironment())  # type: ignore[no-untyped-call]
    trainer = pl.Trainer(
        accelerator="gpu" if torch.cuda.is_available() else "cpu",
        devices="auto" if on_ray else nproc,
        strategy=ray_strategy() if on_ray else TorchRecStrategy(),
        plugins=plugins or None,
        max_epochs=t.max_epochs,
        precision=t.precision,
        gradient_clip_val=t.gradient_clip,
        limit_train_batches=t.limit_train_batches,
        use_distributed_sampler=False,
        num_sanity_val_steps=0,
        enable_model_summary=False,
        enable_progress_bar=True,  # EpochLine: one line per epoch (and a bar over its batches if asked)
        log_every_n_steps=t.log_every_n_steps,
        logger=[CSVLogger(out, name="logs"), TensorBoardLogger(out, name="tb")] if fitting else False,
        callbacks=callbacks,
        default_root_dir=out,
    )
    if on_ray:
        from ray.train.lightning import prepare_trainer

        trainer = prepare_trainer(trainer)
    return trainer


def _check_rows_per_process(path: str, fm: FeatureMap, nproc: int) -> None:
    """Every process needs at least one row of the training and validation splits (the per-process batch
    shrinks down to ``rows // nproc``, see ``CTRDataModule``); refuse fewer before any process starts."""
    if nproc == 1:
        return
    for split in ("train", "valid"):
        rows = sum(pq.ParquetFile(Path(path) / p).metadata.num_rows for p in fm.splits.get(split, ()))
        if rows < nproc:
            raise ConfigError(
                f"--nproc {nproc}: the {split} split of {path} has {rows} rows, fewer than one per process; "
                f"use --nproc {max(rows, 1)} or more data"
            )


class TrainOptions(TypedDict, total=False):
    """The options of :func:`train` (and of :func:`ctr.runs.train_run`, which passes them on)."""

    nproc: int
    resume: bool
    on_ray: bool
    callbacks: Sequence[Callback]


def train(
    module: CTRModule,
    out: Path,
    *,
    nproc: int = 1,
    resume: bool = False,
    on_ray: bool = False,
    callbacks: Sequence[Callback] = (),
) -> dict[str, Any]:
    """Fit ``module`` (its config says how), then evaluate the best checkpoint on valid and test; returns (and
    writes) ``metrics.json``. :func:`ctr.runs.train_run` builds the module a config asks for and calls this.

    ``out`` is created, or must be empty or a run folder of the same command (:func:`features.outputs.owned_dir`),
    and is locked while training.
    ``on_ray``: this process is one worker of a Ray Train ``TorchTrainer`` (see :mod:`pipelines.ray_train`),
    whose driver holds the folder.
    ``callbacks``: more Lightning callbacks, called after the platform's own (so after :class:`Throughput` has
    stopped its clock for a batch: what they do at a batch's end is not counted in ``samples_per_sec``).
    """
    if on_ray:
        return _fit(module, out, nproc=nproc, resume=resume, on_ray=on_ray, callbacks=callbacks)
    with owned_dir(out, module.command):
        return _fit(module, out, nproc=nproc, resume=resume, on_ray=on_ray, callbacks=callbacks)


def _fit(
    module: CTRModule, out: Path, *, nproc: int, resume: bool, on_ray: bool, callbacks: Sequence[Callback]
) -> dict[str, Any]:
    config = module.config
    pl.seed_everything(config.trainer.seed, workers=True, verbose=False)
    if config.trainer.threads is not None:  # Lightning reads OMP_NUM_THREADS for every rank it starts
        os.environ["OMP_NUM_THREADS"] = str(config.trainer.threads)
        torch.set_num_threads(config.trainer.threads)
    if config.trainer.keep_freed_memory:
        keep_freed_memory()
    fm = FeatureMap.load(config.data.path)
    if not on_ray:
        _check_rows_per_process(config.data.path, fm, nproc)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    if resume and complete_checkpoint(last) is None:
        raise CheckpointError(f"{last}: nothing to resume (no complete checkpoint in {ckpt_dir})")
    if not resume and ckpt_dir.exists() and any(ckpt_dir.iterdir()):
        raise CheckpointError(f"{ckpt_dir}: the run directory has checkpoints; pass --resume or use a new --out")
    save_config = SaveConfig(config, out)
    if not resume and not is_secondary_rank():  # ranks > 0 re-run the command: rank 0 holds (and may clean) out
        save_config.write()

    checkpoint = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor="val_auc", mode="max", save_top_k=1)
    last_checkpoint = ModelCheckpoint(  # last.ckpt at every epoch end and every N steps (for resume)
        dirpath=ckpt_dir, save_top_k=0, save_last=True, every_n_train_steps=config.trainer.checkpoint_every_n_steps
    )
    throughput = Throughput()
    own: list[Callback] = [
        save_config,
        LoaderProgress(),
        throughput,
        EarlyStopping(monitor="val_auc", mode="max", patience=config.trainer.patience),
        checkpoint,
        last_checkpoint,
    ]
    if config.optim.scheduler == "plateau":
        own.append(PlateauDecay(config.optim.plateau_factor, config.optim.min_lr, restore=config.optim.plateau_restore))
    own.append(EpochLine(bar=config.trainer.progress_bar))
    data = CTRDataModule(config.data, transform=module.transform_split)
    trainer = _trainer(config, out, nproc, [*own, *callbacks], fitting=True, on_ray=on_ray)
    started = time.perf_counter()
    trainer.fit(module, data, ckpt_path=str(last) if resume else None)
    fit_seconds = time.perf_counter() - started

    best = checkpoint.best_model_path or str(last)
    module.final_metrics = {}
    loggers, trainer.loggers = trainer.loggers, []  # the best epoch's validation is already in the logs
    trainer.validate(module, data, ckpt_path=best, verbose=False)
    trainer.loggers = loggers
    trainer.test(module, data, ckpt_path=best, verbose=False)
    m = module.final_metrics
    metrics: dict[str, Any] = {
        "val_auc": m["val_auc"],
        "val_logloss": m["val_logloss"],
        "test_auc": m["test_auc"],
        "test_logloss": m["test_logloss"],
        "test_calibration": m["test_calibration"],
        "test_ne": m["test_ne"],
        "embedding_params": module.embedding_params,
        "samples_per_sec": throughput.samples_per_sec,
        "fit_seconds": fit_seconds,
        "epochs": trainer.current_epoch,
        "global_step": trainer.global_step,
        "best_checkpoint": str(Path(best).relative_to(out)) if Path(best).is_relative_to(out) else best,
        "world_size": trainer.world_size,
        "device": trainer.strategy.root_device.type,
        "model": config.model.name,
    }
    if "test_gauc" in m:
        metrics["test_gauc"] = m["test_gauc"]
    metrics = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}
    metrics |= module.finish(out, trainer.world_size)
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
