"""The CUDA path: TorchRec's CUDA sharders over FBGEMM's CUDA kernels, NCCL, and the plans TorchRec offers on GPUs.

These need a CUDA GPU (``make test-gpu``); elsewhere they are skipped, and say so. With one GPU every plan puts
all of a table on that GPU: ``row_wise`` and ``table_row_wise`` make one row block, ``column_wise`` still cuts
the rows into ``trainer.column_shard_dim``-wide column blocks. The rest of the suite runs on a GPU machine too
(training picks the GPU when there is one), except the 2-process tests, which would need two GPUs there.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.distributed as dist
from torch.distributed._shard.sharded_tensor.api import ShardedTensor

from ctr.data.datamodule import CTRDataModule
from ctr.runs import build_module
from ctr.tables.embedding import LINEAR_DIM
from ctr.tables.seeded_init import is_table
from ctr.training.defaults import load_run_config
from ctr.training.metrics import auc
from ctr.training.strategy import TorchRecStrategy
from features.schema import FeatureMap
from tests.test_train import FAST, _cli, _restored

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

PLANS: dict[str, list[str]] = {
    "table_wise": [],
    "column_wise": ["trainer.column_shard_dim=4"],
    "row_wise": [],
    "table_row_wise": [],
}
WIDTH = 8 + LINEAR_DIM  # DeepFM's rows under FAST: the embedding, then the first-order columns


class _Placement(pl.Callback):
    """What the sharded model looks like: process-group backend, plan, shard devices, and which tables moved."""

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.before = {k: [s.tensor.cpu().clone() for s in v.local_shards()] for k, v in self._tables(pl_module)}

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.backend = dist.get_backend()
        plan = pl_module.model.plan.plan  # type: ignore[union-attr]
        self.plan = {t: (p.sharding_type, p.compute_kernel) for params in plan.values() for t, p in params.items()}
        tables = dict(self._tables(pl_module))
        self.devices = {str(s.tensor.device) for v in tables.values() for s in v.local_shards()}
        self.rows = {k: v.size()[0] for k, v in tables.items()}
        self.blocks = {k: sorted(tuple(s.metadata.shard_sizes) for s in v.local_shards()) for k, v in tables.items()}
        self.moved = {
            k: any(not torch.equal(a, s.tensor.cpu()) for a, s in zip(self.before[k], v.local_shards(), strict=True))
            for k, v in tables.items()
        }

    @staticmethod
    def _tables(pl_module: pl.LightningModule) -> list[tuple[str, ShardedTensor]]:
        state = pl_module.model.state_dict()  # type: ignore[union-attr]
        return [(k, v) for k, v in state.items() if is_table(k) and isinstance(v, ShardedTensor)]


@pytest.mark.parametrize("sharding", list(PLANS))
def test_a_plan_puts_every_table_on_the_gpu_with_fused_cuda_kernels_under_nccl(
    sharding: str, small: Path, tmp_path: Path
) -> None:
    sets = [*FAST, f"trainer.sharding={sharding}", *PLANS[sharding]]
    config = load_run_config(None, sets, data=str(small), model="deepfm")
    module = build_module(config, FeatureMap.load(small))
    seen = _Placement()
    trainer = pl.Trainer(
        accelerator="gpu",
        devices=1,
        strategy=TorchRecStrategy(),
        max_steps=5,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        callbacks=[seen],
    )
    trainer.fit(module, CTRDataModule(config.data, transform=module.transform_split))
    assert seen.backend == "nccl"
    assert set(seen.plan.values()) == {(sharding, "fused")}, seen.plan
    assert seen.devices == {"cuda:0"}
    assert len(seen.blocks) == len(seen.plan) > 0
    for key, blocks in seen.blocks.items():
        rows = seen.rows[key]
        expected = [(rows, 4)] * (WIDTH // 4) if sharding == "column_wise" else [(rows, WIDTH)]
        assert blocks == expected, (key, blocks)
    assert all(seen.moved.values()), [k for k, m in seen.moved.items() if not m]  # the fused optimiser ran on the GPU


def test_every_plan_learns_the_same_weights_on_the_gpu_and_its_checkpoint_restores_on_the_cpu(
    small: Path, tmp_path: Path
) -> None:
    """One epoch with SGD on the tables (no optimiser state, so column blocks update exactly as whole rows):
    the plans must learn the same weights, and the checkpoint written from the GPU must load into a CPU model
    (``ctr.runs.load_run``) that predicts what the run measured."""
    args = ["train", "--data", str(small), "--model", "deepfm"]
    sets = [*FAST, "data.batch_size=512", "trainer.max_epochs=1", "optim.sparse=sgd", "optim.sparse_lr=1.0"]
    args += [x for s in sets for x in ("--set", s)]
    for name, extra in PLANS.items():
        plan = [x for s in [f"trainer.sharding={name}", *extra] for x in ("--set", s)]
        assert _cli([*args, *plan, "--out", str(tmp_path / name)]).wait(timeout=600) == 0, name

    metrics = {name: json.loads((tmp_path / name / "metrics.json").read_text()) for name in PLANS}
    print({name: round(m["test_auc"], 4) for name, m in metrics.items()})
    state, logits, labels = _restored(tmp_path / "table_wise")
    assert metrics["table_wise"]["device"] == "cuda" and metrics["table_wise"]["world_size"] == 1
    test_auc = metrics["table_wise"]["test_auc"]
    assert test_auc > 0.54, test_auc  # it learns (on the CPU, the same run reaches 0.575)
    assert abs(float(auc(logits, labels)) - test_auc) < 1e-4  # the CPU restore predicts what the GPU ran
    for name in ("column_wise", "row_wise", "table_row_wise"):
        other_state, other_logits, _ = _restored(tmp_path / name)
        assert metrics[name]["device"] == "cuda"
        assert state.keys() == other_state.keys()
        for k, v in state.items():  # tables and dense layers (bit for bit equal on CPU; GPU kernels may reorder sums)
            assert torch.allclose(v.float(), other_state[k].float(), rtol=0, atol=1e-4), (name, k)
        assert (logits - other_logits).abs().max() < 1e-3, (name, (logits - other_logits).abs().max())
