"""Bad input loses nothing: malformed rows are quarantined with line and reason; bad files fail clearly."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from features.prepare import PrepareOptions, prepare
from features.spec import InputError, builtin_spec
from tests.test_prepare_exact import criteo_line

QUIET = PrepareOptions(progress=False)


def test_malformed_rows_go_to_rejects_with_line_and_reason(tmp_path: Path) -> None:
    good = criteo_line("1", {1: "5"}, {1: "a"})
    lines = [
        good,  # 1
        "\t".join(["0"] * 39),  # 2: one column short
        "\t".join(["0"] * 41),  # 3: one column too many
        "",  # 4: empty line
        criteo_line("2", {}, {1: "a"}),  # 5: label outside {0, 1}
        criteo_line("yes", {}, {}),  # 6: unparseable label
        criteo_line("0", {5: "12x"}, {}),  # 7: unparseable number
        criteo_line("0", {5: "3.5", 6: "-2"}, {2: "b"}),  # 8: fine
    ]
    path = tmp_path / "bad.tsv"
    path.write_text("\n".join(lines) + "\n")
    report = prepare(builtin_spec("criteo"), [path], tmp_path / "out", QUIET)
    assert report["rows_read"] == 8
    assert report["rows_rejected"] == 6
    assert sum(report["rows_written"].values()) == 2
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet").sort("line")
    assert rejects["line"].to_list() == [2, 3, 4, 5, 6, 7]
    assert rejects["file"].unique().to_list() == ["bad.tsv"]
    assert rejects["reason"].to_list() == [
        "expected 40 columns, got 39",
        "expected 40 columns, got 41",
        "empty line",
        "label label is not 0 or 1: '2'",
        "label label is not 0 or 1: 'yes'",
        "unparseable number in I5: '12x'",
    ]
    assert rejects["raw"][0] == lines[1]
    assert report["rejects_by_reason"]["unparseable number in I5"] == 1


def test_header_line_numbers_count_the_header(tmp_path: Path) -> None:
    header = "label," + ",".join(f"I{i}" for i in range(1, 14)) + "," + ",".join(f"C{i}" for i in range(1, 27))
    row = criteo_line("0", {}, {1: "a"}).replace("\t", ",")
    path = tmp_path / "h.csv"
    path.write_text("\n".join([header, row, row + ",extra", row]) + "\n")
    prepare(builtin_spec("criteo"), [path], tmp_path / "out", QUIET)
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert rejects["line"].to_list() == [3]  # the header is line 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "not found"),
        ("", "is empty"),
        ("\n\n", "has no data"),
        ("a,b,c\n1,2,3\n", "expects 40"),
    ],
)
def test_unusable_files_fail_with_the_file_named(tmp_path: Path, content: str | None, message: str) -> None:
    path = tmp_path / "input.tsv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=message) as err:
        prepare(builtin_spec("criteo"), [path], tmp_path / "out", QUIET)
    assert str(path) in str(err.value)
    assert not (tmp_path / "out").exists()


def test_cli_error_is_one_line_and_exit_code_1(tmp_path: Path) -> None:
    missing = tmp_path / "nope.tsv"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "prepare",
            "--dataset",
            "criteo",
            "--input",
            str(missing),
            "--out",
            str(tmp_path / "o"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0
    assert str(missing) in proc.stderr and "not found" in proc.stderr


# ---- property-based: the parser agrees with a plain-Python reference on arbitrary lines ----------------------

_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
dense_token = st.sampled_from(["", "0", "7", "-1", "3.25", "1e3", "abc", "1.2.3", "--1", "0x10", "+5", ".5"])
cat_token = st.sampled_from(["", "a", "05db9164", "b c", "x,y", "1"])
label_token = st.sampled_from(["0", "1", "", "2", "0.0", "1.0", "no"])


@st.composite
def forty_fields(draw: st.DrawFn) -> str:
    """A line of 40 fields (its values may still be bad): the layout a file's first lines must show."""
    fields = [draw(label_token)] + [draw(dense_token) for _ in range(13)] + [draw(cat_token) for _ in range(26)]
    return "\t".join(fields)


@st.composite
def raw_line(draw: st.DrawFn) -> str:
    n = draw(st.sampled_from([40, 40, 40, 40, 39, 41, 1, 0, 45]))
    fields = draw(forty_fields()).split("\t")
    fields = (fields + [draw(cat_token) for _ in range(max(0, n - 40))])[:n]
    return "\t".join(fields)


def expected_ok(line: str) -> bool:
    fields = line.split("\t")
    if line == "" or len(fields) != 40:
        return False
    if fields[0] not in {"0", "1", "0.0", "1.0"}:
        return False
    return all(v == "" or _NUMBER.match(v) is not None for v in fields[1:14])


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(first=forty_fields(), rest=st.lists(raw_line(), max_size=29))
def test_parser_matches_reference_and_accounts_for_every_row(
    tmp_path_factory: pytest.TempPathFactory, first: str, rest: list[str]
) -> None:
    # The layout is read from the first 20 lines (tab always wins the sniff: no token holds enough commas for 40
    # fields): a first line of 40 fields makes every example a parsed file, never a refused one.
    assume(first.strip())  # 40 empty fields are 39 tabs: a whitespace-only line is no data, and the file is refused
    lines = [first, *rest]
    work = tmp_path_factory.mktemp("prop")
    path = work / "in.tsv"
    path.write_text("\n".join(lines) + "\n")
    report = prepare(builtin_spec("criteo"), [path], work / "out", QUIET)
    assert report["rows_read"] == len(lines)
    assert report["rows_read"] == sum(report["rows_written"].values()) + report["rows_rejected"]
    rejected = set(pl.read_parquet(work / "out" / "rejects.parquet")["line"].to_list())
    assert rejected == {i + 1 for i, line in enumerate(lines) if not expected_ok(line)}


@pytest.mark.parametrize(
    ("lines", "message"),
    [(["1\t2\t3", "", "a\tb"], "expects 40"), (["", " "], "has no data"), (["\t".join(["1"] * 41)] * 25, "expects 40")],
)
def test_a_file_whose_first_lines_never_show_40_fields_is_refused_whole(
    tmp_path: Path, lines: list[str], message: str
) -> None:
    path = tmp_path / "in.tsv"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=message):
        prepare(builtin_spec("criteo"), [path], tmp_path / "out", QUIET)
    assert not (tmp_path / "out").exists()
