"""What a normal run prints (issue #16, item 6): one line per epoch, the metrics JSON, and no library noise."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

EPOCH = re.compile(
    r"epoch (\d+)/3  train_loss \d\.\d{4}  val_auc \d\.\d{4}( \*)?  val_logloss \d\.\d{4}  lr \S+  "
    r"[\d.]+k? samples/s  [\d.]+ s"
)


def test_a_normal_train_run_prints_one_line_per_epoch_and_nothing_on_stderr(
    small: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    run = tmp_path / "run"
    # the default trainer.progress_bar (true): with standard output not a terminal (a pipe here, a log file for a
    # user) the bar is left out, so it is not written into the log
    sets = ["trainer.max_epochs=3", "trainer.patience=5", "model.mlp=[16]"]
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(small), "--model", "deepfm", "--out", str(run)]
    args = [x for s in sets for x in ("--set", s)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=subprocess_env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr == "", proc.stderr[-3000:]  # no banners, tips, FutureWarnings or FBGEMM INFO lines
    lines = proc.stdout.splitlines()
    assert len(lines) == 4, proc.stdout
    for i, line in enumerate(lines[:3]):
        match = EPOCH.fullmatch(line)
        assert match and int(match.group(1)) == i + 1, line
    assert "*" in lines[0]  # the first epoch is always the best so far
    metrics = json.loads(lines[3])
    assert metrics == json.loads((run / "metrics.json").read_text())
    # metrics.csv: one validation row per epoch and one test row (the final validation is not logged again)
    with (run / "logs" / "version_0" / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = [r for r in rows if r["val_auc"]]
    test = [r for r in rows if r["test_auc"]]
    assert [int(r["epoch"]) for r in val] == [0, 1, 2] and len(test) == 1
    assert len({tuple(sorted(r.items())) for r in rows}) == len(rows)  # the training-step rows are each once
    assert (
        float(test[0]["test_auc"]) == metrics["test_auc"]
        or abs(float(test[0]["test_auc"]) - metrics["test_auc"]) < 1e-6
    )
