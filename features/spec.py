"""Declarative dataset specs: what the raw columns are and how each becomes a feature.

A spec is a frozen dataclass loaded strictly from YAML (unknown keys are errors). The three built-in
datasets are specs like any other; a custom dataset is a YAML file of the same shape::

    name: clicks
    format: delimited          # delimited (CSV/TSV/...) | parquet | movielens-100k
    delimiter: ","             # or "auto": tab when the first line has one, else comma
    header: true               # true | false | omitted = auto (first line equals `columns`)
    columns: [ts, click, price, site, tags]   # file order; needed when there is no header
    label: {column: click}     # 0/1, or {column: rating, threshold: 4} for rating >= 4
    dense:
      - {name: price, transform: log1p, fill_null: 0}
      - {name: views, max_abs: 1.0e+12, clip: true}   # bound on |value| (default 1e9): reject or clip
    categorical:
      - {name: site, min_count: 2}
      - {name: tags, separator: "|"}          # multi-valued
    time: {column: ts, format: "%Y-%m-%d %H:%M:%S"}   # optional; for --split time

Example:
    >>> spec = builtin_spec("criteo")
    >>> spec.label.column, len(spec.dense), len(spec.categorical), spec.columns[:3]
    ('label', 13, 26, ('label', 'I1', 'I2'))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from config.registry import DATASETS
from config.strict import ConfigError, from_dict, load_yaml

__all__ = [
    "BUILTIN_DATASETS",
    "CategoricalSpec",
    "DatasetSpec",
    "DenseSpec",
    "InputError",
    "LabelSpec",
    "TimePartsSpec",
    "TimeSpec",
    "builtin_spec",
    "load_spec",
]

Transform = Literal["none", "log1p", "log_square"]
TimePart = Literal["hour_of_day", "weekday", "is_weekend", "month", "year"]


FLOAT32_MAX = 3.4028234663852886e38  # the largest finite float32


class InputError(ValueError):
    """Raw input that cannot be processed at all (missing, empty, wrongly shaped file)."""


@dataclass(frozen=True)
class LabelSpec:
    """The click label: a 0/1 column, or ``value >= threshold`` of a numeric column (e.g. ratings)."""

    column: str
    threshold: float | None = None


@dataclass(frozen=True)
class DenseSpec:
    """A numeric column.

    ``transform``: ``log1p`` is log(1 + max(v, 0)); ``log_square`` is floor(ln(v)^2) for v > 2 and v
    otherwise (the Criteo discretisation used by OptEmbed, PEP and AutoDim). ``encode``: ``dense`` keeps a
    float; ``categorical`` sends the transformed value through a vocabulary; ``quantile`` buckets it by
    ``buckets`` training quantiles. Nulls become ``fill_null`` for ``dense`` and the missing id otherwise.

    ``max_abs`` bounds the raw value: a row whose value exceeds it in magnitude is rejected with its line, or,
    with ``clip``, the value is clipped to ``[-max_abs, max_abs]``. The default, 1e9, is far above the counts
    of Criteo's integer features (well below 1e8; the largest in the DeepCTR sample is 5e5) yet low enough that one
    stray value cannot swamp a column's mean and standard deviation; it can be at most the largest float32
    (3.4e38), so every kept value stays finite in the float32 shards. Non-numbers, ``nan`` and ``inf`` are
    unparseable, clipped or not.
    """

    name: str
    transform: Transform = "none"
    fill_null: float = 0.0
    encode: Literal["dense", "categorical", "quantile"] = "dense"
    buckets: int = 10
    min_count: int | None = None
    max_abs: float = 1e9
    clip: bool = False

    def __post_init__(self) -> None:
        if self.buckets < 2:
            raise ConfigError(f"dense field {self.name!r}: buckets must be >= 2, got {self.buckets}")
        if not (0 < self.max_abs <= FLOAT32_MAX):
            raise ConfigError(
                f"dense field {self.name!r}: max_abs must be > 0 and <= {FLOAT32_MAX:.8g} (float32), got {self.max_abs}"
            )


@dataclass(frozen=True)
class CategoricalSpec:
    """A categorical column: a vocabulary (``min_count``) or the stable hash (``hash_buckets``).

    With ``separator`` the column is multi-valued: each raw value is a list joined by ``separator``.
    """

    name: str
    min_count: int | None = None
    hash_buckets: int | None = None
    separator: str | None = None

    def __post_init__(self) -> None:
        if self.hash_buckets is not None and self.hash_buckets < 1:
            raise ConfigError(f"field {self.name!r}: hash_buckets must be >= 1, got {self.hash_buckets}")
        if self.min_count is not None and self.min_count < 1:
            raise ConfigError(f"field {self.name!r}: min_count must be >= 1, got {self.min_count}")


@dataclass(frozen=True)
class TimeSpec:
    """A time column: parsed with ``format`` (strptime), or read as unix seconds when ``format`` is null."""

    column: str
    format: str | None = None


@dataclass(frozen=True)
class TimePartsSpec:
    """Categorical fields derived from a time column (Avazu's ``hour``), named ``prefix + part``."""

    column: str
    parts: tuple[TimePart, ...]
    format: str | None = None
    prefix: str = ""


@dataclass(frozen=True)
class DatasetSpec:
    """Everything ``prepare`` needs to know about a raw dataset."""

    name: str
    label: LabelSpec
    format: Literal["delimited", "parquet", "movielens-100k"] = "delimited"
    delimiter: str = "auto"
    header: bool | None = None
    columns: tuple[str, ...] = ()
    dense: tuple[DenseSpec, ...] = ()
    categorical: tuple[CategoricalSpec, ...] = ()
    time: TimeSpec | None = None
    derive: tuple[TimePartsSpec, ...] = ()
    drop: tuple[str, ...] = ()
    min_count: int = 1

    def __post_init__(self) -> None:
        if self.delimiter != "auto" and len(self.delimiter) != 1:
            raise ConfigError(f"dataset {self.name!r}: delimiter must be one character or 'auto'")
        names = [d.name for d in self.dense] + [c.name for c in self.categorical]
        names += [p.prefix + part for p in self.derive for part in p.parts]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"dataset {self.name!r}: fields defined twice: {dupes}")
        if not names:
            raise ConfigError(f"dataset {self.name!r}: no dense or categorical fields")
        if self.columns:
            derived = {p.prefix + part for p in self.derive for part in p.parts}
            used = {self.label.column, *(n for n in names if n not in derived)}
            used |= {p.column for p in self.derive} | ({self.time.column} if self.time else set())
            missing = sorted(used - set(self.columns))
            if missing:
                raise ConfigError(f"dataset {self.name!r}: fields {missing} are not among `columns`")

    @property
    def required_columns(self) -> tuple[str, ...]:
        """Raw columns the pipeline reads, in a fixed order."""
        derived = {p.prefix + part for p in self.derive for part in p.parts}
        cols = [self.label.column]
        cols += [d.name for d in self.dense]
        cols += [c.name for c in self.categorical if c.name not in derived]
        cols += [p.column for p in self.derive]
        if self.time is not None:
            cols.append(self.time.column)
        return tuple(dict.fromkeys(cols))


def load_spec(path: str | Path) -> DatasetSpec:
    """Load a custom dataset spec from YAML, strictly."""
    return from_dict(DatasetSpec, load_yaml(path), where=str(path))


_CRITEO_DENSE = tuple(f"I{i}" for i in range(1, 14))
_CRITEO_CAT = tuple(f"C{i}" for i in range(1, 27))
_AVAZU_COLUMNS = (
    "id click hour C1 banner_pos site_id site_domain site_category app_id app_domain app_category "
    "device_id device_ip device_model device_type device_conn_type C14 C15 C16 C17 C18 C19 C20 C21"
).split()
_MOVIELENS_COLUMNS = "user_id item_id rating timestamp age gender occupation zip_code release_year genres".split()


def _criteo() -> DatasetSpec:
    return DatasetSpec(
        name="criteo",
        label=LabelSpec("label"),
        columns=("label", *_CRITEO_DENSE, *_CRITEO_CAT),
        dense=tuple(DenseSpec(n, transform="log1p") for n in _CRITEO_DENSE),  # DLRM's log(1 + max(v, 0))
        categorical=tuple(CategoricalSpec(n) for n in _CRITEO_CAT),
    )


def _avazu() -> DatasetSpec:
    skip = {"id", "click", "hour"}
    return DatasetSpec(
        name="avazu",
        label=LabelSpec("click"),
        delimiter=",",
        columns=tuple(_AVAZU_COLUMNS),
        categorical=tuple(CategoricalSpec(n) for n in _AVAZU_COLUMNS if n not in skip),
        derive=(TimePartsSpec("hour", ("hour_of_day", "weekday", "is_weekend"), format="%y%m%d%H"),),
        time=TimeSpec("hour", format="%y%m%d%H"),
        drop=("id",),
    )


def _movielens() -> DatasetSpec:
    cats = [CategoricalSpec(n) for n in _MOVIELENS_COLUMNS if n not in {"rating", "timestamp", "genres"}]
    return DatasetSpec(
        name="movielens",
        format="movielens-100k",
        label=LabelSpec("rating", threshold=4.0),
        columns=tuple(_MOVIELENS_COLUMNS),
        categorical=(*cats, CategoricalSpec("genres", separator="|")),
        time=TimeSpec("timestamp"),
    )


BUILTIN_DATASETS = {"criteo": _criteo, "avazu": _avazu, "movielens": _movielens}
assert tuple(BUILTIN_DATASETS) == DATASETS, f"BUILTIN_DATASETS {list(BUILTIN_DATASETS)} != config.registry.DATASETS"


def builtin_spec(name: str) -> DatasetSpec:
    if name not in BUILTIN_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; built-in datasets are {sorted(BUILTIN_DATASETS)}")
    return BUILTIN_DATASETS[name]()
