"""``ctr predict`` reads each input in windows of ``batch_size`` lines, so its memory is flat in the rows (issue #19).

Bad rows sit at and around the boundaries of 7-line windows (lines 1-7, 8-14, 15-21, 22-28, ...) in three files:
one without a header (starting with a byte-order mark, one line not UTF-8), one with a header (its first window
holds the header and six rows) and one of exactly two windows. Their line numbers are written out by hand; the
scores, labels and rejects must be those of reading each file in one window, and every row is accounted for.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from ctr.artifact import predict
from ctr.artifact.export import export_run
from ctr.artifact.predict import predict_files
from features import stream
from features.sources import scan_inputs, scan_windows
from features.spec import load_spec

FEW = "expected 40 columns, got 10"
MANY = "expected 40 columns, got 41"
EMPTY = "empty line"
LABEL = "label label is not 0 or 1: '7'"
NUMBER = "unparseable number in I1: 'abc'"
UTF8 = "invalid UTF-8 (raw shows the bytes as \\xNN)"
COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]

# file -> (lines, header, {line: reason}); a line not listed holds the next good row of the raw test file
FILES: dict[str, tuple[int, bool, dict[int, str]]] = {
    "a.tsv": (30, False, {7: FEW, 8: EMPTY, 14: LABEL, 15: UTF8, 16: MANY, 28: NUMBER, 29: FEW}),
    "b.tsv": (22, True, {2: FEW, 7: EMPTY, 8: LABEL, 21: FEW, 22: NUMBER}),
    "c.tsv": (14, False, {1: FEW, 14: MANY}),
}


def _bad(reason: str, good: list[str]) -> bytes:
    """A line rejected for ``reason``, made from a good row's fields."""
    fields = good[0].split("\t")
    return {
        FEW: "\t".join(fields[:10]).encode(),
        MANY: "\t".join([*fields, "extra"]).encode(),
        EMPTY: b"",
        LABEL: "\t".join(["7", *fields[1:]]).encode(),
        NUMBER: "\t".join([fields[0], "abc", *fields[2:]]).encode(),
        UTF8: "\t".join(fields).encode().replace(b"\t", b"\t\xff", 1),
    }[reason]


def _write(folder: Path, rows: list[str]) -> list[Path]:
    good = list(rows)
    paths = []
    for name, (n, header, bad) in FILES.items():
        lines = [b"\t".join(c.encode() for c in COLUMNS)] if header else []
        for number in range(len(lines) + 1, n + 1):
            lines.append(_bad(bad[number], good) if number in bad else good.pop(0).encode())
        data = b"\n".join(lines) + b"\n"
        (folder / name).write_bytes(b"\xef\xbb\xbf" + data if name == "a.tsv" else data)
        paths.append(folder / name)
    return paths


@pytest.mark.parametrize(("chunk", "window", "threads"), [(1, 1, 3), (7, 7, 1), (10, 3, 2)])
def test_line_numbers_rejects_and_scores_across_window_boundaries(
    chunk: int,
    window: int,
    threads: int,
    scoring_data: Path,
    scoring_run: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Windows of ``window`` lines, gathered into chunks of at most ``chunk`` rows (``--batch-size``), scored on
    ``threads`` threads; every third chunk is held back, so later chunks finish first and order must be restored."""
    artifact = tmp_path / "artifact"
    export_run(scoring_run("deepfm", "deepfm"), artifact)
    inputs = _write(tmp_path, (scoring_data / "test.tsv").read_text().splitlines())
    monkeypatch.setattr(stream, "WINDOW_LINES", 1000)
    whole = predict_files(artifact, inputs, tmp_path / "whole.parquet", progress=False)  # one window per file
    monkeypatch.setattr(stream, "WINDOW_LINES", window)
    sizes: list[int] = []  # input rows of each chunk scored
    chunks = stream.encoded_chunks

    def counted(*args: Any) -> Iterator[stream.EncodedChunk]:
        for c in chunks(*args):
            sizes.append(c.rows.height + c.rejects.height)
            yield c

    scorer = predict._Scorer.__call__

    def slow(self: Any, chunk: stream.EncodedChunk) -> Any:
        if len(sizes) % 3 == 0:
            time.sleep(0.02)
        return scorer(self, chunk)

    monkeypatch.setattr(predict, "encoded_chunks", counted)
    monkeypatch.setattr(predict._Scorer, "__call__", slow)
    summary = predict_files(
        artifact, inputs, tmp_path / "windows.parquet", batch_size=chunk, progress=False, threads=threads
    )
    assert sum(sizes) == 65 and max(sizes) <= chunk and len(sizes) >= 65 // chunk
    expected_rejects = [
        ("a.tsv", 7, FEW),
        ("a.tsv", 8, EMPTY),
        ("a.tsv", 14, LABEL),
        ("a.tsv", 15, UTF8),
        ("a.tsv", 16, MANY),
        ("a.tsv", 28, NUMBER),
        ("a.tsv", 29, FEW),
        ("b.tsv", 2, FEW),
        ("b.tsv", 7, EMPTY),
        ("b.tsv", 8, LABEL),
        ("b.tsv", 21, FEW),
        ("b.tsv", 22, NUMBER),
        ("c.tsv", 1, FEW),
        ("c.tsv", 14, MANY),
    ]
    rejects = pl.read_parquet(tmp_path / "windows.rejects.parquet")
    assert list(rejects.select("file", "line", "reason").iter_rows()) == expected_rejects
    assert rejects.filter(pl.col("line") == 15)["raw"].item().split("\t")[1].startswith("\\xff")
    good = [
        *(("a.tsv", n) for n in range(1, 31) if n not in (7, 8, 14, 15, 16, 28, 29)),
        *(("b.tsv", n) for n in range(2, 23) if n not in (2, 7, 8, 21, 22)),  # line 1 is the header
        *(("c.tsv", n) for n in range(2, 14)),
    ]
    scores = pl.read_parquet(tmp_path / "windows.parquet")
    assert list(scores.select("file", "line").iter_rows()) == good
    counts = (summary["rows_read"], summary["rows_scored"], summary["rows_rejected"])
    assert counts == (30 + 21 + 14, len(good), len(expected_rejects)) == (65, 51, 14)
    assert counts == (whole["rows_read"], whole["rows_scored"], whole["rows_rejected"])
    one = pl.read_parquet(tmp_path / "whole.parquet")
    assert_frame_equal(scores.drop("probability"), one.drop("probability"))
    np.testing.assert_allclose(scores["probability"].to_numpy(), one["probability"].to_numpy(), atol=1e-6)
    assert_frame_equal(rejects, pl.read_parquet(tmp_path / "whole.rejects.parquet"))
    assert summary["auc"] == pytest.approx(whole["auc"], abs=1e-6)


SPEC = """
name: clicks
label: {column: click}
dense:
  - {name: price}
categorical:
  - {name: site}
"""


@pytest.mark.parametrize("window", [1, 2, 3, 100])
def test_windows_of_parquet_and_csv_files_hold_the_rows_of_one_scan(window: int, tmp_path: Path) -> None:
    """Parquet files are read in batches of ``window`` rows, numbered from 1 in each file; a CSV's header once."""
    (tmp_path / "spec.yaml").write_text(SPEC.replace("label:", "format: parquet\nlabel:"))
    parquet = load_spec(tmp_path / "spec.yaml")
    (tmp_path / "csv.yaml").write_text(SPEC.replace("label:", 'delimiter: ","\nheader: true\nlabel:'))
    csv = load_spec(tmp_path / "csv.yaml")
    a = pl.DataFrame({"click": [1, 0, 1, 0, 1], "price": [1.5, None, 3.0, 4.0, 5.0], "site": list("vwxyz")})
    a.write_parquet(tmp_path / "a.parquet", row_group_size=2)
    a.drop("click").write_parquet(tmp_path / "b.parquet")  # the label is optional: null in its rows
    (tmp_path / "a.csv").write_text("site,click,price\nx,1,2\ny,0\nz,1,3\n")
    for spec, files in ((parquet, ["a.parquet", "b.parquet"]), (csv, ["a.csv"])):
        inputs = [tmp_path / f for f in files]
        one = scan_inputs(spec, inputs, tmp_path / "scratch", optional=("click",)).collect()
        windows = [w.collect() for w in scan_windows(spec, inputs, tmp_path / "scratch", window, optional=("click",))]
        assert max(w.height for w in windows) <= window
        assert_frame_equal(pl.concat(windows), one)
    assert one["__line"].to_list() == [2, 3, 4] and one["__reject"].to_list() == [None, "columns", None]
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    got = pl.concat(w.collect() for w in scan_windows(parquet, files, tmp_path, window, optional=("click",)))
    assert got["__line"].to_list() == [1, 2, 3, 4, 5] * 2
    assert got["price"].to_list()[:3] == ["1.5", None, "3.0"] and got["click"].null_count() == 5
