"""``full``: one table per field of ``V_f`` rows, every id its own row (collisionless; the reference)."""

from __future__ import annotations

from collections.abc import Mapping

from config.tables import TablesConfig
from ctr.tables.methods.base import PerFieldTables
from ctr.tables.rules import Identity, IdRule

__all__ = ["Full"]


class Full(PerFieldTables):
    name = "full"

    def field_table(self, index: int, field: str, cards: Mapping[str, int], config: TablesConfig) -> tuple[int, IdRule]:
        return cards[field], Identity(field)
