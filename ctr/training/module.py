"""The LightningModule: builds and shards the model, owns the loss, the optimiser groups and the metrics.

* ``configure_model`` builds the model on the meta device, attaches the fused embedding optimiser
  (``apply_optimizer_in_backward``: FBGEMM updates the rows inside backward), plans the sharding with
  constraints from the config and wraps everything in ``DistributedModelParallel``
  (:func:`ctr.training.sharding.shard`: the dense modules under DDP only with several processes).
* ``configure_optimizers`` returns the dense optimiser only (Adam/AdamW), plus the LR schedule.
* Loss: BCE with logits. A non-finite loss on any rank stops the run before its backward pass touches the
  weights, so the last checkpoint stays the last good one.
* Metrics (AUC, logloss, calibration, NE, gAUC) are computed on the predictions of *all* ranks.

Example:
    >>> module = CTRModule(run_config, feature_map)  # doctest: +SKIP
    >>> trainer = lightning.Trainer(strategy=TorchRecStrategy(), use_distributed_sampler=False)  # doctest: +SKIP
    >>> trainer.fit(module, CTRDataModule(run_config.data))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import lightning.pytorch as pl
import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torchrec.datasets.utils import Batch
from torchrec.distributed import DistributedModelParallel
from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology
from torchrec.optim.apply_optimizer_in_backward import apply_optimizer_in_backward
from torchrec.optim.optimizers import in_backward_optimizer_filter

from config.run import RunConfig
from config.strict import ConfigError, to_dict
from ctr.data.columnar import ColumnarSplit
from ctr.models.zoo import CTRModel, build_model
from ctr.tables.embedding import FOLDED_MODELS, LINEAR_DIM, embedding_params
from ctr.tables.layout import TableLayout
from ctr.tables.methods import build_layout
from ctr.tables.optimizers import check_device, table_optimizer
from ctr.tables.seeded_init import reinitialize
from ctr.training.metrics import all_metrics
from ctr.training.row_l2 import RowL2
from ctr.training.sharding import shard
from ctr.training.strategy import CheckpointError
from features.schema import FeatureMap

__all__ = ["RESUME_FIXED", "CTRModule", "CpuRowWiseSharder", "NonFiniteLossError"]

# What decides which rows form each training batch, and in which order (with the world size and the feature map,
# which the spec also holds): the data loader resumes at a batch *index* of the checkpoint's order, so another
# value would skip or repeat samples. trainer.seed seeds the weights and every random stream of the run. A resume
# that changes one of them is refused by name. Everything else may change on resume: trainer.max_epochs,
# patience, progress_bar, threads, log_every_n_steps, checkpoint_every_n_steps, keep_freed_memory, precision,
# gradient_clip, sharding, column_shard_dim, group_field; data.eval_batch_size, data.num_workers, data.path (to
# data with the same feature map); optim.* but the sparse optimiser (its state is in the checkpoint).
RESUME_FIXED = ("data.batch_size", "data.seed", "data.shuffle", "trainer.limit_train_batches", "trainer.seed")


class CpuRowWiseSharder(EmbeddingBagCollectionSharder):  # type: ignore[misc]
    """TorchRec's EBC sharder, with the row-wise plans also offered on CPU (gloo).

    TorchRec 1.8 lists ``row_wise`` and ``table_row_wise`` for CUDA only, yet its CPU path (FBGEMM's CPU
    bucketisation, gloo's reduce-scatter) computes them correctly: lookups and fused row-wise Adagrad updates equal
    the table-wise plan's, checked in ``tests/test_train.py`` and docs/sharding.md.
    """

    def sharding_types(self, compute_device_type: str) -> list[str]:
        types: list[str] = super().sharding_types(compute_device_type)
        extra = ["row_wise", "table_row_wise"] if compute_device_type == "cpu" else []
        return types + [t for t in extra if t not in types]


class NonFiniteLossError(FloatingPointError):
    """The training loss became NaN or infinite."""


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(tree, Mapping):
        out: dict[str, Any] = {}
        for k, v in tree.items():
            out |= _flatten(v, f"{prefix}{k}.")
        return out
    return {prefix.rstrip("."): tree}


class CTRModule(pl.LightningModule):
    command: ClassVar[str] = "ctr train"  # the command whose run folder this module trains into (its marker)

    def __init__(self, config: RunConfig, feature_map: FeatureMap) -> None:
        super().__init__()
        self.config = config
        self.feature_map = feature_map
        self.save_hyperparameters({"config": to_dict(config), "feature_map_hash": feature_map.content_hash})
        self.model: nn.Module | None = None
        self._row_l2: RowL2 | None = None
        self._outputs: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]] = []
        self.final_metrics: dict[str, float] = {}
        tables = config.tables
        self.layout: TableLayout | None = None
        if tables is not None and tables.method != "full":
            self.layout = build_layout(tables, feature_map, config.model.embedding_dim)
        group = config.trainer.group_field
        if group is not None and group not in feature_map.sparse_names:
            raise ConfigError(f"trainer.group_field {group!r} is not a categorical field of the feature map")

    def finish(self, out: Path, world_size: int) -> dict[str, Any]:
        """After the best checkpoint's test: what this kind of run adds to ``metrics.json`` (and writes to ``out``)."""
        return {}

    # ------------------------------------------------------------------ model and sharding
    def build_unsharded(self, device: torch.device) -> CTRModel:
        """The plain model (subclasses such as the OptEmbed supernet wrap or replace it)."""
        return build_model(self.feature_map, self.config.model, device, self.layout)

    def transform_split(self, split: ColumnarSplit) -> ColumnarSplit:
        """What the data module applies to each loaded split: the table method's virtual ids, if any."""
        return self.layout.transform(split) if self.layout is not None else split

    @property
    def embedding_params(self) -> int:
        """Global embedding parameter count, from the table configs (not the local shards)."""
        return embedding_params(self.feature_map, self.config.model, self.layout)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        model = self.build_unsharded(torch.device("meta"))
        optim = self.config.optim
        device = self.trainer.strategy.root_device
        check_device(optim, device)
        sparse_cls, sparse_kwargs = table_optimizer(optim)
        tables: list[str] = []
        single = self._single_valued_features()
        regularised: dict[str, list[str]] = {}
        for ebc in model.embedding_modules():
            apply_optimizer_in_backward(sparse_cls, ebc.parameters(), dict(sparse_kwargs))
            tables += [t.name for t in ebc.embedding_bag_configs()]
            regularised |= {t.name: [f for f in t.feature_names if f in single] for t in ebc.embedding_bag_configs()}
        world = dist.get_world_size() if dist.is_initialized() else 1
        sharding = self.config.trainer.sharding
        split = self.config.trainer.column_shard_dim
        constraints = {t: ParameterConstraints(sharding_types=[sharding], min_partition=split) for t in tables}
        sharders: list[Any] = [EmbeddingBagCollectionSharder() if device.type == "cuda" else CpuRowWiseSharder()]
        planner = EmbeddingShardingPlanner(
            topology=Topology(world_size=world, compute_device=device.type), constraints=constraints
        )
        pg = dist.GroupMember.WORLD
        assert pg is not None, "TorchRecStrategy sets up the process group before configure_model"
        plan = planner.collective_plan(model, sharders, pg)
        self.model = shard(model, device, plan, sharders, world)  # no DDP around the dense modules for one process
        pads = model.sparse_arch.pad_columns() if model.sparse_arch is not None else {}
        # the same start for any world size or plan
        reinitialize(self.model, self.config.trainer.seed, pads, self.config.model.init_std)
        if optim.embedding_l2 > 0:
            self._row_l2 = RowL2(optim.embedding_l2, regularised)
            self._row_l2.attach(self.model)

    def _single_valued_features(self) -> set[str]:
        """The features the EBCs read whose bags hold exactly one id (the ones :class:`RowL2` regularises)."""
        fm = self.layout.feature_map(self.feature_map) if self.layout is not None else self.feature_map
        return {f.name for f in fm.categorical if not f.multi_valued}

    def _dmp(self) -> DistributedModelParallel:
        if not isinstance(self.model, DistributedModelParallel):
            raise RuntimeError("the model is not built yet: configure_model() runs inside a Trainer")
        return self.model

    def forward(self, batch: Batch) -> torch.Tensor:
        logits: torch.Tensor = self._dmp()(batch)
        return logits

    # ------------------------------------------------------------------ training
    def on_train_batch_start(self, batch: Batch, batch_idx: int) -> None:
        """Seed the global RNG from (trainer.seed, step): a step's random draws (the supernet's sampled dims,
        dropout) are the same in a run resumed from a checkpoint as in an uninterrupted one. Without this, a
        resumed run redrew them from the start of the seed's stream (issue #21: `ctr optembed` killed in the
        supernet ended with another plan)."""
        torch.manual_seed((self.config.trainer.seed * 1_000_003 + self.global_step) % (2**63))

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        logits = self(batch)
        loss = F.binary_cross_entropy_with_logits(logits, batch.labels)
        penalty = self._row_l2.pop() if self._row_l2 is not None else None
        if penalty is not None:
            self.log("embedding_l2_loss", penalty, batch_size=batch.labels.numel())
            loss = loss + penalty
        bad = not bool(torch.isfinite(loss))
        if self.trainer.strategy.reduce_boolean_decision(bad, all=False):
            raise NonFiniteLossError(
                f"training loss became {loss.item()} at global step {self.global_step} (epoch {self.current_epoch}); "
                "stopped before updating the weights, the last checkpoint is the last good one "
                "(try a smaller optim.lr or optim.sparse_lr, or trainer.gradient_clip)"
            )
        self.log("train_loss", loss, prog_bar=True, batch_size=batch.labels.numel())
        return loss

    def dense_parameters(self) -> list[nn.Parameter]:
        """What the dense optimiser updates: everything without a fused in-backward optimiser."""
        return [p for _, p in in_backward_optimizer_filter(self._dmp().named_parameters())]

    def configure_optimizers(self) -> Any:
        optim = self.config.optim
        cls = torch.optim.AdamW if optim.dense == "adamw" else torch.optim.Adam
        # fused: one kernel per parameter instead of a dozen (1 ms a step instead of 3-4 ms for DeepFM's MLP). Not
        # with gradient clipping: under bf16-mixed, Lightning refuses to clip for an optimiser that unscales itself.
        fused = self.config.trainer.gradient_clip is None
        opt = cls(self.dense_parameters(), lr=optim.lr, weight_decay=optim.weight_decay, fused=fused)
        if optim.scheduler in (
            "none",
            "plateau",
        ):  # plateau: ctr.training.plateau.PlateauDecay, a callback, sets the lrs
            return opt
        sched: torch.optim.lr_scheduler.LRScheduler
        if optim.scheduler == "step":
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=optim.gamma)
        else:
            sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=self.config.trainer.max_epochs)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}

    # ------------------------------------------------------------------ evaluation
    def _collect(self, batch: Batch) -> None:
        probs = torch.sigmoid(self(batch)).detach().float()
        group = self.config.trainer.group_field
        groups = batch.sparse_features[group].values().detach() if group is not None else None
        self._outputs.append((probs, batch.labels.detach().float(), groups))

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: Batch, batch_idx: int) -> None:
        self._collect(batch)

    def _gather(self, parts: list[torch.Tensor]) -> np.ndarray:
        local = torch.cat(parts) if parts else torch.zeros(0)
        if self.trainer.world_size > 1:
            gathered = self.all_gather(local)  # every rank evaluates the same number of rows
            assert isinstance(gathered, torch.Tensor)
            local = gathered.reshape(-1)
        return local.cpu().numpy()

    def _finish(self, prefix: str) -> None:
        probs = self._gather([o[0] for o in self._outputs])
        labels = self._gather([o[1] for o in self._outputs])
        groups = (
            self._gather([o[2] for o in self._outputs if o[2] is not None]) if self.config.trainer.group_field else None
        )
        self._outputs.clear()
        metrics = all_metrics(probs, labels, groups, prefix=prefix)
        self.final_metrics |= metrics
        self.log_dict(metrics, prog_bar=prefix == "val_", sync_dist=False)

    def on_validation_epoch_end(self) -> None:
        self._finish("val_")

    def on_test_epoch_end(self) -> None:
        self._finish("test_")

    # ------------------------------------------------------------------ checkpoints (see ctr.training.strategy)
    def _spec(self, *, resuming: bool = True) -> dict[str, Any]:
        model = to_dict(self.config.model)
        if model["table_dtype"] == "float32":  # the default: checkpoints written before the option still match
            del model["table_dtype"]
        spec = {
            "model": model,
            "tables": to_dict(self.config.tables) if self.config.tables is not None else None,
            "sparse_optimizer": self.config.optim.sparse,
            "feature_map_hash": self.feature_map.content_hash,
        }
        if self.config.model.name in FOLDED_MODELS:
            # FM/DeepFM checkpoints written before the first-order weights moved into the main tables lack this key
            # (their rows are narrower and their lin_ tables separate): refused by name, not by a shape error.
            spec["first_order_columns"] = LINEAR_DIM
        if self._has_batch_norm:
            # checkpoints written before the Linear layers before BatchNorm lost their (redundant) bias lack this
            # key: refused by name, not by a missing-key error
            spec["linear_bias_before_batch_norm"] = False
        if resuming:
            spec["world_size"] = self.trainer.world_size
            settings = _flatten(to_dict(self.config))
            spec |= {key: settings[key] for key in RESUME_FIXED}
        return spec

    @functools.cached_property
    def _has_batch_norm(self) -> bool:
        return any(isinstance(m, nn.BatchNorm1d) for m in self.build_unsharded(torch.device("meta")).modules())

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["ctr_spec"] = self._spec()

    def check_checkpoint_spec(self, meta: dict[str, Any], path: str, *, resuming: bool = True) -> None:
        """Refuse a checkpoint of another model config, optimiser or feature map; resuming, also of another world
        size or sample order (:data:`RESUME_FIXED`). ``resuming=False``: the weights are read for inference."""
        saved = meta.get("ctr_spec")
        if not isinstance(saved, dict):
            raise CheckpointError(f"{path}: checkpoint carries no spec (not written by this platform)")
        if not resuming:
            saved = {k: v for k, v in saved.items() if k not in ("world_size", *RESUME_FIXED)}
        want, have = _flatten(saved), _flatten(self._spec(resuming=resuming))
        keys = [k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]
        if keys:
            diff = "; ".join(f"{k}: checkpoint {want.get(k)!r}, this run {have.get(k)!r}" for k in keys)
            order = [k for k in keys if k in RESUME_FIXED]
            fixed = f" ({', '.join(order)}: fixed for a resumed run, train into a new --out to change it)"
            hint = fixed if order else ""
            raise CheckpointError(f"{path}: checkpoint does not match this run: {diff}{hint}")

    @property
    def table_lr(self) -> float:
        """The fused table optimiser's learning rate now."""
        lrs = {float(g["lr"]) for g in self._dmp().fused_optimizer.param_groups}
        if len(lrs) != 1:
            raise RuntimeError(f"the fused table optimisers disagree on the learning rate: {sorted(lrs)}")
        return lrs.pop()

    def set_table_lr(self, lr: float) -> None:
        """Set every fused table optimiser's learning rate (TorchRec passes it to FBGEMM on ``zero_grad``)."""
        fused = self._dmp().fused_optimizer
        for group in fused.param_groups:
            group["lr"] = lr
        fused.zero_grad()

    def fused_optimizer_state(self) -> dict[str, Any]:
        state: dict[str, Any] = self._dmp().fused_optimizer.state_dict()
        return state

    def load_fused_optimizer_state(self, state: dict[str, Any]) -> None:
        self._dmp().fused_optimizer.load_state_dict(state)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """DMP's own ``load_state_dict`` expects keys without the ``model.`` prefix (nn.Module's recursion skips it)."""
        sub = {k.removeprefix("model."): v for k, v in state_dict.items()}
        return self._dmp().load_state_dict(sub, strict=strict)
