"""From a fitted feature map's ids to what a trained model reads: the id chain of any run, for export and serving.

Every kind of run reads the encoded data through the same two optional steps, in this order:

1. **pruned tables** (``ctr retrain``, an OptEmbed plan): each field's ids are remapped onto its kept rows
   (:class:`~ctr.optembed.pruned.PrunedTables`), and the model is built on the *reduced* feature map with the plan's
   per-field dims (:meth:`PrunedTables.model_config`);
2. **a table strategy** (``tables:`` of ``ctr train``: hash, shared_hash, qr, mde, unified): the ids are rewritten
   into the layout's virtual features (:meth:`~ctr.tables.layout.TableLayout.transform`), built on the feature map of
   step 1.

:class:`ModelInputs` holds both and is made the same way from a run's config (:meth:`ModelInputs.of_run`) as
from an exported artifact (:meth:`ModelInputs.of_parts`), so an artifact scores exactly as its run did.

Example:
    >>> inputs = ModelInputs.of_parts(feature_map, model_config, tables_config, pruned)  # doctest: +SKIP
    >>> model = inputs.build(); model(inputs.transform(split).batch(rows))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

from config.model import ModelConfig
from config.run import RunConfig
from config.strict import ConfigError
from config.tables import TablesConfig
from ctr.data.columnar import ColumnarSplit
from ctr.models.zoo import CTRModel, build_model
from ctr.optembed.pruned import PrunedTables
from ctr.tables.embedding import embedding_params
from ctr.tables.layout import TableLayout
from ctr.tables.methods import build_layout
from features.schema import FeatureMap

__all__ = ["ModelInputs"]


@dataclass(frozen=True)
class ModelInputs:
    """The fitted feature map, the optional pruning and table layout on it, and the model config they give."""

    feature_map: FeatureMap  # the fitted one: what raw data is encoded with
    model_config: ModelConfig  # the model the weights fit (a retrain's per-field dims and padded width)
    tables_config: TablesConfig | None  # None or method "full": one table per field
    pruned: PrunedTables | None
    layout: TableLayout | None

    @classmethod
    def of_parts(
        cls,
        feature_map: FeatureMap,
        model_config: ModelConfig,
        tables_config: TablesConfig | None,
        pruned: PrunedTables | None,
    ) -> ModelInputs:
        """``model_config``: the model's own config (for a plan, already :meth:`PrunedTables.model_config`)."""
        base = pruned.feature_map(feature_map) if pruned is not None else feature_map
        layout = None
        if tables_config is not None and tables_config.method != "full":
            layout = build_layout(tables_config, base, model_config.embedding_dim)
        return cls(feature_map, model_config, tables_config, pruned, layout)

    @classmethod
    def of_run(cls, config: RunConfig, feature_map: FeatureMap) -> ModelInputs:
        """The chain of a finished ``ctr train`` or ``ctr retrain`` run (not a supernet: retrain its plan first)."""
        if config.supernet is not None:
            raise ConfigError("an OptEmbed supernet run: search and retrain its plan, then export the retraining run")
        pruned = None
        model_config = config.model
        if config.retrain is not None:
            if config.retrain.plan is None:
                raise ConfigError("a retraining run without retrain.plan")
            pruned = PrunedTables.load(config.retrain.plan, feature_map.content_hash)
            model_config = pruned.model_config(config.model)
        return cls.of_parts(feature_map, model_config, config.tables, pruned)

    @property
    def base_feature_map(self) -> FeatureMap:
        """The feature map the model is built on (the reduced one for a plan)."""
        return self.pruned.feature_map(self.feature_map) if self.pruned is not None else self.feature_map

    @property
    def input_feature_map(self) -> FeatureMap:
        """The feature map of the ids the model reads (the layout's virtual features, if any)."""
        base = self.base_feature_map
        return self.layout.feature_map(base) if self.layout is not None else base

    @property
    def embedding_params(self) -> int:
        return embedding_params(self.base_feature_map, self.model_config, self.layout)

    def build(self) -> CTRModel:
        """A freshly initialised model of this shape, on the CPU (weights are loaded into it)."""
        return build_model(self.base_feature_map, self.model_config, layout=self.layout)

    def transform(self, split: ColumnarSplit) -> ColumnarSplit:
        """``split`` (encoded with :attr:`feature_map`) as the model reads it: remapped, then into virtual ids."""
        if self.pruned is not None:
            names = self.feature_map.sparse_names
            split = split.remapped(self.base_feature_map, {name: self.pruned.remap(name) for name in names})
        return self.layout.transform(split) if self.layout is not None else split
