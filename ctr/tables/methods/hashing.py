"""Hashing tricks: ``hash`` (one table per field of ``ceil(r V_f)`` rows, ids hashed into it, salted per field) and
``shared_hash`` (ONE table of ``ceil(r N)`` rows for all fields, ``(offset_f + id) mod M``: the VLDB'24
benchmark's default Hash baseline, with its wrap-around collisions)."""

from __future__ import annotations

import math

from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.methods.base import PerFieldTables, TableMethod, cardinalities
from ctr.tables.names import table_name
from ctr.tables.rules import IdRule, Modulo, SaltedHash
from features.schema import FeatureMap

__all__ = ["Hash", "SharedHash"]


class Hash(PerFieldTables):
    name = "hash"

    def field_table(self, index: int, field: str, rows: int, config: TablesConfig) -> tuple[int, IdRule]:
        buckets = max(1, math.ceil(config.budget * rows))
        return buckets, SaltedHash(field, salt=index, buckets=buckets)


class SharedHash(TableMethod):
    name = "shared_hash"

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        cards = cardinalities(fm)
        rows = max(1, math.ceil(config.budget * sum(cards.values())))
        rules: dict[str, Modulo] = {}
        offset = 0
        for name, v in cards.items():
            rules[name] = Modulo(name, offset=offset, buckets=rows)
            offset += v
        slots = tuple(FieldSlots(name, (name,), "concat", dim) for name in cards)
        return TableLayout(self.name, (TableSpec(table_name("shared"), rows, dim, tuple(cards)),), slots, rules)
