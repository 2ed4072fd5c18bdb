"""The `FeatureMap`: the only contract between preprocessing and the model.

A prepared dataset directory looks like this::

    DIR/feature_map.json      this file's dataclasses, as JSON
    DIR/report.json           row accounting (rows_read == sum(rows_written) + rows_rejected)
    DIR/rejects.parquet       quarantined rows: file, line, reason, raw text
    DIR/vocab/<field>.parquet value, count, id for every vocabulary field
    DIR/train/part-*.parquet  encoded shards (also valid/, test/)

Every shard has the columns ``label`` (Float32), one Float32 column per dense field and one Int32 column
per categorical field (``List[Int32]`` for multi-valued fields). Categorical ids are laid out as::

    0          missing (null or empty raw value)
    1          out of vocabulary (below min-count, or unseen when the map is applied to new data)
    2 .. n-1   vocabulary values in descending training frequency (ties broken by value)

so ``cardinality`` (the embedding table's row count) is ``n``. A hashed field has no vocabulary:
its ids are ``2 + stable_hash(value) % hash_buckets`` and its cardinality ``hash_buckets + 2``.

Example:
    >>> fm = FeatureMap.load("prepared/feature_map.json")  # doctest: +SKIP
    >>> [f.name for f in fm.categorical][:2], fm.categorical[0].cardinality  # doctest: +SKIP
    (['C1', 'C2'], 1460)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "FIRST_VALUE_ID",
    "FORMAT_VERSION",
    "MISSING_ID",
    "OOV_ID",
    "CategoricalField",
    "DenseField",
    "FeatureMap",
    "FeatureMapError",
]

MISSING_ID = 0
OOV_ID = 1
FIRST_VALUE_ID = 2
FORMAT_VERSION = 1


class FeatureMapError(ValueError):
    """A feature map file is missing, corrupt or of another version."""


@dataclass(frozen=True)
class DenseField:
    """A numeric input that reaches the model as a float.

    ``transform`` is applied after null filling; ``mean``/``std`` are training statistics of the
    transformed value (for standardisation downstream, not applied to the shards).
    """

    name: str
    transform: str
    fill_null: float
    mean: float
    std: float


@dataclass(frozen=True)
class CategoricalField:
    """A sparse input: one embedding table of ``cardinality`` rows.

    ``kind`` says where the ids come from: ``vocab`` (a fitted vocabulary in ``vocab_file``),
    ``hash`` (stable hash into ``hash_buckets``), or ``quantile`` (a dense value bucketised by the
    training quantiles in ``boundaries``). ``multi_valued`` fields hold a list of ids per row.
    """

    name: str
    kind: str
    cardinality: int
    multi_valued: bool = False
    min_count: int = 1
    hash_buckets: int | None = None
    vocab_file: str | None = None
    vocab_size: int = 0
    boundaries: tuple[float, ...] = ()
    transform: str = "none"


@dataclass(frozen=True)
class FeatureMap:
    """Fields, their encodings and the shards of each split, plus the spec that produced them."""

    dataset: str
    label: str
    dense: tuple[DenseField, ...]
    categorical: tuple[CategoricalField, ...]
    splits: dict[str, tuple[str, ...]]
    source_spec: dict[str, Any]
    seed: int
    split_method: str
    version: int = FORMAT_VERSION
    content_hash: str = field(default="")

    @property
    def dense_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.dense)

    @property
    def sparse_names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.categorical)

    def field(self, name: str) -> CategoricalField:
        for f in self.categorical:
            if f.name == name:
                return f
        raise KeyError(f"no categorical field {name!r}; fields are {list(self.sparse_names)}")

    def compute_hash(self) -> str:
        """SHA-256 over everything but the hash itself; vocabulary files are covered by their own hashes."""
        body = _to_jsonable(self)
        body.pop("content_hash", None)
        return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()

    def with_hash(self) -> FeatureMap:
        return FeatureMap(**{**self.__dict__, "content_hash": self.compute_hash()})

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(_to_jsonable(self.with_hash()), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> FeatureMap:
        path = Path(path)
        if path.is_dir():
            path = path / "feature_map.json"
        if not path.is_file():
            raise FeatureMapError(f"{path}: feature map not found")
        try:
            raw = json.loads(path.read_text())
            if raw.get("version") != FORMAT_VERSION:
                raise FeatureMapError(f"{path}: feature map version {raw.get('version')!r}, expected {FORMAT_VERSION}")
            fm = cls(
                dataset=raw["dataset"],
                label=raw["label"],
                dense=tuple(DenseField(**d) for d in raw["dense"]),
                categorical=tuple(
                    CategoricalField(**{**c, "boundaries": tuple(c.get("boundaries", ()))}) for c in raw["categorical"]
                ),
                splits={k: tuple(v) for k, v in raw["splits"].items()},
                source_spec=raw["source_spec"],
                seed=raw["seed"],
                split_method=raw["split_method"],
                version=raw["version"],
                content_hash=raw["content_hash"],
            )
        except FeatureMapError:
            raise
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise FeatureMapError(f"{path}: corrupt feature map ({type(e).__name__}: {e})") from e
        if fm.compute_hash() != fm.content_hash:
            raise FeatureMapError(f"{path}: content hash mismatch (file edited or corrupt)")
        return fm


def _to_jsonable(fm: FeatureMap) -> dict[str, Any]:
    d = asdict(fm)
    d["splits"] = {k: list(v) for k, v in fm.splits.items()}
    out: dict[str, Any] = json.loads(json.dumps(d))
    return out
