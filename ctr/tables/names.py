"""The one place that names a field's tables, and reads a field back from a table's name.

A field (or a table method's virtual feature, such as ``f@q``) has its embedding table ``t_<name>``; a model whose
first-order weights live in tables of their own (LR) has ``lin_<name>`` beside it. State-dict keys hold these names
(``sparse_arch.ebc.embedding_bags.t_<name>.weight``), so checkpoints, plans, retraining and the search all go
through these functions.

Example:
    >>> table_name("C1"), linear_table_name("C1"), field_of("t_C1"), field_of("lin_C1"), is_linear("lin_C1")
    ('t_C1', 'lin_C1', 'C1', 'C1', True)
    >>> table_weight_key("C1")
    'sparse_arch.ebc.embedding_bags.t_C1.weight'
    >>> field_of("C1")
    Traceback (most recent call last):
    ...
    ValueError: 'C1' is not a table name (t_<field> or lin_<field>)
"""

from __future__ import annotations

__all__ = ["field_of", "is_linear", "linear_table_name", "table_name", "table_weight_key"]

_TABLE = "t_"
_LINEAR = "lin_"


def table_name(name: str) -> str:
    """The embedding table of field (or virtual feature) ``name``."""
    return f"{_TABLE}{name}"


def linear_table_name(name: str) -> str:
    """The first-order table of field ``name``, for the models that keep those apart (LR)."""
    return f"{_LINEAR}{name}"


def field_of(table: str) -> str:
    """The field (or virtual feature) whose table ``table`` is."""
    for prefix in (_TABLE, _LINEAR):
        if table.startswith(prefix):
            return table.removeprefix(prefix)
    raise ValueError(f"{table!r} is not a table name (t_<field> or lin_<field>)")


def is_linear(table: str) -> bool:
    """Whether ``table`` holds first-order weights only (``lin_<field>``)."""
    return table.startswith(_LINEAR)


def table_weight_key(name: str) -> str:
    """The state-dict key of field ``name``'s embedding table in a model (its main ``EmbeddingBagCollection``)."""
    return f"sparse_arch.ebc.embedding_bags.{table_name(name)}.weight"
