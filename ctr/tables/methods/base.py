"""What every table method is: a name, and the :class:`~ctr.tables.layout.TableLayout` it makes of a feature map
at a budget; :class:`PerFieldTables` holds the pieces of the methods that keep one table per field."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.names import table_name
from ctr.tables.rules import IdRule
from features.schema import FeatureMap

__all__ = ["PerFieldTables", "TableMethod", "cardinalities"]


def cardinalities(fm: FeatureMap) -> dict[str, int]:
    """Each categorical field's rows ``V_f``, in feature-map order."""
    return {f.name: f.cardinality for f in fm.categorical}


class TableMethod(ABC):
    """One way of storing the embedding tables (``tables.method`` in a run config)."""

    name: ClassVar[str]

    @abstractmethod
    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        """The tables of ``fm`` at ``config.budget`` (a fraction of the full ``N x dim``) with full width ``dim``."""


class PerFieldTables(TableMethod):
    """One table per field (``t_<field>``), its rows and width chosen by the subclass."""

    @abstractmethod
    def field_table(self, index: int, field: str, rows: int, config: TablesConfig) -> tuple[int, IdRule]:
        """Rows of the field's table and the rule mapping its ids into them."""

    def widths(self, cards: dict[str, int], dim: int, config: TablesConfig) -> dict[str, int]:
        return dict.fromkeys(cards, dim)

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        cards = cardinalities(fm)
        widths = self.widths(cards, dim, config)
        tables, slots, rules = [], [], {}
        for i, (name, v) in enumerate(cards.items()):
            rows, rule = self.field_table(i, name, v, config)
            tables.append(TableSpec(table_name(name), rows, widths[name], (name,)))
            slots.append(FieldSlots(name, (name,), "concat", widths[name]))
            rules[name] = rule
        return TableLayout(self.name, tuple(tables), tuple(slots), rules)
