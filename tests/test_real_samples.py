"""The real samples in ../shared/data: Criteo (200 rows), Avazu (9,000 + 1,000 rows), MovieLens-100K."""

from __future__ import annotations

from pathlib import Path

import polars as pl

from features.prepare import PrepareOptions, apply_feature_map, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec

QUIET = PrepareOptions(progress=False)


def all_rows(out: Path) -> pl.DataFrame:
    fm = FeatureMap.load(out)
    return pl.concat([pl.read_parquet(out / p) for files in fm.splits.values() for p in files])


def test_criteo_sample_csv_with_header(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / "criteo_deepctr_sample" / "criteo_sample.txt"
    report = prepare(builtin_spec("criteo"), [src], tmp_path / "out", QUIET)
    assert report["rows_read"] == 200 and report["rows_rejected"] == 0
    df = all_rows(tmp_path / "out")
    assert df.height == 200
    assert df["label"].mean() == 0.245  # VERIFY.txt: label_rate=0.2450
    fm = FeatureMap.load(tmp_path / "out")
    # VERIFY.txt: C1 has 27 distinct values; the vocabulary sees only the train split (+2 reserved ids).
    assert fm.field("C1").cardinality <= 27 + 2
    assert all(df[f.name].max() < f.cardinality for f in fm.categorical)  # type: ignore[operator]


def test_avazu_two_files_header_and_no_header(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "avazu_head10k"
    report = prepare(builtin_spec("avazu"), [d / "train_9000.csv", d / "test_1000_noheader.csv"], tmp_path / "o", QUIET)
    assert report["rows_read"] == 9999 and report["rows_rejected"] == 0
    df = all_rows(tmp_path / "o")
    assert abs(df["label"].mean() - 0.1706) < 1e-4  # VERIFY.txt: combined label_rate=0.1706
    assert "id" not in df.columns and "hour" not in df.columns
    fm = FeatureMap.load(tmp_path / "o")
    vocab = {f.name: pl.read_parquet(tmp_path / "o" / f.vocab_file) for f in fm.categorical if f.vocab_file}
    # All rows are from hour 14102100: 2014-10-21 00:00, a Tuesday (ISO weekday 2), not a weekend.
    assert vocab["hour_of_day"]["value"].to_list() == ["0"]
    assert vocab["weekday"]["value"].to_list() == ["2"]
    assert vocab["is_weekend"]["value"].to_list() == ["0"]
    assert fm.field("device_ip").cardinality <= 7302 + 2


def test_avazu_fitted_map_applies_to_held_out_file(shared_data: Path, tmp_path: Path) -> None:
    d = shared_data / "avazu_head10k"
    prepare(builtin_spec("avazu"), [d / "train_9000.csv"], tmp_path / "fit", QUIET)
    report = apply_feature_map(
        tmp_path / "fit", [d / "test_1000_noheader.csv"], tmp_path / "test", "test", progress=False
    )
    assert report["rows_read"] == 1000 and report["rows_written"] == {"test": 1000}
    df = pl.read_parquet(tmp_path / "test" / "test" / "*.parquet")
    oov_share = (df["device_ip"] == 1).mean()
    assert oov_share is not None and 0.5 < oov_share < 1.0  # most device IPs are unseen in train


def test_movielens_as_ctr_with_multi_valued_genres_and_time_split(shared_data: Path, tmp_path: Path) -> None:
    u_data = shared_data / "movielens_100k" / "grouplens_original" / "u.data"
    report = prepare(builtin_spec("movielens"), [u_data], tmp_path / "ml", PrepareOptions(split="time", progress=False))
    assert report["rows_read"] == 100_000 and report["rows_rejected"] == 0
    written = report["rows_written"]
    assert abs(written["train"] - 80_000) < 500 and abs(written["test"] - 10_000) < 500
    ratings = pl.read_csv(u_data, separator="\t", has_header=False, new_columns=["u", "i", "r", "t"])
    df = all_rows(tmp_path / "ml")
    assert df["label"].sum() == (ratings["r"] >= 4).sum()  # label = rating >= 4 (55.4 % positive)
    fm = FeatureMap.load(tmp_path / "ml")
    genres = fm.field("genres")
    assert genres.multi_valued and genres.cardinality == 19 + 2
    assert df.schema["genres"] == pl.List(pl.Int32)
    assert df["genres"].list.len().min() >= 1 and df["genres"].list.len().max() <= 6
    assert fm.field("gender").cardinality == 2 + 2
    # Time split: every test rating is at or after every train rating.
    train_t = ratings.sort("t")["t"][written["train"] - 1]
    assert report["split"]["time_cuts_us"][0] >= train_t * 1_000_000
