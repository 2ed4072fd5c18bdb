"""Custom datasets described by a spec file: CSV/parquet, hashing, quantiles, multi-valued, strict keys."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

from config.strict import ConfigError
from features.hashing import stable_hash
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import load_spec

SPEC = """
name: clicks
delimiter: ","
header: true
label: {column: click}
dense:
  - {name: price, transform: log1p, fill_null: 0}
  - {name: age, encode: quantile, buckets: 4}
  - {name: visits, transform: log_square, encode: categorical}
categorical:
  - {name: site}
  - {name: user, hash_buckets: 10}
  - {name: tags, separator: "|"}
time: {column: ts, format: "%Y-%m-%d"}
drop: [comment]
"""

ROWS = [
    "ts,click,price,age,visits,site,user,tags,comment",
    "2024-01-01,1,9,10,1,s1,u1,a|b,x",
    "2024-01-02,0,,20,10,s2,u2,,y",
    "2024-01-03,1,99,30,100,s1,u3,b,z",
    "2024-01-04,0,0,40,,s1,u1,a|a|c,w",
]


def write(tmp_path: Path) -> tuple[Path, Path]:
    spec, data = tmp_path / "spec.yaml", tmp_path / "data.csv"
    spec.write_text(SPEC)
    data.write_text("\n".join(ROWS) + "\n")
    return spec, data


def test_custom_csv_every_encoder(tmp_path: Path) -> None:
    spec_path, data = write(tmp_path)
    spec = load_spec(spec_path)
    prepare(spec, [data], tmp_path / "out", PrepareOptions(ratios=(1, 0, 0), progress=False))
    fm = FeatureMap.load(tmp_path / "out")
    df = pl.read_parquet(tmp_path / "out" / "train" / "*.parquet")
    assert df["price"].to_list() == pytest.approx([np.log1p(9), 0.0, np.log1p(99), 0.0])
    # site: s1 x3 -> 2, s2 -> 3
    assert df["site"].to_list() == [2, 3, 2, 2]
    # tags: a x3, b x2, c x1 -> a=2, b=3, c=4; an empty value is an empty list
    assert df["tags"].to_list() == [[2, 3], [], [3], [2, 2, 4]]
    assert fm.field("tags").multi_valued
    # user: stable hash into 10 buckets, offset by the 2 reserved ids
    expected = (stable_hash(pl.Series(["u1", "u2", "u3", "u1"])) % np.uint64(10) + np.uint64(2)).astype(np.int64)
    assert df["user"].to_list() == expected.tolist()
    assert fm.field("user").cardinality == 12 and fm.field("user").kind == "hash"
    # visits: log_square then a vocabulary: 1 -> "1", 10 -> "5", 100 -> "21", missing -> 0
    visits_vocab = pl.read_parquet(tmp_path / "out" / "vocab" / "visits.parquet")
    ids = dict(zip(visits_vocab["value"], visits_vocab["id"], strict=True))
    assert df["visits"].to_list() == [ids["1"], ids["5"], ids["21"], 0]
    # age: quantile buckets from the train quantiles (nearest) 20, 30 (10 and 40 are the extremes)
    # By hand: the "nearest" quartiles of 10, 20, 30, 40 are 20, 30, 30 -> boundaries (20, 30); a value's bucket
    # counts the boundaries at or below it (10 -> 0, 20 -> 1, 30 and 40 -> 2), offset by the 2 reserved ids.
    age = fm.field("age")
    assert age.kind == "quantile" and age.boundaries == (20.0, 30.0) and age.cardinality == 5
    assert df["age"].to_list() == [2, 3, 4, 4]


def test_custom_parquet_input(tmp_path: Path) -> None:
    _, data = write(tmp_path)
    spec_text = SPEC.replace('delimiter: ","\nheader: true\n', "format: parquet\n")
    (tmp_path / "pq.yaml").write_text(spec_text)
    parquet = tmp_path / "data.parquet"
    pl.read_csv(data, infer_schema=False).write_parquet(parquet)
    report = prepare(load_spec(tmp_path / "pq.yaml"), [parquet], tmp_path / "out", PrepareOptions(progress=False))
    assert report["rows_read"] == 4 and report["rows_rejected"] == 0


def test_delimiter_auto_reads_tabs_and_commas_as_the_explicit_delimiter_does(tmp_path: Path) -> None:
    _, data = write(tmp_path)
    tsv = tmp_path / "data.tsv"
    tsv.write_text("\n".join(row.replace(",", "\t") for row in ROWS) + "\n")
    auto = tmp_path / "auto.yaml"
    auto.write_text(SPEC.replace('delimiter: ","', 'delimiter: "auto"'))
    (tmp_path / "tab.yaml").write_text(SPEC.replace('delimiter: ","', 'delimiter: "\\t"'))
    written = {}
    for name, spec, source in [("comma", tmp_path / "spec.yaml", data), ("tab", tmp_path / "tab.yaml", tsv)]:
        for how, spec_path in (("explicit", spec), ("auto", auto)):
            out = tmp_path / f"{name}-{how}"
            report = prepare(load_spec(spec_path), [source], out, PrepareOptions(ratios=(1, 0, 0), progress=False))
            assert report["rows_rejected"] == 0, (name, how)
            written[name, how] = pl.read_parquet(out / "train" / "*.parquet")
    assert written["comma", "auto"].equals(written["comma", "explicit"])
    assert written["tab", "auto"].equals(written["tab", "explicit"])
    assert written["tab", "auto"].equals(written["comma", "auto"]) and written["tab", "auto"].height == 4


def test_time_split_orders_rows(tmp_path: Path) -> None:
    spec_path, _ = write(tmp_path)
    data = tmp_path / "many.csv"
    days = [
        17,
        3,
        30,
        25,
        8,
        1,
        28,
        12,
        21,
        5,
        26,
        14,
        9,
        29,
        2,
        19,
        23,
        6,
        11,
        27,
        16,
        4,
        22,
        10,
        18,
        7,
        24,
        13,
        20,
        15,
    ]
    lines = [ROWS[0]] + [f"2024-01-{d:02d},{d % 2},{d},1,1,s,u,a,c" for d in days]  # price: the day, shuffled
    data.write_text("\n".join(lines) + "\n")
    report = prepare(load_spec(spec_path), [data], tmp_path / "out", PrepareOptions(split="time", progress=False))
    assert report["rows_written"] == {"train": 24, "valid": 3, "test": 3}  # floor(0.8 n), floor(0.9 n) - floor(0.8 n)
    cut1, cut2 = report["split"]["time_cuts_us"]
    assert cut1 < cut2
    # the days of each split, read back from the price column (log1p of the day): 1-24, 25-27, 28-30
    got = {s: sorted(round(float(np.expm1(v))) for v in pl.read_parquet(tmp_path / "out" / s / "*.parquet")["price"])
           for s in ("train", "valid", "test")}  # fmt: skip
    assert got == {"train": list(range(1, 25)), "valid": [25, 26, 27], "test": [28, 29, 30]}


def test_unknown_spec_key_names_it_and_suggests(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace("hash_buckets: 10", "hash_bucket: 10"))
    with pytest.raises(ConfigError, match=r"unknown key 'hash_bucket' \(did you mean 'hash_buckets'\?\)"):
        load_spec(path)


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("transform: log1p", "transform: log2", "'log2' is not one of"),
        ("hash_buckets: 10", "hash_buckets: 0", "hash_buckets must be >= 1"),
        ("buckets: 4", "buckets: four", "expected an integer"),
        ("- {name: site}", "- {name: price}", "fields defined twice"),
        (
            "fill_null: 0}",
            "fill_null: 0, max_abs: 0}",
            r"'price': max_abs must be > 0 and <= 3.4028235e\+38 .*got 0.0$",
        ),
        (
            "fill_null: 0}",
            "fill_null: 0, max_abs: 1.0e+39}",
            r"max_abs must be .* \(float32\), got 1e\+39",
        ),
        ("fill_null: 0}", "fill_null: 0, max_abs: 1e12}", r"dense\[0\].max_abs: expected a number, got '1e12'"),
        ("fill_null: 0}", "fill_null: 0, clip: yes please}", r"dense\[0\].clip: expected true/false, got 'yes please'"),
    ],
)
def test_invalid_spec_values_are_rejected(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(SPEC.replace(old, new))
    with pytest.raises(ConfigError, match=message):
        load_spec(path)


def test_header_missing_required_column_is_an_input_error(tmp_path: Path) -> None:
    spec_path, data = write(tmp_path)
    data.write_text(data.read_text().replace("site,", "place,"))
    with pytest.raises(ValueError, match=r"header lacks columns \['site'\]"):
        prepare(load_spec(spec_path), [data], tmp_path / "out", PrepareOptions(progress=False))
