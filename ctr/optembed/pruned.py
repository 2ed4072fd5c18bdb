"""``PrunedTables``: an :class:`~ctr.optembed.plan.EmbeddingPlan` with its row masks, and the table it builds
physically.

The search stage hands retraining and export a plan (``plan.json``: per-field dim and row counts) and the
boolean row masks it summarises (``masks.npz``: per field, which rows of the full table survived the learned
threshold). The retrained table is built from them physically, not masked:

* field ``f`` keeps the rows ``kept_ids(f) = sorted(kept rows | {OOV_ID})``: its table has that many rows,
  of the plan's dim; the OOV row is always kept, because a pruned value falls to it;
* ids are remapped once, in the data path: :meth:`remap` maps an old id to its position in ``kept_ids``,
  and every pruned id to the position of the OOV row. The first-order weights (LR's own tables; FM and DeepFM's
  first-order columns of the main tables) are read with the remapped ids, so pruned values share the OOV row's
  first-order weight too;
* the retrained model keeps the supernet's padded width (``ModelConfig.pad_to = full_dim``), so its dense
  layers have the supernet's shapes and can be rewound to, or inherit, the supernet's weights.

Example:
    >>> import numpy as np
    >>> fields = (FieldPlan("a", dim=4, rows_kept=2, rows_total=5),)
    >>> tables = PrunedTables(EmbeddingPlan("h", 8, fields), {"a": np.array([0, 0, 1, 0, 1], dtype=bool)})
    >>> tables.kept_ids("a").tolist(), tables.remap("a").tolist()
    ([1, 2, 4], [0, 0, 1, 0, 2])
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from config.model import ModelConfig
from config.strict import ConfigError, first_line
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from features.schema import OOV_ID, FeatureMap

__all__ = ["MASKS_FILE", "PLAN_FILE", "FieldPlan", "PrunedTables"]

PLAN_FILE = "plan.json"
MASKS_FILE = "masks.npz"


@dataclass(frozen=True)
class PrunedTables:
    """A plan plus, per field, the boolean keep mask over the full table's rows."""

    plan: EmbeddingPlan
    masks: Mapping[str, npt.NDArray[np.bool_]]

    def __post_init__(self) -> None:
        names = [f.name for f in self.plan.fields]
        if sorted(names) != sorted(self.masks):
            raise ConfigError(f"row masks for fields {sorted(self.masks)} do not match the plan's {sorted(names)}")
        for f in self.plan.fields:
            mask = self.masks[f.name]
            if mask.dtype != np.bool_ or mask.shape != (f.rows_total,):
                raise ConfigError(
                    f"field {f.name!r}: row mask of dtype {mask.dtype} and shape {mask.shape}, "
                    f"expected bool ({f.rows_total},)"
                )
            if int(mask.sum()) != f.rows_kept:
                raise ConfigError(f"field {f.name!r}: mask keeps {int(mask.sum())} rows, the plan says {f.rows_kept}")

    @classmethod
    def full(cls, plan: EmbeddingPlan) -> PrunedTables:
        """Masks keeping every row (OptEmbed-D: dimensions only)."""
        return cls(plan, {f.name: np.ones(f.rows_total, dtype=bool) for f in plan.fields})

    def with_dims(self, dims: Mapping[str, int]) -> PrunedTables:
        """The same rows with new per-field dims (a search result)."""
        unknown = sorted(set(dims) - set(self.masks))
        if unknown:
            raise ConfigError(f"dims for unknown field(s) {unknown}")
        fields = tuple(dataclasses.replace(f, dim=dims.get(f.name, f.dim)) for f in self.plan.fields)
        return PrunedTables(dataclasses.replace(self.plan, fields=fields), self.masks)

    # ------------------------------------------------------------------ the physical table
    def kept_ids(self, name: str) -> npt.NDArray[np.int64]:
        """Old ids of field ``name`` that keep a row in the retrained table, ascending (OOV always among them)."""
        mask = self.masks[name].copy()
        mask[OOV_ID] = True
        return np.flatnonzero(mask)

    def remap(self, name: str) -> npt.NDArray[np.int32]:
        """``old id -> new id`` for field ``name``: a kept row's position, or the OOV row's for a pruned one."""
        kept = self.kept_ids(name)
        table = np.full(self.masks[name].shape[0], int(np.searchsorted(kept, OOV_ID)), dtype=np.int32)
        table[kept] = np.arange(kept.shape[0], dtype=np.int32)
        return table

    def feature_map(self, fm: FeatureMap) -> FeatureMap:
        """``fm`` with each field's cardinality set to its retrained row count (ids are remapped)."""
        self.check(fm)
        fields = tuple(dataclasses.replace(f, cardinality=int(self.kept_ids(f.name).shape[0])) for f in fm.categorical)
        return dataclasses.replace(fm, categorical=fields).with_hash()

    def model_config(self, config: ModelConfig) -> ModelConfig:
        """``config`` with the plan's per-field dims, padded to the supernet's width."""
        if config.embedding_dim != self.plan.full_dim:
            raise ConfigError(f"plan has full_dim {self.plan.full_dim}, model.embedding_dim is {config.embedding_dim}")
        dims = {f.name: f.dim for f in self.plan.fields}
        return dataclasses.replace(config, field_dims=dims, pad_to=self.plan.full_dim)

    def check(self, fm: FeatureMap) -> None:
        if self.plan.feature_map_hash != fm.content_hash:
            raise ConfigError(
                f"plan was made for feature map {self.plan.feature_map_hash[:12]}, not {fm.content_hash[:12]}"
            )
        cards = {f.name: f.cardinality for f in fm.categorical}
        bad = [f.name for f in self.plan.fields if cards.get(f.name) != f.rows_total]
        if bad or len(cards) != len(self.plan.fields):
            raise ConfigError(f"plan fields {bad or sorted(cards)} do not match the feature map's tables")

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> None:
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        self.plan.save(out / PLAN_FILE)
        arrays: dict[str, Any] = {name: np.asarray(m) for name, m in self.masks.items()}
        np.savez_compressed(out / MASKS_FILE, allow_pickle=False, **arrays)

    @classmethod
    def load(cls, directory: str | Path, feature_map_hash: str | None = None) -> PrunedTables:
        """Load ``plan.json`` and ``masks.npz`` strictly (no pickles); a missing masks file keeps every row."""
        root = Path(directory)
        plan = EmbeddingPlan.load(root / PLAN_FILE, feature_map_hash)
        path = root / MASKS_FILE
        if not path.is_file():
            if any(f.rows_kept != f.rows_total for f in plan.fields):
                raise ConfigError(f"{path}: missing, and the plan prunes rows")
            return cls.full(plan)
        try:
            with np.load(path, allow_pickle=False) as npz:
                masks: dict[str, Any] = {name: npz[name] for name in npz.files}
        except Exception as e:  # a corrupt or truncated file: any decoder error (BadZipFile, zlib.error, EOFError...)
            raise ConfigError(f"{path}: corrupt row masks ({first_line(e)})") from e
        try:
            return cls(plan, masks)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from e
