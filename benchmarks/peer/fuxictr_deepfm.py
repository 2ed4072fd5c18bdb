"""FuxiCTR 2.3.10's DeepFM with the BARS recipe on CSV splits from ``benchmarks/peer_splits.py``.

Runs in the peer environment (``.venv-peer/``, ``benchmarks/requirements-peer.txt``), not the platform's.
The PyPI package has no model zoo, so :class:`DeepFM` is built from fuxictr's own layers as the zoo's
``model_zoo/DeepFM/DeepFM_torch/src/DeepFM.py`` builds it: ``FeatureEmbedding`` -> ``FactorizationMachine``
(its own first-order ``LogisticRegression`` plus the pairwise inner products) + ``MLP_Block`` over the
flattened embeddings, summed, sigmoid. Data goes through fuxictr's ``FeatureProcessor``/``build_dataset``
(vocabulary fitted on train, ``min_categr_count`` 1) and its ``RankDataLoader``; training is fuxictr's own
``BaseModel.fit``: Adam on every parameter, early stop on validation AUC (patience 2), learning rate x0.1 on
each plateau, best weights reloaded at the end.

Recipe (BARS DeepFM, e.g. ``ranking/ctr/DeepFM/DeepFM_criteo_x1``): embedding_dim 10, MLP [400, 400, 400] ReLU,
net_dropout 0.2, batch_norm true, lr 1e-3, batch 4096, net_regularizer 0, up to 100 epochs, seed 2021.
``--embedding-regularizer`` is per data family (the caller picks it).

Writes one JSON object to ``--out``: test/val AUC and logloss, epochs run, the best epoch, seconds.

Example:
    >>> # .venv-peer/bin/python benchmarks/peer/fuxictr_deepfm.py --splits csv --work tmp --out r.json \
    >>> #     --embedding-regularizer 1e-5   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import ray
import torch
from fuxictr.features import FeatureMap
from fuxictr.preprocess import FeatureProcessor, build_dataset
from fuxictr.pytorch.dataloaders import RankDataLoader
from fuxictr.pytorch.layers import FactorizationMachine, FeatureEmbedding, MLP_Block
from fuxictr.pytorch.models import BaseModel
from fuxictr.pytorch.torch_utils import seed_everything

RECIPE: dict[str, Any] = {
    "embedding_dim": 10,
    "hidden_units": [400, 400, 400],
    "hidden_activations": "ReLU",
    "net_dropout": 0.2,
    "batch_norm": True,
    "learning_rate": 1e-3,
    "batch_size": 4096,
    "net_regularizer": 0.0,
    "epochs": 100,
    "early_stop_patience": 2,
    "reduce_lr_on_plateau": True,
    "optimizer": "adam",
    "loss": "binary_crossentropy",
    "seed": 2021,
}


class DeepFM(BaseModel):  # type: ignore[misc]
    """The zoo's DeepFM (FM + MLP over the same embeddings); also records each evaluation's monitored value."""

    def __init__(self, feature_map: FeatureMap, **params: Any) -> None:
        super().__init__(feature_map, **params)
        self.embedding_layer = FeatureEmbedding(feature_map, params["embedding_dim"])
        self.fm = FactorizationMachine(feature_map)
        self.mlp = MLP_Block(
            input_dim=feature_map.sum_emb_out_dim(),
            output_dim=1,
            hidden_units=params["hidden_units"],
            hidden_activations=params["hidden_activations"],
            output_activation=None,
            dropout_rates=params["net_dropout"],
            batch_norm=params["batch_norm"],
        )
        self.compile(params["optimizer"], params["loss"], params["learning_rate"])
        self.reset_parameters()
        self.model_to_device()
        self.history: list[float] = []

    def forward(self, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        X = self.get_inputs(inputs)
        feature_emb = self.embedding_layer(X)
        y_pred = self.fm(X, feature_emb)
        y_pred += self.mlp(feature_emb.flatten(start_dim=1))
        return {"y_pred": self.output_activation(y_pred)}

    def checkpoint_and_earlystop(self, logs: dict[str, float], min_delta: float = 1e-6) -> None:
        self.history.append(float(self._monitor.get_value(logs)))
        super().checkpoint_and_earlystop(logs, min_delta)


def _feature_cols(columns: dict[str, Any]) -> list[dict[str, Any]]:
    cols: list[dict[str, Any]] = []
    if columns["categorical"]:
        cols.append({"name": columns["categorical"], "active": True, "dtype": "str", "type": "categorical"})
    for name in columns["sequence"]:
        cols.append(
            {"name": name, "active": True, "dtype": "str", "type": "sequence", "splitter": columns["separator"]}
        )
    return cols


def _check_rows(gen: Any, split: str, columns: dict[str, Any]) -> None:
    if gen.num_samples != columns["rows"][split]:
        raise SystemExit(f"{split}: FuxiCTR loaded {gen.num_samples} rows, the split has {columns['rows'][split]}")


def run(splits: Path, work: Path, embedding_regularizer: float, batch_size: int) -> dict[str, Any]:
    columns = json.loads((splits / "columns.json").read_text())
    params = {**RECIPE, "batch_size": batch_size, "embedding_regularizer": embedding_regularizer}
    dataset_id = "peer"
    data_dir = work / dataset_id
    model_root = work / "models"
    (model_root / dataset_id).mkdir(parents=True, exist_ok=True)  # fit saves there and does not create it
    seed_everything(seed=params["seed"])

    started = time.perf_counter()
    processor = FeatureProcessor(
        feature_cols=_feature_cols(columns),
        label_col={"name": columns["label"], "dtype": "float"},
        dataset_id=dataset_id,
        data_root=str(work),
    )
    train_data, valid_data, test_data = build_dataset(
        processor,
        train_data=str(splits / "train.csv"),
        valid_data=str(splits / "valid.csv"),
        test_data=str(splits / "test.csv"),
        data_format="csv",
        min_categr_count=1,
    )
    prepare_seconds = time.perf_counter() - started
    feature_map = FeatureMap(dataset_id, str(data_dir))
    feature_map.load(str(data_dir / "feature_map.json"), params)

    model = DeepFM(
        feature_map,
        model_id="DeepFM_bars",
        gpu=-1,
        verbose=0,
        model_root=str(model_root),
        metrics=["AUC", "logloss"],
        **params,
    )
    loader = {"batch_size": batch_size, "data_format": "parquet", "num_workers": 1}
    train_gen, valid_gen = RankDataLoader(
        feature_map, stage="train", train_data=train_data, valid_data=valid_data, shuffle=True, **loader
    )
    _check_rows(train_gen, "train", columns)
    _check_rows(valid_gen, "valid", columns)
    started = time.perf_counter()
    model.fit(train_gen, validation_data=valid_gen, epochs=params["epochs"])
    fit_seconds = time.perf_counter() - started
    valid = model.evaluate(valid_gen)
    test_gen = RankDataLoader(feature_map, stage="test", test_data=test_data, shuffle=False, **loader)
    _check_rows(test_gen, "test", columns)
    test = model.evaluate(test_gen)
    return {
        "test_auc": float(test["AUC"]),
        "test_logloss": float(test["logloss"]),
        "val_auc": float(valid["AUC"]),
        "val_logloss": float(valid["logloss"]),
        "epochs": len(model.history),
        "best_epoch": 1 + max(range(len(model.history)), key=model.history.__getitem__),
        "fit_seconds": fit_seconds,
        "prepare_seconds": prepare_seconds,
        "params": int(sum(p.numel() for p in model.parameters())),
        "recipe": params,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--splits", type=Path, required=True, help="folder of peer_splits.export_splits")
    parser.add_argument("--work", type=Path, required=True, help="scratch folder (FuxiCTR's data and model files)")
    parser.add_argument("--out", type=Path, required=True, help="result JSON")
    parser.add_argument("--embedding-regularizer", type=float, required=True)
    parser.add_argument("--batch-size", type=int, default=RECIPE["batch_size"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    torch.set_num_threads(1)
    # A private local Ray (fuxictr's loaders use Ray Data): never one another process on this machine started.
    ray.init(address="local", num_cpus=1, include_dashboard=False, logging_level=logging.ERROR)
    os.environ.setdefault("PYTHONHASHSEED", str(RECIPE["seed"]))
    result = run(args.splits, args.work, args.embedding_regularizer, args.batch_size)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    ray.shutdown()


if __name__ == "__main__":
    main()
