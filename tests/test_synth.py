"""Tests for the planted-signal Criteo-format generator (`features/synth.py`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from features.synth import Truth, _expected_auc, _roc_auc, write_synthetic

DENSE = [f"I{i}" for i in range(1, 14)]
CATEGORICAL = [f"C{i}" for i in range(1, 27)]
COLUMNS = ["label", *DENSE, *CATEGORICAL]
HEX8 = re.compile(r"[0-9a-f]{8}")
INT = re.compile(r"-?[0-9]+")


def _read(path: Path) -> pl.DataFrame:
    return pl.read_csv(
        path,
        separator="\t",
        has_header=False,
        new_columns=COLUMNS,
        schema_overrides={c: pl.String for c in CATEGORICAL},
        quote_char=None,
    )


@pytest.fixture(scope="module")
def big(tmp_path_factory: pytest.TempPathFactory) -> tuple[Truth, pl.DataFrame]:
    path = tmp_path_factory.mktemp("synth") / "big.tsv"
    truth = write_synthetic(100_000, path, seed=0)
    return truth, _read(path)


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path) -> None:
    a, b, c = (tmp_path / "a.tsv", tmp_path / "b.tsv", tmp_path / "c.tsv")
    write_synthetic(3000, a, seed=7)
    write_synthetic(3000, b, seed=7)
    write_synthetic(3000, c, seed=8)
    assert a.read_bytes() == b.read_bytes()
    assert Path(f"{a}.truth.json").read_bytes() == Path(f"{b}.truth.json").read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_chunking_changes_nothing_and_counts_rows(tmp_path: Path) -> None:
    chunked, whole, longer = (tmp_path / "chunked.tsv", tmp_path / "whole.tsv", tmp_path / "longer.tsv")
    write_synthetic(2500, chunked, seed=3, chunk_rows=1000)
    write_synthetic(2500, whole, seed=3)
    write_synthetic(4000, longer, seed=3, chunk_rows=999)
    text = chunked.read_text()
    assert text.count("\n") == 2500 and text.endswith("\n")
    assert chunked.read_bytes() == whole.read_bytes()
    assert longer.read_text().splitlines()[:2500] == text.splitlines()  # rows are addressed by index


def test_format_is_criteo_tsv(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    write_synthetic(3000, path, seed=1, chunk_rows=1234)
    lines = path.read_text().split("\n")
    assert lines[-1] == "" and len(lines) == 3001
    seen_missing = {"I": False, "C": False}
    for line in lines[:-1]:
        cells = line.split("\t")
        assert len(cells) == 40
        assert cells[0] in ("0", "1")
        for value in cells[1:14]:
            assert value == "" or INT.fullmatch(value), value
            seen_missing["I"] |= value == ""
        for value in cells[14:]:
            assert value == "" or HEX8.fullmatch(value), value
            seen_missing["C"] |= value == ""
    assert all(seen_missing.values())


def test_dense_values_are_counts_with_i2_minus_one(big: tuple[Truth, pl.DataFrame]) -> None:
    _, df = big
    for name in DENSE:
        low = df[name].min()
        assert isinstance(low, int) and low >= (-1 if name == "I2" else 0), name
    assert (df["I2"] == -1).sum() > 0
    i5 = df["I5"].drop_nulls().to_numpy()
    assert i5.max() > 100 * np.median(i5)  # heavy tailed


def test_truth_partitions_fields_and_round_trips(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    truth = write_synthetic(5000, path, seed=2)
    assert truth == Truth.load(f"{path}.truth.json")
    raw = json.loads(Path(f"{path}.truth.json").read_text())
    assert raw["format"] == "criteo-tsv" and raw["rows"] == 5000 and raw["seed"] == 2
    informative, noise = set(truth.informative_fields), set(truth.noise_fields)
    assert informative.isdisjoint(noise) and informative | noise == set(DENSE + CATEGORICAL)
    assert len(noise & set(CATEGORICAL)) >= 8 and len(noise & set(DENSE)) >= 3
    assert {f for pair in truth.interactions for f in pair} <= informative
    assert set(truth.cardinalities) == set(CATEGORICAL)
    assert set(truth.effect_std) <= informative
    assert truth.bayes_auc is not None and 0.5 < truth.bayes_auc < 1
    assert truth.expected_bayes_auc is not None and 0.5 < truth.expected_bayes_auc < 1
    assert 0.15 < truth.ctr < 0.35


def test_truth_load_rejects_unknown_keys(tmp_path: Path) -> None:
    path = tmp_path / "data.tsv"
    write_synthetic(100, path, seed=0)
    raw = json.loads(Path(f"{path}.truth.json").read_text())
    raw["bayes_acu"] = 0.8
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="bayes_acu"):
        Truth.load(bad)


def test_rejects_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="rows"):
        write_synthetic(0, tmp_path / "x.tsv")
    with pytest.raises(ValueError, match="chunk_rows"):
        write_synthetic(10, tmp_path / "x.tsv", chunk_rows=0)


def _brute_auc(scores: np.ndarray, pos: np.ndarray, neg: np.ndarray, *, skip_self: bool) -> float:
    wins = (scores[:, None] > scores[None, :]) + 0.5 * (scores[:, None] == scores[None, :])
    pairs = pos[:, None] * neg[None, :]
    if skip_self:
        np.fill_diagonal(pairs, 0.0)
    return float((wins * pairs).sum() / pairs.sum())


def test_roc_auc_hand_cases() -> None:
    assert _roc_auc(np.array([0.1, 0.2, 0.3, 0.4]), np.array([0, 0, 1, 1])) == 1.0
    assert _roc_auc(np.array([0.4, 0.3, 0.2, 0.1]), np.array([0, 0, 1, 1])) == 0.0
    assert _roc_auc(np.array([0.5, 0.5, 0.5]), np.array([1, 0, 1])) == 0.5
    assert _roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # pos {0.5, 0.8} vs neg {0.5, 0.2}: tie 0.5 + 1 + 1 + 1 over 4 pairs
    assert _roc_auc(np.array([0.5, 0.5, 0.2, 0.8]), np.array([1, 0, 0, 1])) == 0.875
    with pytest.raises(ValueError, match="both classes"):
        _roc_auc(np.array([0.1, 0.2]), np.array([1, 1]))


def test_roc_auc_matches_pairwise_count_with_ties() -> None:
    rng = np.random.default_rng(0)
    scores = np.round(rng.random(400), 1).astype(np.float32)  # heavy ties
    labels = (rng.random(400) < scores).astype(np.uint8)
    y = labels.astype(np.float64)
    expected = _brute_auc(scores, y, 1.0 - y, skip_self=False)
    assert _roc_auc(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_expected_auc_matches_pairwise_expectation() -> None:
    rng = np.random.default_rng(1)
    logits = np.round(rng.normal(size=300), 1)  # ties included
    p = 1.0 / (1.0 + np.exp(-logits))
    expected = _brute_auc(logits, p, 1.0 - p, skip_self=True)
    assert _expected_auc(logits) == pytest.approx(expected, abs=1e-12)


def _chi_square(df: pl.DataFrame, field: str, top: int) -> float:
    """Pearson chi-square of the label against the ``top`` most frequent values of ``field``."""
    ctr = df["label"].mean()
    assert isinstance(ctr, float)
    counts = (
        df.filter(pl.col(field).is_not_null())
        .group_by(field)
        .agg(n=pl.len(), clicks=pl.col("label").sum())
        .sort(["n", field], descending=[True, False])
        .head(top)
    )
    n = counts["n"].to_numpy().astype(np.float64)
    clicks = counts["clicks"].to_numpy().astype(np.float64)
    return float((((clicks - n * ctr) ** 2) / (n * ctr * (1 - ctr))).sum())


def test_informative_fields_carry_signal_and_noise_fields_do_not(big: tuple[Truth, pl.DataFrame]) -> None:
    truth, df = big
    small = [f for f in CATEGORICAL if truth.cardinalities[f] <= 100]
    strong = max((f for f in small if f in truth.effect_scale), key=lambda f: truth.effect_scale[f])
    noise = min((f for f in truth.noise_fields if f.startswith("C")), key=lambda f: truth.cardinalities[f])
    k = min(truth.cardinalities[strong], truth.cardinalities[noise])
    # under no effect, chi-square with k-1 <= 3 degrees of freedom is almost never above 25
    assert _chi_square(df, strong, k) > 20 * max(_chi_square(df, noise, k), 25.0)
    # high cardinality: head values of the informative C3 vs the noise C4
    assert {"C3"} <= set(truth.informative_fields) and "C4" in truth.noise_fields
    assert _chi_square(df, "C3", 30) > 5 * max(_chi_square(df, "C4", 30), 60.0)


def test_high_cardinality_values_are_zipf_like(big: tuple[Truth, pl.DataFrame]) -> None:
    truth, df = big
    assert truth.cardinalities["C3"] >= 100_000
    counts = df["C3"].drop_nulls().value_counts(sort=True)["count"].to_numpy()
    assert counts[0] >= 100 * np.median(counts)
    assert counts.size > 5_000  # a long tail of distinct values
