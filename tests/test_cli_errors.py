"""Every user-caused failure is one line on stderr, ``ctr <stage>: error: <file or option>: <problem>``, and exit
code 1: bad options, bad config values, damaged shards, and writes the disk refuses (issue #18, item 8)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from config.strict import ConfigError
from ctr.data.shards import ShardError, load_split
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic
from pipelines.cli import _os_error, main

TIMEOUT = 300
FAST = ["--set", "trainer.progress_bar=false", "--set", "model.embedding_dim=8", "--set", "trainer.threads=1"]


def _fails(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run ``ctr argv`` in-process; it must exit 1 with one line on stderr, which is returned."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    return err.rstrip("\n")


def _ctr(args: list[str], fsize: int | None = None) -> subprocess.CompletedProcess[str]:
    """``ctr args`` in a subprocess, under a file size limit of ``fsize`` bytes (SIGXFSZ ignored, so a write past
    it fails with EFBIG, as on a full disk) when given."""
    limit = "" if fsize is None else f"resource.setrlimit(resource.RLIMIT_FSIZE, ({fsize}, {fsize})); "
    code = (
        "import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"{limit}from pipelines.cli import main; main(sys.argv[1:])"
    )
    dist_vars = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=TIMEOUT, check=False
    )


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The error line of a failed run: exit code 1, no traceback, and the last line on stderr (Lightning may have
    logged before it)."""
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return proc.stderr.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 planted rows prepared in shards of 1,000 rows (the train split: 3 shards)."""
    root = tmp_path_factory.mktemp("tiny")
    write_synthetic(3000, root / "synth.tsv", seed=1)
    options = PrepareOptions(progress=False, min_count=2, shard_rows=1000)
    prepare(builtin_spec("criteo"), [root / "synth.tsv"], root / "prepared", options)
    return root / "prepared"


# ---------------------------------------------------------------- options


@pytest.mark.parametrize(
    ("argv", "line"),
    [
        (["prepare", "--min-count", "0"], "ctr prepare: error: --min-count: must be >= 1, got 0"),
        (["prepare", "--min-count", "-1"], "ctr prepare: error: --min-count: must be >= 1, got -1"),
        (["prepare", "--shard-rows", "-5"], "ctr prepare: error: --shard-rows: must be >= 1, got -5"),
        (["prepare", "--shard-rows", "0"], "ctr prepare: error: --shard-rows: must be >= 1, got 0"),
        (["prepare", "--seed", "-1"], "ctr prepare: error: --seed: must be >= 0, got -1"),
        (["prepare", "--min-count", "two"], "ctr prepare: error: --min-count: expected an integer, got 'two'"),
        (["train", "--nproc", "0"], "ctr train: error: --nproc: must be >= 1, got 0"),
        (["supernet", "--nproc", "-1"], "ctr supernet: error: --nproc: must be >= 1, got -1"),
        (["retrain", "--nproc", "0"], "ctr retrain: error: --nproc: must be >= 1, got 0"),
        (["optembed", "--nproc", "-1"], "ctr optembed: error: --nproc: must be >= 1, got -1"),
        (["train", "--ray-workers", "0"], "ctr train: error: --ray-workers: must be >= 1, got 0"),
        (["search", "--search-workers", "-1"], "ctr search: error: --search-workers: must be >= 0, got -1"),
        (["optembed", "--search-workers", "-1"], "ctr optembed: error: --search-workers: must be >= 0, got -1"),
        (["synth", "--rows", "0"], "ctr synth: error: --rows: must be >= 1, got 0"),
        (["synth", "--rows", "-1"], "ctr synth: error: --rows: must be >= 1, got -1"),
        (["synth", "--rows", "5", "--seed", "-3"], "ctr synth: error: --seed: must be >= 0, got -3"),
        (["synth", "--rows", "5"], "ctr synth: error: the following arguments are required: --out"),
        (["train", "--model", "xgb"], "ctr train: error: --model: invalid choice: 'xgb' (choose from"),
        (["predict", "--batch-size", "0"], "ctr predict: error: --batch-size: must be >= 1, got 0"),
        (["serve", "--replicas", "0"], "ctr serve: error: --replicas: must be >= 1, got 0"),
        (["serve", "--port", "-1"], "ctr serve: error: --port: must be >= 1, got -1"),
        (["frobnicate"], "ctr: error: COMMAND: invalid choice: 'frobnicate' (choose from"),
    ],
)
def test_bad_option_is_one_line_and_exit_code_1(capsys: pytest.CaptureFixture[str], argv: list[str], line: str) -> None:
    assert _fails(capsys, argv).startswith(line)


def test_help_still_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["prepare", "--help"])
    assert exit_.value.code == 0
    assert "--shard-rows N" in capsys.readouterr().out


def test_custom_dataset_without_spec_names_the_option(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["prepare", "--dataset", "custom", "--input", "x.csv", "--out", str(tmp_path / "o")]
    assert _fails(capsys, argv) == "ctr prepare: error: --spec: --dataset custom needs --spec FILE"


def test_prepare_options_reject_shard_rows_0() -> None:
    with pytest.raises(ConfigError, match=r"^shard_rows must be >= 1, got 0$"):
        PrepareOptions(shard_rows=0)


# ---------------------------------------------------------------- config values


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("optim.lr=nan", "OptimConfig.lr: must be finite and > 0, got nan"),
        ("optim.lr=inf", "OptimConfig.lr: must be finite and > 0, got inf"),
        ("optim.lr=0", "OptimConfig.lr: must be finite and > 0, got 0.0"),
        ("optim.sparse_lr=nan", "OptimConfig.sparse_lr: must be finite and > 0, got nan"),
        ("optim.sparse_lr=-inf", "OptimConfig.sparse_lr: must be finite and > 0, got -inf"),
        ("optim.sparse_lr=-0.1", "OptimConfig.sparse_lr: must be finite and > 0, got -0.1"),
        ("optim.weight_decay=-1", "OptimConfig.weight_decay: must be finite and >= 0, got -1.0"),
        ("optim.gamma=0", "OptimConfig.gamma: must be finite and in (0, 1], got 0.0"),
        ("trainer.threads=0", "TrainerConfig.threads: must be >= 1, got 0"),
        ("trainer.patience=-1", "TrainerConfig.patience: must be >= 0, got -1"),
        ("trainer.gradient_clip=-1", "TrainerConfig.gradient_clip: must be finite and > 0, got -1.0"),
        ("trainer.gradient_clip=nan", "TrainerConfig.gradient_clip: must be finite and > 0, got nan"),
        ("trainer.max_epochs=0", "TrainerConfig.max_epochs: must be >= 1, got 0"),
        ("trainer.log_every_n_steps=0", "TrainerConfig.log_every_n_steps: must be >= 1, got 0"),
        ("trainer.limit_train_batches=0", "TrainerConfig.limit_train_batches: must be >= 1, got 0"),
        ("trainer.seed=-1", "TrainerConfig.seed: must be in [0, 2**32), got -1"),
        ("data.batch_size=0", "RunConfig.data: DataConfig.batch_size must be >= 1, got 0"),
        ("model.dropout=nan", "ModelConfig.dropout: nan is not in [0, 1)"),
    ],
)
def test_bad_config_value_is_one_line_naming_key_and_value(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, setting: str, problem: str
) -> None:
    argv = ["train", "--data", str(tmp_path / "data"), "--model", "deepfm", "--out", str(tmp_path / "run")]
    assert _fails(capsys, [*argv, "--set", setting]) == f"ctr train: error: {problem}"
    assert not (tmp_path / "run").exists()  # refused at load, before anything was written


@pytest.mark.parametrize(
    ("setting", "problem"),
    [
        ("supernet.threshold_lr=nan", "SupernetConfig.threshold_lr: must be finite and > 0, got nan"),
        ("supernet.alpha=-1", "SupernetConfig.alpha: must be finite and >= 0, got -1.0"),
        ("supernet.hold_auc=-0.1", "SupernetConfig.hold_auc: must be finite and >= 0, got -0.1"),
        ("supernet.reference_auc=1.5", "SupernetConfig.reference_auc: must be finite and in (0, 1], got 1.5"),
        ("search.population=0", "SearchConfig.population: must be >= 1, got 0"),
        ("search.mutation_prob=1.5", "SearchConfig.mutation_prob: must be finite and in [0, 1], got 1.5"),
        ("search.generations=0", "SearchConfig.generations: must be >= 1, got 0"),
        ("search.eval_batch_size=0", "SearchConfig.eval_batch_size: must be >= 1, got 0"),
        ("search.pick_tolerance=nan", "SearchConfig.pick_tolerance: must be finite and >= 0, got nan"),
    ],
)
def test_optembed_sections_reject_bad_values_at_load(setting: str, problem: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_run_config(None, [setting], data="d", model="fm", sections=("supernet", "search"))
    assert str(err.value) == problem


def test_edge_values_of_the_domains_are_accepted() -> None:
    sets = ["trainer.patience=0", "optim.gamma=1", "optim.weight_decay=0", "supernet.alpha=0", "search.workers=0"]
    sets += ["search.n_mutation=0", "search.mutation_prob=0", "trainer.seed=4294967295", "model.dropout=0"]
    config = load_run_config(None, sets, data="d", model="fm", sections=("supernet", "search"))
    assert config.trainer.patience == 0 and config.optim.gamma == 1.0 and config.trainer.seed == 2**32 - 1


# ---------------------------------------------------------------- damaged shards


def _damaged(tiny: Path, tmp_path: Path, damage: str) -> tuple[Path, Path]:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    shard = data / "train" / "00000001.parquet"
    raw = bytearray(shard.read_bytes())
    if damage == "truncated":
        raw = raw[: len(raw) // 2]
    else:  # 64 bytes flipped in the middle: the footer is intact, a page is not
        middle = len(raw) // 2
        raw[middle : middle + 64] = bytes(b ^ 0xFF for b in raw[middle : middle + 64])
    shard.write_bytes(bytes(raw))
    return data, shard


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("truncated", "unreadable parquet shard, truncated or corrupt (Parquet magic bytes not found in footer."),
        ("bit-flipped", "unreadable parquet shard, truncated or corrupt ("),
    ],
)
def test_damaged_shard_fails_train_with_one_line_naming_it(
    tiny: Path, tmp_path: Path, damage: str, problem: str
) -> None:
    data, shard = _damaged(tiny, tmp_path, damage)
    proc = _ctr(["train", "--data", str(data), "--model", "fm", "--out", str(tmp_path / "run"), *FAST])
    assert _last_line(proc).startswith(f"ctr train: error: {shard}: {problem}")


def test_shard_row_counts_are_checked_against_the_report(tiny: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny, data)
    report = data / "report.json"
    written = FeatureMap.load(data)
    n = len(load_split(data, written, "train"))
    report.write_text(report.read_text().replace(f'"train": {n}', f'"train": {n + 1}'))
    with pytest.raises(ShardError) as err:
        load_split(data, written, "train")
    assert (
        str(err.value)
        == f"{data / 'train'}: the shards of split 'train' hold {n} rows, {report} says {n + 1} were written"
    )


# ---------------------------------------------------------------- writes the disk refuses


def test_prepare_write_failure_is_one_line(tiny: Path, tmp_path: Path) -> None:
    raw = tiny.parent / "synth.tsv"
    out = tmp_path / "prepared"
    proc = _ctr(["prepare", "--dataset", "criteo", "--input", str(raw), "--out", str(out), "--quiet"], fsize=20_000)
    assert _last_line(proc) == f"ctr prepare: error: {out}: File too large"


def test_train_checkpoint_write_failure_is_one_line(tiny: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny), "--model", "fm", "--out", str(run), *FAST, "--set", "trainer.max_epochs=1"]
    proc = _ctr(args, fsize=100_000)  # logs and config are smaller; the checkpoint's shard file (~280 KB) is not
    assert _last_line(proc) == f"ctr train: error: {run / 'checkpoints' / 'best.ckpt.partial'}: File too large"


@pytest.mark.parametrize(
    ("error", "line"),
    [
        (OSError(errno.EACCES, "Permission denied", "/data/x.tsv"), "/data/x.tsv: Permission denied"),
        (OSError(errno.ENOSPC, "No space left on device"), "/out: No space left on device"),
        (OSError("File too large (os error 27)"), "/out: File too large"),  # Polars' form: no errno attribute
        (FileNotFoundError("/data/fm.json: feature map not found"), "/data/fm.json: feature map not found"),
        (OSError(errno.EACCES, "Permission denied"), None),  # no file to name: keep the traceback
        (OSError(errno.EBADF, "Bad file descriptor", "/out/x"), None),  # a bug, not the user's doing
        (OSError("pyarrow internal"), None),
    ],
)
def test_only_user_caused_os_errors_become_one_line(error: OSError, line: str | None) -> None:
    assert _os_error(error, "/out") == line


def test_dlrm_with_unequal_dims_is_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "ml"
    u_data = shared_data / "movielens_100k" / "grouplens_original" / "u.data"
    prepare(builtin_spec("movielens"), [u_data], data, PrepareOptions(progress=False))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--data", str(data), "--model", "dlrm", "--out", str(tmp_path / "run"),
              "--set", "model.field_dims={age: 4}"])  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 1 and len(err) == 1, err
    problem = "DLRM needs every categorical dim equal to embedding_dim=16"
    assert err[0].startswith(f"ctr train: error: --model dlrm: {problem}"), err
