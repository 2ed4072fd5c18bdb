"""The Lightning data module of a run: train/valid/test loaders over a prepared directory, sharded by rank."""

from __future__ import annotations

from collections.abc import Callable

import lightning
from torch.utils.data import DataLoader
from torchrec.datasets.utils import Batch

from config.data import DataConfig
from ctr.data.columnar import ColumnarSplit
from ctr.data.loader import make_loader
from ctr.data.shards import load_split
from features.schema import FeatureMap

_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "valid"),
    "validate": ("valid",),
    "test": ("test",),
    "predict": (),
    None: ("train", "valid", "test"),
}


class CTRDataModule(lightning.LightningDataModule):
    """Train/valid/test loaders over a prepared directory, sharded by rank.

    Rank and world size come from the attached trainer (``global_rank``, ``world_size``), else 0 and 1.
    Training is shuffled per epoch. The trailing partial global batch is split equally over the ranks, in
    training as in evaluation, so a split smaller than one global batch (``batch_size * world_size`` rows)
    still gives every rank one batch of ``n // world_size`` rows: the per-process batch shrinks, and N
    processes take the same steps as one. (Dropping it left small splits with no training batch at all.)
    Up to ``world_size - 1`` trailing rows of a split are left out (every rank must run the same number of
    batches; padding would count rows twice). Evaluation is not shuffled.

    Multi-process training must use ``Trainer(use_distributed_sampler=False)``: the sampler already shards
    by rank, and Lightning would otherwise wrap it in a ``DistributedSampler``; :meth:`setup` refuses that.
    """

    def __init__(self, config: DataConfig, transform: Callable[[ColumnarSplit], ColumnarSplit] | None = None) -> None:
        """``transform`` applies to every split once loaded (a pruned table's id remap)."""
        super().__init__()
        self.config = config
        self.transform = transform
        self._feature_map: FeatureMap | None = None
        self._splits: dict[str, ColumnarSplit] = {}
        self.rank = 0
        self.world_size = 1

    @property
    def feature_map(self) -> FeatureMap:
        """The prepared directory's feature map (loaded on first use, so a model can be built before fit)."""
        if self._feature_map is None:
            self._feature_map = FeatureMap.load(self.config.path)
        return self._feature_map

    def setup(self, stage: str | None = None) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(_STAGE_SPLITS)}")
        trainer = self.trainer
        if trainer is not None:
            self.rank, self.world_size = int(trainer.global_rank), int(trainer.world_size)
            connector = getattr(trainer, "_accelerator_connector", None)
            if self.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
                raise ValueError(
                    "CTRDataModule shards rows by rank itself; construct the Trainer with "
                    "use_distributed_sampler=False (otherwise Lightning wraps EpochBatchSampler in a "
                    f"DistributedSampler and each of the {self.world_size} ranks sees a fraction of its "
                    "batches)"
                )
        fm = self.feature_map
        for name in _STAGE_SPLITS[stage]:
            if name in fm.splits and name not in self._splits:
                split = load_split(self.config.path, fm, name)
                self._splits[name] = self.transform(split) if self.transform is not None else split

    def split(self, name: str) -> ColumnarSplit:
        if name not in self._splits:
            raise RuntimeError(
                f"split {name!r} is not loaded: call setup() for a stage that needs it first "
                f"(the feature map has splits {sorted(self.feature_map.splits)})"
            )
        return self._splits[name]

    def train_dataloader(self) -> DataLoader[Batch]:
        return make_loader(
            self.split("train"),
            self.config.batch_size,
            shuffle=self.config.shuffle,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=False,
            num_workers=self.config.num_workers,
        )

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader[Batch]:
        return make_loader(
            self.split(name),
            self.config.resolved_eval_batch_size,
            shuffle=False,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=False,
            num_workers=self.config.num_workers,
        )
