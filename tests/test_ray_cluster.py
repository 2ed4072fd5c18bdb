"""Ray end to end: README.md's "Run on a Ray cluster" commands run as written (a real local cluster on
127.0.0.1 with token authentication, `ctr optembed` and `ctr train --ray-workers 2` submitted as Ray jobs, `ray
stop`), only on free ports and small data, in a home where an earlier local Ray left its token; distributed
training through Ray Train; and a search that survives a killed evaluator.

Data: 8,000 planted rows (min-count 3), small DeepFM (dim 8, MLP [32]), one epoch.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from subprocess import PIPE

import pytest

from ctr.data.shards import load_split
from ctr.optembed.module import find_pruning, model_row_masks
from ctr.optembed.scorer import CandidateScorer
from ctr.runs import load_run, train_run
from ctr.training.defaults import load_run_config
from search.driver import SearchSpace, run_search

REPO = Path(__file__).resolve().parents[1]
RAY = str(Path(sys.executable).parent / "ray")
SMALL = ["trainer.progress_bar=false", "model.mlp=[32]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=512"]
DIST_VARS = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
# The README's block, run as written but for these (each must occur, so an edited README fails here first):
ACTIVATE = ". .venv/bin/activate"  # -> this interpreter's bin/ first on PATH
DASHBOARD = "http://127.0.0.1:8265"  # -> the test cluster's dashboard port
DATA, RUNS = "$PWD/demo/prepared", "$PWD/runs/"  # -> the planted data, the test's tmp_path

pytestmark = pytest.mark.dist


def _env(home: Path) -> dict[str, str]:
    """This environment with a home of its own and without RAY_AUTH_MODE (which conftest sets): what the
    README's commands find in a new shell."""
    drop = DIST_VARS | {"RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"}
    return {k: v for k, v in os.environ.items() if k not in drop} | {"HOME": str(home)}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _readme_commands() -> list[str]:
    """The shell commands of README.md's "Run on a Ray cluster" block: continuations joined, comments dropped."""
    section = (REPO / "README.md").read_text().split("### Run on a Ray cluster\n", 1)[1]
    block = section.split("```bash\n", 1)[1].split("```", 1)[0]
    commands, pending = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line).strip()
        pending += line
        if pending.endswith("\\"):
            pending = pending[:-1]
        elif pending:
            commands.append(re.sub(r"\s+", " ", pending))
            pending = ""
    return commands


def _substitute(command: str, old: str, new: str) -> str:
    assert old in command, f"README.md's Ray block changed: {old!r} not in {command!r}"
    return command.replace(old, new)


@dataclass(frozen=True)
class Cluster:
    """The README's cluster: its dashboard address, the shell prefix every later command runs after (the
    README's activate and export lines) and the environment it was started in."""

    dashboard: str
    prefix: str
    env: dict[str, str]
    temp: Path  # the cluster's --temp-dir: its sessions' logs

    def actors(self, class_name: str) -> list[Path]:
        """The cluster's worker logs of actors of ``class_name`` (Ray starts each actor's log with its name): an
        actor that ran in a Ray the job started itself would log into that Ray's session, not this one."""
        marker = f":actor_name:{class_name}"
        logs = {p.resolve() for p in self.temp.glob("session_*/logs/worker-*.out")}  # session_latest: a link
        return sorted(p for p in logs if marker in p.read_text(errors="replace"))

    def run(self, command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        script = f"set -e\n{self.prefix}\n{command}"
        return subprocess.run(
            ["bash", "-c", script], cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout
        )


@pytest.fixture(scope="module")
def data(synth_data: Callable[..., Path]) -> Path:
    return synth_data("ray", 8000, seed=4)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The README's commands up to `ray start`, run in a home where an earlier local ``ray.init()`` left
    ``~/.ray/auth_token`` (the state in which the README's commands used to fail), on free ports and with a
    temp dir of its own (another Ray on the machine holding Ray's default ports, the job agent's 52365 among
    them, makes `ray job submit` fail with "No available agent"). The README's `ray stop` stops every Ray
    process of the machine; the test stops only this cluster's, since other Ray users may share the machine."""
    home = tmp_path_factory.mktemp("home")
    env = _env(home)
    local = "import ray; ray.init(address='local', include_dashboard=False, _node_ip_address='127.0.0.1', "
    local += "num_cpus=1); "
    local += "ray.shutdown()"
    subprocess.run([sys.executable, "-c", local], env=env, check=True, capture_output=True, timeout=300)
    assert (home / ".ray" / "auth_token").is_file(), "a local ray.init() no longer leaves a token"

    commands = _readme_commands()
    assert [c.split()[:2] for c in commands] == [
        [".", ".venv/bin/activate"],
        ["export", "RAY_AUTH_MODE=token"],
        ["ray", "get-auth-token"],
        ["ray", "start"],
        ["ray", "job"],
        ["ray", "job"],
        ["ray", "stop"],
    ], commands
    port, dash = _free_port(), _free_port()
    prefix = _substitute("\n".join(commands[:2]), ACTIVATE, f"export PATH={shlex.quote(str(Path(RAY).parent))}:$PATH")
    temp = Path(tempfile.mkdtemp(prefix="ray-"))  # short: Ray's socket paths live under it
    start = f"{commands[3]} --port={port} --dashboard-port={dash} --num-cpus=2 --disable-usage-stats"
    start += f" --dashboard-agent-listen-port={_free_port()} --ray-client-server-port={_free_port()} --temp-dir={temp}"
    up = Cluster(f"http://127.0.0.1:{dash}", prefix, env, temp)
    started = up.run(f"{commands[2]}\n{start}", timeout=180)
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield up
    finally:
        _stop_cluster(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _stop_cluster(temp: Path) -> None:
    """SIGTERM, then after 15 s SIGKILL, the processes that name ``temp`` on their command line (GCS, raylet,
    dashboard, ...) and their descendants (the workers)."""
    procs: dict[int, tuple[int, str]] = {}  # pid -> (parent pid, command line)
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError, ValueError):
            continue  # gone already
        procs[int(entry.name)] = (ppid, cmdline)
    ours = {pid for pid, (_, cmdline) in procs.items() if str(temp) in cmdline} - {os.getpid()}
    while grown := {pid for pid, (ppid, _) in procs.items() if ppid in ours} - ours:
        ours |= grown
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in ours:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.time() + 15
        while time.time() < deadline and (ours := {p for p in ours if Path(f"/proc/{p}").exists()}):
            time.sleep(0.2)


def _submit(cluster: Cluster, stage: str, data: Path, runs: Path, args: list[str]) -> subprocess.CompletedProcess[str]:
    """The README's `ray job submit` of ``stage`` on ``data``, its outputs under ``runs``, ``args`` appended."""
    (command,) = [c for c in _readme_commands() if c.startswith("ray job submit") and f"cli {stage} " in c]
    command = _substitute(command, DASHBOARD, cluster.dashboard)
    command = _substitute(command, DATA, shlex.quote(str(data)))
    command = _substitute(command, RUNS, f"{shlex.quote(str(runs))}/")
    return cluster.run(" ".join([command, *map(shlex.quote, args)]))


def _sets(sets: list[str]) -> list[str]:
    return [x for s in sets for x in ("--set", s)]


def test_the_documented_cluster_refuses_a_client_without_the_token(cluster: Cluster) -> None:
    """The README's old failure, kept as the proof that authentication is on: a shell without
    RAY_AUTH_MODE sends no token."""
    bare = subprocess.run(
        [RAY, "job", "list", "--address", cluster.dashboard],
        env=cluster.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bare.returncode != 0
    assert "Missing authentication token" in bare.stdout + bare.stderr
    listed = cluster.run(f"ray job list --address {cluster.dashboard}", timeout=120)
    assert listed.returncode == 0, listed.stderr[-3000:]


def test_optembed_runs_as_a_ray_job_with_search_actors_on_the_cluster(
    cluster: Cluster, data: Path, tmp_path: Path
) -> None:
    sets = [
        *SMALL,
        "supernet.alpha=0.5",
        "supernet.threshold_lr=0.2",
        "supernet.relative=false",
        "search.population=6",
        "search.n_mutation=3",
    ]
    sets += ["search.n_crossover=3", "search.generations=2", "search.top_k=4"]
    proc = _submit(cluster, "optembed", data, tmp_path, ["--quiet", *_sets(sets)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "succeeded" in (proc.stdout + proc.stderr).lower()
    out = tmp_path / "oe"
    result = json.loads((out / "result.json").read_text())
    assert result["search"]["trials"] == json.loads((out / "search" / "search.json").read_text())["trials"] > 0
    assert result["final"]["embedding_params"] < result["baseline"]["embedding_params"]
    assert len(cluster.actors("_ScorerActor")) >= 1  # the search's evaluators ran on the cluster


def test_ray_train_on_the_cluster_matches_two_local_processes(cluster: Cluster, data: Path, tmp_path: Path) -> None:
    sets = [*SMALL, "trainer.max_epochs=2"]
    proc = _submit(cluster, "train", data, tmp_path, _sets(sets))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert len(cluster.actors("RayTrainWorker")) == 2  # Ray Train's two workers ran on the cluster
    common = ["-m", "pipelines.cli", "train", "--data", str(data), "--model", "deepfm", *_sets(sets)]
    local = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "local"), "--nproc", "2"],
        env=cluster.env | {"RAY_AUTH_MODE": "disabled"},
        capture_output=True,
        timeout=900,
    )
    assert local.returncode == 0, local.stderr[-3000:]
    ray_m = json.loads((tmp_path / "deepfm" / "metrics.json").read_text())
    local_m = json.loads((tmp_path / "local" / "metrics.json").read_text())
    assert ray_m["world_size"] == local_m["world_size"] == 2
    assert ray_m["global_step"] == local_m["global_step"]
    # Same seed, same global batches, same per-table init: the two launchers train the same model.
    for key in ("val_auc", "test_auc", "test_logloss"):
        assert ray_m[key] == pytest.approx(local_m[key], abs=1e-4), key


_TWO_CPUS = """
import sys

import ray

from config.run import SearchConfig
from config.strict import ConfigError
from search.driver import SearchSpace, run_search
from search.evaluators import RayEvaluator


class Scorer:  # a stand-in for CandidateScorer: what run_search needs of it
    fields = ("C0", "C1", "C2")

    def score_many(self, candidates):
        return [0.5 + sum(dims) / 1000 for dims in candidates]


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
    env = _env(tmp_path) | {"PYTHONPATH": str(REPO)}
    # its own process group: a hang is killed with the Ray it started (a killed driver orphans Ray's agents)
    proc = subprocess.Popen(command, cwd=REPO, env=env, text=True, stdout=PIPE, stderr=PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=60)
        pytest.fail("the search with 4 workers on 2 CPUs did not finish in 300 s")
    assert proc.returncode == 0, stderr[-3000:]
    trials, error = stdout.splitlines()
    assert trials.split()[0] == "trials" and trials.split()[1] == trials.split()[2] != "0"
    # the evaluator actors get the scorer's ref inside a list: no ERROR line from Ray about constructor arguments
    assert "constructor arguments in the object store" not in stderr, stderr[-2000:]
    notices = [line for line in stderr.splitlines() if "notice" in line]
    assert notices == [
        "search: notice: search.workers=4: the Ray cluster has 2 free CPUs; scoring on 2 evaluator actors"
    ]
    assert error == "error search.workers=1: the Ray cluster has no free CPU for an evaluator (of 0)"


def test_search_survives_a_killed_evaluator_without_losing_or_repeating_trials(data: Path, tmp_path: Path) -> None:
    import optuna
    from optuna.trial import TrialState

    sets = [*SMALL, "supernet.alpha=0.5", "supernet.threshold_lr=0.2", "supernet.relative=false"]
    train_run(load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",)), tmp_path / "sn")
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
        assert t.value == pytest.approx(scorer.score_many([tuple(t.params[f] for f in scorer.fields)])[0], abs=1e-12)


@pytest.mark.slow
def test_ray_train_resumes_its_checkpoint_like_an_uninterrupted_run(data: Path, tmp_path: Path) -> None:
    """`ctr train --ray-workers 2` for one epoch, then `--resume` to two: Ray Train's workers continue from the
    run's checkpoint (epoch 1 is the only epoch the second call trains) and end where an uninterrupted two-epoch
    run on two local processes ends (the two launchers train the same model: the test above)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS | {"RAY_ADDRESS"}}
    common = [sys.executable, "-m", "pipelines.cli", "train", "--data", str(data), "--model", "deepfm"]

    def ctr(out: str, epochs: int, *extra: str) -> dict[str, object]:
        args = [*common, "--out", str(tmp_path / out), *_sets([*SMALL, f"trainer.max_epochs={epochs}"]), *extra]
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr[-3000:]
        metrics: dict[str, object] = json.loads((tmp_path / out / "metrics.json").read_text())
        return metrics

    first = ctr("ray", 1, "--ray-workers", "2")
    resumed = ctr("ray", 2, "--ray-workers", "2", "--resume")
    local = ctr("local", 2, "--nproc", "2")
    assert first["epochs"] == 1 and resumed["epochs"] == local["epochs"] == 2
    assert resumed["world_size"] == 2 and resumed["global_step"] == local["global_step"] == 2 * first["global_step"]
    for key in ("val_auc", "test_auc", "test_logloss"):
        assert resumed[key] == pytest.approx(local[key], abs=1e-4), key
    # the resumed call trained epoch 1 (and logged the final validation and test at epoch 2), not epoch 0 again
    logs = sorted((tmp_path / "ray" / "logs").glob("version_*/metrics.csv"))
    assert len(logs) == 2, logs
    epochs = [{line.split(",")[0] for line in log.read_text().splitlines()[1:] if line} for log in logs]
    assert "0" in epochs[0] and "0" not in epochs[1] and "1" in epochs[1], epochs
