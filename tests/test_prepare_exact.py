"""A five-row Criteo file worked by hand: vocabularies, ids, transforms, OOV, row accounting."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from features.prepare import PrepareOptions, apply_feature_map, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec

ALL_TRAIN = PrepareOptions(ratios=(1.0, 0.0, 0.0), progress=False)


def criteo_line(label: str, dense: dict[int, str], cats: dict[int, str]) -> str:
    fields = [label] + [dense.get(i, "") for i in range(1, 14)] + [cats.get(i, "") for i in range(1, 27)]
    return "\t".join(fields)


FIVE_ROWS = [
    criteo_line("1", {1: "0", 2: "3"}, {1: "a", 2: "x"}),
    criteo_line("0", {1: "10", 2: "-1"}, {1: "a", 2: "y"}),
    criteo_line("1", {1: "100"}, {1: "b", 2: "x"}),
    criteo_line("0", {}, {1: "a"}),
    criteo_line("0", {1: "2.0"}, {1: "c", 2: "x"}),
]


@pytest.fixture()
def five_rows(tmp_path: Path) -> Path:
    path = tmp_path / "five.tsv"
    path.write_text("\n".join(FIVE_ROWS) + "\n")
    return path


def read_split(out: Path, split: str) -> pl.DataFrame:
    fm = FeatureMap.load(out)
    return pl.concat([pl.read_parquet(out / p) for p in fm.splits[split]])


def test_vocabulary_ids_by_descending_frequency_ties_by_value(five_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(builtin_spec("criteo"), [five_rows], out, ALL_TRAIN)
    df = read_split(out, "train")
    # C1: a x3 -> 2; b x1 -> 3; c x1 -> 4 (tie broken by value). C2: x x3 -> 2, y -> 3, empty -> 0.
    assert df["C1"].to_list() == [2, 2, 3, 2, 4]
    assert df["C2"].to_list() == [2, 3, 2, 0, 2]
    assert df["C3"].to_list() == [0, 0, 0, 0, 0]
    fm = FeatureMap.load(out)
    assert fm.field("C1").cardinality == 5  # missing, OOV, a, b, c
    assert fm.field("C3").cardinality == 2  # only the reserved ids
    vocab = pl.read_parquet(out / fm.field("C1").vocab_file)  # type: ignore[operator]
    assert vocab.rows() == [("a", 3, 2), ("b", 1, 3), ("c", 1, 4)]


def test_min_count_sends_rare_values_to_oov(five_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(builtin_spec("criteo"), [five_rows], out, PrepareOptions(ratios=(1, 0, 0), min_count=2, progress=False))
    df = read_split(out, "train")
    assert df["C1"].to_list() == [2, 2, 1, 2, 1]  # b and c seen once: OOV
    assert df["C2"].to_list() == [2, 1, 2, 0, 2]
    assert FeatureMap.load(out).field("C1").cardinality == 3


def test_criteo_log1p_transform_and_null_fill(five_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(builtin_spec("criteo"), [five_rows], out, ALL_TRAIN)
    df = read_split(out, "train")
    # DLRM's log(1 + max(v, 0)): ln(11) = 2.3979, ln(101) = 4.6151, ln(3) = 1.0986; missing -> 0.
    assert df["I1"].to_list() == pytest.approx([0.0, 2.397895, 4.615121, 0.0, 1.098612], abs=1e-6)
    assert df["I2"].to_list() == pytest.approx([1.386294, 0.0, 0.0, 0.0, 0.0], abs=1e-6)  # ln(4); -1 clipped to 0
    assert df["label"].to_list() == [1.0, 0.0, 1.0, 0.0, 0.0]
    fm = FeatureMap.load(out)
    i1 = next(f for f in fm.dense if f.name == "I1")
    assert i1.transform == "log1p"
    assert i1.mean == pytest.approx((0 + 2.397895 + 4.615121 + 0 + 1.098612) / 5, abs=1e-6)


def test_fitted_map_applies_to_new_data_with_oov(five_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(builtin_spec("criteo"), [five_rows], out, ALL_TRAIN)
    new = tmp_path / "new.tsv"
    new.write_text(
        criteo_line("1", {1: "10"}, {1: "zzz", 2: "x"}) + "\n" + criteo_line("0", {}, {1: "c", 2: ""}) + "\n"
    )
    applied = tmp_path / "applied"
    report = apply_feature_map(out, [new], applied, "serving", progress=False)
    assert report["rows_read"] == 2 and report["rows_written"] == {"serving": 2}
    df = pl.read_parquet(applied / "serving" / "*.parquet")
    assert df["C1"].to_list() == [1, 4]  # unseen 'zzz' -> OOV; 'c' keeps its id
    assert df["C2"].to_list() == [2, 0]
    assert df["I1"].to_list() == pytest.approx([2.397895, 0.0], abs=1e-6)  # ln(11)


def test_report_accounts_for_every_row_and_output_is_reproducible(five_rows: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    ra = prepare(builtin_spec("criteo"), [five_rows], a, PrepareOptions(seed=3, progress=False))
    prepare(builtin_spec("criteo"), [five_rows], b, PrepareOptions(seed=3, progress=False))
    assert ra["rows_read"] == 5 and ra["rows_rejected"] == 0
    assert sum(ra["rows_written"].values()) == 5
    on_disk = json.loads((a / "report.json").read_text())
    assert on_disk["rows_written"] == ra["rows_written"]
    for split in ("train", "valid", "test"):
        assert read_split(a, split).equals(read_split(b, split))
    assert FeatureMap.load(a).content_hash == FeatureMap.load(b).content_hash


def test_random_split_is_deterministic_by_seed_and_close_to_8_1_1(tmp_path: Path) -> None:
    path = tmp_path / "many.tsv"
    path.write_text("\n".join(criteo_line(str(i % 2), {1: str(i)}, {1: f"v{i % 7}"}) for i in range(5000)) + "\n")
    r1 = prepare(builtin_spec("criteo"), [path], tmp_path / "s1", PrepareOptions(seed=1, progress=False))
    r2 = prepare(builtin_spec("criteo"), [path], tmp_path / "s2", PrepareOptions(seed=2, progress=False))
    w = r1["rows_written"]
    assert abs(w["train"] - 4000) < 150 and abs(w["valid"] - 500) < 80 and abs(w["test"] - 500) < 80
    assert r1["rows_written"] != r2["rows_written"]  # another seed, another split
    again = prepare(builtin_spec("criteo"), [path], tmp_path / "s3", PrepareOptions(seed=1, progress=False))
    assert again["rows_written"] == w


def test_existing_output_is_not_overwritten_without_flag(five_rows: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(builtin_spec("criteo"), [five_rows], out, ALL_TRAIN)
    with pytest.raises(ValueError, match="use --overwrite"):
        prepare(builtin_spec("criteo"), [five_rows], out, ALL_TRAIN)
    prepare(builtin_spec("criteo"), [five_rows], out, PrepareOptions(ratios=(1, 0, 0), progress=False, overwrite=True))
    assert not [p for p in tmp_path.iterdir() if ".ctr-" in p.name], "temporary work directories are cleaned up"
