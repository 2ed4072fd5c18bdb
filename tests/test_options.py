"""Options the README documents, each with a check that fails if the option were ignored (issue #21, item 6):
``optim.dense=adamw`` with ``optim.weight_decay``, ``optim.scheduler=cosine``, ``optim.sparse=adagrad``, early
stopping by ``trainer.patience``, and ``ctr prepare --shard-rows``. On 3,000 planted rows (``tiny``)."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import polars as pl
import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from ctr.runs import train_run
from ctr.training.defaults import load_run_config
from pipelines.cli import main

FAST = ["trainer.progress_bar=false", "model.mlp=[16]", "model.embedding_dim=8", "trainer.threads=1"]


def test_adamw_weight_decay_cosine_schedule_and_adagrad_tables_are_what_the_run_trains_with(
    tiny: Path, tmp_path: Path
) -> None:
    sets = [*FAST, "trainer.max_epochs=3", "trainer.patience=3", "data.batch_size=512", "optim.lr=0.01"]
    sets += ["optim.dense=adamw", "optim.weight_decay=0.1", "optim.scheduler=cosine", "optim.sparse=adagrad"]
    metrics = train_run(load_run_config(None, sets, data=str(tiny), model="deepfm"), tmp_path / "run")
    assert metrics["epochs"] == 3
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    meta = torch.load(last / "lightning_meta.pt", weights_only=True)
    (group,) = meta["optimizer_states"][0]["param_groups"]
    assert group["decoupled_weight_decay"] is True and group["weight_decay"] == 0.1  # AdamW, not Adam
    (cosine,) = meta["lr_schedulers"]
    assert cosine["T_max"] == 3 and cosine["last_epoch"] == 3
    # cosine annealing over max_epochs: lr_e = lr_0 (1 + cos(pi e / T)) / 2 after e epochs
    assert group["lr"] == pytest.approx(0.01 * (1 + math.cos(math.pi * 3 / 3)) / 2, abs=1e-12)
    # Adagrad keeps a sum of squares per element, row-wise Adagrad one per row: the table's state is 2-D
    state = FileSystemReader(str(last)).read_metadata().state_dict_metadata
    table = "sparse_arch.ebc.embedding_bags.t_C1.weight"
    weight = state[f"state_dict.model.{table}"].size  # type: ignore[union-attr]
    optimiser = {k.rsplit(".", 1)[1]: v.size for k, v in state.items() if k.startswith(f"fused_optim.state.{table}.")}  # type: ignore[union-attr]
    assert list(optimiser.values()) == [weight], optimiser


def _val_aucs(run: Path) -> list[float]:
    """Each epoch's validation AUC, from the run's CSV log."""
    rows = csv.DictReader(next((run / "logs").rglob("metrics.csv")).open())
    return [float(r["val_auc"]) for r in rows if r.get("val_auc")]


def test_early_stopping_ends_the_run_patience_epochs_after_its_best_validation_auc(tiny: Path, tmp_path: Path) -> None:
    # a table learning rate that overfits 2.4k rows within a few epochs; no learning-rate decay to slow it
    sets = [*FAST, "trainer.max_epochs=8", "data.batch_size=256", "optim.sparse_lr=0.5", "optim.scheduler=none"]
    sets.append("model.init_std=null")  # TorchRec's uniform start: overfits sooner than the default small one
    # and a fast dense rate: at the default 3e-3 the log1p numbers keep improving the validation AUC past 8 epochs
    sets.append("optim.lr=0.03")
    for patience in (1, 2):
        run = tmp_path / f"p{patience}"
        metrics = train_run(
            load_run_config(None, [*sets, f"trainer.patience={patience}"], data=str(tiny), model="fm"), run
        )
        aucs = _val_aucs(run)
        best = max(range(len(aucs)), key=lambda e: (aucs[e], -e))  # the first epoch with the highest AUC
        # the run stops after `patience` epochs without a higher AUC than the best, before max_epochs
        assert metrics["epochs"] == len(aucs) == best + 1 + patience < 8, (patience, aucs)


def test_prepare_shard_rows_cuts_each_split_into_shards_of_at_most_n_rows(tiny: Path, tmp_path: Path) -> None:
    raw = tiny.parent / "synth.tsv"  # the 3,000 rows `tiny` was prepared from (default shards, min-count 10)
    out = tmp_path / "sharded"
    args = ["prepare", "--dataset", "criteo", "--input", str(raw), "--out", str(out), "--min-count", "10"]
    main([*args, "--shard-rows", "500", "--quiet"])
    for split in ("train", "valid", "test"):
        whole = pl.read_parquet(tiny / split / "*.parquet")
        shards = sorted((out / split).glob("*.parquet"))
        sizes = [pl.read_parquet(s).height for s in shards]
        assert len(shards) == max(1, math.ceil(whole.height / 500)) and all(n <= 500 for n in sizes), sizes
        assert pl.concat([pl.read_parquet(s) for s in shards]).equals(whole)  # the same rows, in the same order
