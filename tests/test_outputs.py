"""Output folders: nothing is deleted or overwritten that the platform did not make, one writer at a time.

The reproductions of issue #18 (items 1, 2, 5 and the staging folder a killed prepare left), through the real
``ctr`` command: in-process (``pipelines.cli.main``) where one process suffices, as subprocesses where a
second process is the point (a lock held by another process, a SIGKILL).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from features.outputs import LOCK, MARKER, OutputError, made_by, owned_dir, remove_owned, replaced_dir
from features.synth import write_synthetic
from pipelines.cli import main

CLI = [sys.executable, "-m", "pipelines.cli"]


def _ctr(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str]:
    """Run ``ctr args`` in-process; returns (exit code, stderr)."""
    try:
        main([str(a) for a in args])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _one_error_line(err: str, command: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"ctr {command}: error: "), err
    return lines[0]


def _tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("raw") / "data.tsv"
    write_synthetic(300, path, seed=1)
    return path


def _prepare(*args: str | Path) -> list[str]:
    return ["prepare", "--dataset", "criteo", "--quiet", *[str(a) for a in args]]


# ---------------------------------------------------------------------- prepare / apply: replace only their own
def test_prepare_overwrite_never_deletes_the_input_or_a_foreign_folder(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    ow = tmp_path / "ow"
    ow.mkdir()
    data = ow / "data.tsv"
    data.write_bytes(raw.read_bytes())
    before = _tree(ow)
    code, err = _ctr(capsys, *_prepare("--input", data, "--out", ow, "--overwrite"))
    assert code == 1 and "holds the input" in _one_error_line(err, "prepare")
    monkeypatch.chdir(ow)  # `--out .`: the working folder, which holds the input
    code, err = _ctr(capsys, *_prepare("--input", "data.tsv", "--out", ".", "--overwrite"))
    assert code == 1 and "holds the input" in _one_error_line(err, "prepare")
    assert _tree(ow) == before
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    for extra in ([], ["--overwrite"]):
        code, err = _ctr(capsys, *_prepare("--input", raw, "--out", notes, *extra))
        assert code == 1 and "holds notes.txt, which ctr did not write" in _one_error_line(err, "prepare")
    assert _tree(notes) == {"notes.txt": b"mine"}


def test_prepare_replaces_its_own_output_only_with_overwrite(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "prepared"
    assert _ctr(capsys, *_prepare("--input", raw, "--out", out))[0] == 0
    assert made_by(out) == "ctr prepare"
    first = _tree(out)
    code, err = _ctr(capsys, *_prepare("--input", raw, "--out", out, "--seed", "5"))
    assert code == 1 and "use --overwrite" in _one_error_line(err, "prepare")
    assert _tree(out) == first
    assert _ctr(capsys, *_prepare("--input", raw, "--out", out, "--seed", "5", "--overwrite"))[0] == 0
    assert (out / "report.json").read_bytes() != first["report.json"]  # replaced: another seed, another split
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temporary sibling left
    # apply writes only into its own folders too: not into the prepared folder it reads from
    code, err = _ctr(capsys, "apply", "--feature-map", out, "--input", raw, "--out", out, "--overwrite", "--quiet")
    assert code == 1 and "holds the input" in _one_error_line(err, "apply")
    applied = tmp_path / "applied"
    args = ["apply", "--feature-map", out, "--input", raw, "--quiet"]
    assert _ctr(capsys, *args, "--out", applied)[0] == 0 and made_by(applied) == "ctr apply"
    code, err = _ctr(capsys, *_prepare("--input", raw, "--out", applied, "--overwrite"))
    assert code == 1 and "made by `ctr apply`, not `ctr prepare`" in _one_error_line(err, "prepare")


def test_an_empty_folder_is_adopted_and_a_file_or_unwritable_out_is_one_line(
    raw: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _ctr(capsys, *_prepare("--input", raw, "--out", empty))[0] == 0
    assert (empty / "feature_map.json").is_file()
    code, err = _ctr(capsys, *_prepare("--input", raw, "--out", raw))
    assert code == 1 and "is a file, not a folder" in _one_error_line(err, "prepare")
    read_only = tmp_path / "ro"
    read_only.mkdir()
    read_only.chmod(0o555)
    target = read_only / "out"
    if os.access(read_only, os.W_OK):  # root ignores file modes; sysfs refuses even root
        target = Path("/sys/ctr-test-output")
    code, err = _ctr(capsys, *_prepare("--input", raw, "--out", target))
    assert code == 1 and "cannot write here" in _one_error_line(err, "prepare")


def test_synth_replaces_only_a_file_it_wrote(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine.tsv"
    mine.write_text("precious\n")
    code, err = _ctr(capsys, "synth", "--rows", "10", "--out", mine, "--quiet")
    assert code == 1 and "was not written by `ctr synth`" in _one_error_line(err, "synth")
    assert mine.read_text() == "precious\n"
    synth = tmp_path / "s.tsv"
    assert _ctr(capsys, "synth", "--rows", "10", "--out", synth, "--quiet")[0] == 0
    assert _ctr(capsys, "synth", "--rows", "12", "--out", synth, "--quiet")[0] == 0
    assert len(synth.read_text().splitlines()) == 12


# ---------------------------------------------------------------------- in-place writers (train & co.)
def test_train_writes_only_into_an_empty_or_its_own_folder(
    small: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "notes.txt").write_text("mine")
    base = ["train", "--data", small, "--model", "lr", "--set", "trainer.progress_bar=false"]
    code, err = _ctr(capsys, *base, "--out", notes)
    assert code == 1 and "holds notes.txt, which ctr did not write" in _one_error_line(err, "train")
    code, err = _ctr(capsys, *base, "--out", small)  # the prepared data itself
    assert code == 1 and "made by `ctr prepare`, not `ctr train`" in _one_error_line(err, "train")
    assert _tree(notes) == {"notes.txt": b"mine"}
    with (
        pytest.raises(OutputError, match="made by `ctr train`, not `ctr supernet`"),
        owned_dir(tmp_path / "run", "ctr train"),
        owned_dir(tmp_path / "run", "ctr supernet"),
    ):
        pass


def test_remove_owned_removes_only_what_the_command_made(tmp_path: Path) -> None:
    with owned_dir(tmp_path / "run", "ctr train") as run:
        (run / "metrics.json").write_text("{}")
    with pytest.raises(OutputError, match="made by `ctr train`, not `ctr optembed`"):
        remove_owned(run, "ctr optembed")
    (tmp_path / "user").mkdir()
    (tmp_path / "user" / "a.txt").write_text("a")
    with pytest.raises(OutputError, match=r"holds a\.txt"):
        remove_owned(tmp_path / "user", "ctr optembed")
    assert (tmp_path / "user" / "a.txt").is_file() and (run / "metrics.json").is_file()
    remove_owned(run, "ctr train")
    assert not run.exists()


# ---------------------------------------------------------------------- one writer at a time
def test_a_second_writer_is_refused_at_once_naming_the_holder(raw: Path, small: Path, tmp_path: Path) -> None:
    """The lock is held by this test process; a second ``ctr`` process must refuse at once, naming it."""
    run = tmp_path / "run"
    with owned_dir(run, "ctr train"):
        assert (run / LOCK).is_file()
        cmd = [*CLI, "train", "--data", str(small), "--model", "lr", "--out", str(run)]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, proc.stderr[-2000:]
        line = _one_error_line(proc.stderr, "train")
        assert f"in use by pid {os.getpid()}" in line
        assert not (run / "checkpoints").exists()
        prepared = tmp_path / "prepared"
        with replaced_dir(prepared, "ctr prepare") as work:
            proc = subprocess.run(
                [*CLI, *_prepare("--input", raw, "--out", prepared, "--overwrite")],
                capture_output=True,
                text=True,
                timeout=120,
            )
            assert proc.returncode == 1 and f"in use by pid {os.getpid()}" in _one_error_line(proc.stderr, "prepare")
            (work / "mine").write_text("the first writer's output")
    assert (prepared / "mine").read_text() == "the first writer's output" and not (run / LOCK).exists()


def test_three_concurrent_prepares_one_wins_the_others_are_refused(tmp_path: Path) -> None:
    """The first writer is frozen (SIGSTOP) while it holds the folder, so the overlap does not hang on timing."""
    raw = tmp_path / "raw.tsv"
    write_synthetic(100_000, raw, seed=2)
    out = tmp_path / "X"
    command = [*CLI, *_prepare("--input", raw, "--out", out, "--overwrite")]
    winner = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".X.ctr-tmp-*/.staged")) and winner.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    assert winner.poll() is None, "prepare ended before the others could start beside it"
    winner.send_signal(signal.SIGSTOP)
    try:
        others = [subprocess.run(command, capture_output=True, text=True, timeout=300) for _ in range(2)]
    finally:
        winner.send_signal(signal.SIGCONT)
    assert winner.wait(timeout=300) == 0, winner.stderr.read() if winner.stderr else ""
    for other in others:
        assert other.returncode == 1, other.stderr[-2000:]
        line = _one_error_line(other.stderr, "prepare")
        assert "in use by pid" in line and str(winner.pid) in line, line
    report = (out / "report.json").read_text()
    assert '"rows_read": 100000' in report
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "raw.tsv", "raw.tsv.truth.json"]


def test_a_killed_writer_blocks_nothing_and_its_staging_folder_is_removed(tmp_path: Path) -> None:
    raw = tmp_path / "raw.tsv"
    write_synthetic(150_000, raw, seed=4)
    out = tmp_path / "X"
    proc = subprocess.Popen([*CLI, *_prepare("--input", raw, "--out", out)], stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".X.ctr-tmp-*/.staged")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "prepare ended before it could be killed mid-way"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert list(tmp_path.glob(".X.ctr-tmp-*")), "the killed run left its staging folder"
    rerun = subprocess.run([*CLI, *_prepare("--input", raw, "--out", out)], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["X", "raw.tsv", "raw.tsv.truth.json"]
    assert {p.name for p in out.iterdir()} >= {MARKER, "feature_map.json", "report.json", "train"}
