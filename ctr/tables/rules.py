"""How a virtual feature's ids are made from its field's ids: one small rule class per kind.

Every rule is a pure, vectorised map of non-negative int64 ids, identical across runs, processes and library
versions (hashing is SplitMix64 over ``id XOR mix64(salt)`` in uint64 numpy arithmetic, :func:`salted_bucket`).

Example:
    >>> salted_bucket(np.array([0, 1, 2, 3]), salt=7, buckets=10).tolist()
    [1, 5, 1, 3]
    >>> ids = np.array([0, 5, 11])
    >>> Modulo("f", offset=3, buckets=8).apply(ids).tolist(), Quotient("f", 4).apply(ids).tolist()
    ([3, 0, 6], [0, 1, 2])
    >>> Remainder("f", 4).apply(ids).tolist(), Identity("f").apply(ids).tolist()
    ([0, 1, 3], [0, 5, 11])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from features.hashing import mix64

__all__ = ["IdRule", "Identity", "Modulo", "Quotient", "Remainder", "SaltedHash", "salted_bucket"]

IntArray = npt.NDArray[np.int64]


def salted_bucket(ids: npt.NDArray[np.integer], salt: int, buckets: int) -> IntArray:
    """``mix64(id XOR mix64(salt)) mod buckets``, elementwise (ids must be >= 0)."""
    key = mix64(np.array([salt], dtype=np.uint64))[0]
    out: IntArray = (mix64(ids.astype(np.uint64) ^ key) % np.uint64(buckets)).astype(np.int64)
    return out


@dataclass(frozen=True)
class IdRule:
    """The rule of one virtual feature; ``field`` is the categorical field whose ids it reads."""

    field: str

    def apply(self, ids: IntArray) -> IntArray:
        raise NotImplementedError


@dataclass(frozen=True)
class Identity(IdRule):
    """The field's own ids (a full table)."""

    def apply(self, ids: IntArray) -> IntArray:
        return ids


@dataclass(frozen=True)
class SaltedHash(IdRule):
    """``salted_bucket(id, salt, buckets)``: per-field hashing, and each probe of Unified Embedding."""

    salt: int
    buckets: int

    def apply(self, ids: IntArray) -> IntArray:
        return salted_bucket(ids, self.salt, self.buckets)


@dataclass(frozen=True)
class Modulo(IdRule):
    """``(offset + id) mod buckets``: one shared table, fields stacked at their offsets, wrapping around."""

    offset: int
    buckets: int

    def apply(self, ids: IntArray) -> IntArray:
        return (ids + self.offset) % self.buckets


@dataclass(frozen=True)
class Quotient(IdRule):
    """``id // divisor``: the quotient table of a QR embedding."""

    divisor: int

    def apply(self, ids: IntArray) -> IntArray:
        return ids // self.divisor


@dataclass(frozen=True)
class Remainder(IdRule):
    """``id mod divisor``: the remainder table of a QR embedding."""

    divisor: int

    def apply(self, ids: IntArray) -> IntArray:
        return ids % self.divisor
