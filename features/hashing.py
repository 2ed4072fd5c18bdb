"""A stable, vectorised 64-bit hash for ids in the data path.

Polars' own ``Expr.hash`` may change between Polars versions, so ids that must match between training
and serving are hashed here instead: FNV-1a over the UTF-8 bytes of each string, finished with the
SplitMix64 mixer, with an optional salt mixed in before the finish. The loop runs over byte *positions*
(at most the longest string), each step a numpy operation over all rows, so there is no per-row Python.

Example:
    >>> import polars as pl
    >>> [hex(h) for h in stable_hash(pl.Series(["a", "ab", None]))]
    ['0x565e25cbdb1b0d6e', '0x2277c7f902a5be58', '0x0']
    >>> int(stable_hash(pl.Series(["a"]), salt=1)[0]) != int(stable_hash(pl.Series(["a"]))[0])
    True
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

__all__ = ["hash_expr", "mix64", "stable_hash"]

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)

U64 = npt.NDArray[np.uint64]


def mix64(x: U64) -> U64:
    """SplitMix64 finaliser: a bijection on uint64 with good avalanche (Steele et al., 2014)."""
    z = x + _GOLDEN
    z = (z ^ (z >> np.uint64(30))) * _M1
    z = (z ^ (z >> np.uint64(27))) * _M2
    return z ^ (z >> np.uint64(31))


def _fnv1a(strings: pa.LargeStringArray) -> U64:
    offsets = np.frombuffer(strings.buffers()[1], dtype=np.int64)[strings.offset : strings.offset + len(strings) + 1]
    data_buf = strings.buffers()[2]
    data = np.frombuffer(data_buf, dtype=np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(len(strings), _FNV_OFFSET, dtype=np.uint64)
    if len(strings) == 0:
        return h
    # Visit rows in order of decreasing length so that step j touches a prefix of the rows only.
    order = np.argsort(-lengths, kind="stable")
    sorted_len = lengths[order]
    sorted_start = starts[order]
    hs = h[order]
    for j in range(int(sorted_len[0])):
        k = int(np.searchsorted(-sorted_len, -j, side="left"))  # rows with length > j are hs[:k]
        hs[:k] ^= data[sorted_start[:k] + j].astype(np.uint64)
        hs[:k] *= _FNV_PRIME
    h[order] = hs
    return h


def stable_hash(values: pl.Series, salt: int = 0) -> U64:
    """Hash a String series to uint64; nulls hash to 0. Identical across runs, processes and versions."""
    if values.dtype != pl.String:
        values = values.cast(pl.String)
    arrow = values.to_arrow()
    if isinstance(arrow, pa.ChunkedArray):
        arrow = arrow.combine_chunks()
    arrow = arrow.cast(pa.large_string())
    h = mix64(_fnv1a(arrow) ^ mix64(np.full(len(arrow), salt, dtype=np.uint64)))
    if arrow.null_count:
        h[np.asarray(arrow.is_null())] = 0
    return h


def hash_expr(expr: pl.Expr, salt: int = 0) -> pl.Expr:
    """The same hash as a Polars expression (UInt64), usable inside lazy and streaming queries."""
    return expr.map_batches(
        lambda s: pl.Series(s.name, stable_hash(s, salt), dtype=pl.UInt64),
        return_dtype=pl.UInt64,
        is_elementwise=True,
    )
