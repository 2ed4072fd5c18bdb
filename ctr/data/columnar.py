"""Parquet shards -> ``Batch(dense_features, sparse_features: KeyedJaggedTensor, labels)`` for TorchRec.

Four layers, each usable on its own:

* :func:`load_split` reads every shard of one split (``FeatureMap.splits[split]``, paths relative to the
  prepared directory) into contiguous numpy arrays, a :class:`ColumnarSplit`, and checks each shard against
  the feature map on the way in (columns, dtypes, nulls, ``0 <= id < cardinality``).
* :meth:`ColumnarSplit.batch` gathers a batch of row indices into torchrec's own
  :class:`torchrec.datasets.utils.Batch`, fully vectorised (multi-valued fields included).
* :class:`EpochBatchSampler` yields index batches, reshuffled per epoch from ``(seed, epoch)`` and split
  across ranks so that every rank yields the same number of equally sized batches.
* :func:`make_loader` and :class:`CTRDataModule` wrap both in a ``DataLoader`` (``batch_size=None``, the
  sampler exposed as ``loader.sampler`` so Lightning's ``set_epoch`` call reaches it).

The KJT has one key per categorical field in feature-map order (single- and multi-valued fields interleaved
as in the map); ``values`` are int64 ids and ``lengths`` int32, key-major as KJT requires: all rows of key 0,
then all rows of key 1, ... A single-valued field has length 1 in every row.

Example:
    Three fields ``c0`` (single), ``m`` (multi-valued) and ``c1`` (single); batch rows ``[2, 1, 0]``::

                 row 2        row 1   row 0
        "c0"     [3]          [0]     [2]
        "m"      [0, 2, 3]    []      [2, 3]
        "c1"     [5]          [1]     [6]

    >>> import numpy as np
    >>> from features.schema import CategoricalField, FeatureMap
    >>> fm = FeatureMap(
    ...     dataset="toy", label="label", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
    ...     categorical=(
    ...         CategoricalField("c0", "vocab", 5),
    ...         CategoricalField("m", "vocab", 4, multi_valued=True),
    ...         CategoricalField("c1", "hash", 7),
    ...     ),
    ... )
    >>> split = ColumnarSplit(
    ...     fm,
    ...     dense=np.zeros((3, 0), np.float32),
    ...     labels=np.array([1, 0, 0], np.float32),
    ...     sparse=np.array([[2, 6], [0, 1], [3, 5]], np.int32),
    ...     multi={"m": CSRColumn(np.array([0, 2, 2, 5]), np.array([2, 3, 0, 2, 3], np.int32))},
    ... )
    >>> kjt = split.batch(np.array([2, 1, 0])).sparse_features
    >>> kjt.keys()
    ['c0', 'm', 'c1']
    >>> kjt.values().tolist()
    [3, 0, 2, 0, 2, 3, 2, 3, 5, 1, 6]
    >>> kjt.lengths().tolist()
    [1, 1, 1, 3, 0, 2, 1, 1, 1]
    >>> kjt.offsets().tolist()
    [0, 1, 2, 3, 6, 6, 8, 9, 10, 11]
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.schema import FeatureMap


class CSRColumn(NamedTuple):
    """A multi-valued field in CSR form: row ``i`` holds ``values[offsets[i]:offsets[i + 1]]``."""

    offsets: npt.NDArray[np.int64]  # [n + 1], offsets[0] == 0
    values: npt.NDArray[np.int32]  # [offsets[-1]]


class _Run(NamedTuple):
    """A segment of the KJT in key order: a run of single-valued columns, or one multi-valued field."""

    first_key: int  # position of the run's first key in feature-map order
    start: int  # single: first column of ``sparse``; multi: -1
    stop: int  # single: one past the last column; multi: -1
    multi: str | None  # name of the multi-valued field, or None for a single-valued run


class ColumnarSplit:
    """One split held in memory as contiguous arrays, ready to gather batches from.

    ``dense`` float32 [n, n_dense] and ``sparse`` int32 [n, n_single] are C-contiguous, in feature-map order
    (``sparse`` holds the single-valued fields only); ``labels`` float32 [n]; ``multi`` maps each
    multi-valued field to its :class:`CSRColumn`. Ids are not range-checked here (:func:`load_split` does
    that per shard); shapes and dtypes are.
    """

    def __init__(
        self,
        feature_map: FeatureMap,
        dense: npt.NDArray[np.float32],
        labels: npt.NDArray[np.float32],
        sparse: npt.NDArray[np.int32],
        multi: Mapping[str, CSRColumn],
    ) -> None:
        n = labels.shape[0]
        single = [f.name for f in feature_map.categorical if not f.multi_valued]
        multi_names = [f.name for f in feature_map.categorical if f.multi_valued]
        _expect(labels, np.float32, (n,), "labels")
        _expect(dense, np.float32, (n, len(feature_map.dense)), "dense")
        _expect(sparse, np.int32, (n, len(single)), "sparse")
        if sorted(multi) != sorted(multi_names):
            raise ValueError(f"multi-valued columns {sorted(multi)} do not match the feature map's {multi_names}")
        for name, col in multi.items():
            _expect(col.offsets, np.int64, (n + 1,), f"multi[{name!r}].offsets")
            _expect(col.values, np.int32, (col.values.shape[0],), f"multi[{name!r}].values")
            if col.offsets[0] != 0 or col.offsets[-1] != col.values.shape[0]:
                raise ValueError(
                    f"multi[{name!r}].offsets must run from 0 to len(values)={col.values.shape[0]}, "
                    f"got {col.offsets[0]}..{col.offsets[-1]}"
                )
        self.feature_map = feature_map
        self.dense = dense
        self.labels = labels
        self.sparse = sparse
        self.multi: dict[str, CSRColumn] = dict(multi)
        self.keys: list[str] = list(feature_map.sparse_names)
        self._runs = _plan_runs(feature_map)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def remapped(self, feature_map: FeatureMap, remaps: Mapping[str, npt.NDArray[np.int32]]) -> ColumnarSplit:
        """This split with every id of field ``f`` replaced by ``remaps[f][id]``, under ``feature_map``.

        How a pruned table reads its data: kept rows get new ids, pruned ones the OOV row's
        (:meth:`ctr.optembed.pruned.PrunedTables.remap`). One vectorised gather per field; the dense part is shared.
        """
        if sorted(remaps) != sorted(self.keys) or list(feature_map.sparse_names) != self.keys:
            raise ValueError(f"remaps for {sorted(remaps)} do not match the split's fields {self.keys}")
        single = [f.name for f in self.feature_map.categorical if not f.multi_valued]
        sparse = np.empty_like(self.sparse)
        for j, name in enumerate(single):
            sparse[:, j] = remaps[name][self.sparse[:, j]]
        multi = {name: CSRColumn(col.offsets, remaps[name][col.values]) for name, col in self.multi.items()}
        return ColumnarSplit(feature_map, self.dense, self.labels, sparse, multi)

    def batch(self, indices: npt.NDArray[np.integer[Any]]) -> Batch:
        """Gather rows ``indices`` (each in ``[0, len(self))``; not checked, this is the hot path)."""
        idx = np.asarray(indices, dtype=np.intp)
        b = idx.shape[0]
        single = self.sparse[idx]  # [b, n_single], one gather of contiguous rows
        # Multi-valued fields: the start and length of each selected row's slice.
        spans: dict[str, tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] = {}
        total = single.size
        for name, col in self.multi.items():
            starts = col.offsets[idx]
            lens = col.offsets[idx + 1] - starts
            spans[name] = (starts, lens)
            total += int(lens.sum())
        values = np.empty(total, dtype=np.int64)
        lengths = np.ones(len(self.keys) * b, dtype=np.int32)
        length_per_key: list[int] = []
        pos = 0
        for run in self._runs:
            if run.multi is None:
                width = run.stop - run.start
                # key-major: transpose [b, width] -> [width, b]; the int32 -> int64 cast happens in the copy
                values[pos : pos + width * b].reshape(width, b)[...] = single[:, run.start : run.stop].T
                length_per_key += [b] * width
                pos += width * b
            else:
                starts, lens = spans[run.multi]
                n_vals = int(lens.sum())
                # Jagged gather: output slot t of row i reads values[starts[i] + t - out_start[i]].
                out_start = np.cumsum(lens) - lens
                src = np.repeat(starts - out_start, lens) + np.arange(n_vals, dtype=np.int64)
                values[pos : pos + n_vals] = self.multi[run.multi].values[src]
                lengths[run.first_key * b : (run.first_key + 1) * b] = lens
                length_per_key.append(n_vals)
                pos += n_vals
        offset_per_key = [0, *np.cumsum(length_per_key, dtype=np.int64).tolist()]
        kjt = KeyedJaggedTensor(
            keys=list(self.keys),
            values=torch.from_numpy(values),
            lengths=torch.from_numpy(lengths),
            stride=b,
            # Known on the host here; passing them saves a device->host sync after ``Batch.to(cuda)``.
            length_per_key=length_per_key,
            offset_per_key=offset_per_key,
        )
        return Batch(
            dense_features=torch.from_numpy(self.dense[idx]),
            sparse_features=kjt,
            labels=torch.from_numpy(self.labels[idx]),
        )


def _expect(arr: npt.NDArray[Any], dtype: type[np.generic], shape: tuple[int, ...], what: str) -> None:
    if arr.dtype != dtype or arr.shape != shape or not arr.flags.c_contiguous:
        raise ValueError(
            f"{what}: expected a C-contiguous {np.dtype(dtype).name} array of shape {shape}, "
            f"got {arr.dtype.name} {arr.shape} (c_contiguous={arr.flags.c_contiguous})"
        )


def _plan_runs(fm: FeatureMap) -> tuple[_Run, ...]:
    runs: list[_Run] = []
    col = 0
    for k, f in enumerate(fm.categorical):
        if f.multi_valued:
            runs.append(_Run(k, -1, -1, f.name))
        elif runs and runs[-1].multi is None:
            runs[-1] = runs[-1]._replace(stop=col + 1)
            col += 1
        else:
            runs.append(_Run(k, col, col + 1, None))
            col += 1
    return tuple(runs)
