"""Random bytes at ``ctr prepare``: it ends with exit 0 or one ``ctr prepare: error:`` line, never a traceback;
on success every input line is a written or a rejected row and every float in the shards is finite.

The input lines are counted here from the bytes (a line ends at ``\\n``), not taken from the report.
``pipelines.cli.main`` runs in-process, so an example costs milliseconds.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from pipelines.cli import main

FAST = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# The file-level refusals prepare may answer random bytes with; anything else is a new failure mode.
FILE_ERRORS = (
    "input file is empty",
    "input file has no data",
    "columns (separator",
    "compressed (",
    "UTF-16 text",
    "has a header but no rows",
)

extreme = st.sampled_from(["1e39", "-1e39", "3.5e38", "-3.5e38", "1e308", "-1e308", "1e30", "-1e30", "1e9", "-1e9"])
number = st.one_of(
    extreme,
    st.sampled_from(["", " 5", "5 "]),
    st.sampled_from(
        (
            "0 -0 7 +5 .5 5. 1000000001 3.4e38 1e309 -1e400 1e-45 1e-400 nan NaN -nan inf -inf +inf Infinity"
            " 0x10 0X1F 0x1p3 1_000 --1 1e e5 1.2.3 ١٢"
        ).split()
    ),
    st.floats().map(repr),
    st.integers(min_value=-(10**40), max_value=10**40).map(str),
    st.from_regex(r"[+-]?\d{0,3}(\.\d{0,3})?([eE][+-]?\d{1,3})?", fullmatch=True),
).map(str.encode)
junk = st.one_of(
    st.sampled_from([b"\xff", b"caf\xe9", b"\x00", b"\xef\xbb\xbf", b"x\ry", b"\xc3", b"\xe2\x82\xac"]),
    st.binary(max_size=4),
)
word = st.sampled_from([b"", b"a", b"05db9164", b"b c", b"x|y"])
category = st.one_of(word, junk)
label = st.sampled_from([b"0", b"1"] * 8 + [b"2", b"", b"nan", b"1.0", b"-0", b"1e0"])
plain = st.sampled_from([b"", b"0", b"1", b"3", b"12"])
ending = st.sampled_from([b"\n", b"\n", b"\n", b"\r\n", b"\r", b"\n\r"])


@st.composite
def raw_file(draw: st.DrawFn, width: int, sep: bytes, numbers: int) -> bytes:
    """Lines of ``width`` fields (sometimes not): a label, ``numbers`` numeric fields and categories, up to three
    of them wild (odd numbers or junk bytes), so that many lines are valid; mixed line endings; sometimes a BOM
    first and no final newline."""
    lines = []
    for _ in range(draw(st.integers(min_value=1, max_value=12))):
        fields = [draw(label), *(draw(plain) for _ in range(numbers))]
        fields += [draw(word) for _ in range(width - len(fields))]
        numeric = st.integers(min_value=1, max_value=numbers)
        for _ in range(draw(st.integers(min_value=0, max_value=3))):
            i = draw(st.one_of(numeric, numeric, st.integers(min_value=numbers + 1, max_value=width - 1)))
            fields[i] = draw(st.one_of(extreme.map(str.encode), number, junk) if i <= numbers else category)
        n = draw(st.sampled_from([width] * 12 + [0, 1, width - 1, width + 1]))
        fields = (fields + [b"x"] * n)[:n]
        lines.append(sep.join(fields) + draw(ending))
    data = draw(st.sampled_from([b"", b"", b"\xef\xbb\xbf"])) + b"".join(lines)
    return data[:-1] if draw(st.booleans()) else data


def count_lines(data: bytes) -> int:
    return data.count(b"\n") + (0 if data.endswith(b"\n") else 1)


def check_prepare(argv: list[str], path: Path, data: bytes, header: int, capsys: pytest.CaptureFixture[str]) -> None:
    """Exit 0 with every line accounted for and finite floats, or exit 1 with one known error line."""
    out = path.parent / "out"
    path.write_bytes(data)
    capsys.readouterr()
    try:
        main([*argv, "--input", str(path), "--out", str(out), "--quiet"])
    except SystemExit as e:
        err = capsys.readouterr().err
        assert e.code == 1 and err.count("\n") == 1 and err.startswith(f"ctr prepare: error: {path}: "), err
        assert any(known in err for known in FILE_ERRORS), err
        assert not out.exists()
        event("refused: " + next(known for known in FILE_ERRORS if known in err))
        return
    report = json.loads(capsys.readouterr().out)
    event(f"prepared, {'some' if report['rows_rejected'] else 'no'} rows rejected")
    rows = count_lines(data) - header
    shards = [pl.read_parquet(p) for p in sorted(out.glob("*/*.parquet")) if p.parent.name != "vocab"]
    rejected = pl.read_parquet(out / "rejects.parquet")
    assert rows == sum(df.height for df in shards) + rejected.height == report["rows_read"]
    assert rejected["line"].is_unique().all() and set(rejected["line"]) <= set(range(header + 1, rows + header + 1))
    for df in shards:
        floats = [c for c, t in df.schema.items() if t.is_float()]
        assert floats and df.select(pl.col(floats).is_finite().all()).row(0) == (True,) * len(floats)
    stats = [v for f in json.loads((out / "feature_map.json").read_text())["dense"] for v in (f["mean"], f["std"])]
    assert all(v is None or math.isfinite(v) for v in stats), stats


CRITEO_CASES = (  # issue #18's cases, always tried: a BOM, -1e39 (-inf in float32), CRLF, an invalid byte
    b"\xef\xbb\xbf1\t5" + b"\t" * 38 + b"\n0\t-1e39" + b"\t" * 38 + b"\r\n1\t-1e30" + b"\t" * 38 + b"a\xff\n"
)


@FAST
@given(data=raw_file(40, b"\t", 13))
@example(data=CRITEO_CASES)
def test_criteo_random_bytes(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], data: bytes
) -> None:
    path = tmp_path_factory.mktemp("criteo") / "day.tsv"
    check_prepare(["prepare", "--dataset", "criteo"], path, data, 0, capsys)


SMALL_SPEC = """
name: small
delimiter: ","
header: {header}
columns: [click, price, v, n, q, site, tags]
label: {{column: click}}
dense:
  - {{name: price, transform: log1p}}
  - {{name: v}}
  - {{name: n, max_abs: 1000.0, clip: true}}
  - {{name: q, encode: quantile, buckets: 3}}
categorical:
  - {{name: site}}
  - {{name: tags, separator: "|"}}
"""


@FAST
@given(data=raw_file(7, b",", 4), header=st.booleans())
@example(data=b"1,1,1e39,1,1,a,b\n0,1e30,-3.5e38,1e30,1e30,a,b\n", header=True)
def test_custom_spec_random_bytes(
    tmp_path_factory: pytest.TempPathFactory, capsys: pytest.CaptureFixture[str], data: bytes, header: bool
) -> None:
    work = tmp_path_factory.mktemp("custom")
    spec = work / "spec.yaml"
    spec.write_text(SMALL_SPEC.format(header=str(header).lower()))
    if header:
        data = b"click,price,v,n,q,site,tags\n" + data
    check_prepare(["prepare", "--dataset", "custom", "--spec", str(spec)], work / "data.csv", data, int(header), capsys)
