"""Pre-split inputs (``--train/--valid/--test``), exact time-split sizes, and ``ctr apply`` without the
columns it does not encode (the time column, the label)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from features.prepare import GivenSplits, PrepareOptions, apply_feature_map, prepare
from features.schema import FeatureMap
from features.spec import InputError, load_spec
from pipelines.cli import main

SPEC = """
name: clicks
delimiter: ","
header: true
label: {column: click}
dense:
  - {name: price}
  - {name: tnum}
categorical:
  - {name: site}
time: {column: ts}
"""
HEADER = "ts,click,price,tnum,site"


def _spec(tmp_path: Path) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(SPEC)
    return path


def _csv(path: Path, rows: list[str], header: str = HEADER) -> Path:
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _split(out: Path, name: str) -> pl.DataFrame:
    fm = FeatureMap.load(out)
    frames = [pl.read_parquet(out / p) for p in fm.splits[name]]
    return pl.concat(frames) if frames else pl.DataFrame()


# ------------------------------------------------------------------------------------------ pre-split inputs
def _given(tmp_path: Path) -> GivenSplits:
    train = _csv(tmp_path / "train.csv", ["1,1,1,1,s1", "2,0,3,2,s1", "3,1,5,3,s2"])
    valid = _csv(tmp_path / "valid.csv", ["4,0,100,4,s3"])  # s3 never in train: OOV; price far off
    test = _csv(tmp_path / "test.csv", ["5,1,7,5,s2", "6,x,1,6,s1"])  # line 3: a bad label
    return GivenSplits(train=(train,), valid=(valid,), test=(test,))


def test_given_splits_route_each_file_and_fit_on_train_only(tmp_path: Path) -> None:
    given = _given(tmp_path)
    out = tmp_path / "out"
    report = prepare(load_spec(_spec(tmp_path)), given, out, PrepareOptions(split="given", progress=False))
    assert report["rows_written"] == {"train": 3, "valid": 1, "test": 1}
    assert report["rows_read"] == 6 and report["rows_rejected"] == 1
    split = report["split"]
    assert split["method"] == "given"
    assert {k: (v["rows_read"], v["rows_rejected"]) for k, v in split.items() if k != "method"} == {
        "train": (3, 0),
        "valid": (1, 0),
        "test": (2, 1),
    }
    assert split["test"]["files"] == [str(given.test[0])]
    fm = FeatureMap.load(out)
    assert fm.split_method == "given" and json.loads((out / "report.json").read_text())["split"] == split
    # vocabulary of train alone: s1 x2 -> 2, s2 -> 3; the valid file's s3 is OOV (1)
    assert fm.field("site").cardinality == 4
    assert _split(out, "train")["site"].to_list() == [2, 2, 3]
    assert _split(out, "valid")["site"].to_list() == [1]
    assert _split(out, "test")["site"].to_list() == [3]
    # dense statistics of train alone: price 1, 3, 5 (the valid file's 100 is not in them)
    price = next(d for d in fm.dense if d.name == "price")
    assert price.mean == pytest.approx(3.0)
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert rejects.select("file", "line").rows() == [("test.csv", 3)]


def test_given_splits_need_split_given(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="pre-split inputs go with split 'given'"):
        prepare(load_spec(_spec(tmp_path)), _given(tmp_path), tmp_path / "out", PrepareOptions(progress=False))


def test_a_file_in_two_splits_is_refused(tmp_path: Path) -> None:
    given = _given(tmp_path)
    twice = GivenSplits(train=given.train, valid=given.train, test=given.test)
    with pytest.raises(InputError, match=r"train\.csv: given twice"):
        prepare(load_spec(_spec(tmp_path)), twice, tmp_path / "out", PrepareOptions(split="given", progress=False))


def test_cli_prepares_given_splits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _given(tmp_path)
    out = tmp_path / "out"
    args = ["prepare", "--dataset", "custom", "--spec", str(_spec(tmp_path)), "--out", str(out), "--quiet"]
    main([*args, "--train", str(g.train[0]), "--valid", str(g.valid[0]), "--test", str(g.test[0])])
    assert json.loads(capsys.readouterr().out)["rows_written"] == {"train": 3, "valid": 1, "test": 1}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--input", "{train}", "--train", "{train}"], "--train: not allowed with argument --input"),
        ([], "one of the arguments --input --train is required"),
        (["--train", "{train}", "--valid", "{valid}", "--test", "{test}", "--split", "time"], "--split: the splits"),
        (["--train", "{train}", "--valid", "{valid}", "--test", "{test}", "--seed", "0"], "--seed: the splits"),
        (["--input", "{train}", "--valid", "{valid}"], "--valid: goes with --train"),
        (["--train", "{train}", "--valid", "{valid}"], "--test: pre-split inputs need at least one test file"),
    ],
)
def test_cli_refuses_mixed_split_options_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    g = _given(tmp_path)
    files = {"train": g.train[0], "valid": g.valid[0], "test": g.test[0]}
    args = ["prepare", "--dataset", "custom", "--spec", str(_spec(tmp_path)), "--out", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, *(x.format(**files) for x in extra)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ctr prepare: error: ") and message in err, err
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------------------- exact time split
@pytest.mark.parametrize("n", [1, 2, 9, 10, 11, 37, 100])
def test_time_split_sizes_are_exact_and_ordered_with_ties(tmp_path: Path, n: int) -> None:
    # Times with ties (3 rows per time), written out of order over two files; tnum repeats the time.
    times = [(i * 7919) % n // 3 for i in range(n)]
    rows = [f"{t},{i % 2},1,{t},s{i % 3}" for i, t in enumerate(times)]
    half = n // 2
    files = [_csv(tmp_path / "a.csv", rows[:half]), _csv(tmp_path / "b.csv", rows[half:])]
    if not rows[:half]:
        files = files[1:]
    out = tmp_path / "out"
    report = prepare(load_spec(_spec(tmp_path)), files, out, PrepareOptions(split="time", progress=False))
    train, valid = n * 8 // 10, n * 9 // 10 - n * 8 // 10
    assert report["rows_written"] == {"train": train, "valid": valid, "test": n - train - valid}
    t = {s: _split(out, s)["tnum"].to_list() if report["rows_written"][s] else [] for s in ("train", "valid", "test")}
    assert max(t["train"], default=-1) <= min(t["valid"] + t["test"], default=n)
    assert max(t["valid"], default=-1) <= min(t["test"], default=n)
    assert sorted(t["train"] + t["valid"] + t["test"]) == sorted(times)
    again = prepare(load_spec(_spec(tmp_path)), files, tmp_path / "again", PrepareOptions(split="time", progress=False))
    for s in ("train", "valid", "test"):  # deterministic, row for row
        if report["rows_written"][s]:
            assert _split(out, s).equals(_split(tmp_path / "again", s))
    assert again["split"]["time_cuts_us"] == report["split"]["time_cuts_us"]


def test_time_split_ties_at_a_cut_go_to_the_earlier_split_by_file_and_line(tmp_path: Path) -> None:
    # 10 rows at one time: train takes the first 8 by (file, line), valid the 9th, test the 10th.
    rows = [f"5,0,1,{i},s1" for i in range(10)]
    files = [_csv(tmp_path / "a.csv", rows[:6]), _csv(tmp_path / "b.csv", rows[6:])]
    out = tmp_path / "out"
    prepare(load_spec(_spec(tmp_path)), files, out, PrepareOptions(split="time", progress=False))
    assert sorted(_split(out, "train")["tnum"].to_list()) == list(range(8))
    assert _split(out, "valid")["tnum"].to_list() == [8.0]
    assert _split(out, "test")["tnum"].to_list() == [9.0]


# ------------------------------------------------------------------------------- apply: only what it encodes
@pytest.fixture()
def fitted(tmp_path: Path) -> Path:
    data = _csv(tmp_path / "data.csv", ["1,1,1,1,s1", "2,0,3,2,s1", "3,1,5,3,s2"])
    out = tmp_path / "prepared"
    prepare(load_spec(_spec(tmp_path)), [data], out, PrepareOptions(ratios=(1, 0, 0), progress=False))
    return out


def test_apply_needs_neither_the_time_column_nor_the_label(fitted: Path, tmp_path: Path) -> None:
    serving = _csv(tmp_path / "serving.csv", ["9,9,s2", "1,1,s9"], header="price,tnum,site")
    report = apply_feature_map(fitted, [serving], tmp_path / "applied", progress=False)
    assert report["rows_written"] == {"apply": 2} and report["rows_rejected"] == 0
    df = pl.read_parquet(tmp_path / "applied" / "apply" / "*.parquet")
    assert df["site"].to_list() == [3, 1] and df["label"].to_list() == [None, None]


def test_apply_without_the_time_column_keeps_and_checks_the_label(fitted: Path, tmp_path: Path) -> None:
    labelled = _csv(tmp_path / "labelled.csv", ["1,9,9,s1", "x,9,9,s1"], header="click,price,tnum,site")
    report = apply_feature_map(fitted, [labelled], tmp_path / "applied", progress=False)
    assert report["rows_written"] == {"apply": 1} and report["rows_rejected"] == 1
    df = pl.read_parquet(tmp_path / "applied" / "apply" / "*.parquet")
    assert df["label"].to_list() == [1.0] and df["site"].to_list() == [2]


def test_apply_still_refuses_a_file_without_an_encoded_column(fitted: Path, tmp_path: Path) -> None:
    no_site = _csv(tmp_path / "no_site.csv", ["1,9,9"], header="click,price,tnum")
    with pytest.raises(InputError, match=r"no_site\.csv: header lacks columns \['site'\]"):
        apply_feature_map(fitted, [no_site], tmp_path / "applied", progress=False)
