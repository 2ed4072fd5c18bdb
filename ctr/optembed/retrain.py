"""Retraining an OptEmbed plan: the physically pruned, mixed-dimension table under the usual Lightning machinery.

:class:`RetrainModule` is a :class:`~ctr.training.module.CTRModule` over the *reduced* feature map and model config of a
:class:`~ctr.optembed.pruned.PrunedTables` (each field's kept rows, its searched dim, the supernet's padded width); the
data module remaps ids with :meth:`RetrainModule.transform_split`. After the usual sharded build, the weights
are initialised as ``retrain.init`` says:

* ``rewind``: the supernet's initial weights. Tables start as ``table_init`` of the full table under the
  supernet's seed, cut to the kept rows and the prefix columns; dense layers are reset under that seed, which
  draws exactly the supernet's initial dense weights (same shapes, same order).
* ``fresh``: a new draw (seed ``trainer.seed + 1``) of everything.
* ``inherit``: the trained supernet's weights (best checkpoint), cut the same way; its thresholds are dropped.

Example:
    >>> cfg = load_run_config(None, ["retrain.supernet=runs/sn", "retrain.plan=runs/search"], ...)  # doctest: +SKIP
    >>> trainer.fit(RetrainModule(cfg, fm), CTRDataModule(cfg.data, transform=module.transform_split))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import torch

from config.run import RetrainConfig, RunConfig
from config.strict import ConfigError
from ctr.data.columnar import ColumnarSplit
from ctr.optembed.module import SupernetModule
from ctr.optembed.pruned import PrunedTables
from ctr.tables.embedding import FOLDED_MODELS, LINEAR_DIM
from ctr.tables.names import field_of, is_linear
from ctr.tables.seeded_init import is_table, reinitialize, table_init, write_whole
from ctr.training.module import CTRModule
from ctr.training.restore import load_weights, read_run_config
from features.schema import FeatureMap

__all__ = ["RetrainModule"]


class RetrainModule(CTRModule):
    command: ClassVar[str] = "ctr retrain"

    def __init__(self, config: RunConfig, feature_map: FeatureMap) -> None:
        rc = config.retrain
        if rc is None or rc.supernet is None or rc.plan is None:
            raise ConfigError("retraining needs retrain.supernet (the supernet run) and retrain.plan (its plan dir)")
        if config.supernet is not None:
            raise ConfigError("a retraining run has no `supernet` section (the plan fixes rows and dims)")
        config.model.require_float32_tables("retraining")
        tables = PrunedTables.load(rc.plan, feature_map.content_hash)
        self.retrain_config: RetrainConfig = rc
        self.tables = tables
        self.source_feature_map = feature_map
        self._remaps = {name: tables.remap(name) for name in feature_map.sparse_names}
        reduced = tables.feature_map(feature_map)
        super().__init__(dataclasses.replace(config, model=tables.model_config(config.model)), reduced)

    def transform_split(self, split: ColumnarSplit) -> ColumnarSplit:
        """The data module's hook: a split of the full feature map, its ids remapped onto the kept rows."""
        return split.remapped(self.feature_map, self._remaps)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        super().configure_model()
        init = self.retrain_config.init
        if init == "fresh":
            reinitialize(self._dmp(), self.config.trainer.seed + 1, std=self.config.model.init_std)
        elif init == "rewind":
            self._rewind()
        else:
            self._inherit()

    def _cut(self, key: str, full: torch.Tensor) -> torch.Tensor:
        """The kept rows and prefix columns of the full table ``full`` for this model's table ``key``.

        FM and DeepFM's tables end in their first-order columns: those are kept whole, after the prefix.
        """
        table = key.split(".")[-2]
        name = field_of(table)
        rows = torch.from_numpy(self.tables.kept_ids(name))
        width = self._dmp().state_dict()[key].size()[1]
        if self._folded and not is_linear(table):
            dim = width - LINEAR_DIM
            return torch.cat([full[rows, :dim], full[rows, -LINEAR_DIM:]], dim=1)
        return full[rows, :width]

    @property
    def _folded(self) -> bool:
        return self.config.model.name in FOLDED_MODELS

    @torch.no_grad()
    def _rewind(self) -> None:
        assert self.retrain_config.supernet is not None
        source = read_run_config(self.retrain_config.supernet)
        seed, std = source.trainer.seed, source.model.init_std
        dmp = self._dmp()
        reinitialize(dmp, seed, std=std)  # dense layers: the supernet's initial draw
        full_width = self.tables.plan.full_dim + (LINEAR_DIM if self._folded else 0)  # the supernet's rows
        for key, value in dmp.state_dict().items():
            if is_table(key):
                table = key.split(".")[-2]
                field = self.source_feature_map.field(field_of(table))
                width = value.size()[1] if is_linear(table) else full_width
                write_whole(value, self._cut(key, table_init(table, field.cardinality, width, seed, std)))

    @torch.no_grad()
    def _inherit(self) -> None:
        assert self.retrain_config.supernet is not None
        supernet = self.retrain_config.supernet
        module = SupernetModule(read_run_config(supernet), self.source_feature_map)
        source = load_weights(module, supernet, self.source_feature_map)
        trained = source.model.state_dict()
        for key, value in self._dmp().state_dict().items():
            if key not in trained:
                raise ConfigError(f"retrain.init=inherit: the supernet has no weight {key!r}")
            full = trained[key]
            write_whole(value, self._cut(key, full) if is_table(key) else full)
