"""The peer benchmark's own parts (benchmarks/vs_fuxictr.py): the same rows for every system, the table, the flags.

The FuxiCTR and scikit-learn runners need the peer environment (``make bench-peer`` creates ``.venv-peer/``);
their tests are skipped without it.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from benchmarks import vs_fuxictr
from benchmarks.peer_splits import _as_tokens, export_splits
from benchmarks.peer_table import BEGIN, END, render, write_section
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec, load_spec

REPO = Path(__file__).resolve().parents[1]
PEER_PYTHON = REPO / ".venv-peer" / "bin" / "python"
needs_peer = pytest.mark.skipif(not PEER_PYTHON.is_file(), reason="no .venv-peer/ (make bench-peer creates it)")

SPEC = """
name: clicks
delimiter: ","
header: true
label: {column: click}
dense:
  - {name: price}
categorical:
  - {name: site}
  - {name: tags, separator: "|"}
"""
TAGS = ["a|b", "", "b", "a|a|c"]


def _raw_rows(n: int) -> list[str]:
    """``n`` rows: price cycles 0, 2.5, 7 and empty; site s0..s4; tags as ``TAGS``; click on every third row."""
    prices = ["0", "2.5", "7", ""]
    return ["click,price,site,tags"] + [f"{int(i % 3 == 0)},{prices[i % 4]},s{i % 5},{TAGS[i % 4]}" for i in range(n)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("peer")
    (root / "spec.yaml").write_text(SPEC)
    (root / "data.csv").write_text("\n".join(_raw_rows(200)) + "\n")
    prepare(load_spec(root / "spec.yaml"), [root / "data.csv"], root / "prepared", PrepareOptions(progress=False))
    return root / "prepared"


def test_export_writes_each_split_row_for_row(prepared: Path, tmp_path: Path) -> None:
    columns = export_splits(prepared, tmp_path / "csv")
    assert columns["categorical"] == ["price", "site"] and columns["sequence"] == ["tags"]
    assert sum(columns["rows"].values()) == 200
    for split in ("train", "valid", "test"):
        shards = pl.read_parquet(prepared / split / "*.parquet")
        csv = pl.read_csv(tmp_path / "csv" / f"{split}.csv", infer_schema=False)
        assert csv.columns == ["label", "price", "site", "tags"]
        assert columns["rows"][split] == csv.height == shards.height > 0
        assert columns["positives"][split] == int(shards["label"].sum())
        # row i of the CSV is row i of the shards, field by field
        assert csv["label"].to_list() == [str(int(v)) for v in shards["label"]]
        assert csv["site"].to_list() == [str(v) for v in shards["site"]]
        assert csv["tags"].fill_null("").to_list() == ["^".join(map(str, ids)) for ids in shards["tags"]]
        expected_price = [str(int(v)) if v == int(v) else str(v) for v in shards["price"]]
        assert csv["price"].to_list() == expected_price


def test_export_tokens_exact(prepared: Path, tmp_path: Path) -> None:
    export_splits(prepared, tmp_path / "csv")
    splits = ("train", "valid", "test")
    frame = pl.concat([pl.read_csv(tmp_path / "csv" / f"{s}.csv", infer_schema=False) for s in splits])
    # whole numbers lose their ".0" (a bucket is one token in every split); 2.5 stays 2.5; missing is filled as 0
    assert set(frame["price"].to_list()) == {"0", "2.5", "7"}
    # tags ids by training frequency: a (2 per "a|b", 2 per "a|a|c") -> 2, b -> 3, c -> 4; an empty list -> ""
    assert set(frame["tags"].fill_null("").to_list()) == {"2^3", "", "3", "2^2^4"}


RESULTS: dict[str, Any] = {
    "machine": "test box",
    "date": "2026-12-07 05:00 UTC",
    "datasets": {
        "planted": {"rows": {"train": 800, "valid": 100, "test": 100}, "feature_map_hash": "h1", "bayes_auc": 0.8},
        "avazu": {"rows": {"train": 7971, "valid": 1033, "test": 995}, "feature_map_hash": "h2"},
    },
    "results": [
        {"data": "avazu", "system": "ctr", "model": "deepfm", "test_auc": 0.61, "test_logloss": 0.5, "epochs": 5,
         "seconds": 1.25},
        {"data": "avazu", "system": "ctr", "model": "lr", "test_auc": 0.7, "test_logloss": 0.45, "epochs": 3,
         "seconds": 1.0},
        {"data": "avazu", "system": "fuxictr", "model": "deepfm@512", "test_auc": 0.66, "test_logloss": 0.44,
         "epochs": 6, "seconds": 20.0},
        {"data": "avazu", "system": "fuxictr", "model": "deepfm", "test_auc": 0.53, "test_logloss": 0.61,
         "epochs": 4, "seconds": 10.9},
        {"data": "avazu", "system": "ctr", "model": "dlrm", "test_auc": None, "test_logloss": None, "epochs": None,
         "seconds": None, "error": "ValueError: DLRM needs at least one dense field"},
        {"data": "planted", "system": "sklearn", "model": "lr", "test_auc": 0.75, "test_logloss": 0.52,
         "epochs": None, "seconds": 3.0},
    ],
}  # fmt: skip


def test_render_orders_rows_and_formats_exactly() -> None:
    assert render(RESULTS, ("lr", "fm", "deepfm", "dlrm")).splitlines() == [
        "Measured on test box, 2026-12-07 05:00 UTC.",
        "",
        "- **planted**: 800 / 100 / 100 rows (train / valid / test); Bayes AUC 0.8000 (the truth file's, all rows).",
        "- **avazu**: 7,971 / 1,033 / 995 rows (train / valid / test).",
        "",
        "| data | system | model | test AUC | test logloss | epochs | seconds |",
        "|---|---|---|---:|---:|---:|---:|",
        "| planted | sklearn | lr | 0.7500 | 0.5200 | — | 3.0 |",
        "| avazu | fuxictr | deepfm | 0.5300 | 0.6100 | 4 | 10.9 |",
        "| avazu | fuxictr | deepfm@512 | 0.6600 | 0.4400 | 6 | 20.0 |",
        "| avazu | ctr | lr | 0.7000 | 0.4500 | 3 | 1.0 |",
        "| avazu | ctr | deepfm | 0.6100 | 0.5000 | 5 | 1.2 |",
        "| avazu | ctr | dlrm (failed, note 1) | — | — | — | — |",
        "",
        "Note 1: avazu, ctr dlrm: ValueError: DLRM needs at least one dense field",
    ]


def test_write_section_keeps_the_prose_around_the_table(tmp_path: Path) -> None:
    doc = tmp_path / "quality.md"
    doc.write_text(f"# Quality\n\nbefore\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    write_section(doc, "new table")
    assert doc.read_text() == f"# Quality\n\nbefore\n\n{BEGIN}\nnew table\n{END}\n\nafter\n"
    fresh = tmp_path / "fresh.md"
    write_section(fresh, "t")
    write_section(fresh, "t2")
    assert fresh.read_text() == f"{BEGIN}\nt2\n{END}\n"


def _row(system: str, model: str, auc: float) -> dict[str, Any]:
    return {"data": "avazu", "system": system, "model": model, "test_auc": auc}


def test_merge_replaces_only_the_rerun_rows_and_drops_rows_of_other_data() -> None:
    old = {
        "datasets": {"avazu": {"feature_map_hash": "h"}},
        "results": [_row("fuxictr", "deepfm", 0.5), _row("ctr", "deepfm", 0.6), _row("ctr", "lr", 0.7)],
    }
    same = vs_fuxictr.merge(old, "avazu", {"feature_map_hash": "h"}, [_row("ctr", "deepfm", 0.9)])
    assert same["results"] == [_row("fuxictr", "deepfm", 0.5), _row("ctr", "lr", 0.7), _row("ctr", "deepfm", 0.9)]
    other = vs_fuxictr.merge(old, "avazu", {"feature_map_hash": "new"}, [_row("ctr", "deepfm", 0.9)])
    assert other["results"] == [_row("ctr", "deepfm", 0.9)]
    assert other["datasets"]["avazu"] == {"feature_map_hash": "new"}


def _main(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exit_info:
        vs_fuxictr.main(args)
    assert exit_info.value.code == 1
    err: str = capsys.readouterr().err
    assert err.count("\n") == 1
    return err


def test_unknown_dataset_and_model_are_one_line_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    # every output in tmp_path, and data that is not there: a broken check cannot run or write anything real
    outputs = ["--work", str(tmp_path), "--results", str(tmp_path / "r.json"), "--doc", str(tmp_path / "q.md")]
    outputs += ["--data-root", str(tmp_path / "no-data")]
    err = _main(["--datasets", "criteo,bogus", *outputs], capsys)
    assert err.startswith("vs_fuxictr: error: --datasets: unknown ['bogus']; choose from avazu, movielens")
    err = _main(["--models", "deepfm,xgb", *outputs], capsys)
    assert err.startswith("vs_fuxictr: error: --models: unknown ['xgb']")
    err = _main(["--peer-python", str(tmp_path / "none"), *outputs], capsys)
    assert err.startswith(f"vs_fuxictr: error: --peer-python {tmp_path / 'none'}: not found")
    err = _main(["--datasets", "criteo", "--only", "ctr", *outputs], capsys)
    assert err.startswith(f"vs_fuxictr: error: --data-root {tmp_path / 'no-data'}: missing ")
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "q.md").exists()


def test_only_ctr_refuses_peer_rows_of_other_prepared_data(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    results = tmp_path / "results.json"
    cached = {"datasets": {"criteo": {"feature_map_hash": "0" * 64}}, "results": [_row("fuxictr", "deepfm", 0.5)]}
    results.write_text(json.dumps(cached))
    args = ["--only", "ctr", "--datasets", "criteo", "--models", "lr", "--data-root", str(shared_data)]
    err = _main([*args, "--work", str(tmp_path / "w"), "--results", str(results), "--doc", str(tmp_path / "q.md")],
                capsys)  # fmt: skip
    assert "--only ctr: " in err and "measured on other prepared data (feature map 000000000000, now" in err
    assert json.loads(results.read_text()) == cached  # nothing was run or written
    assert not (tmp_path / "q.md").exists()


@needs_peer
def test_sklearn_floor_checks_rows_and_picks_c_on_valid(prepared: Path, tmp_path: Path) -> None:
    splits = tmp_path / "csv"
    export_splits(prepared, splits)
    out = tmp_path / "lr.json"
    cmd = [str(PEER_PYTHON), "benchmarks/peer/sklearn_lr.py", "--splits", str(splits), "--out", str(out)]
    subprocess.run(cmd, cwd=REPO, check=True, timeout=300)
    result = json.loads(out.read_text())
    assert result["val_auc"] == max(t["val_auc"] for t in result["grid"])
    # one column per (field, value) of train: price 3 tokens, site 5, tags 3 (a, b, c) and "" (an empty list)
    assert result["features"] == 3 + 5 + 4
    columns = json.loads((splits / "columns.json").read_text())
    columns["rows"]["valid"] += 1
    (splits / "columns.json").write_text(json.dumps(columns))
    failed = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 1 and "valid: read" in failed.stderr and "the split has" in failed.stderr


def test_criteo_numbers_reach_the_peers_as_bars_buckets(tmp_path: Path) -> None:
    # the built-in spec stores log(1 + max(v, 0)); the peers get BARS' floor(ln(v)^2) for v > 2, v otherwise
    raw_values = ["0", "2", "3", "10", "100", "99999", "-1", ""]
    lines = ["\t".join([str(i % 2), v, *[""] * 12, f"c{i}", *[""] * 25]) for i, v in enumerate(raw_values)]
    (tmp_path / "c.tsv").write_text("\n".join(lines) + "\n")
    options = PrepareOptions(ratios=(1, 0, 0), progress=False)
    prepare(builtin_spec("criteo"), [tmp_path / "c.tsv"], tmp_path / "prepared", options)
    shards = pl.read_parquet(tmp_path / "prepared" / "train" / "*.parquet")
    assert shards["I1"].to_list() == pytest.approx([math.log1p(max(float(v or 0), 0)) for v in raw_values], abs=1e-6)
    i1 = _as_tokens(FeatureMap.load(tmp_path / "prepared"))[1]  # [label, I1, ...]
    # ln(3)^2 = 1.21, ln(10)^2 = 5.30, ln(100)^2 = 21.2, ln(99999)^2 = 132.5; -1 was clipped to 0; missing is 0
    assert shards.select(i1)["I1"].to_list() == ["0", "2", "1", "5", "21", "132", "0", "0"]
