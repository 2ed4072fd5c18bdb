"""The table methods, one class per method, and :func:`build_layout`, which picks one by name.

A new method: a :class:`~ctr.tables.methods.base.TableMethod` subclass in a file of its own here, its name in
:data:`config.tables.METHODS` (what configs and the CLI accept) and in :data:`TABLE_METHODS` below.
"""

from __future__ import annotations

from config.strict import ConfigError
from config.tables import METHODS, TablesConfig
from ctr.tables.layout import TableLayout
from ctr.tables.methods.base import TableMethod
from ctr.tables.methods.full import Full
from ctr.tables.methods.hashing import Hash, SharedHash
from ctr.tables.methods.mde import MixedDims
from ctr.tables.methods.qr import QuotientRemainder
from ctr.tables.methods.unified import Unified
from features.schema import FeatureMap

__all__ = ["TABLE_METHODS", "TableMethod", "build_layout"]

TABLE_METHODS: dict[str, TableMethod] = {
    m.name: m for m in (Full(), Hash(), SharedHash(), QuotientRemainder(), MixedDims(), Unified())
}
assert tuple(TABLE_METHODS) == METHODS, "config.tables.METHODS and the table method classes disagree"


def build_layout(config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
    """The layout of ``config.method`` at ``config.budget`` for ``fm`` with full embedding dim ``dim``."""
    if dim % 4:
        raise ConfigError(f"model.embedding_dim: {dim} is not a multiple of 4, which table methods need")
    return TABLE_METHODS[config.method].layout(config, fm, dim)
