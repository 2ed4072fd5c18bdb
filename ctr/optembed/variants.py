"""OptEmbed's variants as objects: which halves of the method they use.

=============  ==============  ====================  =====================================================
variant        prune rows      search dims           what it is
=============  ==============  ====================  =====================================================
``optembed``   yes             yes                   learnable thresholds + dimension supernet and search
``optembed-e`` yes             no (full dim)         row pruning only, then retraining
``optembed-d`` no              yes                   uniform-sampling supernet, dimension search only
``optembed-    no (shared      probes per field      over a Unified Embedding table (feature
unified``      table)                                multiplexing): the supernet samples each field's
                                                     probe count per example; the search picks ``k_f``
=============  ==============  ====================  =====================================================

Example:
    >>> VARIANTS["optembed-e"].supernet(SupernetConfig(alpha=1e-3)).sample_dims
    False
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from config.registry import VARIANTS as VARIANT_NAMES
from config.run import SupernetConfig
from config.strict import ConfigError
from ctr.models.zoo import MODELS

__all__ = ["VARIANTS", "Variant", "for_model", "variant"]


@dataclass(frozen=True)
class Variant:
    name: str
    prune_rows: bool
    search_dims: bool
    multiplexed: bool = False  # over one shared Unified Embedding table: dims are probe counts x chunk

    def supernet(self, config: SupernetConfig) -> SupernetConfig:
        """``config`` with this variant's halves switched on or off (dims are sampled only if searched)."""
        return dataclasses.replace(config, prune_rows=self.prune_rows, sample_dims=self.search_dims)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("optembed", prune_rows=True, search_dims=True),
        Variant("optembed-e", prune_rows=True, search_dims=False),
        Variant("optembed-d", prune_rows=False, search_dims=True),
        Variant("optembed-unified", prune_rows=False, search_dims=True, multiplexed=True),
    )
}


assert tuple(VARIANTS) == VARIANT_NAMES, f"VARIANTS {list(VARIANTS)} != config.registry.VARIANTS"


def variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ConfigError(f"unknown OptEmbed variant {name!r}; choose one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def for_model(chosen: Variant, model: str) -> tuple[Variant, str | None]:
    """``chosen`` as ``model`` can take it, and a note when it changed: a model whose fields must all share one dim
    (DLRM) gets no dim search, so ``optembed`` runs as ``optembed-e``; a variant that only searches dims is refused.

    >>> for_model(VARIANTS["optembed"], "dlrm")[0].name, for_model(VARIANTS["optembed"], "deepfm")
    ('optembed-e', (Variant(name='optembed', prune_rows=True, search_dims=True, multiplexed=False), None))
    """
    if not MODELS[model].equal_dims or not chosen.search_dims:
        return chosen, None
    if not chosen.prune_rows:
        raise ConfigError(
            f"--variant {chosen.name} searches dims only, but --model {model} needs every field at one dim; "
            f"use --variant optembed-e (rows only)"
        )
    note = f"--model {model} needs every field at one dim: searching rows only (--variant optembed-e)"
    return VARIANTS["optembed-e"], note
