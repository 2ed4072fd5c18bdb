"""`ctr serve` (issue #19): a real Ray Serve deployment on 127.0.0.1, posting raw records over HTTP.

The served scores equal `ctr predict`'s for the same raw rows; bad records get a 400 naming the record and the
field, and the server keeps answering good requests after them.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
import requests

from ctr.artifact.export import export_run
from ctr.artifact.predict import predict_files
from pipelines.cli import _build_parser
from pipelines.serve import ServeOptions, serving

COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _records(path: Path) -> list[dict[str, Any]]:
    """Raw TSV rows as JSON records: numbers as numbers where they parse, empty values as null."""
    out = []
    for line in path.read_text().splitlines():
        record: dict[str, Any] = {}
        for name, value in zip(COLUMNS, line.split("\t"), strict=True):
            record[name] = None if value == "" else int(value) if name[0] in "lI" else value
        out.append(record)
    return out


@pytest.fixture(scope="module")
def served(scoring_data: Path, scoring_run: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("serve")
    export_run(scoring_run("deepfm", "deepfm"), root / "artifact")
    summary = predict_files(root / "artifact", [scoring_data / "test.tsv"], root / "scores.parquet", progress=False)
    options = ServeOptions(str(root / "artifact"), port=_free_port(), max_batch_size=16)
    assert options.host == "127.0.0.1" and _build_parser().parse_args(["serve", "--model", "m"]).host == "127.0.0.1"
    with serving(options) as url:
        yield {"url": url, "scores": pl.read_parquet(root / "scores.parquet"), "summary": summary}


def _post(url: str, body: Any) -> requests.Response:
    return requests.post(f"{url}/predict", data=json.dumps(body), timeout=60)


def test_served_scores_equal_ctr_predicts(served: dict[str, Any], scoring_data: Path) -> None:
    url = served["url"]
    assert url.startswith("http://127.0.0.1:")
    assert requests.get(f"{url}/health", timeout=30).json() == {"status": "ok"}
    meta = requests.get(f"{url}/metadata", timeout=30).json()
    assert meta["model"]["model"]["name"] == "deepfm" and meta["columns"] == COLUMNS and "files" not in meta["model"]
    records = _records(scoring_data / "test.tsv")
    expected = served["scores"]["probability"].to_numpy()
    whole = _post(url, records)
    assert whole.status_code == 200
    np.testing.assert_allclose(whole.json(), expected, atol=1e-6)
    unlabelled = [{k: v for k, v in r.items() if k != "label"} for r in records[:50]]
    # 50 concurrent one-record requests: dynamic batching groups them; each gets its own record's score
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda r: _post(url, [r]), unlabelled))
    assert [a.status_code for a in answers] == [200] * 50
    np.testing.assert_allclose([a.json()[0] for a in answers], expected[:50], atol=1e-6)
    assert _post(url, []).json() == []


def test_bad_records_get_a_400_naming_record_and_field_and_the_server_keeps_serving(
    served: dict[str, Any], scoring_data: Path
) -> None:
    url = served["url"]
    good = _records(scoring_data / "test.tsv")[:3]
    cases = [
        ([good[0], {k: v for k, v in good[1].items() if k != "C7"}], "record 1: field 'C7': missing"),
        (
            [good[0], good[1], {**good[2], "I3": [1]}],
            "record 2: field 'I3': expected a string, a number or null, got list",
        ),
        ([{**good[0], "C99": "x"}], "record 0: field 'C99': unknown column (expected label, I1,"),
        ([good[0], {**good[1], "I5": "abc"}], "record 1: unparseable number in I5: 'abc'"),
        ([{**good[0], "label": 3}], "record 0: label label is not 0 or 1: '3'"),
        ([good[0], "text"], "record 1: expected an object of raw fields, got str"),
        ({"records": good}, "expected a JSON list of records, got dict"),
    ]
    for body, message in cases:
        answer = _post(url, body)
        assert answer.status_code == 400, (body, answer.text)
        assert answer.json()["error"].startswith(message), answer.text
    broken = requests.post(f"{url}/predict", data=b"[{", timeout=30)
    assert broken.status_code == 400 and broken.json()["error"].startswith("body is not JSON")
    assert requests.get(f"{url}/nowhere", timeout=30).status_code == 404
    after = _post(url, good)
    assert after.status_code == 200
    np.testing.assert_allclose(after.json(), served["scores"]["probability"].to_numpy()[:3], atol=1e-6)


def test_ctr_serve_refuses_a_bad_artifact_in_one_line_before_starting_ray(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipelines.cli import main

    with pytest.raises(SystemExit) as code:
        main(["serve", "--model", str(tmp_path / "none")])
    err = capsys.readouterr().err
    assert code.value.code == 1
    assert err == f"ctr serve: error: {tmp_path / 'none' / 'model.json'}: model spec missing (not an exported model)\n"
