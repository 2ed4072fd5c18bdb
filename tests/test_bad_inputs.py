"""Bad bytes and bad numbers in raw input: each bad row is quarantined with its line, each unreadable file is
refused in one line, and ``rows_read == rows_written + rows_rejected`` every time (issue #18, items 3 and 4)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import DatasetSpec, builtin_spec, load_spec
from pipelines.cli import main
from tests.test_prepare_exact import criteo_line

ALL_TRAIN = PrepareOptions(ratios=(1.0, 0.0, 0.0), progress=False)


def run(spec: DatasetSpec, inputs: list[Path], out: Path) -> dict[str, Any]:
    report = prepare(spec, inputs, out, ALL_TRAIN)
    assert report["rows_read"] == sum(report["rows_written"].values()) + report["rows_rejected"]
    return report


def rejects(out: Path) -> list[tuple[int, str]]:
    df = pl.read_parquet(out / "rejects.parquet").sort("line")
    return list(zip(df["line"].to_list(), df["reason"].to_list(), strict=True))


def prepare_argv(out: Path, *inputs: Path) -> list[str]:
    return ["prepare", "--dataset", "criteo", "--input", *map(str, inputs), "--out", str(out), "--quiet"]


def cli_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """``ctr`` run in-process: asserts exit 1 and one line on stderr, and returns that line."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err.strip()


# ---- item 3: numbers that parse but are out of range -----------------------------------------------------------


def test_dense_values_beyond_max_abs_are_rejected_with_column_and_value(tmp_path: Path) -> None:
    path = tmp_path / "big.tsv"
    lines = [
        criteo_line("1", {1: "5", 2: "3"}, {1: "a"}),  # 1
        criteo_line("0", {1: "-1e39", 2: "3"}, {1: "b"}),  # 2: finite in float64, -inf in float32
        criteo_line("0", {1: "7", 2: "-1e30"}, {1: "b"}),  # 3: finite in float32, swamps the mean
        criteo_line("1", {1: "1e9", 2: "-1000000000"}, {1: "a"}),  # 4: the bound itself is kept
        criteo_line("0", {1: "1000000001"}, {1: "a"}),  # 5: just above it
        criteo_line("0", {1: "7", 2: "1e400"}, {1: "a"}),  # 6: inf in float64: unparseable, as before
    ]
    path.write_text("\n".join(lines) + "\n")
    report = run(builtin_spec("criteo"), [path], tmp_path / "out")
    assert (report["rows_read"], report["rows_rejected"]) == (6, 4)
    assert rejects(tmp_path / "out") == [
        (2, "number out of range in I1: '-1e39' (max_abs 1e+09)"),
        (3, "number out of range in I2: '-1e30' (max_abs 1e+09)"),
        (5, "number out of range in I1: '1000000001' (max_abs 1e+09)"),
        (6, "unparseable number in I2: '1e400'"),
    ]
    train = pl.read_parquet(tmp_path / "out" / "train" / "*.parquet")
    dense = train.select(f"I{i}" for i in range(1, 14)).to_numpy()
    assert np.isfinite(dense).all()
    # log1p: 5 -> ln(6) = 1.791759 and 1e9 -> ln(1e9 + 1) = 20.723266; 3 -> ln(4); -1e9 clipped to 0 -> 0
    assert train["I1"].to_list() == pytest.approx([1.791759, 20.723266], abs=1e-5)
    assert train["I2"].to_list() == pytest.approx([1.386294, 0.0], abs=1e-6)
    fm = FeatureMap.load(tmp_path / "out")
    assert fm.dense[0].mean == pytest.approx((1.791759 + 20.723266) / 2, abs=1e-5)


CLIP_SPEC = """
name: clipped
delimiter: ","
header: true
label: {column: click}
dense:
  - {name: price, max_abs: 100.0, clip: true}
  - {name: views, max_abs: 1000000000000}
categorical:
  - {name: site}
"""


def test_clip_option_clips_to_max_abs_and_a_larger_bound_keeps_more(tmp_path: Path) -> None:
    spec_path, data = tmp_path / "spec.yaml", tmp_path / "data.csv"
    spec_path.write_text(CLIP_SPEC)
    data.write_text("click,price,views,site\n1,5,5,a\n0,1e30,2e11,a\n1,-1e39,1,b\n0,inf,1,b\n1,1,2e12,a\n")
    run(load_spec(spec_path), [data], tmp_path / "out")
    assert rejects(tmp_path / "out") == [
        (5, "unparseable number in price: 'inf'"),  # clipping never turns inf into a number
        (6, "number out of range in views: '2e12' (max_abs 1e+12)"),
    ]
    train = pl.read_parquet(tmp_path / "out" / "train" / "*.parquet")
    assert train["price"].to_list() == [5.0, 100.0, -100.0]
    assert train["views"].to_list() == pytest.approx([5.0, 2e11, 1.0])  # float32: 2e11 to 7 digits


# ---- item 4: bytes the line reader cannot take -------------------------------------------------------------------


def test_invalid_utf8_line_is_rejected_and_the_other_rows_kept(tmp_path: Path) -> None:
    good = criteo_line("1", {1: "5"}, {1: "a"}).encode()
    bad = criteo_line("0", {1: "5"}, {1: "caf\xe9"}).encode("latin-1")  # one byte 0xE9, not UTF-8
    path = tmp_path / "latin.tsv"
    path.write_bytes(b"\n".join([good, bad, good, bad[:-1] + b"\xff"]) + b"\n")
    report = run(builtin_spec("criteo"), [path], tmp_path / "out")
    assert report["rows_written"]["train"] == 2
    reason = "invalid UTF-8 (raw shows the bytes as \\xNN)"
    assert rejects(tmp_path / "out") == [(2, reason), (4, reason)]
    raw = pl.read_parquet(tmp_path / "out" / "rejects.parquet").sort("line")["raw"][0]
    assert raw == bad.decode("utf-8", "backslashreplace") and "caf\\xe9" in raw
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        ".ctr-output.json",  # the platform's marker (features.outputs)
        "feature_map.json",
        "rejects.parquet",
        "report.json",
        "test",
        "train",
        "valid",
        "vocab",
    ]  # the repaired copy went with the staged files


def test_utf8_bom_is_dropped_from_the_first_line(tmp_path: Path) -> None:
    path = tmp_path / "bom.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + (criteo_line("1", {1: "5"}, {1: "a"}) + "\n").encode())
    report = run(builtin_spec("criteo"), [path], tmp_path / "out")
    assert (report["rows_read"], report["rows_rejected"]) == (1, 0)


def test_utf8_bom_before_a_custom_header(tmp_path: Path) -> None:
    spec_path, data = tmp_path / "spec.yaml", tmp_path / "data.csv"
    spec_path.write_text(CLIP_SPEC)
    data.write_bytes(b"\xef\xbb\xbfclick,price,views,site\n1,5,5,a\n0,6,6,b\n")
    report = run(load_spec(spec_path), [data], tmp_path / "out")
    assert (report["rows_read"], report["rows_rejected"]) == (2, 0)


@pytest.mark.parametrize(
    ("content", "kind"),
    [
        (gzip.compress(b"1\t2\n" * 10), "compressed (gzip); decompress it first"),
        (b"\x28\xb5\x2f\xfd" + bytes(range(64)), "compressed (zstd); decompress it first"),
        ("1\t2\n".encode("utf-16"), "UTF-16 text; convert it to UTF-8 first"),
    ],
)
def test_compressed_or_utf16_input_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, kind: str
) -> None:
    path = tmp_path / "day_0.tsv"
    path.write_bytes(content)
    line = cli_error(prepare_argv(tmp_path / "o", path), capsys)
    assert line == f"ctr prepare: error: {path}: {kind}"
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("alias", ["same", "dotdot", "symlink", "hardlink"])
def test_same_file_given_twice_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], alias: str
) -> None:
    path = tmp_path / "day.tsv"
    path.write_text(criteo_line("1", {}, {1: "a"}) + "\n")
    other = {"same": path, "dotdot": tmp_path / ".." / tmp_path.name / "day.tsv"}.get(alias, tmp_path / "other.tsv")
    if alias == "symlink":
        other.symlink_to(path)
    elif alias == "hardlink":
        os.link(path, other)
    line = cli_error(prepare_argv(tmp_path / "o", path, other), capsys)
    assert line == f"ctr prepare: error: {other}: given twice (same file as {path})"


def test_refusal_is_one_line_without_quiet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "day.tsv.gz"
    path.write_bytes(gzip.compress(b"1\t2\n"))
    argv = prepare_argv(tmp_path / "o", path)
    argv.remove("--quiet")  # the progress bars must not print before the error line
    assert cli_error(argv, capsys) == f"ctr prepare: error: {path}: compressed (gzip); decompress it first"
