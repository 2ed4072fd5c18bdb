"""Equal memory (issue #17, item 4): at a budget ``b`` every table method is sized to at most ``b`` x the full
model's embedding parameters, first-order columns and every table of the method counted (ctr.tables.sizing), or
is marked unreachable with its minimum; and ``ctr compress-bench`` records what it built against that limit.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.model import ModelConfig
from config.tables import METHODS, TablesConfig
from ctr.models.zoo import build_model
from ctr.tables.embedding import embedding_params
from ctr.tables.methods import TABLE_METHODS
from ctr.tables.sizing import budget_limit, fit_budget, layout_params, method_layout
from features.schema import CategoricalField, FeatureMap

BUDGETS = (1.0, 0.3, 0.1, 0.01)


def _map(*cards: int) -> FeatureMap:
    fields = tuple(CategoricalField(f"f{i}", "vocab", v, multi_valued=i == 1) for i, v in enumerate(cards))
    return FeatureMap(
        dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random", categorical=fields
    )


def _built_params(fm: FeatureMap, model: ModelConfig, tables: TablesConfig) -> int:
    """The parameters the built model really holds in its embedding modules (tables and first-order columns)."""
    built = build_model(fm, model, layout=method_layout(tables, fm, model))
    return sum(p.numel() for m in built.embedding_modules() for p in m.parameters())


@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
@pytest.mark.parametrize("budget", BUDGETS)
@pytest.mark.parametrize("method", METHODS)
def test_every_method_fits_every_budget_or_is_unreachable(method: str, budget: float, model: str) -> None:
    fm = _map(1000, 300, 20, 7)
    config = ModelConfig(name=model, embedding_dim=16, mlp=(8,))  # type: ignore[arg-type]
    full = embedding_params(fm, config)
    sized = fit_budget(TablesConfig(method=method, budget=budget), fm, config, budget)  # type: ignore[arg-type]
    assert (sized.full, sized.limit) == (full, budget_limit(fm, config, budget))
    assert sized.limit == int(round(budget * full, 6))  # floor(b x full), exact for these b
    assert sized.params == layout_params(sized.tables, fm, config) == _built_params(fm, config, sized.tables)
    knob = TABLE_METHODS[method].knob(fm, 16)
    if sized.reachable:
        assert sized.params <= sized.limit
        if knob is not None and sized.tables.size != knob.largest:  # the largest knob that fits: one more does not
            step = abs(sized.tables.size - knob.smallest) + 1  # type: ignore[operator]
            bigger = dataclasses.replace(sized.tables, size=knob.at(step))
            assert layout_params(bigger, fm, config) > sized.limit
    else:
        assert sized.params > sized.limit
        if knob is not None:  # its minimum: the knob's smallest layout
            assert sized.tables.size == knob.smallest
    if method in ("full", "hash", "shared_hash", "qr", "mde") and budget == 1.0:
        assert sized.reachable and sized.params == full  # every one of these can be the full tables
    if method == "full" and budget < 1.0:
        assert not sized.reachable and sized.params == full


@pytest.mark.parametrize("model", ["deepfm", "dcnv2", "fm", "lr", "fnn"])
def test_full_at_budget_1_is_the_full_model(model: str) -> None:
    fm = _map(1000, 300, 20, 7)
    config = ModelConfig(name=model, embedding_dim=16, mlp=(8,))  # type: ignore[arg-type]
    sized = fit_budget(TablesConfig(), fm, config, 1.0)
    built = build_model(fm, config)  # no table method at all
    real = sum(p.numel() for m in built.embedding_modules() for p in m.parameters())
    assert sized.reachable and sized.params == sized.limit == embedding_params(fm, config) == real
    assert sized.tables == TablesConfig(method="full", budget=1.0)


# Two fields of 90 and 10 ids (N = 100), dim 16. DeepFM stores 16 + 4 first-order columns per row: full 2,000
# parameters; DCNv2 16: full 1,600. Each case: (method, budget, model, size knob, embedding params).
HAND = [
    # hash: size M rows in all, ceil(90 M / 100) + ceil(10 M / 100) buckets; at 0.1 (200) M = 10 gives 9 + 1 rows
    # x 20 = 200, M = 11 gives 10 + 2 = 12 rows (240)
    ("hash", 0.1, "deepfm", 10, 200),
    ("hash", 0.1, "dcnv2", 10, 160),  # 10 rows x 16
    # shared_hash: one table of M rows; unified: one table of M rows of chunk 4 (+ 4 first-order columns)
    ("shared_hash", 0.1, "deepfm", 10, 200),
    ("unified", 0.1, "deepfm", 25, 200),  # 25 x (4 + 4); before: r N D / c = 40 rows, 320 parameters
    ("unified", 0.1, "dcnv2", 40, 160),  # 40 x 4
    ("unified", 1.0, "deepfm", 250, 2000),  # before: 400 rows, 3,200 parameters (1.6 x the full model)
    # qr at 0.3 (600 = 30 rows of 20): m = 5 gives f0 18 + 5 rows, f1 min(5, ceil(sqrt 10) = 4): 3 + 4 rows, 30 in
    # all (m = 4: 23 + 4 + 7 = 34)
    ("qr", 0.3, "deepfm", 5, 600),
    # mde at 0.5 (1,000): dims 4 and 12 (alpha 0.3), 90 x (4 + 4) + 10 x (12 + 4) = 880; dims 8 and 12 would be
    # 1,240. The knob is the main tables' allowance: the largest keeping those dims is 839 (8 and 12 need 840)
    ("mde", 0.5, "deepfm", 839, 880),
]


@pytest.mark.parametrize(("method", "budget", "model", "size", "params"), HAND)
def test_exact_counts_by_hand(method: str, budget: float, model: str, size: int, params: int) -> None:
    fm = _map(90, 10)
    config = ModelConfig(name=model, embedding_dim=16, mlp=(8,))  # type: ignore[arg-type]
    sized = fit_budget(TablesConfig(method=method, budget=budget), fm, config, budget)  # type: ignore[arg-type]
    assert sized.reachable and (sized.tables.size, sized.params) == (size, params)
    assert _built_params(fm, config, sized.tables) == params


def test_hand_counts_of_the_layouts() -> None:
    fm, deepfm = _map(90, 10), ModelConfig(name="deepfm", embedding_dim=16, mlp=(8,))
    hashed = method_layout(fit_budget(TablesConfig(method="hash"), fm, deepfm, 0.1).tables, fm, deepfm)
    assert hashed is not None and [t.rows for t in hashed.tables] == [9, 1]
    qr = method_layout(fit_budget(TablesConfig(method="qr"), fm, deepfm, 0.3).tables, fm, deepfm)
    assert qr is not None and [(t.name, t.rows) for t in qr.tables] == [
        ("t_f0@q", 18),
        ("t_f0@r", 5),
        ("t_f1@q", 3),
        ("t_f1@r", 4),
    ]
    mde = method_layout(fit_budget(TablesConfig(method="mde"), fm, deepfm, 0.5).tables, fm, deepfm)
    assert mde is not None and [t.dim for t in mde.tables] == [4, 12]


@pytest.mark.parametrize(
    ("method", "budget", "least"),
    [
        ("qr", 0.1, (9 + 10 + 3 + 4) * 20),  # m = ceil(sqrt 90) = 10: f0 9 + 10 rows, f1 (m = 4) 3 + 4
        ("mde", 0.1, 100 * (4 + 4)),  # every dim 4
        ("hash", 0.01, 2 * 20),  # one bucket per field: 40 > 20
        ("full", 0.3, 2000),
    ],
)
def test_unreachable_budgets_say_the_methods_minimum(method: str, budget: float, least: int) -> None:
    fm, deepfm = _map(90, 10), ModelConfig(name="deepfm", embedding_dim=16, mlp=(8,))
    sized = fit_budget(TablesConfig(method=method), fm, deepfm, budget)  # type: ignore[arg-type]
    assert not sized.reachable and sized.params == least and sized.limit == round(budget * 2000)


def test_sized_tables_rebuild_the_same_layout_from_a_run_config() -> None:
    """A run's config carries the knob (tables.size): export and predict rebuild exactly the sized layout."""
    fm, deepfm = _map(1000, 300, 20, 7), ModelConfig(name="deepfm", embedding_dim=16, mlp=(8,))
    for method in METHODS:
        sized = fit_budget(TablesConfig(method=method), fm, deepfm, 0.3)  # type: ignore[arg-type]
        again = TablesConfig(**{f.name: getattr(sized.tables, f.name) for f in dataclasses.fields(TablesConfig)})
        assert method_layout(again, fm, deepfm) == method_layout(sized.tables, fm, deepfm)


def test_ctr_compress_bench_deepfm_keeps_every_run_within_its_budget(
    synth_data: Callable[..., Path], subprocess_env: dict[str, str], tmp_path: Path
) -> None:
    """The CLI on 3,000 planted rows, DeepFM (first-order columns in every row) at budgets 1, 0.1 and 0.01."""
    data = synth_data("bench", 3000, 3)
    sets = ["trainer.progress_bar=false", "model.mlp=[16]", "model.embedding_dim=8", "trainer.threads=1"]
    sets += ["trainer.max_epochs=1", "data.batch_size=1024"]
    out = tmp_path / "bench"
    args = ["compress-bench", "--data", str(data), "--model", "deepfm", "--out", str(out), "--quiet"]
    args += ["--budgets", "1,0.1,0.01", "--methods", "full,hash,shared_hash,qr,mde,unified"]
    args += [x for s in sets for x in ("--set", s)]
    cli = [sys.executable, "-m", "pipelines.cli", *args]
    proc = subprocess.run(cli, capture_output=True, text=True, env=subprocess_env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = json.loads((out / "results.json").read_text())
    assert len(records) == 1 + 5 * 3
    full = FeatureMap.load(data)
    n = sum(f.cardinality for f in full.categorical)
    assert records[0]["method"] == "full" and records[0]["embedding_params"] == n * (8 + 4)  # dim + first-order
    for r in records:
        assert r["budget_params"] == int(round(r["budget"] * n * 12, 6)), r  # floor(b x full), exact here
        run = out / "runs" / f"{r['method']}@{r['budget']:g}"
        if r["status"] == "ok":
            assert r["embedding_params"] <= r["budget_params"] and r["min_params"] is None, r
            metrics = json.loads((run / "metrics.json").read_text())
            assert (r["embedding_params"], r["test_auc"]) == (metrics["embedding_params"], metrics["test_auc"])
        else:  # nothing built under the budget's name
            assert r["status"] == "unreachable" and r["min_params"] > r["budget_params"], r
            assert r["embedding_params"] is None and r["test_auc"] is None and not run.exists(), r
    status = {(r["method"], r["budget"]): r["status"] for r in records}
    assert {m for (m, b), s in status.items() if b == 1.0 and s == "ok"} == {*METHODS}  # each can be full size
    assert status[("unified", 0.01)] == status[("shared_hash", 0.01)] == "ok"
    assert status[("mde", 0.1)] == "unreachable"  # every dim 4 is a third of the full table (8 + 4 -> 4 + 4)
    table = (out / "results.md").read_text()
    assert table.count("\n") == 2 + len(records) and "unreachable: minimum" in table
    assert (out / "auc_vs_params.png").stat().st_size > 1000


def test_optembeds_unreachable_budget_carries_its_smallest_candidate() -> None:
    """compress-bench reads ``smallest`` into ``min_params``; the message is the one users saw before."""
    import pickle

    from config.strict import ConfigError
    from search.driver import BudgetUnreachable

    e = pickle.loads(pickle.dumps(BudgetUnreachable(571, 8772)))  # crosses processes (Ray, --nproc) intact
    assert isinstance(e, ConfigError) and (e.budget, e.smallest) == (571, 8772)
    assert str(e) == "search budget of 571 parameters is below the smallest candidate's 8772"
