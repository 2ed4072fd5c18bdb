"""Study dashboards: plots attached as study artifacts, and `ctr dashboard` end to end in headless Chromium.

The end-to-end test starts ``ctr dashboard`` (``python -m pipelines.cli dashboard``) on a finished search
study and drives Debian's chromium through selenium + chromedriver; its screenshots are kept in
``test-artifacts/`` at the repository root.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.artifacts import ArtifactMeta, FileSystemArtifactStore, download_artifact, get_all_artifact_meta

from pipelines.dashboard import add_parser, artifact_dirs, main
from search.storage import attach_plots, open_storage

optuna.logging.set_verbosity(optuna.logging.WARNING)

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"
APT_CHROMIUM = "apt-get install -y chromium chromium-driver"


@dataclass(frozen=True)
class FinishedStudy:
    storage: str
    name: str
    outcome: Any  # search.driver.SearchOutcome
    plots: list[Path]
    artifact_dir: Path
    attached: list[ArtifactMeta]


@pytest.fixture(scope="module")
def finished(toy_search: Any, tmp_path_factory: pytest.TempPathFactory) -> FinishedStudy:
    from search.plots import plot_generations, plot_pareto

    root = tmp_path_factory.mktemp("dashboard")
    storage = f"sqlite:///{root / 'study.db'}"
    outcome = toy_search(storage, "optembed")
    (root / "plots").mkdir()
    plots = [
        plot_generations(outcome, root / "plots" / "generations.png"),
        plot_pareto(outcome.pareto, outcome, root / "plots" / "pareto.png"),
    ]
    attached = attach_plots(storage, "optembed", plots, root / "artifacts")
    return FinishedStudy(storage, "optembed", outcome, plots, root / "artifacts", attached)


# ---------------------------------------------------------------- artifacts and note
def test_plots_are_artifacts_of_the_study_with_a_note(finished: FinishedStudy, tmp_path: Path) -> None:
    from optuna_dashboard import get_note

    study = optuna.load_study(study_name=finished.name, storage=open_storage(finished.storage))
    metas = get_all_artifact_meta(study)
    assert sorted((m.filename, m.mimetype) for m in metas) == [
        ("generations.png", "image/png"),
        ("pareto.png", "image/png"),
    ]
    assert [m.filename for m in finished.attached] == ["generations.png", "pareto.png"]
    store = FileSystemArtifactStore(finished.artifact_dir)
    for meta, plot in zip(finished.attached, finished.plots, strict=True):
        download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(tmp_path / meta.filename))
        assert (tmp_path / meta.filename).read_bytes() == plot.read_bytes()
    # Attaching again (a resumed search) adds nothing; a changed plot is a new artifact.
    assert attach_plots(finished.storage, finished.name, finished.plots, finished.artifact_dir) == finished.attached
    assert len(get_all_artifact_meta(study)) == 2
    best = finished.outcome.best
    note = get_note(study)
    assert f"Best candidate: **trial {best.trial}** (generation {best.generation})" in note
    assert (
        f"validation AUC **{best.val_auc:.6f}**" in note and f"{best.embedding_params:,} embedding parameters" in note
    )
    assert all(f"| {field} | {dim} |" in note for field, dim in best.dims.items())
    assert all(f"](/artifacts/{study._study_id}/{m.artifact_id})" in note for m in finished.attached)
    with pytest.raises(FileNotFoundError, match="no such plot file"):
        attach_plots(finished.storage, finished.name, [tmp_path / "missing.png"], finished.artifact_dir)


# ---------------------------------------------------------------- the command
def test_dashboard_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser(prog="ctr")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["dashboard", "--storage", "sqlite:///x.db"])
    assert (args.command, args.storage, args.host, args.port, args.artifact_dir) == (
        "dashboard",
        "sqlite:///x.db",
        "127.0.0.1",
        8080,
        None,
    )
    assert callable(args.func)
    with pytest.raises(SystemExit) as exit_:
        main(["--storage", f"sqlite:///{tmp_path / 'missing.db'}"])
    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip()
    assert err == f"ctr dashboard: error: sqlite:///{tmp_path / 'missing.db'}: no such SQLite study file"
    assert not (tmp_path / "missing.db").exists()  # not created empty by the attempt
    with pytest.raises(SystemExit):
        main(["--storage", "sqlite:///x.db", "--port", "70000"])
    assert "port must be in 1..65535" in capsys.readouterr().err


# ---------------------------------------------------------------- end to end
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _listening(pid: int, port: int) -> set[str]:
    """Local addresses of the TCP sockets of process ``pid`` listening on ``port`` (Linux /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    addresses = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            host, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port and inode in inodes:  # 0A: LISTEN
                if width == 8:
                    addresses.add(socket.inet_ntop(socket.AF_INET, bytes.fromhex(host)[::-1]))
                else:
                    words = b"".join(bytes.fromhex(host[i : i + 8])[::-1] for i in range(0, 32, 8))
                    addresses.add(socket.inet_ntop(socket.AF_INET6, words))
    return addresses


@contextlib.contextmanager
def _serving(storage: str, log: Path, *options: str) -> Iterator[tuple[str, int]]:
    """``ctr dashboard --storage STORAGE`` on a free port; yields (base URL, server pid)."""
    port = _free_port()
    command = [sys.executable, "-m", "pipelines.cli", "dashboard", "--storage", storage, "--port", str(port), *options]
    with log.open("w") as out:
        proc = subprocess.Popen(command, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                pytest.fail(f"the dashboard exited ({proc.returncode}):\n{log.read_text()}", pytrace=False)
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"the dashboard did not listen on port {port} in 60 s:\n{log.read_text()}")
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


@pytest.fixture
def dashboard(finished: FinishedStudy, tmp_path: Path) -> Iterator[tuple[str, int]]:
    """``ctr dashboard`` on the finished study; yields (base URL, server pid)."""
    with _serving(finished.storage, tmp_path / "dashboard.log", "--artifact-dir", str(finished.artifact_dir)) as served:
        yield served


def _study_ids(base: str) -> dict[str, int]:
    with urllib.request.urlopen(f"{base}/api/studies", timeout=30) as r:
        return {s["study_name"]: s["study_id"] for s in json.load(r)["study_summaries"]}


def test_dashboard_serves_each_studys_plots_without_artifact_dir(toy_search: Any, tmp_path: Path) -> None:
    # `ctr dashboard --storage URL` as documented answered `400 Cannot access to the artifacts`
    from search.plots import plot_generations, plot_pareto

    storage = f"sqlite:///{tmp_path / 'db' / 'study.db'}"  # one storage, two searches with their own artifact dirs
    (tmp_path / "db").mkdir()
    plots: dict[str, tuple[Path, ArtifactMeta]] = {}
    for name in ("first", "second"):
        outcome = toy_search(storage, name)
        (tmp_path / name).mkdir()
        out = tmp_path / name / "plot.png"
        plot = plot_generations(outcome, out) if name == "first" else plot_pareto(outcome.pareto, outcome, out)
        (meta,) = attach_plots(storage, name, [plot], tmp_path / name / "artifacts")
        plots[name] = (plot, meta)
    assert plots["first"][0].read_bytes() != plots["second"][0].read_bytes()
    with _serving(storage, tmp_path / "dashboard.log") as (base, _):
        ids = _study_ids(base)
        for name, (plot, meta) in plots.items():
            with urllib.request.urlopen(f"{base}/artifacts/{ids[name]}/{meta.artifact_id}", timeout=30) as r:
                assert (r.status, r.headers["Content-Type"]) == (200, "image/png")
                assert r.read() == plot.read_bytes()
    first_line = (tmp_path / "dashboard.log").read_text().splitlines()[0]
    assert first_line.endswith(
        f"; artifacts from {tmp_path / 'first' / 'artifacts'}, {tmp_path / 'second' / 'artifacts'}"
    )


def test_a_search_beside_its_sqlite_file_needs_no_recorded_artifact_dir(toy_search: Any, tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    toy_search(storage, "optembed")  # a study that records no artifact directory
    assert artifact_dirs(storage, open_storage(storage)) == []
    (tmp_path / "artifacts").mkdir()
    assert artifact_dirs(storage, open_storage(storage)) == [tmp_path.resolve() / "artifacts"]


def test_ctr_dashboard_serves_a_study_in_postgresql(toy_search: Any, postgres_url: str, tmp_path: Path) -> None:
    outcome = toy_search(postgres_url, "dashboard-pg")
    with _serving(postgres_url, tmp_path / "dashboard.log") as (base, _):
        study_id = _study_ids(base)["dashboard-pg"]
        with urllib.request.urlopen(f"{base}/api/studies/{study_id}?after=0", timeout=30) as r:
            served = json.load(r)
    complete = [t for t in served["trials"] if t["state"] == "Complete"]
    assert len(complete) == outcome.trials > 0
    assert max(v for t in complete for v in t["values"]) == pytest.approx(outcome.best.val_auc)


def test_a_busy_port_fails_in_one_line(finished: FinishedStudy) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [sys.executable, "-m", "pipelines.dashboard", "--storage", finished.storage, "--port", str(port)]
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (1, "")
    assert (
        proc.stderr
        == f"ctr dashboard: error: --port {port}: cannot listen on 127.0.0.1:{port}: Address already in use\n"
    )


def _chrome() -> Any:
    """Headless Chromium driven by chromedriver (``CHROMIUM``/``CHROMEDRIVER`` override the ones on PATH)."""
    browser = os.environ.get("CHROMIUM") or next(
        (p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None
    )
    driver = os.environ.get("CHROMEDRIVER") or shutil.which("chromedriver")
    browser, driver = (p if p and os.access(p, os.X_OK) else None for p in (browser, driver))
    if browser is None or driver is None:
        missing = " and ".join(n for n, p in (("chromium", browser), ("chromedriver", driver)) if p is None)
        pytest.fail(f"{missing} not found: install them with `{APT_CHROMIUM}`", pytrace=False)
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = browser
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--window-size=1400,1800",
    ):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


def _wait_for_text(browser: Any, needles: list[str], shot: Path, timeout: float = 45) -> str:
    from selenium.common.exceptions import TimeoutException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    def body() -> str:
        return str(browser.find_element(By.TAG_NAME, "body").text)

    try:
        WebDriverWait(browser, timeout, poll_frequency=0.25).until(lambda _: all(n in body() for n in needles))
    except TimeoutException:
        browser.save_screenshot(str(shot))
        missing = [n for n in needles if n not in body()]
        pytest.fail(f"{browser.current_url}: {missing} not shown in {timeout} s (screenshot {shot}):\n{body()[:3000]}")
    browser.save_screenshot(str(shot))
    print(f"screenshot: {shot}")
    return body()


def test_dashboard_shows_the_study_in_headless_chromium(finished: FinishedStudy, dashboard: tuple[str, int]) -> None:
    base, pid = dashboard
    port = int(base.rsplit(":", 1)[1])
    assert _listening(pid, port) == {"127.0.0.1"}  # loopback only, by default
    study_id = _study_ids(base)[finished.name]
    for meta, plot in zip(finished.attached, finished.plots, strict=True):  # the artifact store is served
        with urllib.request.urlopen(f"{base}/artifacts/{study_id}/{meta.artifact_id}", timeout=30) as r:
            assert r.headers["Content-Type"] == "image/png" and r.read() == plot.read_bytes()

    ARTIFACTS.mkdir(exist_ok=True)
    best, n = finished.outcome.best, finished.outcome.trials
    browser = _chrome()
    try:
        browser.get(f"{base}/dashboard/studies/{study_id}")
        text = _wait_for_text(
            browser,
            [f"{finished.name} (id={study_id})", f"Best Trial (number={best.trial})", repr(best.val_auc), "History"]
            + [f"{field}: {dim}" for field, dim in best.dims.items()]
            + ["Study Artifacts", "generations.png", "pareto.png"],
            ARTIFACTS / "dashboard.png",
        )
        assert "val_auc" in text  # the objective is named after the search's metric

        browser.get(f"{base}/dashboard/studies/{study_id}/trials")
        listed = [f"Trial {i}\nComplete" for i in range(n)] + [f"Trial {best.trial}\nComplete\nBest Trial"]
        _wait_for_text(
            browser, [f"{n} Trials", *listed, "embedding_params", "dims"], ARTIFACTS / "dashboard-trials.png"
        )

        browser.get(f"{base}/dashboard/studies/{study_id}/note")
        _wait_for_text(
            browser,
            [f"Best candidate: trial {best.trial}", "generations.png", "pareto.png"],
            ARTIFACTS / "dashboard-note.png",
        )
        from selenium.webdriver.support.ui import WebDriverWait

        plots = "return Array.from(document.images).filter(i => i.src.includes('/artifacts/'))"
        rendered = plots + ".filter(i => i.complete && i.naturalWidth > 0).length"
        WebDriverWait(browser, 30).until(lambda b: b.execute_script(rendered) == 2)  # the plots render in the note
        browser.save_screenshot(str(ARTIFACTS / "dashboard-note.png"))
    finally:
        browser.quit()
