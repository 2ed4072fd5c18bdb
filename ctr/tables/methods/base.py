"""What every table method is: a name, the :class:`~ctr.tables.layout.TableLayout` it makes of a feature map at a
budget, and its size knob (:class:`Knob`, ``tables.size``); :class:`PerFieldTables` holds the pieces of the methods
that keep one table per field."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import ClassVar

from config.tables import TablesConfig
from ctr.tables.layout import FieldSlots, TableLayout, TableSpec
from ctr.tables.names import table_name
from ctr.tables.rules import IdRule
from features.schema import FeatureMap

__all__ = ["Knob", "PerFieldTables", "TableMethod", "cardinalities"]


def cardinalities(fm: FeatureMap) -> dict[str, int]:
    """Each categorical field's rows ``V_f``, in feature-map order."""
    return {f.name: f.cardinality for f in fm.categorical}


@dataclass(frozen=True)
class Knob:
    """The values a method's ``tables.size`` can take, from the one giving the smallest layout to the one giving the
    largest; the layout grows (up to rounding) as the knob moves from ``smallest`` to ``largest``.

    Example:
        >>> qr = Knob(smallest=32, largest=1)  # QR: more remainder rows, fewer parameters
        >>> qr.steps, qr.at(0), qr.at(31)
        (31, 32, 1)
    """

    smallest: int
    largest: int

    @property
    def steps(self) -> int:
        return abs(self.largest - self.smallest)

    def at(self, step: int) -> int:
        """The knob ``step`` steps from ``smallest`` towards ``largest``."""
        return self.smallest + step if self.largest >= self.smallest else self.smallest - step


class TableMethod(ABC):
    """One way of storing the embedding tables (``tables.method`` in a run config)."""

    name: ClassVar[str]

    @abstractmethod
    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        """The tables of ``fm`` at ``config.size`` if set, else at ``config.budget`` (a fraction of the full
        ``N x dim``), with full width ``dim``."""

    def knob(self, fm: FeatureMap, dim: int) -> Knob | None:
        """The range of ``tables.size`` (None: the method has no size to choose, as ``full``)."""
        return None


class PerFieldTables(TableMethod):
    """One table per field (``t_<field>``), its rows and width chosen by the subclass."""

    @abstractmethod
    def field_table(self, index: int, field: str, cards: Mapping[str, int], config: TablesConfig) -> tuple[int, IdRule]:
        """Rows of the field's table and the rule mapping its ids into them (``cards``: every field's ``V_f``)."""

    def widths(self, cards: dict[str, int], dim: int, config: TablesConfig) -> dict[str, int]:
        return dict.fromkeys(cards, dim)

    def layout(self, config: TablesConfig, fm: FeatureMap, dim: int) -> TableLayout:
        cards = cardinalities(fm)
        widths = self.widths(cards, dim, config)
        tables, slots, rules = [], [], {}
        for i, name in enumerate(cards):
            rows, rule = self.field_table(i, name, cards, config)
            tables.append(TableSpec(table_name(name), rows, widths[name], (name,)))
            slots.append(FieldSlots(name, (name,), "concat", widths[name]))
            rules[name] = rule
        return TableLayout(self.name, tuple(tables), tuple(slots), rules)
