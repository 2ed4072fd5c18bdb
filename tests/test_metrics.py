"""Metrics by hand: AUC with ties, logloss, calibration, normalized entropy, group AUC."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ctr.training.metrics import all_metrics, auc, calibration, group_auc, logloss, normalized_entropy


def brute_auc(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_auc_by_hand_with_ties() -> None:
    # positives 0.35, 0.8; negatives 0.1, 0.4 -> pairs won: (0.35>0.1), (0.8>0.1), (0.8>0.4) = 3 of 4
    assert auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == 0.75
    # a tie between a positive and a negative counts half: 0.5 vs 0.5 -> 0.5
    assert auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert math.isnan(auc(np.array([0.2, 0.3]), np.array([1, 1])))


def test_auc_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    p = rng.integers(0, 7, 300) / 7
    y = rng.integers(0, 2, 300)
    assert auc(p, y) == pytest.approx(brute_auc(p, y), abs=1e-12)


def test_logloss_calibration_ne_by_hand() -> None:
    p, y = np.array([0.5, 0.25]), np.array([1, 0])
    assert logloss(p, y) == pytest.approx(-(math.log(0.5) + math.log(0.75)) / 2)
    assert calibration(p, y) == pytest.approx(0.375 / 0.5)
    prior = -(0.5 * math.log(0.5) * 2)
    assert normalized_entropy(p, y) == pytest.approx(logloss(p, y) / prior)


def test_group_auc_weights_groups_by_size_and_skips_one_class_groups() -> None:
    p = np.array([0.1, 0.9, 0.8, 0.2, 0.3, 0.6, 0.7])
    y = np.array([0, 1, 0, 1, 0, 1, 1])
    g = np.array([1, 1, 2, 2, 3, 3, 4])  # group 4 has one class only
    # group 1: AUC 1 (2 rows); group 2: AUC 0 (2 rows); group 3: AUC 1 (2 rows) -> (2 + 0 + 2) / 6
    assert group_auc(p, y, g) == pytest.approx(4 / 6)


def test_group_auc_matches_per_group_loop() -> None:
    rng = np.random.default_rng(1)
    p, y, g = rng.integers(0, 5, 2000) / 5, rng.integers(0, 2, 2000), rng.integers(0, 40, 2000)
    total = weight = 0.0
    for k in np.unique(g):
        m = g == k
        if 0 < y[m].sum() < m.sum():
            total += brute_auc(p[m], y[m]) * m.sum()
            weight += m.sum()
    assert group_auc(p, y, g) == pytest.approx(total / weight, abs=1e-12)


def test_all_metrics_prefixes_keys() -> None:
    m = all_metrics(np.array([0.2, 0.7]), np.array([0, 1]), np.array([5, 5]), prefix="val_")
    assert set(m) == {"val_auc", "val_logloss", "val_calibration", "val_ne", "val_gauc"}
    assert m["val_auc"] == 1.0 and m["val_gauc"] == 1.0
