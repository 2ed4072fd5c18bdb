"""The per-record fast path (features/records.py) encodes exactly as the feature map's query, or hands over to it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from polars.testing import assert_frame_equal

from features.prepare import PrepareOptions, prepare
from features.sources import scan_inputs
from features.spec import builtin_spec, load_spec
from features.stream import Encoder, RecordEncoder, check_records

QUIET = PrepareOptions(progress=False)

SPEC = """
name: every_kind
delimiter: ","
header: true
label: {column: click}
dense:
  - {name: price, transform: log1p, fill_null: 0}
  - {name: age, encode: quantile, buckets: 4}
  - {name: visits, transform: log_square, encode: categorical}
  - {name: score, max_abs: 10, clip: true}
categorical:
  - {name: site}
  - {name: user, hash_buckets: 10}
  - {name: tags, separator: "|"}
"""

ROWS = [
    "click,price,age,visits,score,site,user,tags",
    "1,9,10,1,3,s1,u1,a|b",
    "0,,20,10,-4,s2,u2,",
    "1,99,30,100,50,s1,u3,b",
    "0,0,40,,0.5,s1,u1,a|a|c",
    "1,3.5,25,7,-20,s3,u4,c",
]


def _encoder(tmp_path: Path) -> Encoder:
    spec, data = tmp_path / "spec.yaml", tmp_path / "data.csv"
    spec.write_text(SPEC)
    data.write_text("\n".join(ROWS) + "\n")
    prepare(load_spec(spec), [data], tmp_path / "out", PrepareOptions(progress=False, ratios=(1.0, 0.0, 0.0)))
    return Encoder.load(tmp_path / "out")


def _both(records: list[dict[str, Any]], encoder: Encoder) -> tuple[Any, Any]:
    rows = check_records(records, encoder.columns, encoder.spec.label.column)
    records_encoder = RecordEncoder(encoder)
    return records_encoder.fast.encode(rows), records_encoder.encode_query(rows)


def test_every_kind_of_field_equals_the_query(tmp_path: Path) -> None:
    encoder = _encoder(tmp_path)
    records = [
        # seen values, missing ones ("" and null), unseen ones (OOV), numbers in every plain form, clipping
        {"click": 1, "price": 9, "age": 10, "visits": 1, "score": 3, "site": "s1", "user": "u1", "tags": "a|b"},
        {"click": "0", "price": "", "age": None, "visits": "", "score": None, "site": "", "user": "", "tags": ""},
        {"click": None, "price": "1e-05", "age": "+25", "visits": "100", "score": "50", "site": "zz", "user": "new"},
        {"click": "1.0", "price": ".5", "age": "5.", "visits": 7, "score": -20.0, "site": None, "user": None},
        {"click": 0, "price": -3, "age": 99, "visits": "2", "score": "1E1", "site": "s2", "user": "u", "tags": "c||zz"},
        {"click": 0, "price": 1e6, "age": 0, "visits": 10**6, "score": "-0", "site": "s3", "user": "u9", "tags": None},
    ]
    for r in records:
        r.setdefault("tags", "b")
    fast, query = _both(records, encoder)
    assert query.rejects.height == 0
    assert fast is not None
    assert_frame_equal(fast, query.rows)
    # the hand-computed cases: a value not in the training vocabulary is OOV (1), a missing one MISSING (0);
    # the quantile buckets of age (training quartiles) count the boundaries at or below the value
    assert fast["site"].to_list()[:4] == [query.rows["site"][0], 0, 1, 0]
    assert fast["tags"].to_list()[4][1] == 1 and len(fast["tags"][4]) == 2 and fast["tags"].to_list()[5] == []
    assert fast["score"].to_list()[2:4] == [10.0, -10.0]  # clipped to max_abs


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("price", "inf"),  # unparseable: the query rejects it
        ("price", " 3"),
        ("price", "0x10"),
        ("price", "1_0"),
        ("price", "abc"),
        ("click", "2"),  # a label that is not 0 or 1
        ("click", ""),
        ("visits", "1.5"),  # a non-integral value sent through a vocabulary: printed by Polars
        ("price", "1e999"),
    ],
)
def test_values_outside_the_fast_path_go_to_the_query(tmp_path: Path, field: str, value: str) -> None:
    encoder = _encoder(tmp_path)
    good = {"click": 1, "price": 9, "age": 10, "visits": 1, "score": 3, "site": "s1", "user": "u1", "tags": "a|b"}
    fast, query = _both([good, good | {field: value}], encoder)
    assert fast is None
    chunk = RecordEncoder(encoder).encode(check_records([good, good | {field: value}], encoder.columns, "click"))
    assert_frame_equal(chunk.rows, query.rows)
    assert_frame_equal(chunk.rejects, query.rejects)


def _raw_records(encoder: Encoder, inputs: list[Path], tmp_path: Path, n: int) -> list[dict[str, Any]]:
    label = encoder.spec.label.column
    frame = scan_inputs(encoder.spec, inputs, tmp_path / "scratch", optional=(label,)).head(n).collect()
    return frame.select(encoder.columns).to_dicts()


@pytest.mark.parametrize("name", ["criteo", "avazu", "movielens"])
def test_builtin_data_sets_records_equal_the_query(name: str, shared_data: Path, tmp_path: Path) -> None:
    inputs = {
        "criteo": [shared_data / "criteo_deepctr_sample" / "criteo_sample.txt"],
        "avazu": [shared_data / "avazu_head10k" / "train_9000.csv"],
        "movielens": [shared_data / "movielens_100k" / "grouplens_original" / "u.data"],
    }[name]
    prepare(builtin_spec(name), inputs, tmp_path / "out", QUIET)
    encoder = Encoder.load(tmp_path / "out")
    records = _raw_records(encoder, inputs, tmp_path, 300)
    records_encoder = RecordEncoder(encoder)
    rows = check_records(records, encoder.columns, encoder.spec.label.column)
    fast, query = records_encoder.fast.encode(rows), records_encoder.encode_query(rows)
    assert query.rejects.height == 0 and query.rows.height == len(records)
    assert fast is not None, f"{name}: the fast path handed its records to the query"
    assert_frame_equal(fast, query.rows)
    one, one_query = _both(records[:1], encoder)
    assert one is not None
    assert_frame_equal(one, one_query.rows)
    if name == "avazu":  # derived time parts come from the query once per distinct time, then from memory
        assert len(records_encoder.fast._times) == len({r["hour"] for r in records}) > 0
