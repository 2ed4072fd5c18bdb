"""``trainer.gradient_clip``: the dense gradients the optimiser steps with have at most that norm."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import ctr.training.train
from ctr.runs import train_run
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic


class _GradNorms(Callback):
    """The total norm of the dense gradients after each training step (the optimiser has stepped with them)."""

    def __init__(self) -> None:
        self.norms: list[float] = []

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        grads = [p.grad for p in pl_module.dense_parameters() if p.grad is not None]
        self.norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_gradient_clip_bounds_the_dense_gradient_norm(
    precision: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = tmp_path / "synth.tsv"
    write_synthetic(4000, raw, seed=3)
    prepare(builtin_spec("criteo"), [raw], tmp_path / "data", PrepareOptions(progress=False, min_count=5))
    norms: dict[str, list[float]] = {}
    trainer_cls = ctr.training.train.pl.Trainer
    for clip in ("null", "0.01"):
        probe = _GradNorms()
        monkeypatch.setattr(
            ctr.training.train.pl,
            "Trainer",
            lambda *a, probe=probe, **k: trainer_cls(*a, **{**k, "callbacks": [*k["callbacks"], probe]}),
        )
        sets = ["trainer.progress_bar=false", "model.mlp=[32]", "trainer.max_epochs=1", "data.batch_size=256"]
        sets += [f"trainer.gradient_clip={clip}", f"trainer.precision={precision}", "trainer.limit_train_batches=5"]
        train_run(load_run_config(None, sets, data=str(tmp_path / "data"), model="deepfm"), tmp_path / f"run-{clip}")
        norms[clip] = probe.norms
    assert len(norms["0.01"]) == 5
    assert min(norms["null"]) > 0.05, norms["null"]  # unclipped, the norms are well above the bound
    assert max(norms["0.01"]) <= 0.01 * (1 + 1e-4), norms["0.01"]
