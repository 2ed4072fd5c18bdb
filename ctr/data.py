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

import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import lightning
import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, Dataset, Sampler
from torchrec.datasets.utils import Batch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from features.schema import FeatureMap, FeatureMapError
from features.strict import from_dict

__all__ = [
    "CSRColumn",
    "CTRDataModule",
    "ColumnarSplit",
    "DataConfig",
    "EpochBatchSampler",
    "ResumableLoader",
    "ShardError",
    "load_split",
    "make_loader",
]

IndexBatch = npt.NDArray[np.int64]


# --------------------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared data lives and how it is batched.

    ``batch_size`` and ``eval_batch_size`` are per rank; ``eval_batch_size=None`` means ``batch_size``.
    ``seed`` and the epoch number fix the training order (see :class:`EpochBatchSampler`).
    """

    path: str
    batch_size: int = 4096
    eval_batch_size: int | None = None
    shuffle: bool = True
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"DataConfig.path must be a non-empty string, got {self.path!r}")
        for name in ("batch_size", "eval_batch_size", "seed", "num_workers"):
            value = getattr(self, name)
            if value is None and name == "eval_batch_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"DataConfig.{name} must be an int, got {value!r}")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"DataConfig.shuffle must be a bool, got {self.shuffle!r}")
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"DataConfig.eval_batch_size must be >= 1 or None, got {self.eval_batch_size}")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed must be >= 0, got {self.seed}")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataConfig:
        """Strict loader: an unknown key is an error naming it and the nearest valid key."""
        return from_dict(cls, dict(raw))

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size


# --------------------------------------------------------------------------------------------- columns


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
        (:meth:`ctr.pruned.PrunedTables.remap`). One vectorised gather per field; the dense part is shared.
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


# --------------------------------------------------------------------------------------------- loading


class ShardError(FeatureMapError):
    """A shard of a prepared dataset is unreadable (truncated, corrupt) or does not match its feature map;
    the message starts with the shard's path."""


@contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn Arrow's errors on a damaged file (``ArrowInvalid``: no footer; ``OSError``: an undecodable page)
    into a :class:`ShardError` naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # not the file's content: a missing file, no permission (the CLI names the file)
        problem = " ".join(str(e).split())  # one line
        raise ShardError(f"{path}: unreadable parquet shard, truncated or corrupt ({problem})") from e


def _check_counts(root: Path, split: str, paths: list[Path], counts: list[int]) -> None:
    """The rows the footers hold add up to what ``prepare`` wrote (``report.json``, when there is one)."""
    report = root / "report.json"
    try:
        written = json.loads(report.read_text())["rows_written"][split]
    except (OSError, ValueError, KeyError, TypeError):
        return  # no report (data written by other means) or not one of ours: nothing to compare with
    if isinstance(written, int) and written != sum(counts):
        raise ShardError(
            f"{paths[0].parent if paths else root}: the shards of split {split!r} hold {sum(counts)} rows, "
            f"{report} says {written} were written"
        )


def load_split(data_dir: str | Path, fm: FeatureMap, split: str, *, standardize: bool = True) -> ColumnarSplit:
    """Read every shard of ``split`` into one :class:`ColumnarSplit`, validating each shard.

    With ``standardize`` the dense columns are standardised with the feature map's training mean and std
    (the transforms already made them log-scaled; this puts them on the scale the dense layers expect).

    A split with no shards, or with empty shards, gives a split of 0 rows. Columns not in the feature map
    are ignored. A missing column, a wrong dtype, a null, or an id outside ``[0, cardinality)`` raises
    :class:`ShardError` (a ``ValueError``) naming the shard file, the column and the bad value; so does a
    truncated or corrupt shard, or shards holding another number of rows than ``report.json`` says.
    """
    if split not in fm.splits:
        raise ValueError(f"split {split!r} is not in the feature map; its splits are {sorted(fm.splits)}")
    root = Path(data_dir)
    paths = [root / rel for rel in fm.splits[split]]
    counts: list[int] = []
    for path in paths:  # pass 1: schemas and row counts, from the parquet footers only
        if not path.is_file():
            raise FileNotFoundError(f"{path}: shard of split {split!r} listed in the feature map is missing")
        with _reading(path):
            meta = pq.ParquetFile(path)
        _check_schema(meta.schema_arrow, fm, path)
        counts.append(int(meta.metadata.num_rows))
    _check_counts(root, split, paths, counts)

    n = sum(counts)
    single = [f for f in fm.categorical if not f.multi_valued]
    dense = np.empty((n, len(fm.dense)), dtype=np.float32)
    labels = np.empty(n, dtype=np.float32)
    sparse = np.empty((n, len(single)), dtype=np.int32)
    multi_parts: dict[str, tuple[list[npt.NDArray[np.int64]], list[npt.NDArray[np.int32]]]] = {
        f.name: ([np.zeros(1, dtype=np.int64)], []) for f in fm.categorical if f.multi_valued
    }
    columns = [fm.label, *fm.dense_names, *fm.sparse_names]
    row = 0
    for path, count in zip(paths, counts, strict=True):  # pass 2: data, written straight into place
        with _reading(path):
            table = pq.read_table(path, columns=columns)
        if table.num_rows != count:
            raise ShardError(f"{path}: holds {table.num_rows} rows, its footer says {count}")
        stop = row + count
        labels[row:stop] = _plain(table, fm.label, path)
        for j, name in enumerate(fm.dense_names):
            dense[row:stop, j] = _plain(table, name, path)
        for j, f in enumerate(single):
            ids = _plain(table, f.name, path)
            _check_range(ids, f.cardinality, path, f.name)
            sparse[row:stop, j] = ids
        for name, (offsets, values) in multi_parts.items():
            card = fm.field(name).cardinality
            shard_offsets, shard_values = _csr(table, name, path)
            _check_range(shard_values, card, path, name, shard_offsets)
            offsets.append(shard_offsets[1:] + offsets[-1][-1])
            values.append(shard_values)
        row = stop

    multi = {
        name: CSRColumn(np.concatenate(offsets), np.concatenate(values) if values else np.empty(0, np.int32))
        for name, (offsets, values) in multi_parts.items()
    }
    if standardize and fm.dense:
        mean = np.array([f.mean for f in fm.dense], dtype=np.float32)
        std = np.array([f.std if f.std > 0 else 1.0 for f in fm.dense], dtype=np.float32)
        dense -= mean
        dense /= std
    return ColumnarSplit(fm, dense=dense, labels=labels, sparse=sparse, multi=multi)


def _check_schema(schema: pa.Schema, fm: FeatureMap, path: Path) -> None:
    expected: list[tuple[str, str, bool]] = [(fm.label, "label", False)]
    expected += [(name, "dense field", False) for name in fm.dense_names]
    expected += [(f.name, "categorical field", f.multi_valued) for f in fm.categorical]
    for name, role, multi_valued in expected:
        if schema.get_field_index(name) < 0:
            raise ShardError(f"{path}: missing column {name!r} ({role}); the shard has columns {schema.names}")
        got = schema.field(name).type
        if role == "categorical field":
            want = "list<int32> (multi_valued=True)" if multi_valued else "int32"
            ok = (
                (pa.types.is_list(got) or pa.types.is_large_list(got)) and got.value_type == pa.int32()
                if multi_valued
                else got == pa.int32()
            )
        else:
            want, ok = "float32", got == pa.float32()
        if not ok:
            raise ShardError(f"{path}: column {name!r} ({role}) has dtype {got}, expected {want}")


def _plain(table: pa.Table, name: str, path: Path) -> npt.NDArray[Any]:
    col = table.column(name)
    if col.null_count:
        first = int(np.flatnonzero(col.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{path}: column {name!r} has {col.null_count} null(s), first at row {first}")
    return np.asarray(col.to_numpy())


def _csr(table: pa.Table, name: str, path: Path) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int32]]:
    arr = table.column(name).combine_chunks()
    if arr.null_count:
        first = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise ShardError(f"{path}: column {name!r} has {arr.null_count} null list(s), first at row {first}")
    flat = arr.flatten()  # respects slicing, unlike ``.values``
    if flat.null_count:
        raise ShardError(f"{path}: column {name!r} has {flat.null_count} null id(s) inside its lists")
    offsets = arr.offsets.to_numpy().astype(np.int64)
    return offsets - offsets[0], np.ascontiguousarray(flat.to_numpy(), dtype=np.int32)


def _check_range(
    ids: npt.NDArray[np.int32],
    cardinality: int,
    path: Path,
    name: str,
    offsets: npt.NDArray[np.int64] | None = None,
) -> None:
    if ids.size == 0 or (int(ids.min()) >= 0 and int(ids.max()) < cardinality):
        return
    pos = int(np.flatnonzero((ids < 0) | (ids >= cardinality))[0])
    row = pos if offsets is None else int(np.searchsorted(offsets, pos, side="right") - 1)
    raise ShardError(
        f"{path}: column {name!r} has id {int(ids[pos])} at row {row}, outside [0, {cardinality}) "
        f"(the field's cardinality is {cardinality})"
    )


# --------------------------------------------------------------------------------------------- sampling


class EpochBatchSampler(Sampler[IndexBatch]):
    """Index batches for one rank, reshuffled every epoch, identical in count and size on every rank.

    The global order is ``np.random.default_rng([seed, epoch]).permutation(num_rows)`` (``arange`` when
    ``shuffle=False``); every rank computes the same order and cuts it into *global* batches of
    ``batch_size * world_size`` rows; rank ``r`` takes the ``r``-th ``batch_size`` slice of each. So N ranks at
    ``batch_size`` see exactly the global batches one process sees at ``N * batch_size`` (the same SGD steps),
    and every rank yields the same number of equally sized batches, as TorchRec's collectives require.

    A trailing partial global batch is dropped with ``drop_last``; otherwise its rows are split equally over
    the ranks (up to ``world_size - 1`` rows are left out when they do not divide evenly). No index appears
    twice in one epoch across all ranks. ``set_epoch`` takes effect for iterators that have not yet drawn
    their first batch; ``resume_from`` skips batches already trained on (mid-epoch resume).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {num_rows}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        global_batch = batch_size * world_size
        self._full = num_rows // global_batch
        self._tail = 0 if drop_last else (num_rows - self._full * global_batch) // world_size
        self._resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of ``epoch`` (mid-epoch resume after an interruption)."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self._full + (1 if self._tail > 0 else 0)

    def __iter__(self) -> Iterator[IndexBatch]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows, dtype=np.int64)
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        bs, g = self.batch_size, self.batch_size * self.world_size
        for i in range(skip, self._full):
            start = i * g + self.rank * bs
            yield order[start : start + bs]
        if self._tail > 0 and skip <= self._full:
            start = self._full * g + self.rank * self._tail
            yield order[start : start + self._tail]


# --------------------------------------------------------------------------------------------- loaders


class _SplitDataset(Dataset[Batch]):
    """Map-style dataset whose items are whole batches: ``dataset[index_array] -> Batch``."""

    def __init__(self, split: ColumnarSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: IndexBatch) -> Batch:
        return self.split.batch(indices)


def _identity(batch: Batch) -> Batch:
    return batch


class ResumableLoader(DataLoader[Batch]):
    """A DataLoader whose position Lightning saves in checkpoints (``state_dict``/``load_state_dict``).

    ``batches_done`` is kept up to date by the training loop (see ``ctr.train.LoaderProgress``); on resume
    the sampler skips the batches of the interrupted epoch that were already trained on.
    """

    batches_done: int = 0

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, EpochBatchSampler)
        return {"epoch": sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochBatchSampler)
        sampler.resume_from(int(state["epoch"]), int(state["batches_done"]))
        self.batches_done = int(state["batches_done"])


def make_loader(
    split: ColumnarSplit,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader[Batch]:
    """A ``DataLoader`` of :class:`Batch` whose ``.sampler`` is an :class:`EpochBatchSampler`.

    ``batch_size`` is per rank. The sampler runs in the main process, so ``loader.sampler.set_epoch`` (called
    by Lightning each epoch) works with workers too; workers only gather batches.
    """
    sampler = EpochBatchSampler(
        len(split),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
    return ResumableLoader(
        _SplitDataset(split),
        batch_size=None,
        sampler=sampler,
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )


_STAGE_SPLITS: dict[str | None, tuple[str, ...]] = {
    "fit": ("train", "valid"),
    "validate": ("valid",),
    "test": ("test",),
    "predict": (),
    None: ("train", "valid", "test"),
}


class CTRDataModule(lightning.LightningDataModule):
    """Train/valid/test loaders over a prepared directory, sharded by rank.

    Rank and world size come from the attached trainer (``global_rank``, ``world_size``), else 0 and 1.
    Training is shuffled per epoch. The trailing partial global batch is split equally over the ranks, in
    training as in evaluation, so a split smaller than one global batch (``batch_size * world_size`` rows)
    still gives every rank one batch of ``n // world_size`` rows: the per-process batch shrinks, and N
    processes take the same steps as one. (Dropping it left small splits with no training batch at all.)
    Up to ``world_size - 1`` trailing rows of a split are left out (every rank must run the same number of
    batches; padding would count rows twice). Evaluation is not shuffled.

    Multi-process training must use ``Trainer(use_distributed_sampler=False)``: the sampler already shards
    by rank, and Lightning would otherwise wrap it in a ``DistributedSampler``; :meth:`setup` refuses that.
    """

    def __init__(self, config: DataConfig, transform: Callable[[ColumnarSplit], ColumnarSplit] | None = None) -> None:
        """``transform`` applies to every split once loaded (a pruned table's id remap)."""
        super().__init__()
        self.config = config
        self.transform = transform
        self._feature_map: FeatureMap | None = None
        self._splits: dict[str, ColumnarSplit] = {}
        self.rank = 0
        self.world_size = 1

    @property
    def feature_map(self) -> FeatureMap:
        """The prepared directory's feature map (loaded on first use, so a model can be built before fit)."""
        if self._feature_map is None:
            self._feature_map = FeatureMap.load(self.config.path)
        return self._feature_map

    def setup(self, stage: str | None = None) -> None:
        if stage not in _STAGE_SPLITS:
            raise ValueError(f"unknown stage {stage!r}; expected one of {list(_STAGE_SPLITS)}")
        trainer = self.trainer
        if trainer is not None:
            self.rank, self.world_size = int(trainer.global_rank), int(trainer.world_size)
            connector = getattr(trainer, "_accelerator_connector", None)
            if self.world_size > 1 and getattr(connector, "use_distributed_sampler", False):
                raise ValueError(
                    "CTRDataModule shards rows by rank itself; construct the Trainer with "
                    "use_distributed_sampler=False (otherwise Lightning wraps EpochBatchSampler in a "
                    f"DistributedSampler and each of the {self.world_size} ranks sees a fraction of its "
                    "batches)"
                )
        fm = self.feature_map
        for name in _STAGE_SPLITS[stage]:
            if name in fm.splits and name not in self._splits:
                split = load_split(self.config.path, fm, name)
                self._splits[name] = self.transform(split) if self.transform is not None else split

    def split(self, name: str) -> ColumnarSplit:
        if name not in self._splits:
            raise RuntimeError(
                f"split {name!r} is not loaded: call setup() for a stage that needs it first "
                f"(the feature map has splits {sorted(self.feature_map.splits)})"
            )
        return self._splits[name]

    def train_dataloader(self) -> DataLoader[Batch]:
        return make_loader(
            self.split("train"),
            self.config.batch_size,
            shuffle=self.config.shuffle,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=False,
            num_workers=self.config.num_workers,
        )

    def val_dataloader(self) -> DataLoader[Batch]:
        return self._eval_loader("valid")

    def test_dataloader(self) -> DataLoader[Batch]:
        return self._eval_loader("test")

    def _eval_loader(self, name: str) -> DataLoader[Batch]:
        return make_loader(
            self.split(name),
            self.config.resolved_eval_batch_size,
            shuffle=False,
            seed=self.config.seed,
            rank=self.rank,
            world_size=self.world_size,
            drop_last=False,
            num_workers=self.config.num_workers,
        )
