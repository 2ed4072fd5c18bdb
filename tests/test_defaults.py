"""Data-aware defaults (issue #16, item 2): what a run uses for the settings its config leaves unset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctr.training.defaults import data_aware_defaults, load_run_config, train_rows


@pytest.mark.parametrize(
    ("rows", "processes", "batch"),
    [
        (200, 1, 128),  # 2 rows a step would be noise: at least 128
        (6_400, 1, 128),  # 64 rounds up to the floor
        (40_000, 1, 512),  # 400 -> 2**8.64 -> 512
        (30_000, 1, 256),  # 300 -> 2**8.23 -> 256
        (80_000, 1, 512),  # 800 -> 2**9.64 -> 1024, capped at 512
        (80_000, 2, 256),  # two processes share the batch: the same steps as one
        (1_000_000, 1, 512),  # 10000 -> capped at 512: 1,954 steps an epoch
        (1_000_000, 4, 128),
    ],
)
def test_the_batch_rule_on_tiny_and_large_splits(rows: int, processes: int, batch: int) -> None:
    chosen = data_aware_defaults(rows, processes)
    assert chosen["data.batch_size"] == batch
    assert chosen["trainer.max_epochs"] == 50 and chosen["trainer.patience"] == 2
    assert chosen["optim.scheduler"] == "plateau" and chosen["optim.sparse_lr"] == 0.05
    assert chosen["optim.lr"] == 3e-3 and chosen["optim.plateau_restore"] is True
    for model, sparse_lr in [("fm", 0.01), ("deepfm", 0.01), ("dcnv2", 0.05), ("lr", 0.05)]:
        assert data_aware_defaults(rows, processes, model)["optim.sparse_lr"] == sparse_lr


@pytest.mark.parametrize(("rows", "small_start"), [(8_000, True), (249_999, True), (250_000, False), (800_000, False)])
def test_fm_models_start_near_zero_on_small_splits_only(rows: int, small_start: bool) -> None:
    for model in ("fm", "deepfm"):
        chosen = data_aware_defaults(rows, 1, model)
        assert chosen.get("model.init_std") == (1e-4 if small_start else None)
    assert "model.init_std" not in data_aware_defaults(rows, 1, "dcnv2")  # MLP models: always uniform
    assert "model.init_std" not in data_aware_defaults(rows, 1, "deepfm", optembed=True)


@pytest.mark.parametrize(("rows", "patience"), [(8_000, 2), (499_999, 2), (500_000, 1), (1_000_000, 1)])
def test_the_optembed_pipeline_stops_at_its_first_bad_epoch_on_large_splits(rows: int, patience: int) -> None:
    assert data_aware_defaults(rows, 1, "deepfm", optembed=True)["trainer.patience"] == patience
    assert data_aware_defaults(rows, 1, "deepfm")["trainer.patience"] == 2  # ctr train: the restore may still win


def test_the_optembed_pipeline_keeps_its_measured_batch_cap_and_dense_lr() -> None:
    assert data_aware_defaults(1_000_000, 1, "deepfm", optembed=True)["data.batch_size"] == 4096
    assert data_aware_defaults(1_000_000, 1, "deepfm")["data.batch_size"] == 512
    assert data_aware_defaults(8_000, 1, "deepfm", optembed=True)["data.batch_size"] == 128  # same rule below the caps
    assert "optim.lr" not in data_aware_defaults(8_000, 1, "deepfm", optembed=True)  # RunConfig's 1e-3
    assert "optim.plateau_restore" not in data_aware_defaults(8_000, 1, "deepfm", optembed=True)  # RunConfig's False


def test_unset_keys_come_from_the_training_split_and_set_ones_are_kept(tiny: Path, tmp_path: Path) -> None:
    assert train_rows(tiny) == 2_379
    config = load_run_config(None, [], data=str(tiny), model="deepfm")
    assert (config.data.batch_size, config.trainer.max_epochs, config.trainer.patience) == (128, 50, 2)
    assert config.optim.scheduler == "plateau" and config.optim.sparse_lr == 0.01  # deepfm: an FM model
    assert load_run_config(None, [], data=str(tiny), model="fnn").optim.sparse_lr == 0.05
    assert load_run_config(None, [], data=str(tiny), model="deepfm", processes=2).data.batch_size == 64
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("trainer:\n  patience: 1\noptim:\n  scheduler: none\n")
    kept = load_run_config(yaml_file, ["data.batch_size=4096"], data=str(tiny), model="deepfm")
    assert (kept.data.batch_size, kept.trainer.patience, kept.optim.scheduler) == (4096, 1, "none")
    assert kept.trainer.max_epochs == 50  # what the file and the overrides leave unset is still data-aware
    without_data = load_run_config(None, [], data=str(tmp_path / "missing"), model="deepfm")
    assert without_data.data.batch_size == 4096  # nothing to size it by: the fixed default (train reports the path)


def test_a_default_run_trains_to_its_plateau_and_records_what_it_used(
    tiny: Path, tmp_path: Path, subprocess_env: dict[str, str]
) -> None:
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(tiny), "--model", "lr", "--out", str(run)]
    proc = subprocess.run(
        [*cmd, "--set", "trainer.progress_bar=false"], capture_output=True, text=True, timeout=600, env=subprocess_env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    used = yaml.safe_load((run / "config.yaml").read_text())
    assert used["data"]["batch_size"] == 128 and used["optim"]["scheduler"] == "plateau"
    assert used["trainer"]["patience"] == 2 and used["trainer"]["max_epochs"] == 50
    assert used["optim"]["plateau_restore"] is True
    metrics = json.loads((run / "metrics.json").read_text())
    epoch_lines = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    # stopped by early stopping, not by the epoch bound: the last two epochs brought no new best
    assert 3 <= len(epoch_lines) == metrics["epochs"] < 50
    assert "*" not in epoch_lines[-1] and "*" not in epoch_lines[-2]
    assert metrics["global_step"] == metrics["epochs"] * -(-2_379 // 128)
