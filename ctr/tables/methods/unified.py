"""``unified``: Unified Embedding (feature multiplexing). ONE table of ``M = r N D / c`` rows of width ``c``
(``tables.chunk``); field ``f`` takes ``k_f`` probes (``tables.probes``, 0 drops the field), probe ``j`` hashed
with salt ``(f, j)``; the field's vector is its probes concatenated (``k_f c`` dims). ``tables.size``, when set,
is ``M``."""

from __future__ import annotations

from config.strict import ConfigError
from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.methods.base import Knob, TableMethod, cardinalities
from ctr.tables.names import table_name
from ctr.tables.rules import SaltedHash
from features.schema import FeatureMap

__all__ = ["Unified"]


class Unified(TableMethod):
    name = "unified"

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        probes = _field_probes(config, fm, dim)
        cards = cardinalities(fm)
        rows = config.size
        if rows is None:
            rows = max(1, int(config.budget * sum(cards.values()) * dim) // config.chunk)
        rules: dict[str, SaltedHash] = {}
        slots: list[FieldSlots] = []
        feats: list[str] = []
        for i, name in enumerate(cards):
            mine = tuple(f"{name}@p{j}" for j in range(probes[name]))
            for j, feature in enumerate(mine):
                rules[feature] = SaltedHash(name, salt=i * 1024 + j, buckets=rows)
            feats += mine
            slots.append(FieldSlots(name, mine, "concat", probes[name] * config.chunk))
        table = TableSpec(table_name("unified"), rows, config.chunk, tuple(feats))
        return TableLayout(self.name, (table,), tuple(slots), rules)

    def knob(self, fm: FeatureMap, dim: int) -> Knob:
        return Knob(smallest=1, largest=max(1, sum(cardinalities(fm).values()) * dim // 4))  # chunk >= 4


def _field_probes(config: TablesConfig, fm: FeatureMap, dim: int) -> dict[str, int]:
    unknown = sorted(set(config.probes) - set(fm.sparse_names))
    if unknown:
        raise ConfigError(f"TablesConfig.probes: unknown field(s) {unknown}")
    if dim % config.chunk:
        raise ConfigError(f"embedding_dim {dim} is not a multiple of the Unified Embedding chunk {config.chunk}")
    return {name: config.probes.get(name, dim // config.chunk) for name in fm.sparse_names}
