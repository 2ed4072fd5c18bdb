"""``make demo``: the main job on the embedded default, at a scale that finishes in a few minutes.

synth (planted-signal Criteo rows) -> prepare (Polars) -> OptEmbed with ``configs/optembed.yaml`` (baseline
DeepFM, supernet, evolutionary search in an Optuna study scored by Ray actors, retraining of the pruned
mixed-dimension table, int8 export) -> a readable summary. ``DEMO_DIR`` and ``DEMO_ROWS`` set the directory
and size.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ctr.optembed.variants import VARIANTS
from ctr.training.defaults import load_run_config
from features.outputs import remove_owned
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from pipelines.optembed import run_optembed

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "optembed.yaml"


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

    print("[3/3] optembed: baseline DeepFM, supernet, evolutionary search (Optuna + Ray), retrain, export")
    run = root / "optembed"
    config = load_run_config(CONFIG, [], data=str(root / "prepared"), model="deepfm")
    remove_owned(run, "ctr optembed")  # the demo always runs from scratch (in a folder the demo made)
    result = run_optembed(config, run, VARIANTS["optembed"], int8=True)
    base, final = result["baseline"], result["final"]
    print(
        _table(
            [
                ("Bayes-optimal AUC", f"{truth.bayes_auc:.4f}  (of the planted data)"),
                ("baseline test AUC", f"{base['test_auc']:.4f}  with {base['embedding_params']:,} embedding params"),
                ("OptEmbed test AUC", f"{final['test_auc']:.4f}  with {final['embedding_params']:,} embedding params"),
                (
                    "parameters kept",
                    f"{result['params_ratio']:.1%}  (sparsity {result['sparsity']:.3f}, "
                    f"row sparsity {result['row_sparsity']:.3f})",
                ),
                ("search", f"{result['search']['trials']} candidates in {result['search']['storage']}"),
                ("export (int8)", f"{result['export']['artifact_bytes']:,} bytes in {result['export']['path']}"),
            ]
        )
    )
    noise = set(truth.noise_fields)
    dims = ", ".join(f"{f['name']}{'*' if f['name'] in noise else ''}={f['dim']}" for f in result["fields"])
    print(f"  per-field dims (* = planted noise field): {dims}")
    print(f"result: {run / 'result.json'}; plots: {run / 'search' / 'plots'}")
    print(json.dumps({k: result[k] for k in ("baseline", "final", "params_ratio", "sparsity")}))


if __name__ == "__main__":
    main()
