"""Table methods (ctr.tables.methods): stable salted hashing, exact parameter counts, the data transform, models
on every strategy, and a learning test: Unified Embedding beats per-field hashing at a tenth of the memory.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchrec import KeyedJaggedTensor

from config.model import ModelConfig
from config.strict import ConfigError
from config.tables import METHODS, TablesConfig
from ctr.data.columnar import ColumnarSplit, CSRColumn
from ctr.models.zoo import MODELS, build_model
from ctr.runs import train_run
from ctr.tables.embedding import LINEAR_DIM, embedding_params
from ctr.tables.methods import build_layout
from ctr.tables.rules import salted_bucket
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.schema import CategoricalField, DenseField, FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic

U64 = (1 << 64) - 1


def _mix(x: int) -> int:  # SplitMix64's finaliser in plain Python integers: an independent reference
    z = (x + 0x9E3779B97F4A7C15) & U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & U64
    return z ^ (z >> 31)


def test_salted_bucket_golden_values_and_reference() -> None:
    ids = [0, 1, 12345, 2**40]
    assert salted_bucket(np.array(ids), 0, 1_000_003).tolist() == [518421, 930644, 704921, 964541]
    assert salted_bucket(np.array(ids), 1025, 1_000_003).tolist() == [950834, 996829, 779336, 988005]
    assert salted_bucket(np.array(ids), 1025, 1_000_003).tolist() == [_mix(x ^ _mix(1025)) % 1_000_003 for x in ids]


def test_salts_make_equal_ids_land_independently() -> None:
    ids = np.arange(200_000)
    m = 1000
    a, b = salted_bucket(ids, 0, m), salted_bucket(ids, 1, m)
    same = float((a == b).mean())  # equal raw ids in two fields (or probes): share a row only by chance
    assert abs(same - 1 / m) < 3 * math.sqrt(1 / m / len(ids)) + 2e-4, same
    counts = np.bincount(a, minlength=m)  # within a field: bucket loads spread as a uniform hash's (Poisson)
    mean = len(ids) / m
    assert 0.85 * math.sqrt(mean) < counts.std() < 1.15 * math.sqrt(mean), counts.std()
    assert counts.min() > mean - 5 * math.sqrt(mean) and counts.max() < mean + 5 * math.sqrt(mean)


def _fm() -> FeatureMap:
    return FeatureMap(
        dataset="toy",
        label="y",
        splits={},
        source_spec={},
        seed=0,
        split_method="random",
        dense=(DenseField("x", "none", 0.0, 0.0, 1.0),),
        categorical=(
            CategoricalField("a", "vocab", 1000),
            CategoricalField("b", "vocab", 300, multi_valued=True),
            CategoricalField("c", "vocab", 20),
        ),
    )


@pytest.mark.parametrize(
    ("method", "budget", "params"),
    [
        ("full", 1.0, (1000 + 300 + 20) * 16),
        ("hash", 0.1, (100 + 30 + 2) * 16),
        ("shared_hash", 0.1, 132 * 16),  # ceil(0.1 * 1320) rows
        # m = ceil(1/r), or ceil(sqrt(V)) when smaller and r V is below QR's reach: ceil(V/m) + m rows per field
        ("qr", 0.1, (100 + 10 + 30 + 10 + 4 + 5) * 16),
        ("qr", 0.05, (50 + 20 + 17 + 18 + 4 + 5) * 16),
        ("unified", 0.1, (1320 * 16 // 10 // 4) * 4),  # M = r N D / c rows of width c = 4
        ("unified", 0.01, (int(0.01 * 1320 * 16) // 4) * 4),
    ],
)
def test_exact_parameter_counts(method: str, budget: float, params: int) -> None:
    fm = _fm()
    layout = build_layout(TablesConfig(method=method, budget=budget), fm, 16)  # type: ignore[arg-type]
    assert layout.params == params
    model = build_model(fm, ModelConfig(name="fnn", embedding_dim=16, mlp=(8,)), layout=layout)
    assert model.sparse_arch is not None
    assert sum(p.numel() for p in model.sparse_arch.ebc.parameters()) == params
    deepfm = ModelConfig(name="deepfm", embedding_dim=16, mlp=(8,))
    rows = sum(t.rows for t in layout.tables)
    assert embedding_params(fm, deepfm, layout) == params + 4 * rows  # plus the first-order tables
    assert sum(
        p.numel() for m in build_model(fm, deepfm, layout=layout).embedding_modules() for p in m.parameters()
    ) == (params + 4 * rows)


def test_mde_dims_follow_frequency_and_fit_the_budget() -> None:
    fm = _fm()
    layout = build_layout(TablesConfig(method="mde", budget=0.5), fm, 16)
    dims = {t.features[0]: t.dim for t in layout.tables}
    assert dims["a"] <= dims["b"] <= dims["c"] and all(d % 4 == 0 and 4 <= d <= 16 for d in dims.values())
    assert layout.params <= 0.5 * 1320 * 16


def _split(fm: FeatureMap, n: int = 50) -> ColumnarSplit:
    rng = np.random.default_rng(0)
    single = np.stack([rng.integers(0, 1000, n), rng.integers(0, 20, n)], axis=1).astype(np.int32)
    lens = rng.integers(0, 4, n)
    offsets = np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    values = rng.integers(0, 300, int(offsets[-1])).astype(np.int32)
    return ColumnarSplit(
        fm,
        dense=rng.normal(size=(n, 1)).astype(np.float32),
        labels=(rng.random(n) < 0.3).astype(np.float32),
        sparse=single,
        multi={"b": CSRColumn(offsets, values)},
    )


@pytest.mark.parametrize("method", METHODS)
def test_transform_and_every_model_on_every_strategy(method: str) -> None:
    fm = _fm()
    layout = build_layout(TablesConfig(method=method, budget=0.1 if method != "full" else 1.0), fm, 16)  # type: ignore[arg-type]
    split = _split(fm)
    virtual = layout.transform(split)
    rows = {f: t.rows for t in layout.tables for f in t.features}
    for j, f in enumerate(x for x in virtual.feature_map.categorical if not x.multi_valued):
        assert virtual.sparse[:, j].min() >= 0 and virtual.sparse[:, j].max() < rows[f.name]
    for name, col in virtual.multi.items():
        assert np.array_equal(col.offsets, split.multi["b"].offsets)  # per probe: the same bag, pooled alone
        assert col.values.size == 0 or col.values.max() < rows[name]
    batch = virtual.batch(np.arange(len(split)))
    for name in MODELS:
        if name == "dlrm" and method == "mde":
            continue  # DLRM needs every field at embedding_dim
        model = build_model(fm, ModelConfig(name=name, embedding_dim=16, mlp=(8,)), layout=layout)  # type: ignore[arg-type]
        assert model(batch).shape == (len(split),), name


def test_unified_embedding_concatenates_salted_probes() -> None:
    fm = FeatureMap(
        dataset="toy",
        label="y",
        dense=(),
        splits={},
        source_spec={},
        seed=0,
        split_method="random",
        categorical=(CategoricalField("a", "vocab", 50), CategoricalField("b", "vocab", 50)),
    )
    layout = build_layout(TablesConfig(method="unified", budget=0.5, probes={"b": 1}), fm, 8)
    assert [s.width for s in layout.fields] == [8, 4]  # a: 2 probes of 4; b: 1 probe
    model = build_model(fm, ModelConfig(name="fnn", embedding_dim=8, mlp=(4,)), layout=layout)
    assert model.sparse_arch is not None
    table = model.sparse_arch.ebc.embedding_bags["t_unified"].weight
    kjt = KeyedJaggedTensor.from_lengths_sync(
        keys=list(layout.features), values=torch.tensor([7, 9, 3]), lengths=torch.tensor([1, 1, 1])
    )
    out, _ = model.sparse_arch(kjt)
    expected_a = torch.cat([table[7], table[9]])
    assert torch.allclose(out[0, 0], expected_a) and torch.allclose(out[0, 1, :4], table[3])
    assert bool((out[0, 1, 4:] == 0).all())

    # DeepFM: every probe's row ends in its first-order columns, and every probe adds its weight.
    deepfm = build_model(fm, ModelConfig(name="deepfm", embedding_dim=8, mlp=(4,)), layout=layout)
    assert deepfm.sparse_arch is not None
    table = deepfm.sparse_arch.ebc.embedding_bags["t_unified"].weight
    assert table.shape[1] == 4 + LINEAR_DIM
    out, first = deepfm.sparse_arch(kjt)
    assert torch.allclose(out[0, 0], torch.cat([table[7, :4], table[9, :4]]))
    assert torch.allclose(out[0, 1, :4], table[3, :4])
    assert first is not None and torch.allclose(first, table[[7, 9, 3], 4:].mean(dim=1).sum().view(1))
    with pytest.raises(ConfigError, match="unknown field"):
        build_layout(TablesConfig(method="unified", probes={"z": 2}), fm, 8)


@pytest.mark.slow
def test_unified_embedding_beats_per_field_hashing_at_a_tenth_of_the_memory(tmp_path: Path) -> None:
    """60,000 planted rows, DCNv2 (no first-order tables, so the budgets are exactly equal), 10x budget."""
    write_synthetic(60_000, tmp_path / "s.tsv", seed=5)
    prepare(builtin_spec("criteo"), [tmp_path / "s.tsv"], tmp_path / "p", PrepareOptions(progress=False, min_count=5))
    common = ["trainer.progress_bar=false", "model.mlp=[64,64]", "model.embedding_dim=16", "trainer.threads=1"]
    common += ["data.batch_size=1024", "trainer.max_epochs=3", "optim.sparse_lr=0.02", "tables.budget=0.1"]
    out = {}
    for method in ("hash", "unified"):
        cfg = load_run_config(None, [*common, f"tables.method={method}"], data=str(tmp_path / "p"), model="dcnv2")
        out[method] = train_run(cfg, tmp_path / method)
    hashed, unified = out["hash"], out["unified"]
    print(
        f"hash {hashed['test_auc']:.4f} ({hashed['embedding_params']}) unified {unified['test_auc']:.4f} "
        f"({unified['embedding_params']})"
    )
    assert unified["embedding_params"] <= hashed["embedding_params"]
    assert unified["test_auc"] > hashed["test_auc"] + 0.01


def test_compress_bench_writes_records_table_and_plot(tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys

    write_synthetic(6000, tmp_path / "s.tsv", seed=2)
    prepare(builtin_spec("criteo"), [tmp_path / "s.tsv"], tmp_path / "p", PrepareOptions(progress=False, min_count=3))
    sets = ["trainer.progress_bar=false", "model.mlp=[16]", "model.embedding_dim=8", "trainer.threads=1"]
    sets += ["trainer.max_epochs=2", "data.batch_size=256"]  # enough steps for every method to learn something
    args = ["compress-bench", "--data", str(tmp_path / "p"), "--model", "fnn", "--out", str(tmp_path / "bench")]
    args += ["--budgets", "0.5,0.1", "--methods", "full,hash,shared_hash,qr,mde,unified", "--quiet"]
    args += [x for s in sets for x in ("--set", s)]
    dist = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist}
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads((tmp_path / "bench" / "results.json").read_text())
    assert [(r["method"], r["budget"]) for r in records] == [
        ("full", 1.0),
        ("hash", 0.5),
        ("hash", 0.1),
        ("shared_hash", 0.5),
        ("shared_hash", 0.1),
        ("qr", 0.5),
        ("qr", 0.1),
        ("mde", 0.5),
        ("mde", 0.1),
        ("unified", 0.5),
        ("unified", 0.1),
    ]
    keys = {"method", "budget", "budget_params", "status", "embedding_params", "min_params", "test_auc"}
    assert all(set(r) == keys | {"test_logloss", "train_samples_per_sec"} for r in records)
    full = records[0]["embedding_params"]
    for r in records:  # each record is its run's own test metrics, above a constant predictor's 0.5
        assert r["budget_params"] == int(round(r["budget"] * full, 6)), r  # equal memory: floor(b x full), FNN
        if r["status"] == "unreachable":  # (no first-order columns); a method that cannot get so small is not run
            assert r["min_params"] > r["budget_params"] and r["test_auc"] is None, r
            continue
        run = json.loads((tmp_path / "bench" / "runs" / f"{r['method']}@{r['budget']:g}" / "metrics.json").read_text())
        assert (r["test_auc"], r["test_logloss"], r["embedding_params"]) == (
            run["test_auc"],
            run["test_logloss"],
            run["embedding_params"],
        )
        assert r["test_auc"] > 0.58, r
        assert r["embedding_params"] <= r["budget_params"], r  # every method sized under the same limit
    reached = {(r["method"], r["budget"]) for r in records if r["status"] == "ok"}
    assert {("hash", 0.1), ("shared_hash", 0.1), ("unified", 0.1), ("mde", 0.5), ("qr", 0.5)} <= reached
    assert (tmp_path / "bench" / "results.md").read_text().count("\n") == 2 + len(records)
    assert (tmp_path / "bench" / "auc_vs_params.png").stat().st_size > 1000


@pytest.mark.slow
def test_compress_bench_runs_optembed_and_optembed_unified_within_the_budget(tiny: Path, tmp_path: Path) -> None:
    """The two OptEmbed methods of `ctr compress-bench` (each a whole pipeline), on 3,000 rows with a tiny search."""
    import json

    from pipelines.compress_bench import run_compress_bench

    sets = ["trainer.progress_bar=false", "model.mlp=[16]", "model.embedding_dim=8", "trainer.threads=1"]
    sets += ["trainer.max_epochs=1", "data.batch_size=256", "supernet.alpha=0.5", "supernet.threshold_lr=0.2"]
    sets += ["supernet.relative=false"]
    sets += ["search.population=4", "search.n_mutation=2", "search.n_crossover=2", "search.generations=2"]
    sets += ["search.top_k=3", "search.workers=0", "tables.chunk=4"]
    config = load_run_config(None, sets, data=str(tiny), model="fnn", sections=("supernet", "search", "retrain"))
    records = run_compress_bench(config, tmp_path, ["optembed", "optembed-unified"], [0.5], progress=False)
    assert [(r["method"], r["budget"]) for r in records] == [("optembed", 0.5), ("optembed-unified", 0.5)]
    full = sum(f.cardinality for f in FeatureMap.load(tiny).categorical) * 8  # FNN: no first-order columns
    for r in records:
        final = json.loads((tmp_path / "runs" / f"{r['method']}@0.5" / "result.json").read_text())["final"]
        assert (r["test_auc"], r["embedding_params"]) == (final["test_auc"], final["embedding_params"])
        assert r["embedding_params"] <= 0.5 * full and r["test_auc"] > 0.52, r


def test_a_field_with_zero_probes_is_dropped() -> None:
    fm = _fm()
    layout = build_layout(TablesConfig(method="unified", budget=0.5, probes={"b": 0, "c": 1}), fm, 16)
    assert [s.width for s in layout.fields] == [16, 0, 4] and not any(f.startswith("b@") for f in layout.features)
    split = _split(fm)
    virtual = layout.transform(split)
    assert "b" not in {layout.rules[f.name].field for f in virtual.feature_map.categorical}
    for name in ("fnn", "deepfm", "dcnv2"):
        model = build_model(fm, ModelConfig(name=name, embedding_dim=16, mlp=(8,)), layout=layout)  # type: ignore[arg-type]
        assert model.sparse_arch is not None
        fields, _ = model.sparse_arch(virtual.batch(np.arange(5)).sparse_features)
        assert fields.shape == (5, 3, 16) and bool((fields[:, 1] == 0).all()) and bool((fields[:, 2, 4:] == 0).all())
        assert model(virtual.batch(np.arange(5))).shape == (5,)
    with pytest.raises(ConfigError, match="every field has 0 probes"):
        build_layout(TablesConfig(method="unified", probes={"a": 0, "b": 0, "c": 0}), fm, 16)
