"""The floor: scikit-learn's LogisticRegression on one-hot features, C picked on the validation split.

Runs in the peer environment (``.venv-peer/``) on CSV splits from ``benchmarks/peer_splits.py``. Every field
(dense buckets included) is one-hot encoded with a vocabulary fitted on train; a value unseen in training
gets no column (all zeros, scikit-learn's ``handle_unknown="ignore"``); a multi-valued field sets one column
per value. Each C of ``GRID`` is fitted on train (L2, lbfgs); the one with the best validation AUC is scored
on test. ``fit_seconds`` is the whole grid, ``best_fit_seconds`` the chosen fit alone.

Example:
    >>> # .venv-peer/bin/python benchmarks/peer/sklearn_lr.py --splits csv --out r.json   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss, roc_auc_score

GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
_SPLITS = ("train", "valid", "test")


def _tokens(frame: pl.DataFrame, name: str, multi: bool, separator: str) -> pl.DataFrame:
    tokens = frame.select(pl.int_range(pl.len(), dtype=pl.Int64).alias("row"), pl.col(name).fill_null(""))
    return tokens.with_columns(pl.col(name).str.split(separator)).explode(name) if multi else tokens


def one_hot(frames: dict[str, pl.DataFrame], columns: dict[str, Any]) -> dict[str, sp.csr_matrix]:
    """One sparse 0/1 matrix per split, with the same columns: every (field, value) seen in train."""
    fields = [(n, False) for n in columns["categorical"]] + [(n, True) for n in columns["sequence"]]
    entries: dict[str, list[pl.DataFrame]] = {s: [] for s in frames}
    width = 0
    for name, multi in fields:
        vocab = _tokens(frames["train"], name, multi, columns["separator"]).select(name).unique(maintain_order=True)
        vocab = vocab.with_columns(pl.int_range(width, width + vocab.height, dtype=pl.Int64).alias("col"))
        width += vocab.height
        for split, frame in frames.items():
            found = _tokens(frame, name, multi, columns["separator"]).join(vocab, on=name, how="inner")
            entries[split].append(found.select("row", "col"))
    matrices = {}
    for split, frame in frames.items():
        cells = pl.concat(entries[split])
        ones = np.ones(cells.height, dtype=np.float64)
        shape = (frame.height, width)
        matrices[split] = sp.csr_matrix((ones, (cells["row"].to_numpy(), cells["col"].to_numpy())), shape=shape)
    return matrices


def run(splits: Path) -> dict[str, Any]:
    columns = json.loads((splits / "columns.json").read_text())
    frames = {s: pl.read_csv(splits / f"{s}.csv", infer_schema=False) for s in _SPLITS}
    for split, frame in frames.items():
        if frame.height != columns["rows"][split]:
            raise SystemExit(f"{split}: read {frame.height} rows, the split has {columns['rows'][split]}")
    labels = {s: f[columns["label"]].cast(pl.Int8).to_numpy() for s, f in frames.items()}
    x = one_hot(frames, columns)
    trials, models = [], []
    for c in GRID:
        started = time.perf_counter()
        model = LogisticRegression(C=c, max_iter=2000).fit(x["train"], labels["train"])
        seconds = time.perf_counter() - started
        val_auc = float(roc_auc_score(labels["valid"], model.predict_proba(x["valid"])[:, 1]))
        trials.append({"C": c, "val_auc": val_auc, "seconds": seconds, "iterations": int(model.n_iter_[0])})
        models.append(model)
    chosen = max(range(len(GRID)), key=lambda i: trials[i]["val_auc"])  # the first of equals: the smallest C
    best, best_model = trials[chosen], models[chosen]
    test = best_model.predict_proba(x["test"])[:, 1]
    valid = best_model.predict_proba(x["valid"])[:, 1]
    return {
        "test_auc": float(roc_auc_score(labels["test"], test)),
        "test_logloss": float(log_loss(labels["test"], test)),
        "val_auc": best["val_auc"],
        "val_logloss": float(log_loss(labels["valid"], valid)),
        "C": best["C"],
        "iterations": best["iterations"],
        "fit_seconds": sum(t["seconds"] for t in trials),
        "best_fit_seconds": best["seconds"],
        "features": int(x["train"].shape[1]),
        "grid": trials,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=Path, required=True, help="folder of peer_splits.export_splits")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    args = parser.parse_args()
    args.out.write_text(json.dumps(run(args.splits), indent=2) + "\n")


if __name__ == "__main__":
    main()
