"""ctr/data/: shards -> ColumnarSplit -> Batch(dense, KJT, labels); sampler; loader; data module."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import polars as pl
import pytest
import torch
from lightning.fabric.utilities.data import _set_sampler_epoch
from torchrec import EmbeddingBagCollection, EmbeddingBagConfig
from torchrec.datasets.utils import Batch

from config.data import DataConfig
from ctr.data.columnar import ColumnarSplit
from ctr.data.datamodule import CTRDataModule
from ctr.data.loader import EpochBatchSampler, make_loader
from ctr.data.shards import load_split
from features.schema import CategoricalField, DenseField, FeatureMap

# Five training rows over two shards (rows 0-2 in part-0, rows 3-4 in part-1). Field order in the map is
# c0 (single), m (multi-valued), c1 (single), so the multi-valued key sits between two single-valued ones.
TRAIN: dict[str, list[Any]] = {
    "label": [1.0, 0.0, 1.0, 0.0, 1.0],
    "d0": [0.5, 1.5, 2.5, 3.5, 4.5],
    "d1": [-1.0, 0.0, 1.0, 2.0, 3.0],
    "c0": [2, 0, 4, 3, 1],
    "m": [[2, 3], [], [1], [0, 2, 3], [3]],
    "c1": [6, 1, 0, 5, 2],
}
VALID: dict[str, list[Any]] = {
    "label": [0.0, 1.0, 0.0],
    "d0": [9.0, 8.0, 7.0],
    "d1": [0.0, 0.0, 0.0],
    "c0": [1, 1, 1],
}
VALID |= {"m": [[1], [], [1, 1]], "c1": [3, 3, 3]}
CARD = {"c0": 5, "m": 4, "c1": 7}
DTYPES: dict[str, Any] = {
    "label": pl.Float32,
    "d0": pl.Float32,
    "d1": pl.Float32,
    "c0": pl.Int32,
    "m": pl.List(pl.Int32),
    "c1": pl.Int32,
}


def _fm(splits: dict[str, tuple[str, ...]]) -> FeatureMap:
    return FeatureMap(
        dataset="toy",
        label="label",
        dense=tuple(DenseField(name, "none", 0.0, 0.0, 1.0) for name in ("d0", "d1")),
        categorical=(
            CategoricalField("c0", "vocab", CARD["c0"]),
            CategoricalField("m", "vocab", CARD["m"], multi_valued=True),
            CategoricalField("c1", "hash", CARD["c1"], hash_buckets=5),
        ),
        splits=splits,
        source_spec={},
        seed=0,
        split_method="random",
    )


def _write(path: Path, rows: dict[str, list[Any]], dtypes: dict[str, Any] | None = None) -> None:
    dtypes = dtypes or DTYPES
    path.parent.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({k: pl.Series(k, v, dtype=dtypes[k]) for k, v in rows.items()}).write_parquet(path)


def _rows(table: dict[str, list[Any]], start: int, stop: int) -> dict[str, list[Any]]:
    return {k: v[start:stop] for k, v in table.items()}


@pytest.fixture
def prepared(tmp_path: Path) -> tuple[Path, FeatureMap]:
    """train: 2 shards (3 + 2 rows) plus an empty shard; valid: 1 shard; test: no shards."""
    _write(tmp_path / "train/part-0.parquet", _rows(TRAIN, 0, 3))
    _write(tmp_path / "train/part-1.parquet", _rows(TRAIN, 3, 5))
    _write(tmp_path / "train/part-2.parquet", _rows(TRAIN, 0, 0))
    _write(tmp_path / "valid/part-0.parquet", VALID)
    fm = _fm(
        {
            "train": ("train/part-0.parquet", "train/part-1.parquet", "train/part-2.parquet"),
            "valid": ("valid/part-0.parquet",),
            "test": (),
        }
    )
    fm.save(tmp_path / "feature_map.json")
    return tmp_path, FeatureMap.load(tmp_path)


# ------------------------------------------------------------------------------------ load_split, batch


def test_load_split_arrays(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    split = load_split(root, fm, "train")
    assert len(split) == 5
    np.testing.assert_array_equal(split.labels, np.array(TRAIN["label"], np.float32))
    np.testing.assert_array_equal(split.dense, np.array([TRAIN["d0"], TRAIN["d1"]], np.float32).T)
    np.testing.assert_array_equal(split.sparse, np.array([TRAIN["c0"], TRAIN["c1"]], np.int32).T)
    assert split.dense.flags.c_contiguous and split.sparse.flags.c_contiguous
    assert [a.dtype.name for a in (split.dense, split.labels, split.sparse)] == [
        "float32",
        "float32",
        "int32",
    ]
    # CSR across the shard boundary: part-1's offsets are shifted by part-0's 3 values.
    offsets, values = split.multi["m"]
    assert offsets.dtype == np.int64 and values.dtype == np.int32
    assert offsets.tolist() == [0, 2, 2, 3, 6, 7]
    assert values.tolist() == [2, 3, 1, 0, 2, 3, 3]


def test_batch_exact(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    batch = load_split(root, fm, "train").batch(np.array([3, 1, 0]))
    assert isinstance(batch, Batch)
    kjt = batch.sparse_features
    assert kjt.keys() == ["c0", "m", "c1"]
    #            row 3       row 1  row 0
    # "c0"       [3]         [0]    [2]
    # "m"        [0, 2, 3]   []     [2, 3]
    # "c1"       [5]         [1]    [6]
    assert kjt.values().dtype == torch.int64 and kjt.lengths().dtype == torch.int32
    assert kjt.values().tolist() == [3, 0, 2, 0, 2, 3, 2, 3, 5, 1, 6]
    assert kjt.lengths().tolist() == [1, 1, 1, 3, 0, 2, 1, 1, 1]
    assert kjt.offsets().tolist() == [0, 1, 2, 3, 6, 6, 8, 9, 10, 11]
    assert kjt.stride() == 3
    assert kjt.length_per_key() == [3, 5, 3]
    assert kjt.offset_per_key() == [0, 3, 8, 11]
    m = kjt.to_dict()["m"]
    assert m.values().tolist() == [0, 2, 3, 2, 3] and m.lengths().tolist() == [3, 0, 2]
    assert torch.equal(batch.dense_features, torch.tensor([[3.5, 2.0], [1.5, 0.0], [0.5, -1.0]]))
    assert torch.equal(batch.labels, torch.tensor([0.0, 0.0, 1.0]))


def test_batch_multi_only_empty_rows_and_empty_batch(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    split = load_split(root, fm, "train")
    kjt = split.batch(np.array([1, 1])).sparse_features  # the empty list row, twice
    assert kjt.values().tolist() == [0, 0, 1, 1]
    assert kjt.lengths().tolist() == [1, 1, 0, 0, 1, 1]
    empty = split.batch(np.array([], dtype=np.int64))
    assert empty.sparse_features.values().numel() == 0 and empty.sparse_features.lengths().numel() == 0
    assert empty.dense_features.shape == (0, 2) and empty.labels.shape == (0,)


def test_batch_matches_per_row_reference(prepared: tuple[Path, FeatureMap]) -> None:
    """Every 4-row batch of a random order equals a per-row Python build of the same KJT."""
    root, fm = prepared
    split = load_split(root, fm, "train")
    order = np.random.default_rng(0).permutation(5)
    for idx in (order[:4], order[4:], order):
        values: list[int] = []
        lengths: list[int] = []
        for key in ("c0", "m", "c1"):
            for i in idx:
                ids = TRAIN[key][i] if key == "m" else [TRAIN[key][i]]
                values += ids
                lengths.append(len(ids))
        kjt = split.batch(idx).sparse_features
        assert kjt.values().tolist() == values and kjt.lengths().tolist() == lengths


def test_batch_feeds_embedding_bag_collection(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    ebc = EmbeddingBagCollection(
        tables=[
            EmbeddingBagConfig(
                name=f"t_{f.name}", embedding_dim=4, num_embeddings=f.cardinality, feature_names=[f.name]
            )
            for f in fm.categorical
        ]
    )
    out = ebc(load_split(root, fm, "train").batch(np.array([3, 1, 0])).sparse_features)
    assert out.values().shape == (3, 12)
    assert torch.equal(out["m"][1], torch.zeros(4))  # row 1's empty list pools to zero (sum pooling)


def test_empty_split_and_unknown_split(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    split = load_split(root, fm, "test")
    assert len(split) == 0 and split.dense.shape == (0, 2) and split.multi["m"].offsets.tolist() == [0]
    with pytest.raises(ValueError, match=r"'nope'.*splits are"):
        load_split(root, fm, "nope")


# ------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda r, d: r.pop("c1"), r"part-1\.parquet: missing column 'c1'"),
        (
            lambda r, d: r.update(c0=[3, 5]),
            r"part-1\.parquet: column 'c0' has id 5 at row 1, outside \[0, 5\)",
        ),
        (lambda r, d: r.update(c1=[-1, 2]), r"part-1\.parquet: column 'c1' has id -1 at row 0"),
        (
            lambda r, d: r.update(m=[[], [1, 4]]),
            r"part-1\.parquet: column 'm' has id 4 at row 1, outside \[0, 4\)",
        ),
        (lambda r, d: d.update(c0=pl.Int64), r"part-1\.parquet: column 'c0' .* dtype int64, expected int32"),
        (lambda r, d: d.update(m=pl.Int32), r"column 'm' .* expected list<int32> \(multi_valued=True\)"),
        (
            lambda r, d: d.update(d0=pl.Float64),
            r"column 'd0' \(dense field\) has dtype double, expected float32",
        ),
        (
            lambda r, d: r.update(label=[None, 1.0]),
            r"part-1\.parquet: column 'label' has 1 null\(s\), first at row 0",
        ),
    ],
)
def test_schema_validation(prepared: tuple[Path, FeatureMap], change: Any, message: str) -> None:
    root, fm = prepared
    rows, dtypes = _rows(TRAIN, 3, 5), dict(DTYPES)
    change(rows, dtypes)
    if "m" in rows and dtypes["m"] == pl.Int32:
        rows["m"] = [1, 2]
    _write(root / "train/part-1.parquet", rows, dtypes)
    with pytest.raises(ValueError, match=message):
        load_split(root, fm, "train")


def test_missing_shard_file(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    (root / "train/part-1.parquet").unlink()
    with pytest.raises(FileNotFoundError, match=r"part-1\.parquet.*'train'"):
        load_split(root, fm, "train")


def test_columnar_split_constructor_checks(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    s = load_split(root, fm, "train")
    with pytest.raises(ValueError, match=r"sparse: expected a C-contiguous int32 array of shape \(5, 2\)"):
        ColumnarSplit(fm, s.dense, s.labels, s.sparse.astype(np.int64), s.multi)
    with pytest.raises(ValueError, match="multi-valued columns"):
        ColumnarSplit(fm, s.dense, s.labels, s.sparse, {})


# ------------------------------------------------------------------------------------ sampler


def _epoch(sampler: EpochBatchSampler) -> list[list[int]]:
    return [b.tolist() for b in sampler]


def _flat(batches: Iterable[list[Any]]) -> list[Any]:
    return list(itertools.chain.from_iterable(batches))


@pytest.mark.parametrize(
    ("drop_last", "expected"),
    [(False, [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]), (True, [[0, 1, 2, 3], [4, 5, 6, 7]])],
)
def test_sampler_sequential(drop_last: bool, expected: list[list[int]]) -> None:
    sampler = EpochBatchSampler(10, 4, shuffle=False, drop_last=drop_last)
    assert _epoch(sampler) == expected and len(sampler) == len(expected)


def test_sampler_shuffle_is_deterministic_and_reshuffles() -> None:
    a, b, c = (EpochBatchSampler(100, 8, shuffle=True, seed=s) for s in (7, 7, 8))
    first = _epoch(a)
    assert first == _epoch(b)  # same seed, same epoch
    assert first != _epoch(c)  # another seed
    assert sorted(_flat(first)) == list(range(100))  # a permutation
    a.set_epoch(1)
    assert _epoch(a) != first and sorted(_flat(_epoch(a))) == list(range(100))
    a.set_epoch(0)
    assert _epoch(a) == first


@pytest.mark.parametrize(
    ("num_rows", "world_size", "batch_size", "drop_last"),
    [
        (100, 4, 8, False),
        (100, 4, 8, True),
        (103, 4, 8, False),
        (10, 3, 4, False),
        (7, 2, 16, True),
        (3, 4, 2, False),
    ],
)
def test_sampler_ranks_disjoint_and_equal(num_rows: int, world_size: int, batch_size: int, drop_last: bool) -> None:
    for epoch in (0, 1):
        per_rank = []
        for rank in range(world_size):
            s = EpochBatchSampler(
                num_rows,
                batch_size,
                shuffle=True,
                seed=3,
                rank=rank,
                world_size=world_size,
                drop_last=drop_last,
            )
            s.set_epoch(epoch)
            batches = _epoch(s)
            assert len(batches) == len(s)
            per_rank.append(batches)
        # exactly the same number of batches, with the same sizes, on every rank
        shapes = {tuple(len(b) for b in batches) for batches in per_rank}
        assert len(shapes) == 1
        seen = [i for batches in per_rank for b in batches for i in b]
        assert len(seen) == len(set(seen))  # no index twice across ranks
        assert num_rows - len(seen) <= world_size - 1 + (world_size * (batch_size - 1) if drop_last else 0)
        if num_rows % world_size == 0 and not drop_last:
            assert sorted(seen) == list(range(num_rows))


def test_sampler_rank_split_shares_one_global_permutation() -> None:
    ranks = [EpochBatchSampler(12, 3, shuffle=True, seed=1, rank=r, world_size=2) for r in range(2)]
    whole = EpochBatchSampler(12, 6, shuffle=True, seed=1)
    # two ranks at batch 3 take the two halves of each global batch one process sees at batch 6
    per_rank = [_epoch(r) for r in ranks]
    assert [_flat([a, b]) for a, b in zip(*per_rank, strict=True)] == [_flat([w]) for w in _epoch(whole)]


def test_sampler_resume_skips_trained_batches() -> None:
    sampler = EpochBatchSampler(10, 2, shuffle=True, seed=4)
    sampler.set_epoch(3)
    full = _epoch(sampler)
    sampler.resume_from(3, 2)
    assert _flat(_epoch(sampler)) == _flat(full[2:])
    assert _flat(_epoch(sampler)) == _flat(full)  # only the interrupted epoch is shortened


@pytest.mark.parametrize(
    "kwargs",
    [{"batch_size": 0}, {"rank": 2, "world_size": 2}, {"world_size": 0}, {"seed": -1}, {"num_rows": -1}],
)
def test_sampler_rejects_bad_arguments(kwargs: dict[str, int]) -> None:
    args: dict[str, Any] = {"num_rows": 10, "batch_size": 4, "shuffle": True} | kwargs
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        EpochBatchSampler(**args)


# ------------------------------------------------------------------------------------ loader, data module


def test_make_loader_exposes_sampler_to_lightning(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    split = load_split(root, fm, "train")
    loader = make_loader(split, 2, shuffle=True, seed=0)
    assert isinstance(loader.sampler, EpochBatchSampler) and len(loader) == 3
    _set_sampler_epoch(loader, 5)  # what Lightning's fit loop calls every epoch
    assert loader.sampler.epoch == 5
    batches = list(loader)
    assert [b.labels.shape[0] for b in batches] == [2, 2, 1]
    expected = [split.batch(idx).labels.tolist() for idx in loader.sampler]
    assert [b.labels.tolist() for b in batches] == expected


def test_make_loader_with_worker_matches_in_process(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    split = load_split(root, fm, "train")
    main = list(make_loader(split, 2, shuffle=True, seed=4))
    worker = list(make_loader(split, 2, shuffle=True, seed=4, num_workers=1))
    for a, b in zip(main, worker, strict=True):
        assert torch.equal(a.sparse_features.values(), b.sparse_features.values())
        assert torch.equal(a.sparse_features.lengths(), b.sparse_features.lengths())
        assert torch.equal(a.dense_features, b.dense_features)


def test_data_module_fit(prepared: tuple[Path, FeatureMap]) -> None:
    root, fm = prepared
    dm = CTRDataModule(DataConfig(path=str(root), batch_size=2, eval_batch_size=2))
    assert dm.feature_map == fm
    dm.setup("fit")
    train = list(dm.train_dataloader())
    assert [b.dense_features.shape for b in train] == [(2, 2), (2, 2), (1, 2)]
    assert all(b.sparse_features.keys() == ["c0", "m", "c1"] for b in train)
    assert sorted(_flat(b.labels.tolist() for b in train)) == sorted(TRAIN["label"])
    val = list(dm.val_dataloader())
    assert [b.labels.tolist() for b in val] == [[0.0, 1.0], [0.0]]  # in order, not shuffled
    with pytest.raises(RuntimeError, match="'test' is not loaded"):
        dm.test_dataloader()
    dm.setup("test")
    assert list(dm.test_dataloader()) == []  # a split with no shards gives no batches


def test_data_module_ranks_from_trainer(prepared: tuple[Path, FeatureMap]) -> None:
    root, _ = prepared
    seen: list[float] = []
    for rank in range(2):
        dm = CTRDataModule(DataConfig(path=str(root), batch_size=1))
        dm.trainer = SimpleNamespace(global_rank=rank, world_size=2)  # type: ignore[assignment]
        dm.setup("fit")
        train, val = list(dm.train_dataloader()), list(dm.val_dataloader())
        assert (len(train), len(val)) == (2, 1)  # 5 // 2 and 3 // 2 rows per rank, batch 1
        seen += [b.dense_features[0, 0].item() for b in train]
    assert len(set(seen)) == 4


def test_data_module_refuses_lightning_distributed_sampler(prepared: tuple[Path, FeatureMap]) -> None:
    root, _ = prepared
    dm = CTRDataModule(DataConfig(path=str(root)))
    dm.trainer = SimpleNamespace(  # type: ignore[assignment]
        global_rank=0, world_size=2, _accelerator_connector=SimpleNamespace(use_distributed_sampler=True)
    )
    with pytest.raises(ValueError, match="use_distributed_sampler=False"):
        dm.setup("fit")


def test_data_config_strict() -> None:
    cfg = DataConfig.from_dict({"path": "d", "batch_size": 8})
    assert cfg == DataConfig(path="d", batch_size=8) and cfg.resolved_eval_batch_size == 8
    with pytest.raises(ValueError, match="unknown key 'batchsize'"):
        DataConfig.from_dict({"path": "d", "batchsize": 8})
    with pytest.raises(ValueError, match="missing required key 'path'"):
        DataConfig.from_dict({})
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        DataConfig(path="d", batch_size=0)
    with pytest.raises(ValueError, match="shuffle: expected true/false, got 'yes'"):
        DataConfig.from_dict({"path": "d", "shuffle": "yes"})
    with pytest.raises(ValueError, match=r"unknown key 'batch_sise' \(did you mean 'batch_size'\?\)"):
        DataConfig.from_dict({"path": "d", "batch_sise": 8})
    with pytest.raises(AttributeError):
        cfg.batch_size = 4  # type: ignore[misc]
