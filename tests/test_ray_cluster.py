"""Ray end to end: a real local cluster (``ray start --head`` on 127.0.0.1), pipelines submitted as Ray jobs,
distributed training through Ray Train, and a search that survives a killed evaluator.

Data: 8,000 planted rows (min-count 3), small DeepFM (dim 8, MLP [32]), one epoch.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from subprocess import PIPE

import pytest

from ctr.data import load_split
from ctr.restore import load_run
from ctr.run_config import load_run_config
from ctr.supernet_module import find_pruning, model_row_masks
from ctr.train import train
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from search.driver import SearchSpace, run_search
from search.scorer import CandidateScorer

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SMALL = ["trainer.progress_bar=false", "model.mlp=[32]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=512"]
DIST_VARS = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}

pytestmark = pytest.mark.dist


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in DIST_VARS and k != "RAY_ADDRESS"} | {
        "RAY_AUTH_MODE": "disabled"
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ray")
    write_synthetic(8000, root / "s.tsv", seed=4)
    prepare(builtin_spec("criteo"), [root / "s.tsv"], root / "p", PrepareOptions(progress=False, min_count=3))
    return root / "p"


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A real single-node Ray cluster on 127.0.0.1 (head with the job server); yields its dashboard address."""
    port, dash = _free_port(), _free_port()
    start = [RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}", "--num-cpus=2"]
    start += [
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}",
        "--disable-usage-stats",
    ]
    subprocess.run(start, check=True, env=_env(), capture_output=True, text=True, timeout=120)
    try:
        yield f"http://127.0.0.1:{dash}"
    finally:
        subprocess.run([RAY, "stop", "--force"], env=_env(), capture_output=True, timeout=120)


def _submit(cluster: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    args = [RAY, "job", "submit", "--address", cluster, "--working-dir", str(REPO), "--", sys.executable, *cmd]
    return subprocess.run(args, env=_env(), capture_output=True, text=True, timeout=900)


def test_optembed_runs_as_a_ray_job_with_search_actors_on_the_cluster(cluster: str, data: Path, tmp_path: Path) -> None:
    sets = [*SMALL, "supernet.alpha=0.5", "supernet.threshold_lr=0.2", "search.population=6", "search.n_mutation=3"]
    sets += ["search.n_crossover=3", "search.generations=2", "search.top_k=4"]
    out = tmp_path / "oe"
    cmd = ["-m", "pipelines.cli", "optembed", "--data", str(data), "--model", "deepfm", "--out", str(out)]
    cmd += ["--search-workers", "2", "--quiet", *[x for s in sets for x in ("--set", s)]]
    proc = _submit(cluster, *cmd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    result = json.loads((out / "result.json").read_text())
    assert result["search"]["trials"] == json.loads((out / "search" / "search.json").read_text())["trials"] > 0
    assert result["final"]["embedding_params"] < result["baseline"]["embedding_params"]


def test_ray_train_on_the_cluster_matches_two_local_processes(cluster: str, data: Path, tmp_path: Path) -> None:
    sets = [x for s in [*SMALL, "trainer.max_epochs=2"] for x in ("--set", s)]
    common = ["-m", "pipelines.cli", "train", "--data", str(data), "--model", "deepfm", *sets]
    proc = _submit(cluster, *common, "--out", str(tmp_path / "ray"), "--ray-workers", "2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    local = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "local"), "--nproc", "2"], env=_env(), capture_output=True
    )
    assert local.returncode == 0, local.stderr[-3000:]
    ray_m = json.loads((tmp_path / "ray" / "metrics.json").read_text())
    local_m = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert ray_m["world_size"] == local_m["world_size"] == 2
    assert ray_m["global_step"] == local_m["global_step"]
    # Same seed, same global batches, same per-table init: the two launchers train the same model.
    for key in ("val_auc", "test_auc", "test_logloss"):
        assert ray_m[key] == pytest.approx(local_m[key], abs=1e-4), key


_TWO_CPUS = """
import sys

import ray

from ctr.run_config import SearchConfig
from features.strict import ConfigError
from search.driver import SearchSpace, run_search
from search.evaluators import RayEvaluator


class Scorer:  # a stand-in for CandidateScorer: what run_search needs of it
    fields = ("C0", "C1", "C2")

    def score(self, dims):
        return 0.5 + sum(dims) / 1000


ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
space = SearchSpace(Scorer.fields, ((4, 8),) * 3, (10, 20, 30))
config = SearchConfig(population=4, n_mutation=2, n_crossover=2, generations=2, top_k=2, workers=4)
outcome = run_search(Scorer(), space, config, sys.argv[1], "two_cpus", progress=False)
print("trials", outcome.trials, outcome.evaluated)
ray.shutdown()
ray.init(address="local", num_cpus=0, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
try:
    RayEvaluator(Scorer(), workers=1)
except ConfigError as e:
    print("error", e)
"""


def test_more_search_workers_than_cluster_cpus_scores_on_those_it_has(tmp_path: Path) -> None:
    # 4 actors on 2 CPUs used to wait forever for the 2 that can never be placed (0/2 gen, no message)
    script = tmp_path / "two_cpus.py"
    script.write_text(_TWO_CPUS)
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    command = [sys.executable, str(script), storage]
    env = _env() | {"PYTHONPATH": str(REPO)}
    # its own process group: a hang is killed with the Ray it started (a killed driver orphans Ray's agents)
    proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=PIPE, stderr=PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("the search with 4 workers on 2 CPUs did not finish in 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    trials, error = stdout.splitlines()
    assert trials.split()[0] == "trials" and trials.split()[1] == trials.split()[2] != "0"
    notices = [line for line in stderr.splitlines() if "notice" in line]
    assert notices == [
        "search: notice: search.workers=4: the Ray cluster has 2 free CPUs; scoring on 2 evaluator actors"
    ]
    assert error == "error search.workers=1: the Ray cluster has no free CPU for an evaluator (of 0)"


def test_search_survives_a_killed_evaluator_without_losing_or_repeating_trials(data: Path, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    sets = [*SMALL, "supernet.alpha=0.5", "supernet.threshold_lr=0.2"]
    train(load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",)), tmp_path / "sn")
    run = load_run(tmp_path / "sn")
    masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
    scorer = CandidateScorer(run.model, masks, load_split(data, run.feature_map, "valid"))
    space = SearchSpace(scorer.fields, tuple((4, 8) for _ in scorer.fields), tuple(10 for _ in scorer.fields))
    config = load_run_config(
        None,
        [
            "search.population=8",
            "search.n_mutation=4",
            "search.n_crossover=4",
            "search.generations=4",
            "search.workers=2",
        ],
        data="x",
        model="deepfm",
        sections=("search",),
    ).search
    assert config is not None
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    killed: list[int] = []

    def kill_one_evaluator() -> None:  # once the search is scoring, SIGKILL one actor process
        deadline = time.time() + 300
        while time.time() < deadline and not killed:
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue  # gone already
                if "_ScorerActor" in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
                    return
            time.sleep(0.2)

    killer = threading.Thread(target=kill_one_evaluator, daemon=True)
    killer.start()
    outcome = run_search(scorer, space, config, storage, "killed", progress=False)
    killer.join(timeout=1)
    assert killed, "no evaluator process was found to kill"
    trials = optuna.load_study(study_name="killed", storage=storage).trials
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == len(trials) == outcome.trials == outcome.evaluated  # none lost, none failed
    cands = [tuple(t.params[f] for f in scorer.fields) for t in complete]
    assert len(set(cands)) == len(cands)  # none counted twice
    for t in complete:  # every recorded score is the candidate's true score
        assert t.value == pytest.approx(scorer.score(tuple(t.params[f] for f in scorer.fields)), abs=1e-12)
