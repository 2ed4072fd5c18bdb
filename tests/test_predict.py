"""Export any run, score raw files with `ctr predict` (issue #19).

Every model and every table layout (and float16 tables, and a retrained OptEmbed plan) goes train -> export ->
predict on the raw test file, whose rows are the test split in order: the scores must equal the run's own test
predictions (its model through its own data transform, ``load_run``) and ``load_exported(...).predict`` on the
prepared split, and the printed AUC the run's test AUC. Bad rows go to the rejects file with their line numbers
and every row is accounted for.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
import torch

from config.run import RetrainConfig
from config.strict import ConfigError
from ctr.artifact.export import export_run, load_exported
from ctr.artifact.predict import predict_files
from ctr.data.shards import load_split
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from ctr.optembed.pruned import PrunedTables
from ctr.runs import build_module, load_run, train_run
from ctr.training.defaults import load_run_config
from features.schema import FeatureMap
from pipelines.cli import main as cli_main
from tests.conftest import SCORING_SETS

MODELS = ["lr", "fm", "deepfm", "fnn", "ipnn", "dcn", "dcnv2", "dlrm"]
LAYOUTS = ["hash", "shared_hash", "qr", "mde", "unified"]


def _own_test_predictions(run: Path) -> npt.NDArray[np.float32]:
    """The run's model on the prepared test split through the run's own data transform (not the artifact's)."""
    trained = load_run(run)
    module = build_module(trained.config, trained.feature_map)
    split = module.transform_split(load_split(trained.config.data.path, trained.feature_map, "test"))
    with torch.no_grad():
        return torch.sigmoid(trained.model(split.batch(np.arange(len(split))))).numpy()


def _round_trip(run: Path, data: Path, tmp: Path, **export: Any) -> tuple[dict[str, Any], pl.DataFrame]:
    artifact = tmp / "artifact"
    export_run(run, artifact, **export)
    summary = predict_files(artifact, [data / "test.tsv"], tmp / "scores.parquet", progress=False)
    scores = pl.read_parquet(tmp / "scores.parquet")
    assert summary["rows_read"] == summary["rows_scored"] == scores.height == 300
    assert summary["rows_rejected"] == 0
    assert scores["line"].to_list() == list(range(1, 301)) and set(scores["file"]) == {"test.tsv"}
    fm = FeatureMap.load(data / "prepared")
    split = load_split(data / "prepared", fm, "test")
    assert scores["label"].to_numpy().tolist() == split.labels.tolist()
    np.testing.assert_allclose(scores["probability"].to_numpy(), load_exported(artifact).predict(split), atol=1e-6)
    return summary, scores


def _check_against_run(run: Path, data: Path, tmp: Path) -> None:
    summary, scores = _round_trip(run, data, tmp)
    np.testing.assert_allclose(scores["probability"].to_numpy(), _own_test_predictions(run), atol=1e-6)
    metrics = json.loads((run / "metrics.json").read_text())
    assert summary["auc"] == pytest.approx(metrics["test_auc"], abs=1e-6)
    assert summary["logloss"] == pytest.approx(metrics["test_logloss"], abs=1e-5)


@pytest.mark.parametrize("model", MODELS)
def test_every_model_exports_and_predicts_its_own_test_scores(
    model: str, scoring_data: Path, scoring_run: Any, tmp_path: Path
) -> None:
    _check_against_run(scoring_run(model, model), scoring_data, tmp_path)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_table_layout_exports_and_predicts_its_own_test_scores(
    layout: str, scoring_data: Path, scoring_run: Any, tmp_path: Path
) -> None:
    run = scoring_run(f"dcnv2-{layout}", "dcnv2", f"tables.method={layout}", "tables.budget=0.3")
    _check_against_run(run, scoring_data, tmp_path)
    spec = json.loads((tmp_path / "artifact" / "model.json").read_text())
    assert (spec["command"], spec["tables"]["method"]) == ("ctr train", layout)


def test_float16_tables_export_and_predict(scoring_data: Path, scoring_run: Any, tmp_path: Path) -> None:
    run = scoring_run("deepfm-f16", "deepfm", "model.table_dtype=float16")
    _check_against_run(run, scoring_data, tmp_path)
    state = torch.load(tmp_path / "artifact" / "weights.pt", weights_only=True)
    assert state["sparse_arch.ebc.embedding_bags.t_C1.weight"].dtype == torch.float16
    with pytest.raises(ConfigError, match=r"table_dtype: 'float16' .*int8 export needs float32 tables"):
        export_run(run, tmp_path / "int8", int8=True)


def test_a_retrained_plan_exports_and_int8_scores_stay_close(
    scoring_data: Path, scoring_run: Any, tmp_path: Path
) -> None:
    """A hand-made OptEmbed plan (rows pruned, mixed dims) retrained with ``init=fresh``; then int8."""
    prepared = scoring_data / "prepared"
    fm = FeatureMap.load(prepared)
    rng = np.random.default_rng(0)
    masks = {f.name: rng.random(f.cardinality) < 0.6 for f in fm.categorical}
    for m in masks.values():
        m[:2] = True  # the missing and OOV rows
    fields = tuple(
        FieldPlan(f.name, 4 if i % 2 else 8, int(masks[f.name].sum()), f.cardinality)
        for i, f in enumerate(fm.categorical)
    )
    PrunedTables(EmbeddingPlan(fm.content_hash, 8, fields), masks).save(tmp_path / "plan")
    base = scoring_run("deepfm", "deepfm")  # stands in as the supernet: init=fresh reads nothing of it
    retrain = RetrainConfig(init="fresh", supernet=str(base), plan=str(tmp_path / "plan"))
    config = load_run_config(None, SCORING_SETS, data=str(prepared), model="deepfm")
    train_run(dataclasses.replace(config, retrain=retrain), tmp_path / "rt")
    _check_against_run(tmp_path / "rt", scoring_data, tmp_path / "float")
    spec = json.loads((tmp_path / "float" / "artifact" / "model.json").read_text())
    assert spec["command"] == "ctr retrain" and spec["model"]["field_dims"]["C2"] == 4
    float_scores = pl.read_parquet(tmp_path / "float" / "scores.parquet")["probability"].to_numpy()
    _, int8 = _round_trip(tmp_path / "rt", scoring_data, tmp_path / "int8", int8=True)
    assert 0 < np.abs(int8["probability"].to_numpy() - float_scores).max() < 0.01


def test_a_supernet_or_a_missing_run_is_refused(scoring_data: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.yaml: missing"):
        export_run(tmp_path / "nothing", tmp_path / "artifact")


def _bad_rows_file(data: Path, path: Path) -> list[int]:
    """The raw test file with bad rows inserted; returns their 1-based line numbers."""
    lines = (data / "test.tsv").read_text().splitlines()
    fields = lines[0].split("\t")
    bad = {
        3: "\t".join(fields[:10]),  # too few columns
        10: "\t".join(["7", *fields[1:]]),  # label not 0 or 1
        20: "\t".join([fields[0], "abc", *fields[2:]]),  # unparseable number in I1
        30: "",  # empty line
    }
    out = list(lines)
    for at in sorted(bad):
        out.insert(at - 1, bad[at])
    unseen = out[40].split("\t")
    unseen[14] = "never-seen-value"  # C1: an unseen value is scored with the OOV id, not rejected
    out[40] = "\t".join(unseen)
    path.write_text("\n".join(out) + "\n")
    return sorted(bad)


def test_bad_rows_go_to_the_rejects_file_and_every_row_is_accounted_for(
    scoring_data: Path, scoring_run: Any, tmp_path: Path
) -> None:
    artifact = tmp_path / "artifact"
    export_run(scoring_run("deepfm", "deepfm"), artifact)
    clean = predict_files(artifact, [scoring_data / "test.tsv"], tmp_path / "clean.parquet", progress=False)
    bad_lines = _bad_rows_file(scoring_data, tmp_path / "bad.tsv")
    # chunks of 64 rows: the rows cross chunk boundaries, as 10M rows would
    summary = predict_files(artifact, [tmp_path / "bad.tsv"], tmp_path / "s.parquet", batch_size=64, progress=False)
    assert (summary["rows_read"], summary["rows_scored"], summary["rows_rejected"]) == (304, 300, 4)
    rejects = pl.read_parquet(tmp_path / "s.rejects.parquet")
    assert rejects["line"].to_list() == bad_lines
    reasons = rejects["reason"].to_list()
    assert reasons[0] == "expected 40 columns, got 10" and reasons[3] == "empty line"
    assert reasons[1] == "label label is not 0 or 1: '7'"
    assert reasons[2] == "unparseable number in I1: 'abc'"
    scores = pl.read_parquet(tmp_path / "s.parquet")
    assert scores.height + rejects.height == summary["rows_read"]
    good = [n for n in range(1, 305) if n not in bad_lines]
    assert scores["line"].to_list() == good
    reference = pl.read_parquet(tmp_path / "clean.parquet")["probability"].to_numpy()
    changed = good.index(41)  # the row with an unseen value
    same = np.delete(np.arange(300), changed)
    np.testing.assert_allclose(scores["probability"].to_numpy()[same], reference[same], atol=1e-6)
    assert summary["auc"] == pytest.approx(clean["auc"], abs=0.02)


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``ctr ARGS`` in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        cli_main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_a_file_without_labels_scores_without_metrics_and_outputs_are_protected(
    scoring_data: Path, scoring_run: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    artifact = tmp_path / "artifact"
    export_run(scoring_run("deepfm", "deepfm"), artifact)
    columns = [*(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
    rows = [line.split("\t")[1:] for line in (scoring_data / "test.tsv").read_text().splitlines()]
    (tmp_path / "serving.tsv").write_text("\n".join("\t".join(r) for r in [columns, *rows]) + "\n")
    out = tmp_path / "scores.parquet"
    cmd = ["predict", "--model", str(artifact), "--quiet", "--input", str(tmp_path / "serving.tsv"), "--out", str(out)]
    code, stdout, _ = _cli(cmd, capsys)
    assert code == 0
    summary = json.loads(stdout.strip().splitlines()[-1])
    assert summary["rows_scored"] == 300 and "auc" not in summary
    scores = pl.read_parquet(out)
    assert scores["label"].null_count() == 300 and scores["line"].to_list() == list(range(2, 302))  # after the header
    assert _cli(cmd, capsys)[::2] == (
        1,
        f"ctr predict: error: {out}: exists (written by ctr predict); use --overwrite to replace it\n",
    )
    assert _cli([*cmd, "--overwrite"], capsys)[0] == 0
    notes = tmp_path / "notes.parquet"
    notes.write_bytes(b"mine")
    with pytest.raises(ConfigError, match="exists and ctr predict did not write it"):
        predict_files(artifact, [tmp_path / "serving.tsv"], notes, progress=False, overwrite=True)
    assert notes.read_bytes() == b"mine"
    missing = ["predict", "--model", str(artifact), "--input", str(tmp_path / "none.tsv"), "--out", str(tmp_path / "x")]
    assert _cli(missing, capsys)[::2] == (1, f"ctr predict: error: {tmp_path / 'none.tsv'}: input file not found\n")
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".x.*"))  # no output, no scratch folder left


def test_bf16_scoring_stays_close_to_float32(scoring_data: Path, scoring_run: Any, tmp_path: Path) -> None:
    artifact = tmp_path / "artifact"
    export_run(scoring_run("deepfm", "deepfm"), artifact)
    test = [scoring_data / "test.tsv"]
    exact = predict_files(artifact, test, tmp_path / "f32.parquet", progress=False)
    fast = predict_files(artifact, test, tmp_path / "bf16.parquet", progress=False, bf16=True)
    p32, p16 = (pl.read_parquet(tmp_path / f)["probability"].to_numpy() for f in ("f32.parquet", "bf16.parquet"))
    assert (exact["bf16"], fast["bf16"]) == (False, True)
    assert 0 < np.abs(p16 - p32).max() < 0.02
    assert fast["auc"] == pytest.approx(exact["auc"], abs=0.01)
