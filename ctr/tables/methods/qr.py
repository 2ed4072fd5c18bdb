"""``qr``: quotient-remainder compositional embeddings. Per field a quotient table of ``ceil(V_f / m)`` rows and a
remainder table of ``m = ceil(1/r)`` rows, multiplied; below QR's reach (``2 sqrt(V_f)`` rows)
``m = ceil(sqrt(V_f))``, and a field whose full table is no larger keeps it, so small budgets are not always met.
``tables.size``, when set, is ``m`` (each field's ``min(m, ceil(sqrt(V_f)))``)."""

from __future__ import annotations

import math

from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.methods.base import Knob, TableMethod, cardinalities
from ctr.tables.names import table_name
from ctr.tables.rules import Identity, IdRule, Quotient, Remainder
from features.schema import FeatureMap

__all__ = ["QuotientRemainder"]


class QuotientRemainder(TableMethod):
    name = "qr"

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        r = config.budget
        tables: list[TableSpec] = []
        slots: list[FieldSlots] = []
        rules: dict[str, IdRule] = {}
        for name, v in cardinalities(fm).items():
            if config.size is not None:  # past sqrt(V) more remainder rows only add rows
                m = min(config.size, math.ceil(math.sqrt(v)))
            else:
                m = max(1, math.ceil(1 / r))
                if math.ceil(v / m) + m > r * v:  # below QR's reach (2 sqrt(V) rows): the fewest rows it can do
                    m = min(m, math.ceil(math.sqrt(v)))
            if math.ceil(v / m) + m >= v:  # a small field: its full table is no larger than Q + R
                tables.append(TableSpec(table_name(name), v, dim, (name,)))
                rules[name] = Identity(name)
                slots.append(FieldSlots(name, (name,), "concat", dim))
                continue
            q, rem = f"{name}@q", f"{name}@r"
            tables += [
                TableSpec(table_name(q), math.ceil(v / m), dim, (q,)),
                TableSpec(table_name(rem), m, dim, (rem,)),
            ]
            rules[q], rules[rem] = Quotient(name, m), Remainder(name, m)
            slots.append(FieldSlots(name, (q, rem), "product", dim))
        return TableLayout(self.name, tuple(tables), tuple(slots), rules)

    def knob(self, fm: FeatureMap, dim: int) -> Knob:
        """``m``: 1 keeps every full table, ``max_f ceil(sqrt(V_f))`` gives each field its fewest rows."""
        return Knob(smallest=max(math.ceil(math.sqrt(v)) for v in cardinalities(fm).values()), largest=1)
