"""Every OptEmbed stage run end to end through the ``ctr`` command (``pipelines.cli.main``, in-process), on 3,000
planted rows: ``apply``, ``supernet``, ``search`` (with ``--variant optembed-d`` and PostgreSQL storage too),
``retrain`` (with ``--resume`` and ``--init fresh``) and ``export``; each printed JSON line checked against the
files the stage wrote, and each stage's one-line error for a bad input (issue #21, items 2 and 6)."""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import polars as pl
import pytest
import torch

from ctr.artifact.export import load_exported
from ctr.data.shards import load_split
from ctr.optembed.pruned import PrunedTables
from ctr.runs import load_run
from ctr.tables.seeded_init import table_init
from ctr.training.metrics import auc
from features.schema import FeatureMap
from pipelines.cli import main

SMALL = ["trainer.progress_bar=false", "model.mlp=[16]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=256", "optim.sparse_lr=0.05"]
SUPERNET = [*SMALL, "supernet.alpha=0.5", "supernet.threshold_lr=0.2", "supernet.relative=false"]
SUPERNET += ["supernet.small_field_rows=0"]  # the tiny data's fields are small: prune them all, as the paper does
SEARCH = ["search.population=4", "search.n_mutation=2", "search.n_crossover=2", "search.generations=2"]
SEARCH += ["search.top_k=3", "search.workers=0"]


def _sets(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def _ctr(*argv: str | Path) -> dict[str, Any]:
    """``ctr argv`` in-process; returns the JSON line it printed last (its report)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main([str(a) for a in argv])
    lines = [line for line in out.getvalue().splitlines() if line.startswith(("{", "["))]
    assert lines, out.getvalue()[-2000:]
    report: dict[str, Any] = json.loads(lines[-1])
    return report


@pytest.fixture
def fails(capsys: pytest.CaptureFixture[str]) -> Callable[..., str]:
    """``fails(*argv)``: ``ctr argv`` must exit 1 with one line on stderr, which is returned."""

    def run(*argv: str | Path) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            main([str(a) for a in argv])
        err = capsys.readouterr().err
        assert exit_info.value.code == 1 and err.count("\n") == 1, err
        return err.rstrip("\n")

    return run


@pytest.fixture(scope="module")
def supernet(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("stages") / "supernet"
    report = _ctr("supernet", "--data", tiny, "--model", "deepfm", "--out", out, *_sets(SUPERNET))
    assert report == json.loads((out / "metrics.json").read_text())
    return out


@pytest.fixture(scope="module")
def plan(supernet: Path) -> Path:
    out = supernet.parent / "search"
    report = _ctr("search", "--supernet", supernet, "--out", out, "--quiet", *_sets(SEARCH))
    summary = json.loads((out / "search.json").read_text())
    assert report == {k: summary.get(k) for k in ("dims", "embedding_params", "sparsity", "row_sparsity", "trials")}
    return out


def test_apply_encodes_the_raw_rows_as_prepare_did(tiny: Path, tmp_path: Path) -> None:
    raw = tiny.parent / "synth.tsv"  # the rows `tiny` was prepared from, split 8:1:1
    report = _ctr("apply", "--feature-map", tiny, "--input", raw, "--out", tmp_path / "a", "--split-name", "all")
    assert report["rows_read"] == 3000 and report["rows_written"] == {"all": 3000} and report["rows_rejected"] == 0
    prepared = pl.concat([pl.read_parquet(tiny / s / "*.parquet") for s in ("train", "valid", "test")])
    applied = pl.read_parquet(tmp_path / "a" / "all" / "*.parquet")
    assert applied.columns == prepared.columns
    assert applied.sort(applied.columns).equals(prepared.sort(prepared.columns))


def test_supernet_search_retrain_resume_and_export_through_ctr(
    tiny: Path, supernet: Path, plan: Path, tmp_path: Path
) -> None:
    sn = json.loads((supernet / "metrics.json").read_text())
    assert sn["row_sparsity"] == pytest.approx(PrunedTables.load(plan).plan.row_sparsity)
    assert 0 < sn["row_sparsity"] < 1
    assert sorted(json.loads((plan / "search.json").read_text())["dims"].values()) != [8] * 26  # dims searched
    rt = tmp_path / "retrain"
    first = _ctr("retrain", "--supernet", supernet, "--plan", plan, "--out", rt)
    assert first == json.loads((rt / "metrics.json").read_text()) and first["epochs"] == 1
    # --resume: the run goes on from its checkpoint into a second epoch (a new run would refuse the folder)
    (rt / "metrics.json").unlink()
    again = _ctr(
        "retrain", "--supernet", supernet, "--plan", plan, "--out", rt, "--resume", "--set", "trainer.max_epochs=2"
    )
    assert again["global_step"] == 2 * first["global_step"] and again["epochs"] == 2
    report = _ctr("export", "--run", rt, "--out", tmp_path / "artifact")
    assert report["embedding_bytes"] == 4 * again["embedding_params"]
    test = load_split(tiny, FeatureMap.load(tiny), "test")
    predicted = load_exported(tmp_path / "artifact").predict(test)
    assert auc(predicted, test.labels) == pytest.approx(again["test_auc"], abs=1e-9)


def test_retrain_init_fresh_draws_new_tables_under_seed_plus_one(supernet: Path, plan: Path, tmp_path: Path) -> None:
    frozen = ["optim.sparse=sgd", "optim.sparse_lr=1e-30", "optim.lr=1e-30", "trainer.limit_train_batches=1"]
    tables = {}
    for init in ("fresh", "rewind"):
        out = tmp_path / init
        _ctr("retrain", "--supernet", supernet, "--plan", plan, "--out", out, "--init", init, *_sets(frozen))
        model = load_run(out).model
        tables[init] = {k: v for k, v in model.state_dict().items() if ".embedding_bags." in k}
    seed = load_run(supernet).config.trainer.seed
    for key, got in tables["fresh"].items():
        rows, width = got.shape
        assert torch.allclose(got, table_init(key.split(".")[-2], rows, width, seed + 1), atol=1e-6), key
        assert not torch.allclose(got, tables["rewind"][key]), key


def test_search_variant_optembed_d_keeps_every_row_and_searches_dims(tiny: Path, tmp_path: Path) -> None:
    sn = tmp_path / "supernet"
    sets = [*SMALL, "supernet.prune_rows=false"]  # optembed-d's supernet: dimension sampling only
    _ctr("supernet", "--data", tiny, "--model", "deepfm", "--out", sn, *_sets(sets))
    report = _ctr(
        "search", "--supernet", sn, "--out", tmp_path / "s", "--variant", "optembed-d", "--quiet", *_sets(SEARCH)
    )
    fields = PrunedTables.load(tmp_path / "s").plan.fields
    assert all(f.rows_kept == f.rows_total for f in fields) and report["row_sparsity"] == 0
    assert {f.name: f.dim for f in fields} == report["dims"] and min(report["dims"].values()) == 4
    assert report["trials"] > 0


def test_search_into_postgresql_storage(supernet: Path, postgres_url: str, tmp_path: Path) -> None:
    out = tmp_path / "s"
    report = _ctr(
        "search", "--supernet", supernet, "--out", out, "--storage", postgres_url, "--study", "stages", "--quiet",
        *_sets(SEARCH),
    )  # fmt: skip
    assert not (out / "study.db").exists()
    study = optuna.load_study(study_name="stages", storage=postgres_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == report["trials"] > 0
    assert json.loads((out / "search.json").read_text())["storage"] == postgres_url


def test_each_stage_reports_a_bad_input_in_one_line(
    tiny: Path, supernet: Path, tmp_path: Path, fails: Callable[..., str]
) -> None:
    nowhere, raw = tmp_path / "nowhere", tiny.parent / "synth.tsv"
    out = {name: tmp_path / name for name in ("apply", "supernet", "search", "retrain", "export")}
    assert fails("apply", "--feature-map", nowhere, "--input", raw, "--out", out["apply"]) == (
        f"ctr apply: error: {nowhere}: feature map not found"
    )
    assert fails(
        "supernet", "--data", tiny, "--model", "deepfm", "--out", out["supernet"], "--set", "supernet.alpha=-1"
    ) == ("ctr supernet: error: SupernetConfig.alpha: must be finite and >= 0, got -1.0")
    assert fails("search", "--supernet", nowhere, "--out", out["search"]) == (
        f"ctr search: error: {nowhere}/config.yaml: missing (is {nowhere} a finished run directory?)"
    )
    assert fails("retrain", "--supernet", supernet, "--plan", nowhere, "--out", out["retrain"]) == (
        f"ctr retrain: error: {nowhere}/plan.json: plan not found"
    )
    assert fails("export", "--run", supernet, "--out", out["export"]) == (
        f"ctr export: error: {supernet}: an OptEmbed supernet run: "
        "search and retrain its plan, then export the retraining run"
    )
    assert not any(p.exists() for p in out.values())  # nothing written


def test_optembed_with_postgresql_storage_keeps_its_study_there(tiny: Path, postgres_url: str, tmp_path: Path) -> None:
    out = tmp_path / "oe"
    args = ["optembed", "--data", tiny, "--model", "deepfm", "--out", out, "--storage", postgres_url]
    report = _ctr(*args, "--study", "oe-pg", "--quiet", *_sets([*SUPERNET, *SEARCH]))
    result = json.loads((out / "result.json").read_text())
    assert report["final"] == result["final"] and result["search"]["storage"] == postgres_url
    assert not (out / "search" / "study.db").exists()
    study = optuna.load_study(study_name="oe-pg", storage=postgres_url)
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(complete) == result["search"]["trials"] > 0
    assert result["search"]["best"]["val_auc"] == max(t.value for t in complete if t.value is not None)


def test_optembed_with_dlrm_searches_rows_only_and_retrains(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], fails: Callable[..., str]
) -> None:
    """DLRM dots every pair of fields, so every field keeps the one dim: `ctr optembed` runs as optembed-e (it
    failed in the retraining, after the whole search, when the search picked mixed dims)."""
    out = tmp_path / "oe"
    sets = _sets([*SUPERNET, *SEARCH, "model.dense_mlp=[8]"])
    report = _ctr("optembed", "--data", tiny, "--model", "dlrm", "--out", out, "--quiet", *sets)
    assert "--model dlrm needs every field at one dim: searching rows only" in capsys.readouterr().err
    result = json.loads((out / "result.json").read_text())
    assert result["variant"] == "optembed-e" and report["final"] == result["final"]
    assert {f["dim"] for f in result["fields"]} == {8} and result["row_sparsity"] > 0
    searched = _ctr("search", "--supernet", out / "supernet", "--out", tmp_path / "s", "--quiet", *_sets(SEARCH))
    assert set(searched["dims"].values()) == {8}  # `ctr search` on a DLRM supernet keeps the one dim too
    line = fails("optembed", "--data", tiny, "--model", "dlrm", "--out", tmp_path / "d", "--variant", "optembed-d")
    assert "--variant optembed-d searches dims only, but --model dlrm needs every field at one dim" in line
    assert not (tmp_path / "d").exists()


@pytest.mark.dist
@pytest.mark.slow
def test_optembed_with_two_processes_trains_every_stage_like_one(
    tiny: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    """`ctr optembed --nproc 2` (baseline, supernet and retrain on two processes; a subprocess: ranks > 0 re-run
    the command) against one process at the same global batch (2 x 256 = 512)."""
    sets = [*SUPERNET, *SEARCH]
    command = [sys.executable, "-m", "pipelines.cli", "optembed", "--data", str(tiny), "--model", "deepfm", "--quiet"]
    runs = {}
    for nproc, batch in ((1, 512), (2, 256)):
        out = tmp_path / f"n{nproc}"
        args = [*command, "--out", str(out), "--nproc", str(nproc), *_sets([*sets, f"data.batch_size={batch}"])]
        proc = subprocess.run(args, capture_output=True, text=True, env=subprocess_env, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[nproc] = json.loads((out / "result.json").read_text())
        stages = ("baseline", "supernet", "retrain")
        assert [json.loads((out / s / "metrics.json").read_text())["world_size"] for s in stages] == [nproc] * 3
    one, two = runs[1], runs[2]
    # the baseline: same initial weights and global batches, only the order of sums differs
    assert two["baseline"]["test_auc"] == pytest.approx(one["baseline"]["test_auc"], abs=0.005)
    assert two["search"]["trials"] > 0 and two["final"]["embedding_params"] < two["baseline"]["embedding_params"]
    test = load_split(tiny, FeatureMap.load(tiny), "test")
    predicted = load_exported(tmp_path / "n2" / "export").predict(test)
    assert auc(predicted, test.labels) == pytest.approx(two["final"]["test_auc"], abs=1e-6)
