"""OptEmbed after the supernet: pruned tables, candidate scoring, the search, retraining, export, the pipeline.

Mechanics tests on 8,000 planted rows (6.4k train) with a small DeepFM (dim 8, MLP [32]) trained one epoch.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import dataclasses
import json
import os
import pickle
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pytest
import torch

from config.run import RetrainConfig, SearchConfig
from config.strict import ConfigError
from ctr.artifact.export import export_run, load_exported
from ctr.artifact.manifest import manifest
from ctr.data.shards import load_split
from ctr.optembed.module import find_pruning, model_row_masks
from ctr.optembed.plan import EmbeddingPlan, FieldPlan
from ctr.optembed.pruned import PrunedTables
from ctr.optembed.scorer import CandidateScorer, FixedPrefix
from ctr.optembed.variants import VARIANTS
from ctr.runs import load_run, train_run
from ctr.tables.embedding import LINEAR_DIM
from ctr.tables.seeded_init import table_init
from ctr.training.defaults import load_run_config
from ctr.training.metrics import auc
from features.outputs import LOCK, MARKER, owned_dir
from features.schema import FeatureMap
from pipelines.cli import main as cli_main
from pipelines.optembed import run_optembed, search_stage
from search.driver import SearchSpace, run_search

SMALL = ["trainer.progress_bar=false", "model.mlp=[32]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=512", "optim.sparse_lr=0.05"]
TINY_SEARCH = ["search.population=6", "search.n_mutation=3", "search.n_crossover=3", "search.generations=3"]
TINY_SEARCH += ["search.top_k=4", "search.workers=0"]


@pytest.fixture(scope="module")
def data(synth_data: Callable[..., Path]) -> Path:
    return synth_data("oe", 8000, seed=3)


@pytest.fixture(scope="module")
def supernet(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("sn") / "supernet"
    sets = [*SMALL, "supernet.alpha=0.5", "supernet.threshold_lr=0.2", "supernet.relative=false"]
    train_run(load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",)), out)
    return out


@pytest.fixture(scope="module")
def scorer(supernet: Path) -> CandidateScorer:
    run = load_run(supernet)
    masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
    return CandidateScorer(run.model, masks, load_split(run.config.data.path, run.feature_map, "valid"), batch_size=700)


def _space(scorer: CandidateScorer) -> SearchSpace:
    n = len(scorer.fields)
    return SearchSpace(scorer.fields, tuple((4, 8) for _ in range(n)), tuple(10 * (i + 1) for i in range(n)))


# ---------------------------------------------------------------------- pruned tables
def test_pruned_tables_remap_and_reduced_feature_map(data: Path, tmp_path: Path) -> None:
    fm = FeatureMap.load(data)
    masks = {f.name: np.zeros(f.cardinality, dtype=bool) for f in fm.categorical}
    first = fm.categorical[0]
    masks[first.name][[0, 3, 4]] = True  # missing row and two values kept; OOV (1) is not, yet always stays
    plan = EmbeddingPlan(
        fm.content_hash, 8, tuple(FieldPlan(f.name, 8, int(masks[f.name].sum()), f.cardinality) for f in fm.categorical)
    )
    tables = PrunedTables(plan, masks)
    assert tables.kept_ids(first.name).tolist() == [0, 1, 3, 4]
    remap = tables.remap(first.name)
    assert remap[[0, 1, 2, 3, 4]].tolist() == [0, 1, 1, 2, 3] and set(remap[5:].tolist()) <= {1}
    reduced = tables.feature_map(fm)
    assert reduced.field(first.name).cardinality == 4
    assert all(f.cardinality == 1 for f in reduced.categorical[1:])  # everything pruned: only the OOV row
    split = load_split(data, fm, "valid")
    moved = split.remapped(reduced, {n: tables.remap(n) for n in fm.sparse_names})
    assert np.array_equal(moved.sparse[:, 0], remap[split.sparse[:, 0]])
    tables.save(tmp_path / "plan")
    again = PrunedTables.load(tmp_path / "plan", fm.content_hash)
    assert again.plan == plan and all(np.array_equal(again.masks[n], masks[n]) for n in masks)
    with pytest.raises(ConfigError, match="plan was made for feature map"):
        PrunedTables.load(tmp_path / "plan", "0" * 64)
    (tmp_path / "plan" / "masks.npz").write_bytes(b"not a zip")
    with pytest.raises(ConfigError, match="corrupt row masks"):
        PrunedTables.load(tmp_path / "plan")
    with pytest.raises(ConfigError, match="mask keeps 3 rows, the plan says 2"):
        PrunedTables(
            dataclasses.replace(plan, fields=(dataclasses.replace(plan.fields[0], rows_kept=2), *plan.fields[1:])),
            masks,
        )


# ---------------------------------------------------------------------- scoring
def test_scorer_matches_the_full_forward_pass_and_the_supernet_validation(
    supernet: Path, scorer: CandidateScorer
) -> None:
    metrics = json.loads((supernet / "metrics.json").read_text())
    full = tuple(8 for _ in scorer.fields)
    # Evaluation of the supernet uses full dims with its row masks: exactly what the scorer precomputes.
    assert scorer.score(full) == pytest.approx(metrics["val_auc"], abs=1e-9)
    rng = np.random.default_rng(0)
    run = load_run(supernet)
    valid = load_split(run.config.data.path, run.feature_map, "valid")
    batches = [valid.batch(np.arange(s, min(s + 700, len(valid)))) for s in range(0, len(valid), 700)]
    logits = {}
    for _ in range(3):
        cand = tuple(int(d) for d in rng.choice([4, 8], len(scorer.fields)))
        # the precomputed embeddings against the masked model's whole forward pass (table lookups included)
        model = copy.copy(scorer.model)
        model.field_transform = FixedPrefix(cand, 8)
        with torch.no_grad():
            forward = torch.cat([model(b) for b in batches])
        logits[cand] = scorer.logits(cand)
        assert torch.allclose(logits[cand], forward, atol=1e-5)
        assert scorer.score(cand) == pytest.approx(scorer.score_naive(cand), abs=1e-9)
    first, *others = logits.values()
    assert all(not torch.allclose(first, other) for other in others)  # the dims change the logits
    with pytest.raises(ValueError, match="is not 26 dims"):
        scorer.score((4, 4))


# ---------------------------------------------------------------------- search
class _Stop(Exception):
    pass


def test_interrupted_search_resumes_without_rescoring(scorer: CandidateScorer, tmp_path: Path) -> None:
    config = load_run_config(None, TINY_SEARCH, data="x", model="deepfm", sections=("search",)).search
    assert config is not None
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    whole = run_search(scorer, _space(scorer), config, storage, "whole", progress=False)
    assert whole.trials == whole.evaluated <= 6 * 3

    def stop_after_first(generation: int, _: object) -> None:
        if generation == 0:
            raise _Stop

    with pytest.raises(_Stop):
        run_search(scorer, _space(scorer), config, storage, "cut", progress=False, on_generation=stop_after_first)
    resumed = run_search(scorer, _space(scorer), config, storage, "cut", progress=False)
    assert resumed.trials == whole.trials and resumed.evaluated == whole.trials - 6
    assert resumed.best == dataclasses.replace(whole.best, trial=resumed.best.trial)
    assert resumed.best_per_generation == whole.best_per_generation
    assert all(b >= a for a, b in zip(whole.best_per_generation, whole.best_per_generation[1:], strict=False))
    again = run_search(scorer, _space(scorer), config, storage, "cut", progress=False)
    assert again.evaluated == 0  # a finished study: nothing re-scored
    other = dataclasses.replace(config, mutation_prob=0.5)
    with pytest.raises(ConfigError, match=r"belongs to another search .*evolution"):
        run_search(scorer, _space(scorer), other, storage, "cut", progress=False)


def test_multi_objective_and_budget_modes(scorer: CandidateScorer, tmp_path: Path) -> None:
    base = load_run_config(None, TINY_SEARCH, data="x", model="deepfm", sections=("search",)).search
    assert base is not None
    space = _space(scorer)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    pareto = run_search(scorer, space, dataclasses.replace(base, multi_objective=True), storage, "mo", progress=False)
    front = pareto.pareto
    assert front and all(
        not (o.val_auc >= s.val_auc and o.embedding_params <= s.embedding_params and o != s)
        for s in front
        for o in front
    )
    assert [s.embedding_params for s in front] == sorted(s.embedding_params for s in front)
    budget = run_search(scorer, space, dataclasses.replace(base, budget=0.7), storage, "budget", progress=False)
    import optuna

    trials = optuna.load_study(study_name="budget", storage=storage).trials
    assert trials and all(t.user_attrs["embedding_params"] <= 0.7 * space.full_cost for t in trials)
    assert budget.best.embedding_params <= 0.7 * space.full_cost


def test_the_study_note_describes_the_plan_written(supernet: Path, tmp_path: Path) -> None:
    import optuna
    from optuna_dashboard import get_note

    # The note used to show the highest-scoring trial, not the plan picked within pick_tolerance and shrunk.
    sets = [*TINY_SEARCH, "search.pick_tolerance=0.01", "search.val_rows=800"]
    config = load_run_config(None, sets, data="x", model="deepfm", sections=("search",)).search
    assert config is not None
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        summary = search_stage(supernet, tmp_path / "search", VARIANTS["optembed"], config, progress=False)
        # scored single-threaded, then the caller's threads back (the retraining stage after it once ran on one)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    assert summary["dims"] != summary["best"]["dims"]  # the case: the plan is not the best candidate
    tables = PrunedTables.load(tmp_path / "search")
    plan_dims = {f.name: f.dim for f in tables.plan.fields}
    # DeepFM's retrained tables: the kept rows (with the OOV row) at the plan's dim plus the first-order columns
    plan_params = sum(tables.kept_ids(f.name).shape[0] * (f.dim + LINEAR_DIM) for f in tables.plan.fields)
    note = get_note(optuna.load_study(study_name="optembed", storage=summary["storage"]))
    params = re.search(r"Plan written to `plan.json`: \*\*([\d,]+) embedding parameters\*\*", note)
    assert params is not None, note
    assert int(params.group(1).replace(",", "")) == plan_params == summary["embedding_params"]
    assert dict(re.findall(r"^\| (\w+) \| (\d+) \|$", note, re.MULTILINE)) == {k: str(v) for k, v in plan_dims.items()}
    assert f"validation AUC **{summary['final_val_auc']:.6f}** on the supernet" in note


def test_shrink_steps_fields_down_within_the_tolerance_and_val_rows_samples_the_split(
    supernet: Path, scorer: CandidateScorer, tmp_path: Path
) -> None:
    config = load_run_config(
        None, [*TINY_SEARCH, "search.pick_tolerance=0.01"], data="x", model="deepfm", sections=("search",)
    ).search
    assert config is not None and config.shrink  # on by default
    on = search_stage(supernet, tmp_path / "on", VARIANTS["optembed"], config, progress=False)
    # Replay the shrink from the chosen candidate, scoring each step with the fixture's scorer (all validation
    # rows, as the search's when val_rows is unset): largest table first, each field to its smallest dim (4),
    # kept where the AUC stays within pick_tolerance of the best.
    assert on["scorer_rows"] == scorer.num_rows
    floor = on["best"]["val_auc"] - 0.01
    dims = dict(on["chosen"]["dims"])
    assert [s["field"] for s in on["shrink"]] == [f for f in _largest_first(tmp_path / "on") if dims[f] > 4] != []
    for step in on["shrink"]:
        assert (step["from"], step["to"]) == (dims[step["field"]], 4)
        auc = scorer.score(tuple(4 if f == step["field"] else dims[f] for f in scorer.fields))
        assert step["val_auc"] == pytest.approx(auc, abs=1e-12) and step["kept"] == (auc >= floor)
        dims[step["field"]] = 4 if step["kept"] else dims[step["field"]]
    assert on["dims"] == dims and on["final_val_auc"] >= floor
    assert on["final_val_auc"] == pytest.approx(scorer.score(tuple(dims[f] for f in scorer.fields)), abs=1e-12)
    off = dataclasses.replace(config, shrink=False, val_rows=300)
    summary = search_stage(supernet, tmp_path / "off", VARIANTS["optembed"], off, progress=False)
    assert summary["shrink"] == [] and summary["dims"] == summary["chosen"]["dims"]
    assert summary["scorer_rows"] == 300 < scorer.num_rows


def _largest_first(search: Path) -> list[str]:
    """The fields by retrained table rows (kept rows and the OOV row), most first, ties in feature-map order: the
    order in which shrink tries them."""
    tables = PrunedTables.load(search)
    return sorted((f.name for f in tables.plan.fields), key=lambda name: -tables.kept_ids(name).shape[0])


@pytest.mark.dist
def test_ray_evaluators_match_local_and_survive_a_killed_actor(scorer: CandidateScorer) -> None:
    from search.evaluators import LocalEvaluator, RayEvaluator

    cands = [tuple(int(d) for d in np.random.default_rng(i).choice([4, 8], len(scorer.fields))) for i in range(8)]
    local = LocalEvaluator(scorer)(cands)
    with RayEvaluator(scorer, workers=2) as evaluate:
        assert evaluate(cands) == local
        os.kill(evaluate.pids()[0], signal.SIGKILL)  # an evaluator process dies; Ray restarts it and retries
        assert evaluate(cands) == local


# ---------------------------------------------------------------------- retraining and export
def _retrain(data: Path, supernet: Path, plan: Path, out: Path, init: str, extra: list[str]) -> dict[str, object]:
    retrain = RetrainConfig(init=init, supernet=str(supernet), plan=str(plan))  # type: ignore[arg-type]
    # As `ctr retrain` does: the supernet's own config.yaml (its model section), with the overrides.
    base = load_run_config(supernet / "config.yaml", [*SMALL, *extra], data=str(data), model=None)
    cfg = dataclasses.replace(base, supernet=None, search=None, retrain=retrain)
    return train_run(cfg, out)


def test_retrain_builds_the_physical_table_and_initialises_as_asked(data: Path, supernet: Path, tmp_path: Path) -> None:
    summary = search_stage(supernet, tmp_path / "plan", VARIANTS["optembed-e"], SearchConfig(), progress=False)
    tables = PrunedTables.load(tmp_path / "plan")
    assert summary["dims"] == {f.name: 8 for f in tables.plan.fields}
    assert 0.0 < tables.plan.row_sparsity < 1.0
    dims = {f.name: (4 if i % 2 else 8) for i, f in enumerate(tables.plan.fields)}
    tables.with_dims(dims).save(tmp_path / "plan")
    frozen = ["optim.sparse=sgd", "optim.sparse_lr=1e-30", "optim.lr=1e-30", "trainer.limit_train_batches=1"]
    source = load_run(supernet)
    seed = source.config.trainer.seed
    fm = source.feature_map
    for init in ("rewind", "inherit"):
        _retrain(data, supernet, tmp_path / "plan", tmp_path / init, init, frozen)
        model = load_run(tmp_path / init).model
        for name in fm.sparse_names:
            keep = torch.from_numpy(PrunedTables.load(tmp_path / "plan").kept_ids(name))
            got = model.sparse_arch.ebc.embedding_bags[f"t_{name}"].weight.detach()  # type: ignore[union-attr]
            # DeepFM's rows: the embedding's first dims[name] columns, then the LINEAR_DIM first-order columns.
            assert got.shape == (keep.numel(), dims[name] + LINEAR_DIM)
            if init == "rewind":
                full = table_init(f"t_{name}", fm.field(name).cardinality, 8 + LINEAR_DIM, seed)
            else:
                full = source.model.sparse_arch.ebc.embedding_bags[f"t_{name}"].weight.detach()  # type: ignore[union-attr]
            want = torch.cat([full[keep, : dims[name]], full[keep, 8:]], dim=1)
            assert torch.allclose(got, want, atol=1e-6), (init, name)
    metrics = json.loads((tmp_path / "inherit" / "metrics.json").read_text())
    reduced = tables.with_dims(dims)
    assert metrics["embedding_params"] == sum(
        reduced.kept_ids(f.name).shape[0] * (f.dim + 4) for f in reduced.plan.fields
    )  # the embeddings at their dims plus the 4 first-order columns, over the kept rows


def test_a_second_search_on_the_same_folder_is_refused_and_the_first_goes_on(supernet: Path, tmp_path: Path) -> None:
    """Issue #18, item 5: a second `ctr search` on the same folder made the first die."""
    out = tmp_path / "plan"
    with owned_dir(out, "ctr search"):  # the first search, in this process
        cmd = [sys.executable, "-m", "pipelines.cli", "search", "--supernet", str(supernet), "--out", str(out)]
        proc = subprocess.run([*cmd, "--quiet"], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1, proc.stderr[-2000:]
        assert proc.stderr.strip().startswith(f"ctr search: error: {out}: in use by pid {os.getpid()}")
        assert sorted(p.name for p in out.iterdir()) == [LOCK, MARKER]  # the second wrote nothing
        summary = search_stage(supernet, out, VARIANTS["optembed-e"], SearchConfig(), progress=False)
    assert (out / "search.json").is_file() and summary["dims"]


def test_export_loads_strictly_and_predicts_like_the_run(data: Path, supernet: Path, tmp_path: Path) -> None:
    search_stage(supernet, tmp_path / "plan", VARIANTS["optembed-e"], SearchConfig(), progress=False)
    metrics = _retrain(data, supernet, tmp_path / "plan", tmp_path / "rt", "inherit", [])
    fm = FeatureMap.load(data)
    test = load_split(data, fm, "test")
    info = export_run(tmp_path / "rt", tmp_path / "float")
    model = load_exported(tmp_path / "float")
    assert auc(model.predict(test), test.labels) == pytest.approx(metrics["test_auc"], abs=1e-9)
    quant = export_run(tmp_path / "rt", tmp_path / "int8", int8=True)
    assert info["embedding_bytes"] == 4 * metrics["embedding_params"]  # type: ignore[operator]
    tables = PrunedTables.load(tmp_path / "plan")
    rows = [tables.kept_ids(f.name).shape[0] for f in tables.plan.fields]
    int8_rows = sum(r * (f.dim + LINEAR_DIM + 4) for r, f in zip(rows, tables.plan.fields, strict=True))
    # one byte per value (embedding and first-order columns) plus a 2+2-byte scale/bias per row; each table
    # padded to a 128-byte line at most
    assert int8_rows <= quant["embedding_bytes"] <= int8_rows + 127 * len(rows)  # type: ignore[operator]
    assert quant["weights_bytes"] < info["weights_bytes"]  # type: ignore[operator]
    p8 = load_exported(tmp_path / "int8").predict(test)
    assert np.abs(p8 - model.predict(test)).max() < 0.01
    weights = tmp_path / "float" / "weights.pt"
    weights.write_bytes(weights.read_bytes()[:-10])
    with pytest.raises(ConfigError, match=r"weights\.pt: sha256 mismatch"):
        load_exported(tmp_path / "float")
    spec = json.loads((tmp_path / "int8" / "model.json").read_text())
    (tmp_path / "int8" / "model.json").write_text(json.dumps({**spec, "int9": True}))
    with pytest.raises(ConfigError, match="unknown key 'int9'"):
        load_exported(tmp_path / "int8")


@pytest.fixture(scope="module")
def artifact(data: Path, supernet: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A float artifact of a rows-only plan (every dim 8), retrained two steps."""
    root = tmp_path_factory.mktemp("export")
    search_stage(supernet, root / "plan", VARIANTS["optembed-e"], SearchConfig(), progress=False)
    _retrain(data, supernet, root / "plan", root / "rt", "inherit", ["trainer.limit_train_batches=2"])
    export_run(root / "rt", root / "artifact")
    return root / "artifact"


def _copy(artifact: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact, tmp_path / "artifact"))


def _rehash(root: Path) -> None:
    """Rewrite model.json's file hashes for the files as they are now (a tampered artifact that hides it)."""
    spec = json.loads((root / "model.json").read_text())
    (root / "model.json").write_text(json.dumps({**spec, "files": manifest(root, exclude="model.json")}))


def _refused(root: Path, pattern: str) -> str:
    with pytest.raises(ConfigError, match=pattern) as info:
        load_exported(root)
    assert "\n" not in str(info.value)
    return str(info.value)


def test_export_hashes_every_file_and_a_swapped_vocab_id_is_refused(artifact: Path, tmp_path: Path) -> None:
    files = json.loads((artifact / "model.json").read_text())["files"]
    on_disk = {p.relative_to(artifact).as_posix() for p in artifact.rglob("*") if p.is_file()} - {"model.json", MARKER}
    assert set(files) == on_disk and {"feature_map.json", "plan.json", "masks.npz", "weights.pt"} <= on_disk
    vocabs = sorted(n for n in files if n.startswith("vocab/"))
    assert vocabs, "the artifact carries the vocabularies"
    root = _copy(artifact, tmp_path)
    vocab = pl.read_parquet(root / vocabs[0])
    ids = vocab["id"].to_list()
    vocab.with_columns(pl.Series("id", [ids[1], ids[0], *ids[2:]], dtype=vocab["id"].dtype)).write_parquet(
        root / vocabs[0]
    )
    _refused(root, rf"{re.escape(str(root / vocabs[0]))}: sha256 mismatch \(model\.json lists {files[vocabs[0]][:12]}")


def test_a_missing_or_an_extra_artifact_file_is_refused_by_name(artifact: Path, tmp_path: Path) -> None:
    root = _copy(artifact, tmp_path)
    vocab = sorted((root / "vocab").iterdir())[0]
    vocab.unlink()
    _refused(root, rf"{re.escape(str(vocab))}: missing \(listed in model\.json\)")
    shutil.copy(artifact / "vocab" / vocab.name, vocab)
    load_exported(root)
    (root / "notes.txt").write_text("hello")
    _refused(root, rf"{re.escape(str(root / 'notes.txt'))}: not part of the artifact")


def test_an_artifact_of_export_format_1_is_refused(artifact: Path, tmp_path: Path) -> None:
    root = _copy(artifact, tmp_path)
    spec = json.loads((root / "model.json").read_text())
    old = {k: v for k, v in spec.items() if k not in ("files", "table_rows")} | {"format": 1, "weights_sha256": "0"}
    (root / "model.json").write_text(json.dumps(old))
    _refused(root, r"model\.json: export format 1, this version reads 3 only .*export the run again")


def test_a_plan_contradicting_model_json_is_refused_naming_the_field(artifact: Path, tmp_path: Path) -> None:
    root = _copy(artifact, tmp_path)
    plan = json.loads((root / "plan.json").read_text())
    name = plan["fields"][2]["name"]
    plan["fields"][2]["dim"] = 4  # model.json's model has it at 8
    (root / "plan.json").write_text(json.dumps(plan))
    _rehash(root)
    _refused(root, rf"plan\.json: field '{name}' has dim 4, model\.json says 8$")
    shutil.copy(artifact / "plan.json", root / "plan.json")
    spec = json.loads((root / "model.json").read_text())
    rows = spec["table_rows"][name]
    spec["table_rows"][name] = rows + 1
    (root / "model.json").write_text(json.dumps(spec))
    _rehash(root)
    _refused(root, rf"plan\.json: field '{name}' keeps {rows} rows \(with masks\.npz\), model\.json says {rows + 1}$")


def test_corrupt_masks_or_weights_give_one_line_naming_the_file(artifact: Path, tmp_path: Path) -> None:
    import struct
    import zipfile

    root = _copy(artifact, tmp_path)
    with zipfile.ZipFile(root / "masks.npz") as z:
        first = z.infolist()[0]
    raw = bytearray((root / "masks.npz").read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[first.header_offset + 26 : first.header_offset + 30])
    start = first.header_offset + 30 + name_len + extra_len  # the first member's deflate stream
    raw[start] = 0xFF  # block type 3: reserved, so zlib fails ("invalid block type")
    (root / "masks.npz").write_bytes(bytes(raw))
    _rehash(root)
    _refused(root, rf"{re.escape(str(root / 'masks.npz'))}: corrupt row masks \(error: .*invalid block type\)$")
    shutil.copy(artifact / "masks.npz", root / "masks.npz")
    (root / "weights.pt").write_bytes((artifact / "weights.pt").read_bytes()[:-100])
    _rehash(root)
    _refused(root, rf"{re.escape(str(root / 'weights.pt'))}: corrupt weights \(")


# ---------------------------------------------------------------------- the pipeline
def _export_writes_only_into_its_own_folders(run: Path, notes: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Issue #18, item 1: `ctr export` deleted an existing --out (the whole pipeline folder, a user's notes)."""
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    before = {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()}
    cases = [
        (run, "holds the input"),  # the pipeline folder: the run to export is inside it
        (notes, "holds notes.txt, which ctr did not write"),
        (run / "retrain", "holds the input"),
    ]
    for out, problem in cases:
        for extra in ([], ["--overwrite"]):
            with pytest.raises(SystemExit) as exit_code:
                cli_main(["export", "--run", str(run / "retrain"), "--out", str(out), *extra])
            err = capsys.readouterr().err.strip()
            assert exit_code.value.code == 1 and problem in err and len(err.splitlines()) == 1, err
    with pytest.raises(SystemExit):
        cli_main(["export", "--run", str(run / "retrain"), "--out", str(run / "export")])
    assert "use --overwrite" in capsys.readouterr().err
    assert {str(p.relative_to(run)): p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file()} == before
    assert (notes / "notes.txt").read_text() == "mine"
    cli_main(["export", "--run", str(run / "retrain"), "--out", str(run / "export"), "--overwrite"])
    load_exported(run / "export")


# 6.4k training rows at batch 128: 50 steps per epoch, a checkpoint every 5 (room to kill a stage mid-epoch)
PIPELINE = [
    *SMALL,
    *TINY_SEARCH,
    "supernet.alpha=0.5",
    "supernet.threshold_lr=0.2",
    "supernet.relative=false",
    "search.pick_tolerance=0.002",
]
PIPELINE += ["data.batch_size=128", "trainer.checkpoint_every_n_steps=5", "trainer.log_every_n_steps=1"]
PIPELINE_STEPS = 50


def _optembed_cmd(data: Path, out: Path) -> list[str]:
    args = ["optembed", "--data", str(data), "--model", "deepfm", "--out", str(out), "--quiet"]
    return [sys.executable, "-m", "pipelines.cli", *args, *[x for s in PIPELINE for x in ("--set", s)]]


def _env() -> dict[str, str]:
    """This environment without the process-group variables the in-process runs above leave behind."""
    dist = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    return {k: v for k, v in os.environ.items() if k not in dist}


@pytest.fixture(scope="module")
def pipeline(data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    """An uninterrupted `ctr optembed` run (a subprocess) and its result.json as it was written."""
    out = tmp_path_factory.mktemp("pipeline") / "run"
    proc = subprocess.run(_optembed_cmd(data, out), capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out, json.loads((out / "result.json").read_text())


def _test_auc(data: Path, logits: npt.NDArray[np.floating[Any]]) -> float:
    """The test split's AUC by the Mann-Whitney rank sum (ties averaged): an independent reference."""
    labels = load_split(data, FeatureMap.load(data), "test").labels.astype(bool)
    _, index, counts = np.unique(logits, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[index]  # 1-based, a tie's average rank
    pos, neg = int(labels.sum()), int((~labels).sum())
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def test_ctr_optembed_end_to_end(
    data: Path, pipeline: tuple[Path, dict[str, Any]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source, result = pipeline
    run = Path(shutil.copytree(source, tmp_path / "run"))  # this test rewrites the export; the fixture stays
    for part in ("baseline", "final"):
        assert set(result[part]) >= {"test_auc", "test_logloss", "embedding_params"}
    plan = PrunedTables.load(run / "search").plan
    assert result["sparsity"] == pytest.approx(plan.sparsity) and result["row_sparsity"] == pytest.approx(
        plan.row_sparsity
    )
    assert [f["name"] for f in result["fields"]] == [f.name for f in plan.fields]
    assert result["final"]["embedding_params"] < result["baseline"]["embedding_params"]
    assert {p.name for p in (run / "search" / "plots").iterdir()} == {"dims.png", "generations.png", "pareto.png"}
    # The AUCs reported: the exported model's test predictions (and the baseline run's restored model) scored by
    # an independent AUC, and the final model ahead of a constant predictor (0.5) by a margin.
    test = load_split(data, FeatureMap.load(data), "test")
    exported = load_exported(run / "export").predict(test)
    assert result["final"]["test_auc"] == pytest.approx(_test_auc(data, exported), abs=1e-9)
    baseline = load_run(run / "baseline").model
    with torch.no_grad():
        logits = torch.cat(
            [baseline(test.batch(np.arange(s, min(s + 1000, len(test))))) for s in range(0, len(test), 1000)]
        )
    assert result["baseline"]["test_auc"] == pytest.approx(_test_auc(data, logits.numpy()), abs=1e-6)
    assert result["final"]["test_auc"] > 0.55, result["final"]
    _export_writes_only_into_its_own_folders(run, tmp_path / "notes", capsys)
    # A finished pipeline run again: its stages are kept, result.json written again from them.
    baseline_metrics = (run / "baseline" / "metrics.json").read_text()
    (run / "result.json").unlink()
    config = load_run_config(None, PIPELINE, data=str(data), model="deepfm", sections=("supernet", "search", "retrain"))
    again = run_optembed(config, run, VARIANTS["optembed"], progress=False)
    assert again["final"] == result["final"] and again["search"]["trials"] == result["search"]["trials"]
    assert (run / "baseline" / "metrics.json").read_text() == baseline_metrics


def _kill_when(proc: subprocess.Popen[str], reached: Callable[[], int | None], deadline_s: float = 300) -> int:
    """SIGKILL ``proc`` (and its process group) as soon as ``reached()`` returns a number; returns it."""
    deadline = time.monotonic() + deadline_s
    while (value := reached()) is None:
        assert proc.poll() is None, f"the run ended ({proc.returncode}) before it could be killed"
        assert time.monotonic() < deadline, "the kill point was not reached"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    return value


def _checkpoint_step(run: Path) -> int | None:
    """The supernet's last checkpointed step once it is at least 5 (its first checkpoint), else None."""
    try:
        meta = torch.load(run / "supernet" / "checkpoints" / "last.ckpt" / "lightning_meta.pt", weights_only=True)
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError):
        return None  # not written yet, or being swapped in
    step = int(meta["global_step"])
    return step if step >= 5 else None


def _complete_trials(run: Path) -> int | None:
    """COMPLETE trials of the search's study once there are 7 (one generation of 6, and one more), else None."""
    db = run / "search" / "study.db"
    if not db.is_file():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=0.1)) as con:
            (n,) = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
    except sqlite3.OperationalError:
        return None  # the tables are not created yet, or the file is locked by a write
    return int(n) if n >= 7 else None


@pytest.mark.slow
def test_ctr_optembed_killed_in_the_supernet_and_in_the_search_resumes_to_the_same_result(
    data: Path, pipeline: tuple[Path, dict[str, Any]], tmp_path: Path
) -> None:
    """Issue #21, item 1: each interrupted stage resumes (the supernet from its checkpoint, the search from its
    study) and the pipeline ends where an uninterrupted run ends."""
    whole_dir, whole = pipeline
    run = tmp_path / "run"

    def start() -> subprocess.Popen[str]:
        out = subprocess.DEVNULL
        return subprocess.Popen(
            _optembed_cmd(data, run), env=_env(), text=True, stdout=out, stderr=out, start_new_session=True
        )

    killed_at = _kill_when(start(), lambda: _checkpoint_step(run))
    assert 5 <= killed_at < PIPELINE_STEPS, killed_at
    assert (run / "baseline" / "metrics.json").is_file() and not (run / "supernet" / "metrics.json").exists()
    baseline_metrics = (run / "baseline" / "metrics.json").read_bytes()

    _kill_when(start(), lambda: _complete_trials(run))
    assert (run / "supernet" / "metrics.json").is_file() and not (run / "search" / "search.json").exists()
    with contextlib.closing(sqlite3.connect(run / "search" / "study.db")) as con:
        (done,) = con.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()
    assert 7 <= done < whole["search"]["trials"]

    last = start()
    assert last.wait(timeout=600) == 0
    result = json.loads((run / "result.json").read_text())
    keys = ("test_auc", "test_logloss", "val_auc", "embedding_params")
    for part in ("baseline", "final"):
        assert {k: result[part][k] for k in keys} == pytest.approx({k: whole[part][k] for k in keys}, abs=1e-6), part
    assert result["fields"] == whole["fields"] and result["search"]["trials"] == whole["search"]["trials"]
    assert (run / "baseline" / "metrics.json").read_bytes() == baseline_metrics  # the finished stage was kept
    # The supernet went on from its checkpoint: a second log (version_1) that starts after the killed step.
    logs = run / "supernet" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0", "version_1"]
    steps = [int(r["step"]) for r in csv.DictReader((logs / "version_1" / "metrics.csv").open()) if r["step"]]
    assert steps and min(steps) >= killed_at
    # The search went on from its study: only the candidates not finished before the kill were scored.
    search = json.loads((run / "search" / "search.json").read_text())
    assert search["evaluated"] == whole["search"]["trials"] - done
    assert (whole_dir / "search" / "search.json").is_file()


@pytest.mark.slow
@pytest.mark.dist
def test_ctr_optembed_on_two_processes_killed_in_the_supernet_resumes_to_the_same_result(
    data: Path, tmp_path: Path
) -> None:
    """Issue #21, item 1 with `--nproc 2`: the whole process group killed after a supernet checkpoint, the same
    command again, and the pipeline ends where an uninterrupted two-process run ends, the supernet continuing
    from its checkpoint."""

    def cmd(out: Path) -> list[str]:
        return [*_optembed_cmd(data, out), "--nproc", "2"]

    whole = subprocess.run(cmd(tmp_path / "whole"), capture_output=True, text=True, env=_env(), timeout=900)
    assert whole.returncode == 0, whole.stderr[-2000:]
    run = tmp_path / "run"
    out = subprocess.DEVNULL
    victim = subprocess.Popen(cmd(run), env=_env(), text=True, stdout=out, stderr=out, start_new_session=True)
    killed_at = _kill_when(victim, lambda: _checkpoint_step(run))
    assert 5 <= killed_at < PIPELINE_STEPS // 2, killed_at  # each of the 2 processes takes half the steps
    assert not (run / "supernet" / "metrics.json").exists()
    again = subprocess.run(cmd(run), capture_output=True, text=True, env=_env(), timeout=900)
    assert again.returncode == 0, again.stderr[-2000:]
    want = json.loads((tmp_path / "whole" / "result.json").read_text())
    got = json.loads((run / "result.json").read_text())
    keys = ("test_auc", "test_logloss", "val_auc", "embedding_params")
    for part in ("baseline", "final"):
        assert {k: got[part][k] for k in keys} == pytest.approx({k: want[part][k] for k in keys}, abs=1e-6), part
    assert got["fields"] == want["fields"]
    logs = run / "supernet" / "logs"
    assert sorted(p.name for p in logs.iterdir()) == ["version_0", "version_1"]
    steps = [int(r["step"]) for r in csv.DictReader((logs / "version_1" / "metrics.csv").open()) if r["step"]]
    assert steps and min(steps) >= killed_at


def test_a_bad_search_section_fails_in_one_line_before_anything_trains(data: Path, tmp_path: Path) -> None:
    # population 6 with the default n_mutation + n_crossover = 10 + 10 used to fail after two trainings
    args = ["optembed", "--data", str(data), "--model", "deepfm", "--out", str(tmp_path / "run"), "--quiet"]
    args += [x for s in [*SMALL, "search.population=6"] for x in ("--set", s)]  # small: a regression ends soon
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert proc.stderr == (
        "ctr optembed: error: SearchConfig: n_mutation + n_crossover must be in [1, population=6], got 10 + 10 = 20\n"
    )
    assert time.monotonic() - started < 60  # seconds: no stage ran
    assert not (tmp_path / "run").exists()  # no stage folder, nothing trained


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["search.top_k=0"], "SearchConfig.top_k: must be >= 1, got 0"),
        (["search.eval_batch_size=0"], "SearchConfig.eval_batch_size: must be >= 1, got 0"),
        (["supernet.candidates=[4, 6]"], r"SupernetConfig.candidates: need multiples of 4 >= 0, .*got \[4, 6\]"),
        (["supernet.candidates=[0]"], r"SupernetConfig.candidates: need multiples of 4 >= 0, not all 0"),
        (["supernet.candidates=[4, 16]", "model.embedding_dim=8"], r"\[4, 16\] exceed model.embedding_dim=8"),
    ],
)
def test_every_section_is_checked_when_the_config_loads(sets: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, sets, data="x", model="deepfm", sections=("supernet", "search", "retrain"))


def test_optembed_over_a_multiplexed_table_searches_probes(data: Path, tmp_path: Path) -> None:
    sets = [*SMALL, *TINY_SEARCH, "tables.budget=0.2", "tables.chunk=4", "search.pick_tolerance=0.01"]
    config = load_run_config(None, sets, data=str(data), model="fnn", sections=("supernet", "search", "retrain"))
    result = run_optembed(config, tmp_path / "run", VARIANTS["optembed-unified"], progress=False)
    probes = [f["probes"] for f in result["fields"]]
    assert all(0 <= k <= 2 for k in probes) and len(probes) == 26  # dim 8: 0 (dropped), 1 or 2 probes of 4
    # One shared table of the budget's size: the search moves probes, not parameters.
    assert result["final"]["embedding_params"] == result["baseline"]["embedding_params"]
    fm = FeatureMap.load(data)
    full = sum(f.cardinality for f in fm.categorical) * 8
    assert result["final"]["embedding_params"] <= 0.2 * full
    assert result["sparsity"] == pytest.approx(1 - result["final"]["embedding_params"] / full)
    retrained = load_run_config(tmp_path / "run" / "retrain" / "config.yaml", [], data=None, model=None)
    assert retrained.tables is not None and retrained.tables.method == "unified"
    assert [retrained.tables.probes[f["name"]] for f in result["fields"]] == probes
    exported = load_exported(tmp_path / "run" / "export")  # the multiplexed table exports too (issue #19)
    assert exported.spec.tables is not None and exported.spec.tables.probes == retrained.tables.probes
    assert result["export"]["tables"] == "unified"
