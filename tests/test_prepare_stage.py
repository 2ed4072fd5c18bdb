"""The single-parse design of ``features.prepare``: the staged copy, the value codes and the native split hash."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import features.prepare as prepare_module
from features.encode import Codes, EncodePlan
from features.hashing import mix64
from features.outputs import MARKER
from features.prepare import PrepareOptions, apply_feature_map, prepare
from features.schema import CategoricalField, FeatureMap
from features.spec import builtin_spec
from features.transforms import _mix64, assign_random_split

QUIET = PrepareOptions(progress=False)


def criteo_rows(n: int, seed: int = 0) -> list[str]:
    """Criteo lines with a few repeated values per field, some empty values and a few malformed lines."""
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        if i % 97 == 5:
            lines.append("\t".join(["1"] * 12))  # too few columns
            continue
        label = "x" if i % 89 == 7 else str(rng.randint(0, 1))
        dense = [str(rng.choice([0, 1, 2, 5, 40, 1000])) if rng.random() > 0.2 else "" for _ in range(13)]
        cats = [f"v{rng.randint(0, 3 + 4 * f)}" if rng.random() > 0.1 else "" for f in range(26)]
        lines.append("\t".join([label, *dense, *cats]))
    return lines


@pytest.fixture()
def criteo_file(tmp_path: Path) -> Path:
    path = tmp_path / "in.tsv"
    path.write_text("\n".join(criteo_rows(600)) + "\n")
    return path


def outputs(out: Path) -> dict[str, pl.DataFrame]:
    fm = FeatureMap.load(out)
    frames = {s: pl.concat([pl.read_parquet(out / p) for p in files]) for s, files in fm.splits.items() if files}
    frames |= {f"vocab/{f.name}": pl.read_parquet(out / f.vocab_file) for f in fm.categorical if f.vocab_file}
    frames["rejects"] = pl.read_parquet(out / "rejects.parquet")
    return frames


def test_native_mix64_matches_numpy() -> None:
    x = np.array([0, 1, 2**32, 2**63, 2**64 - 1, *np.random.default_rng(0).integers(0, 2**63, 1000)], dtype=np.uint64)
    got = pl.DataFrame({"x": pl.Series(x)}).select(_mix64(pl.col("x")))["x"].to_numpy()
    assert np.array_equal(got, mix64(x))


@pytest.mark.parametrize(("seed", "file_idx"), [(0, 0), (7, 3), (2**40 + 3, 1)])
def test_random_split_is_the_documented_hash_of_file_and_line(seed: int, file_idx: int) -> None:
    n = 20_000
    line = np.arange(1, n + 1, dtype=np.uint64)
    key = np.uint64(file_idx) * np.uint64(1 << 40) + line
    u = (mix64(key ^ mix64(np.full(n, seed, dtype=np.uint64))) >> np.uint64(11)).astype(np.float64) * 2.0**-53
    expected = np.where(u < 0.8, "train", np.where(u < 0.9, "valid", "test"))
    rows = pl.DataFrame({"__file_idx": pl.Series([file_idx] * n, dtype=pl.UInt64), "__line": pl.Series(line)})
    got = assign_random_split(rows.lazy(), seed, (0.8, 0.1, 0.1)).collect()["__split"].to_numpy()
    assert np.array_equal(got, expected)


def test_many_small_staged_files_give_the_same_output(
    criteo_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepare(builtin_spec("criteo"), [criteo_file], tmp_path / "one", QUIET)
    monkeypatch.setattr(prepare_module, "_STAGE_ROWS", 7)  # dozens of staged files per split
    report = prepare(builtin_spec("criteo"), [criteo_file], tmp_path / "many", QUIET)
    one, many = outputs(tmp_path / "one"), outputs(tmp_path / "many")
    assert one.keys() == many.keys()
    for name in one:
        assert_frame_equal(one[name], many[name], check_exact=True)
    assert report["rows_rejected"] > 0
    assert report["rows_read"] == sum(report["rows_written"].values()) + report["rows_rejected"]
    hidden = [p.name for p in (tmp_path / "many").rglob("*") if p.name.startswith(".")]
    assert hidden == [MARKER], "the staged copy is deleted (only the platform's marker stays)"


def test_applying_the_map_to_the_training_file_reproduces_the_training_shards(
    criteo_file: Path, tmp_path: Path
) -> None:
    """``fit_plan``'s lookups (codes of one run) and ``EncodePlan.bind`` (codes of another) agree."""
    options = PrepareOptions(ratios=(1.0, 0.0, 0.0), min_count=3, progress=False)
    prepare(builtin_spec("criteo"), [criteo_file], tmp_path / "fit", options)
    apply_feature_map(tmp_path / "fit", [criteo_file], tmp_path / "apply", progress=False)
    fitted = outputs(tmp_path / "fit")
    applied = pl.read_parquet(sorted((tmp_path / "apply" / "apply").glob("*.parquet")))
    assert_frame_equal(fitted["train"], applied, check_exact=True)
    assert_frame_equal(fitted["rejects"], pl.read_parquet(tmp_path / "apply" / "rejects.parquet"))


def test_an_empty_split_has_a_directory_and_no_shards(criteo_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = prepare(builtin_spec("criteo"), [criteo_file], out, PrepareOptions(ratios=(1.0, 0.0, 0.0), progress=False))
    fm = json.loads((out / "feature_map.json").read_text())
    assert fm["splits"]["valid"] == [] and fm["splits"]["test"] == []
    assert (out / "valid").is_dir() and not any((out / "valid").iterdir())
    assert report["rows_written"]["valid"] == 0


def test_codes_map_back_to_their_strings_and_a_bound_plan_gives_missing_and_oov() -> None:
    spec = builtin_spec("criteo")
    codes = Codes(spec)
    assert codes.names == [f"C{i}" for i in range(1, 27)]  # every Criteo categorical is single-valued
    raw = {c: ["", ""] for c in ["label", *(f"I{i}" for i in range(1, 14)), *codes.names]}
    raw["label"], raw["C1"] = ["0", "1"], ["b", "zz"]
    staged = pl.DataFrame(raw).with_columns(pl.lit(0.0).alias("__label")).select("__label", *codes.stage())
    assert staged["__code_C1"].null_count() == 0 and staged["__code_C2"].null_count() == 2  # "" is missing
    assert codes.strings("C1").gather(staged["__code_C1"]).to_list() == ["b", "zz"]
    vocab = pl.DataFrame({"value": ["a", "b"], "count": [5, 4], "id": pl.Series([2, 3], dtype=pl.Int32)})
    fields = tuple(CategoricalField(name, "vocab", 4, vocab_size=2) for name in ("C1", "C2"))
    plan = EncodePlan(spec, (), fields, dict.fromkeys(codes.names, vocab)).bind(codes)
    ids = plan.encode(staged.lazy()).collect()
    assert ids.columns == ["label", "C1", "C2"]
    assert ids["C1"].to_list() == [3, 1]  # b -> 3, zz unseen -> OOV
    assert ids["C2"].to_list() == [0, 0]  # empty -> missing
