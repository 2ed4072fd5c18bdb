"""The OptEmbed supernet under Lightning: a ``CTRModule`` whose model prunes rows and samples dimensions.

The base model gets a ``field_transform`` of :class:`~ctr.optembed.supernet.RowPruning` followed by
:class:`~ctr.optembed.supernet.DimensionSampler` (optional, for OptEmbed-E). The loss adds ``alpha * sum(exp(-t))``.
The thresholds stay out of the dense optimiser: after every backward pass they take a plain SGD step of
their own (``threshold_lr``, no momentum, no weight decay), as the method prescribes. DDP (inside DMP) has
already averaged their gradients over the ranks by then.

Example:
    >>> cfg = load_run_config(None, ["supernet.alpha=1e-4"], data="prepared", model="deepfm")  # doctest: +SKIP
    >>> trainer.fit(SupernetModule(cfg, feature_map), CTRDataModule(cfg.data))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch.trainer.states import TrainerFn
from torch import nn
from torch.distributed._shard.sharded_tensor.api import ShardedTensor
from torchrec.datasets.utils import Batch
from torchrec.distributed import DistributedModelParallel

from config.run import RunConfig, SupernetConfig
from config.strict import ConfigError
from ctr.models.zoo import CTRModel
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from ctr.optembed.supernet import DimensionSampler, RowPruning, row_keep_mask
from ctr.optembed.threshold_control import PULL_BACK, control_step
from ctr.tables.names import table_weight_key
from ctr.training.module import CTRModule
from features.schema import FeatureMap

__all__ = ["MAX_RELATIVE_STEP", "SupernetModule", "field_pressure", "find_pruning", "model_row_masks"]

MAX_RELATIVE_STEP = 0.25  # the most one batch moves a relative threshold (the surrogate's window is +-1)


class SupernetModule(CTRModule):
    command: ClassVar[str] = "ctr supernet"

    def __init__(self, config: RunConfig, feature_map: FeatureMap) -> None:
        if config.supernet is None:
            raise ConfigError("SupernetModule needs a `supernet` section in the run config")
        if config.model.name == "lr":
            raise ConfigError("the OptEmbed supernet needs field embeddings; model 'lr' has none")
        config.model.require_float32_tables("the OptEmbed supernet")
        config.model.require_multiples_of_4("the OptEmbed supernet")
        super().__init__(config, feature_map)
        self.supernet_config: SupernetConfig = config.supernet
        # found once in the sharded model; a plain list so that nn.Module does not register it a second time
        self._pruning_found: list[RowPruning] = []

    def finish(self, out: Path, world_size: int) -> dict[str, Any]:
        """The rows kept by the learned thresholds, at full dims (the search picks dims), as ``out/plan.json``."""
        if world_size != 1 or self.layout is not None:
            return {}
        plan = self.plan()
        plan.save(out / "plan.json")
        return {"row_sparsity": plan.row_sparsity, "rows_kept": sum(f.rows_kept for f in plan.fields)}

    def build_unsharded(self, device: torch.device) -> CTRModel:
        model = super().build_unsharded(device)
        assert model.sparse_arch is not None
        steps: list[nn.Module] = []
        if self.supernet_config.prune_rows:
            cfg = self.supernet_config
            fields = model.sparse_arch.num_fields
            weights = field_pressure(self.feature_map) if cfg.pressure == "by_rows" else None
            controlled = cfg.hold_auc is not None
            prunable = [f.cardinality > cfg.small_field_rows for f in self.feature_map.categorical]
            pruning = RowPruning(
                fields, device=device, relative=cfg.relative, controlled=controlled, weights=weights, prunable=prunable
            )
            steps.append(pruning)
        if self.supernet_config.sample_dims:
            steps.append(DimensionSampler(model.sparse_arch.embedding_dim, self.supernet_config.candidates))
        model.field_transform = nn.Sequential(*steps)
        return model

    @property
    def pruning(self) -> RowPruning | None:
        """The model's :class:`RowPruning` (looked up once, not on every step); ``None`` without row pruning."""
        if not self.supernet_config.prune_rows:
            return None
        if not self._pruning_found:
            self._pruning_found += [m for m in self._dmp().modules() if isinstance(m, RowPruning)]
        if len(self._pruning_found) != 1:
            raise RuntimeError(f"expected one RowPruning in the supernet, found {len(self._pruning_found)}")
        return self._pruning_found[0]

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        pruning = self.pruning
        if pruning is None:
            return loss
        self.log("threshold_mean", pruning.thresholds.detach().mean(), prog_bar=False)
        return loss + pruning.regularizer(self.supernet_config.effective_alpha)

    def on_after_backward(self) -> None:
        pruning = self.pruning
        t = pruning.thresholds if pruning is not None else None
        if t is not None and t.grad is not None:
            with torch.no_grad():
                step = self.threshold_step() * t.grad
                if self.supernet_config.relative:  # no batch moves a threshold across the surrogate's window
                    step = step.clamp(-MAX_RELATIVE_STEP, MAX_RELATIVE_STEP)
                t.sub_(step)
            t.grad = None

    def on_validation_epoch_end(self) -> None:
        super().on_validation_epoch_end()
        tolerance, pruning = self.supernet_config.hold_auc, self.pruning
        if tolerance is None or pruning is None or self.trainer.state.fn != TrainerFn.FITTING:
            return
        val_auc = float(self.final_metrics["val_auc"])
        self._best_val_auc = max(val_auc, getattr(self, "_best_val_auc", val_auc))
        reference = self.supernet_config.reference_auc
        step = control_step(
            val_auc, reference if reference is not None else self._best_val_auc, tolerance, int(pruning.alpha_log2)
        )
        with torch.no_grad():
            pruning.alpha_log2.fill_(step.log2_scale)
            if step.pull_back:
                pruning.thresholds.mul_(PULL_BACK)
        self.log("alpha", self.supernet_config.effective_alpha * 2.0**step.log2_scale)

    def threshold_step(self) -> float:
        """The thresholds' SGD step: ``threshold_lr``, divided by the steps of an epoch in the relative form
        (so that an epoch moves them as far, whatever the number of rows or the batch size)."""
        lr = self.supernet_config.effective_threshold_lr
        if not self.supernet_config.relative:
            return lr
        steps = self.trainer.num_training_batches
        return lr / steps if math.isfinite(steps) and steps > 0 else lr

    def dense_parameters(self) -> list[nn.Parameter]:
        """As ``CTRModule``'s, minus the thresholds (they take :meth:`on_after_backward`'s SGD step)."""
        pruning = self.pruning
        if pruning is None:
            return super().dense_parameters()
        return [p for p in super().dense_parameters() if p is not pruning.thresholds]

    def row_masks(self) -> dict[str, torch.Tensor]:
        """Per field, which table rows survive the learned threshold (the frozen mask of the search stage).

        Reads every table whole, so it needs all shards local: one process, or table-wise sharding gathered
        first (the multi-rank gather is not implemented: the search stage reads the checkpoint instead,
        :func:`ctr.optembed.supernet_masks`).
        """
        return model_row_masks(self._dmp(), self.feature_map, self.pruning, unwrap=_whole)

    def plan(self, dims: dict[str, int] | None = None) -> EmbeddingPlan:
        """The plan of kept rows (from :meth:`row_masks`) and ``dims`` per field (default: the full dim)."""
        full = self.config.model.embedding_dim
        masks = self.row_masks()
        fields = tuple(
            FieldPlan(name, (dims or {}).get(name, full), int(mask.sum()), int(mask.numel()))
            for name, mask in masks.items()
        )
        return EmbeddingPlan(self.feature_map.content_hash, full, fields)


def field_pressure(fm: FeatureMap) -> list[float]:
    """``supernet.pressure: by_rows``: each categorical field's weight in the threshold regulariser,
    ``min(1, rows_f / mean rows per field)``.

    Example:
        >>> from features.schema import CategoricalField
        >>> fm = FeatureMap(
        ...     dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        ...     categorical=(CategoricalField("big", "vocab", 1000), CategoricalField("small", "vocab", 10)),
        ... )
        >>> field_pressure(fm)
        [1.0, 0.0198...]
    """
    rows = [f.cardinality for f in fm.categorical]
    mean = sum(rows) / len(rows)
    return [min(1.0, r / mean) for r in rows]


def model_row_masks(
    model: nn.Module,
    fm: FeatureMap,
    pruning: RowPruning | None,
    unwrap: Callable[[torch.Tensor], torch.Tensor] = lambda t: t.detach().cpu(),
) -> dict[str, torch.Tensor]:
    """Per categorical field, the rows whose embedding's L1 norm exceeds the field's learned threshold.

    All rows without pruning. The norm leaves out the first-order columns of FM and DeepFM's tables.
    """
    state = model.state_dict()
    inner = model.module if isinstance(model, DistributedModelParallel) else model
    assert isinstance(inner, CTRModel) and inner.sparse_arch is not None, "a supernet has field embeddings"
    dim = inner.sparse_arch.embedding_dim
    masks: dict[str, torch.Tensor] = {}
    thresholds = pruning.effective_thresholds().cpu() if pruning is not None else None
    for i, field in enumerate(fm.categorical):
        weight = unwrap(state[table_weight_key(field.name)])
        weight = weight[:, :dim]  # not FM/DeepFM's first-order columns
        if thresholds is None:
            masks[field.name] = torch.ones(weight.shape[0], dtype=torch.bool)
        else:
            masks[field.name] = row_keep_mask(weight, float(thresholds[i]))
    return masks


def find_pruning(model: nn.Module) -> RowPruning | None:
    """The :class:`RowPruning` of a (plain) supernet model, if it has one."""
    found = [m for m in model.modules() if isinstance(m, RowPruning)]
    if len(found) > 1:
        raise RuntimeError(f"expected at most one RowPruning in the supernet, found {len(found)}")
    return found[0] if found else None


def _whole(value: torch.Tensor) -> torch.Tensor:
    """A full table from a plain tensor or a ShardedTensor whose shards are all local."""
    if not isinstance(value, ShardedTensor):
        return value.detach().cpu()
    rows, cols = value.size()
    out = torch.full((rows, cols), float("nan"))
    for shard in value.local_shards():
        r0, c0 = shard.metadata.shard_offsets
        r, c = shard.metadata.shard_sizes
        out[r0 : r0 + r, c0 : c0 + c] = shard.tensor.detach().cpu()
    if torch.isnan(out).any():
        raise NotImplementedError("row masks of tables sharded across ranks need a gather (not implemented yet)")
    return out
