"""A trained supernet as the dimension search sees it: rows frozen by the learned thresholds, a cost per candidate.

:func:`freeze` reads the supernet run, checks it was trained for the variant, and freezes each field's rows (its
learned row mask; a shared Unified Embedding table keeps every row). The result gives the search what it needs:
each field's kept rows (the cost of a dim is ``rows x dim``), the parameters no dim changes (first-order columns,
or the shared table), the candidate dims, and a scorer of candidates on the validation split
(:class:`~ctr.optembed.scorer.CandidateScorer`). The search itself (:mod:`search.driver`) knows none of this.

Example:
    >>> frozen = freeze(Path("runs/oe/supernet"), VARIANTS["optembed"])  # doctest: +SKIP
    >>> frozen.tables.with_dims({"C1": 8, ...}).save(Path("runs/oe/search"))  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from config.run import SearchConfig
from config.strict import ConfigError
from ctr.data.shards import load_split
from ctr.optembed.module import SupernetModule, find_pruning, model_row_masks
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from ctr.optembed.pruned import PrunedTables
from ctr.optembed.scorer import CandidateScorer
from ctr.optembed.variants import Variant
from ctr.tables.embedding import FIRST_ORDER_MODELS, LINEAR_DIM, embedding_params
from ctr.training.restore import TrainedRun, load_weights, read_run_config
from features.schema import FeatureMap

__all__ = ["FrozenSupernet", "freeze"]


@dataclass(frozen=True)
class FrozenSupernet:
    run: TrainedRun
    masks: dict[str, torch.Tensor]  # per field: the rows kept (all rows for a shared table)
    tables: PrunedTables  # the kept rows at full dims
    rows: tuple[int, ...]  # per field: rows of its retrained table (0 for a shared table: no per-field cost)
    fixed_params: int  # parameters no candidate changes (first-order columns, or the shared table)
    choices: tuple[int, ...]  # the dims a field may take
    full_params: int  # the full, unpruned tables' parameters (what a search budget is a fraction of)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(self.run.feature_map.sparse_names)

    @property
    def full_dim(self) -> int:
        return self.run.config.model.embedding_dim

    def scorer(self, config: SearchConfig) -> CandidateScorer:
        """Validation AUC of the supernet at a candidate's dims (its rows frozen), on ``config.val_rows`` rows."""
        run, layout = self.run, self.run.model.layout
        split = load_split(run.config.data.path, run.feature_map, "valid")
        if layout is not None:
            split = layout.transform(split)
        return CandidateScorer(
            run.model,
            self.masks if layout is None else None,
            split,
            batch_size=config.eval_batch_size,
            max_rows=config.val_rows,
            seed=config.seed,
            head_dtype=torch.bfloat16 if config.head_dtype == "bfloat16" else torch.float32,
        )


def freeze(supernet: Path, variant: Variant) -> FrozenSupernet:
    """The supernet run at ``supernet``, frozen for the dimension search of ``variant``."""
    config = read_run_config(supernet)
    scfg = config.supernet
    if scfg is None:
        raise ConfigError(f"{supernet}: not a supernet run (its config has no `supernet` section)")
    fm, model_config = FeatureMap.load(config.data.path), config.model
    if scfg.prune_rows != variant.prune_rows or (variant.search_dims and not scfg.sample_dims):
        raise ConfigError(
            f"{supernet}: its supernet (prune_rows={scfg.prune_rows}, sample_dims={scfg.sample_dims}) "
            f"was not trained for variant {variant.name!r}"
        )
    run = load_weights(SupernetModule(config, fm), supernet, fm)
    layout = run.model.layout
    if variant.multiplexed != (layout is not None and layout.method == "unified"):
        raise ConfigError(f"{supernet}: variant {variant.name!r} needs a supernet over a Unified Embedding table")
    full = model_config.embedding_dim
    if layout is None:
        masks = model_row_masks(run.model, fm, find_pruning(run.model))
    else:  # one shared table: nothing is pruned per field, every field keeps its vocabulary
        masks = {f.name: torch.ones(f.cardinality, dtype=torch.bool) for f in fm.categorical}
    plan = EmbeddingPlan(
        fm.content_hash, full, tuple(FieldPlan(n, full, int(m.sum()), int(m.numel())) for n, m in masks.items())
    )
    tables = PrunedTables(plan, {n: m.numpy() for n, m in masks.items()})
    if layout is None:
        rows = tuple(int(tables.kept_ids(n).shape[0]) for n in fm.sparse_names)
        fixed = LINEAR_DIM * sum(rows) if model_config.name in FIRST_ORDER_MODELS else 0
    else:  # the shared table's size does not depend on the probe counts: the cost is constant
        rows, fixed = tuple(0 for _ in fm.sparse_names), embedding_params(fm, model_config, layout)
    choices = scfg.candidates if scfg.candidates is not None else tuple(range(4, full + 1, 4))
    full_params = sum(f.rows_total for f in plan.fields) * (full + (LINEAR_DIM if fixed else 0))
    return FrozenSupernet(run, masks, tables, rows, fixed, tuple(choices), full_params)
