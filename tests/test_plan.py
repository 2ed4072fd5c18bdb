"""EmbeddingPlan: sizes by the paper's definitions, strict JSON round trip, refusal of foreign plans."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from config.strict import ConfigError
from ctr.optembed.plan import EmbeddingPlan, FieldPlan


def plan() -> EmbeddingPlan:
    return EmbeddingPlan(
        feature_map_hash="f" * 64,
        full_dim=16,
        fields=(FieldPlan("C1", 8, 90, 100), FieldPlan("C2", 16, 10, 10), FieldPlan("C3", 0, 0, 50)),
    )


def test_sizes_by_hand() -> None:
    p = plan()
    assert p.embedding_params == 90 * 8 + 10 * 16 + 0
    assert p.sparsity == pytest.approx(1 - 880 / (160 * 16))
    assert p.row_sparsity == pytest.approx(1 - 100 / 160)


def test_json_round_trip_and_strict_load(tmp_path: Path) -> None:
    p = plan()
    p.save(tmp_path / "plan.json")
    assert EmbeddingPlan.load(tmp_path / "plan.json", feature_map_hash="f" * 64) == p
    raw = json.loads((tmp_path / "plan.json").read_text())
    raw["fields"][0]["dims"] = 4
    (tmp_path / "bad.json").write_text(json.dumps(raw))
    with pytest.raises(ConfigError, match=r"unknown key 'dims' \(did you mean 'dim'\?\)"):
        EmbeddingPlan.load(tmp_path / "bad.json")
    with pytest.raises(ConfigError, match="made for feature map ffffffffffff"):
        EmbeddingPlan.load(tmp_path / "plan.json", feature_map_hash="0" * 64)
    (tmp_path / "corrupt.json").write_text("{")
    with pytest.raises(ConfigError, match="corrupt plan"):
        EmbeddingPlan.load(tmp_path / "corrupt.json")


def test_invalid_plans_are_refused() -> None:
    with pytest.raises(ConfigError, match="dim 6 is not a multiple of 4"):
        FieldPlan("C1", 6, 1, 2)
    with pytest.raises(ConfigError, match=r"rows_kept 3 not in \[0, 2\]"):
        FieldPlan("C1", 4, 3, 2)
    with pytest.raises(ConfigError, match="wider than full_dim"):
        EmbeddingPlan("h", 8, (FieldPlan("C1", 16, 1, 1),))
    with pytest.raises(ConfigError, match="field twice"):
        EmbeddingPlan("h", 8, (FieldPlan("C1", 4, 1, 1), FieldPlan("C1", 4, 1, 1)))
