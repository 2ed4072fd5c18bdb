"""Hashing tricks: ``hash`` (one table per field of ``ceil(r V_f)`` rows, ids hashed into it, salted per field) and
``shared_hash`` (ONE table of ``ceil(r N)`` rows for all fields, ``(offset_f + id) mod M``: the VLDB'24
benchmark's default Hash baseline, with its wrap-around collisions). Sized by ``tables.size`` (rows in all), a
field of ``hash`` gets ``ceil(size V_f / N)`` rows and ``shared_hash``'s table ``size`` rows."""

from __future__ import annotations

import math
from collections.abc import Mapping

from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.methods.base import Knob, PerFieldTables, TableMethod, cardinalities
from ctr.tables.names import table_name
from ctr.tables.rules import IdRule, Modulo, SaltedHash
from features.schema import FeatureMap

__all__ = ["Hash", "SharedHash"]


class Hash(PerFieldTables):
    name = "hash"

    def field_table(self, index: int, field: str, cards: Mapping[str, int], config: TablesConfig) -> tuple[int, IdRule]:
        rows = cards[field]
        if config.size is None:
            buckets = max(1, math.ceil(config.budget * rows))
        else:  # size rows in all, shared out in proportion to the vocabularies (exact integer ceil)
            buckets = max(1, -(-config.size * rows // sum(cards.values())))
        return buckets, SaltedHash(field, salt=index, buckets=buckets)

    def knob(self, fm: FeatureMap, dim: int) -> Knob:
        return Knob(smallest=1, largest=sum(cardinalities(fm).values()))


class SharedHash(TableMethod):
    name = "shared_hash"

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        cards = cardinalities(fm)
        rows = config.size if config.size is not None else max(1, math.ceil(config.budget * sum(cards.values())))
        rules: dict[str, Modulo] = {}
        offset = 0
        for name, v in cards.items():
            rules[name] = Modulo(name, offset=offset, buckets=rows)
            offset += v
        slots = tuple(FieldSlots(name, (name,), "concat", dim) for name in cards)
        return TableLayout(self.name, (TableSpec(table_name("shared"), rows, dim, tuple(cards)),), slots, rules)

    def knob(self, fm: FeatureMap, dim: int) -> Knob:
        return Knob(smallest=1, largest=sum(cardinalities(fm).values()))
