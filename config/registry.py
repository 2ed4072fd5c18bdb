"""The names the platform offers, in one light module (no torch, no polars): the ``ctr`` command builds its
choices and help from here, so ``ctr --help`` stays fast, and each implementation registry is checked against it
when it is imported.

=====================  =====================================  ================================================
names                  what                                   implementations (one obvious file each)
=====================  =====================================  ================================================
:data:`MODELS`         base models (``--model``)              ``ctr/models/zoo.py`` (``MODELS``)
:data:`TABLE_METHODS`  table methods (``tables.method``)      ``ctr/tables/methods/`` (``TABLE_METHODS``)
:data:`VARIANTS`       OptEmbed variants (``--variant``)      ``ctr/optembed/variants.py`` (``VARIANTS``)
:data:`DATASETS`       built-in data sets (``--dataset``)     ``features/spec.py`` (``BUILTIN_DATASETS``)
:data:`BENCH_METHODS`  ``ctr compress-bench --methods``       the table methods, then the learned variants
=====================  =====================================  ================================================

Example:
    >>> MODELS[:3], TABLE_METHODS[2], BENCH_METHODS[-1]
    (('lr', 'fm', 'deepfm'), 'shared_hash', 'optembed-unified')
"""

from __future__ import annotations

from config.model import MODEL_NAMES
from config.tables import METHODS

__all__ = ["BENCH_METHODS", "DATASETS", "LEARNED_METHODS", "MODELS", "TABLE_METHODS", "VARIANTS"]

MODELS: tuple[str, ...] = MODEL_NAMES
TABLE_METHODS: tuple[str, ...] = METHODS
VARIANTS: tuple[str, ...] = ("optembed", "optembed-e", "optembed-d", "optembed-unified")
DATASETS: tuple[str, ...] = ("criteo", "avazu", "movielens")
LEARNED_METHODS: tuple[str, ...] = ("optembed", "optembed-unified")  # compress-bench: variants that learn tables
BENCH_METHODS: tuple[str, ...] = (*TABLE_METHODS, *LEARNED_METHODS)
