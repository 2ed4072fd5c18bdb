"""``ctr tune`` end to end on a small planted study: pruning, best.yaml, resume, Ray workers, bad space files.

The planted study: LR on 4,000 planted rows, tuning the table learning rate between one that learns (0.05) and one
that cannot learn in three epochs (1e-5), and the batch size. The median pruner (after 2 finished trials, from
the first epoch) stops the trials that cannot learn.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from pipelines.cli import main
from search.storage import open_storage, redact
from search.tune_space import load_space

PLANTED_SPACE = """\
sampler: {startup_trials: 10, seed: 0}
pruner: {kind: median, startup_trials: 2, warmup_epochs: 0}
params:
  optim.sparse_lr: {type: categorical, choices: [1.0e-5, 0.05]}
  data.batch_size: {type: categorical, choices: [256, 512]}
"""
BASE = ["--set", "trainer.threads=1", "--set", "trainer.patience=3"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tune-data")
    write_synthetic(4000, root / "synth.tsv", seed=3, progress=False)
    prepare(
        builtin_spec("criteo"), [root / "synth.tsv"], root / "prepared", PrepareOptions(progress=False, min_count=5)
    )
    return root / "prepared"


@pytest.fixture(scope="module")
def space(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tune-space") / "space.yaml"
    path.write_text(PLANTED_SPACE)
    return path


def _tune(data: Path, out: Path, space: Path, *extra: str) -> dict[str, object]:
    main(["tune", "--data", str(data), "--model", "lr", "--out", str(out), "--space", str(space), *BASE, *extra])
    summary: dict[str, object] = json.loads((out / "tune.json").read_text())
    return summary


def _study(out: Path) -> optuna.Study:
    return optuna.load_study(study_name="tune", storage=f"sqlite:///{out / 'study.db'}")


def test_tune_prunes_per_epoch_and_its_best_yaml_trains_as_is(data: Path, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    summary = _tune(data, out, space, "--trials", "6", "--workers", "0", "--set", "trainer.max_epochs=3")
    trials = _study(out).get_trials()
    assert [t.state for t in trials].count(TrialState.PRUNED) >= 1, [t.state for t in trials]
    assert summary["states"] == {s: sum(t.state.name == s for t in trials) for s in ("COMPLETE", "PRUNED")}
    for t in trials:  # every trial reported each epoch it ran; a pruned one stopped before the last
        metrics = json.loads((out / "trials" / str(t.number) / "metrics.json").read_text())
        assert t.user_attrs["run_dir"] == str(out / "trials" / str(t.number))
        assert t.user_attrs["test_auc"] == metrics["test_auc"] and t.user_attrs["epochs"] == metrics["epochs"]
        assert sorted(t.intermediate_values) == list(range(metrics["epochs"]))
        if t.state == TrialState.PRUNED:
            assert metrics["epochs"] < 3
        else:
            assert metrics["epochs"] == 3 and t.value == metrics["val_auc"]
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value or 0.0)
    assert summary["best_trial"] == best.number and summary["best_val_auc"] == best.value
    assert summary["best_test_auc"] == best.user_attrs["test_auc"]
    assert summary["best_params"] == {"optim.sparse_lr": 0.05, "data.batch_size": best.params["data.batch_size"]}

    # `ctr train --config DIR/best.yaml` takes it as is, and trains the best trial's run again
    main(
        [
            "train",
            "--data",
            str(data),
            "--model",
            "lr",
            "--out",
            str(tmp_path / "again"),
            "--config",
            str(out / "best.yaml"),
        ]
    )
    again = yaml.safe_load((tmp_path / "again" / "config.yaml").read_text())
    trial_config = yaml.safe_load((out / "trials" / str(best.number) / "config.yaml").read_text())
    trial_config["trainer"]["progress_bar"] = True  # the tuner's trials run without a progress bar
    assert again == trial_config
    assert json.loads((tmp_path / "again" / "metrics.json").read_text())["val_auc"] == best.value


def test_tune_resumes_up_to_trials_and_retries_a_killed_trial(data: Path, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    first = _tune(data, out, space, "--trials", "2", "--workers", "0", "--set", "trainer.max_epochs=1")
    assert first["ran"] == 2
    study = _study(out)
    base = load_run_config(None, ["trainer.max_epochs=1"], data=str(data), model="lr")
    killed = study.ask(load_space(space, base).distributions())  # left RUNNING, as by a killed tuner
    finished = {t.number: t.datetime_complete for t in study.get_trials() if t.state.is_finished()}

    second = _tune(data, out, space, "--trials", "4", "--workers", "0", "--set", "trainer.max_epochs=1")
    trials = _study(out).get_trials()
    counted = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(counted) == 4 and second["ran"] == 2
    assert {t.number: t.datetime_complete for t in trials if t.number in finished} == finished  # kept as they were
    assert trials[killed.number].state == TrialState.FAIL
    retry = [t for t in trials if t.user_attrs.get("retry_of") == killed.number]
    assert (
        len(retry) == 1
        and retry[0].params == killed.params
        and retry[0].state in (TrialState.COMPLETE, TrialState.PRUNED)
    )

    third = _tune(data, out, space, "--trials", "4", "--workers", "0", "--set", "trainer.max_epochs=1")
    assert third["ran"] == 0 and len(_study(out).get_trials()) == len(trials)  # the study is done: nothing runs


def test_tune_runs_trials_in_parallel_on_ray_workers(data: Path, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    summary = _tune(data, out, space, "--trials", "2", "--workers", "2", "--set", "trainer.max_epochs=1")
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2 and summary["ran"] == 2
    pids = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in trials}
    assert len(pids) == 2 and str(os.getpid()) not in pids  # two Ray worker processes, not this one
    for t in trials:
        assert (out / "trials" / str(t.number) / "metrics.json").is_file()


@pytest.mark.parametrize(
    ("space_text", "expected"),
    [
        (  # not a run-config key
            "params:\n  optim.sparse_lrr: {type: float, low: 0.01, high: 0.1}\n",
            "params.optim.sparse_lrr: RunConfig.optim: unknown key 'sparse_lrr' (did you mean 'sparse_lr'?)",
        ),
        (  # a misspelt setting of a parameter
            "params:\n  optim.lr: {type: float, lo: 0.01, high: 0.1}\n",
            "params.optim.lr: unknown key 'lo' (did you mean 'low'?)",
        ),
        (  # a value the run config refuses
            "params:\n  model.embedding_dim: {type: int, low: 0, high: 16}\n",
            "params.model.embedding_dim: ModelConfig.embedding_dim: 0 is not a positive dim",
        ),
        (  # bounds a log scale cannot take
            "params:\n  optim.lr: {type: float, low: 0.0, high: 0.1, log: true}\n",
            "params.optim.lr: low: a log scale needs low > 0, got 0.0",
        ),
        (  # a misspelt section
            "parms:\n  optim.lr: {type: float, low: 0.01, high: 0.1}\n",
            "unknown key 'parms' (did you mean 'params'?)",
        ),
    ],
)
def test_a_bad_space_file_is_one_line_naming_the_key(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], space_text: str, expected: str
) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text(space_text)
    with pytest.raises(SystemExit) as exit_:
        main(["tune", "--data", str(data), "--model", "fm", "--out", str(tmp_path / "out"), "--space", str(bad)])
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith(f"ctr tune: error: {bad}: {expected}"), err
    assert not (tmp_path / "out").exists()


def test_a_bad_space_file_from_the_command_line(data: Path, tmp_path: Path) -> None:
    bad = tmp_path / "space.yaml"
    bad.write_text("params:\n  model.dropot: {type: float, low: 0.0, high: 0.5}\n")
    args = ["tune", "--data", str(data), "--model", "deepfm", "--out", str(tmp_path / "out"), "--space", str(bad)]
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"ctr tune: error: {bad}: params.model.dropot: RunConfig.model: unknown key 'dropot' (did you mean 'dropout'?)"
    ]


def test_a_trial_whose_ray_worker_is_killed_is_failed_and_retried(data: Path, space: Path, tmp_path: Path) -> None:
    out = tmp_path / "tune"
    args = ["tune", "--data", str(data), "--model", "lr", "--out", str(out), "--space", str(space), *BASE]
    args += ["--trials", "1", "--workers", "1", "--set", "trainer.max_epochs=8", "--set", "trainer.patience=8"]
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    tuner = subprocess.Popen(
        [sys.executable, "-m", "pipelines.cli", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        worker = None
        while worker is None and time.monotonic() < deadline and tuner.poll() is None:
            time.sleep(0.2)
            if (out / "trials" / "0").is_dir():  # the trial is training (the study is created, read it now)
                worker = _study(out).get_trials()[0].user_attrs["worker"]
        assert worker is not None, tuner.communicate(timeout=60)
        os.kill(int(worker.rsplit(":", 1)[1]), signal.SIGKILL)  # the trial's Ray worker dies mid-training
        _, err = tuner.communicate(timeout=180)
    finally:
        if tuner.poll() is None:
            tuner.kill()
            tuner.wait(timeout=60)
    assert tuner.returncode == 0, err[-3000:]
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE], err[-3000:]
    assert "WorkerCrashedError" in trials[0].user_attrs["error"]
    assert trials[1].user_attrs["retry_of"] == 0 and trials[1].params == trials[0].params
    assert trials[1].user_attrs["worker"] != worker


def test_tune_on_postgresql_storage_is_readable_by_the_dashboard_loader(
    data: Path, space: Path, tmp_path: Path, postgres_url: str
) -> None:
    out = tmp_path / "tune"
    args = ["--trials", "2", "--workers", "0", "--storage", postgres_url, "--study", "pg-tune"]
    summary = _tune(data, out, space, *args, "--set", "trainer.max_epochs=1")
    assert not (out / "study.db").exists() and summary["storage"] == redact(postgres_url)
    study = optuna.load_study(study_name="pg-tune", storage=open_storage(postgres_url))  # as `ctr dashboard` opens it
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    assert {"run_dir", "val_auc", "test_auc", "epochs"} <= set(trials[0].user_attrs)
    assert summary["best_val_auc"] == study.best_value
