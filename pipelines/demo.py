"""``make demo``: the main job on the embedded default, at a scale that finishes in a few minutes.

synth (planted-signal Criteo rows) -> prepare (Polars) -> train DeepFM (TorchRec/FBGEMM under Lightning)
-> a readable summary. Directory and size come from ``DEMO_DIR`` and ``DEMO_ROWS``.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ctr.run_config import load_run_config
from ctr.train import train
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic


def _table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def main() -> None:
    root = Path(os.environ.get("DEMO_DIR", "demo"))
    rows = int(os.environ.get("DEMO_ROWS", "200000"))
    root.mkdir(parents=True, exist_ok=True)
    raw = root / "synth.tsv"
    print(f"[1/3] synth: {rows:,} planted-signal Criteo rows -> {raw}")
    truth = write_synthetic(rows, raw, seed=0, progress=True)

    print(f"[2/3] prepare: Polars streaming pipeline -> {root / 'prepared'}")
    options = PrepareOptions(overwrite=True, min_count=10)
    report = prepare(builtin_spec("criteo"), [raw], root / "prepared", options)
    print(
        _table(
            [
                ("rows read", f"{report['rows_read']:,}"),
                ("rows rejected", f"{report['rows_rejected']:,}"),
                ("rows written", ", ".join(f"{k} {v:,}" for k, v in report["rows_written"].items())),
                ("embedding rows", f"{report['embedding_rows']:,} over {len(report['fields']['categorical'])} fields"),
                ("throughput", f"{report['rows_per_sec']:,.0f} rows/s, peak RSS {report['peak_rss_mb']:,.0f} MB"),
            ]
        )
    )

    print("[3/3] train: DeepFM, fused row-wise Adagrad tables, early stopping on validation AUC")
    run = root / "run_deepfm"
    config = load_run_config(
        None,
        ["trainer.max_epochs=3", "data.batch_size=2048", "model.embedding_dim=16", "model.mlp=[200, 200]"],
        data=str(root / "prepared"),
        model="deepfm",
    )
    shutil.rmtree(run, ignore_errors=True)  # the demo always trains from scratch
    metrics = train(config, run)
    print(
        _table(
            [
                ("test AUC", f"{metrics['test_auc']:.4f}  (Bayes-optimal AUC of the data: {truth.bayes_auc:.4f})"),
                ("test logloss", f"{metrics['test_logloss']:.4f}"),
                ("calibration", f"{metrics['test_calibration']:.3f}  (mean prediction / observed CTR)"),
                ("embedding params", f"{metrics['embedding_params']:,}"),
                ("train samples/s", f"{metrics['samples_per_sec']:,.0f}"),
            ]
        )
    )
    print(f"metrics: {run / 'metrics.json'}")
    print(json.dumps({"test_auc": metrics["test_auc"], "bayes_auc": truth.bayes_auc}))


if __name__ == "__main__":
    main()
