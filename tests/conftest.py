"""Shared fixtures: the real sample datasets in ../shared/data (read in place, never copied)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import Truth, write_synthetic

REPO = Path(__file__).resolve().parents[1]


def _find_shared_data() -> Path:
    """``$CTR_SHARED_DATA``, else ``../shared/data`` beside this checkout, else beside the local repository it was
    cloned from (a throwaway clone of a checkout reads the same samples in place)."""
    if "CTR_SHARED_DATA" in os.environ:
        return Path(os.environ["CTR_SHARED_DATA"])
    beside = REPO.parent / "shared" / "data"
    origin = subprocess.run(
        ["git", "-C", str(REPO), "remote", "get-url", "origin"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    if beside.is_dir() or not origin or not Path(origin).is_dir():
        return beside
    from_origin = Path(origin).resolve().parent / "shared" / "data"
    return from_origin if from_origin.is_dir() else beside


SHARED_DATA = _find_shared_data()

# The tests' local Ray clusters run without Ray's token authentication, whatever the shell exported, so they
# never write ~/.ray/auth_token (tests/test_ray_cluster.py sets up the README's token auth in a home of its own).
os.environ["RAY_AUTH_MODE"] = "disabled"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        raise FileNotFoundError(f"{SHARED_DATA}: the shared sample datasets are missing (set CTR_SHARED_DATA)")
    return SHARED_DATA


# ---------------------------------------------------------------- planted training data (test_train.py, test_gpu.py)
@pytest.fixture
def subprocess_env() -> dict[str, str]:
    """This environment without the process-group variables that in-process runs leave behind (MASTER_PORT is
    still bound by this process's store): what a `ctr` subprocess should start from."""
    dist = {"MASTER_ADDR", "MASTER_PORT", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "LOCAL_WORLD_SIZE"}
    return {k: v for k, v in os.environ.items() if k not in dist}


def _prepared(root: Path, rows: int, seed: int, min_count: int = 10) -> tuple[Path, Truth]:
    raw = root / "synth.tsv"
    truth = write_synthetic(rows, raw, seed=seed)
    prepare(builtin_spec("criteo"), [raw], root / "prepared", PrepareOptions(progress=False, min_count=min_count))
    return root / "prepared", truth


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``synth_data(name, rows, seed, min_count)``: planted rows prepared once per session and arguments."""
    made: dict[tuple[str, int, int, int], Path] = {}

    def make(name: str, rows: int, seed: int, min_count: int = 3) -> Path:
        key = (name, rows, seed, min_count)
        if key not in made:
            made[key] = _prepared(tmp_path_factory.mktemp(name), rows, seed, min_count)[0]
        return made[key]

    return make


@pytest.fixture(scope="session")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Truth]:
    """120,000 planted rows (96k train / 12k valid / 12k test)."""
    return _prepared(tmp_path_factory.mktemp("planted"), 120_000, seed=0)


@pytest.fixture(scope="session")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20,000 planted rows for the mechanics tests."""
    return _prepared(tmp_path_factory.mktemp("small"), 20_000, seed=1)[0]


@pytest.fixture(scope="session")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3,000 planted rows: a training split of 2,379 rows."""
    return _prepared(tmp_path_factory.mktemp("tiny"), 3_000, seed=3)[0]


# ---------------------------------------------------------------- search studies (test_postgres.py, test_dashboard.py)
@pytest.fixture(scope="session")
def toy_search() -> Any:
    """``toy_search(storage, study, fail_after=None, stop_after=None)``: a tiny OptEmbed search (4 fields,
    3 generations of 6) with a deterministic stand-in scorer, run by ``search.driver.run_search``.

    ``fail_after=N``: the scorer raises ``ToySearchStop`` on its N-th call (the generation's trials are left
    RUNNING, as by a killed process); ``stop_after=G``: ``ToySearchStop`` right after generation G is told.
    """
    from config.run import SearchConfig
    from search.driver import SearchOutcome, SearchSpace, run_search

    fields = ("C0", "C1", "C2", "C3")
    space = SearchSpace(fields, ((4, 8, 12, 16),) * 4, (50, 400, 30, 200), fixed_params=7)
    config = SearchConfig(population=6, n_mutation=3, n_crossover=3, generations=3, top_k=4, workers=0)

    class ToySearchStop(Exception):
        pass

    class ToyScorer:  # what run_search needs of a CandidateScorer: fields and score_many()
        def __init__(self, fail_after: int | None) -> None:
            self.fields = fields
            self.calls = 0
            self.fail_after = fail_after

        def score(self, dims: Sequence[int]) -> float:
            self.calls += 1
            if self.fail_after is not None and self.calls >= self.fail_after:
                raise ToySearchStop(f"scorer stopped at call {self.calls}")
            # An AUC that likes dims (12, 4, 16, 8), with a non-trivial binary fraction.
            return 0.7 + sum(1 / (1 + abs(d - t)) for d, t in zip(dims, (12, 4, 16, 8), strict=True)) / 37

        def score_many(self, candidates: Sequence[Sequence[int]]) -> list[float]:
            return [self.score(c) for c in candidates]

    def run(storage: str, study: str, fail_after: int | None = None, stop_after: int | None = None) -> SearchOutcome:
        def on_generation(generation: int, _: object) -> None:
            if generation == stop_after:
                raise ToySearchStop(f"stopped after generation {generation}")

        scorer: Any = ToyScorer(fail_after)
        return run_search(scorer, space, config, storage, study, progress=False, on_generation=on_generation)

    run.Stop = ToySearchStop  # type: ignore[attr-defined]
    return run


# ---------------------------------------------------------------- PostgreSQL (tests/test_postgres.py)
@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A real PostgreSQL server (the Debian binaries) on 127.0.0.1 at a free port; yields a SQLAlchemy URL.

    The cluster lives in a fresh temporary directory (trust authentication, superuser ``postgres``, fsync off)
    and is stopped and removed at the end of the session. Run as root, the server runs as the ``postgres`` user
    (else ``nobody``): PostgreSQL refuses to run as root. Missing binaries fail the tests (never a skip).
    """
    import glob
    import pwd
    import shutil
    import socket
    import subprocess
    import tempfile

    def bindir() -> Path:
        candidates = [os.environ.get("CTR_PG_BINDIR", "")]
        if shutil.which("pg_config"):
            out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=False, timeout=30)
            candidates.append(out.stdout.strip())
        candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(p.split("/")[-2]), reverse=True)
        which = shutil.which("initdb")
        candidates.append(str(Path(which).parent) if which else "")
        for c in candidates:
            if c and all((Path(c) / tool).is_file() for tool in ("initdb", "pg_ctl", "postgres")):
                return Path(c)
        pytest.fail(
            "PostgreSQL server binaries (initdb, pg_ctl, postgres) not found in `pg_config --bindir`, "
            "/usr/lib/postgresql/*/bin or PATH: install them with `apt-get install -y postgresql` "
            "(Debian bookworm: postgresql-15), or set CTR_PG_BINDIR",
            pytrace=False,
        )

    bin_ = bindir()
    root = Path(tempfile.mkdtemp(prefix="ctr-pg-"))
    run_as: dict[str, Any] = {}
    if os.geteuid() == 0:
        try:
            account = pwd.getpwnam("postgres")
        except KeyError:
            account = pwd.getpwnam("nobody")
        os.chown(root, account.pw_uid, account.pw_gid)
        run_as = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(root), "LC_ALL": "C", "LANG": "C"}

    def pg(*args: str, timeout: float = 60) -> None:
        command = [str(bin_ / args[0]), *args[1:]]
        done = subprocess.run(command, cwd=root, env=env, capture_output=True, text=True, timeout=timeout, **run_as)
        if done.returncode != 0:
            log = root / "server.log"
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            pytest.fail(f"{args[0]} failed ({done.returncode}):\n{done.stdout}{done.stderr}{tail}", pytrace=False)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    data = root / "data"
    started = False
    try:
        pg("initdb", "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-locale", "--no-sync")
        options = f"-k {root} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off -c full_page_writes=off"
        started = True
        pg("pg_ctl", "start", "-w", "-t", "60", "-D", str(data), "-l", str(root / "server.log"), "-o", options)
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=port, user="postgres", dbname="postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE DATABASE ctr_test")
        conn.close()
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/ctr_test"
    finally:
        if started:
            subprocess.run(
                [str(bin_ / "pg_ctl"), "stop", "-D", str(data), "-m", "fast", "-w"],
                cwd=root,
                env=env,
                capture_output=True,
                timeout=60,
                check=False,
                **run_as,
            )
        shutil.rmtree(root, ignore_errors=True)


# ---------------------------------------------------------------- exported models (test_predict.py, test_serve.py)
SCORING_SETS = ["trainer.progress_bar=false", "model.embedding_dim=8", "model.mlp=[16]", "trainer.threads=1"]
SCORING_SETS += ["trainer.max_epochs=1", "data.batch_size=256", "optim.sparse_lr=0.05", "model.cross_layers=1"]


@pytest.fixture(scope="session")
def scoring_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2,000 planted rows prepared from pre-split raw files (``train.tsv``, ``valid.tsv``, ``test.tsv`` beside
    ``prepared/``): the raw test file holds the test split's rows in order, so scoring it must reproduce the runs'
    own test predictions."""
    from features.prepare import GivenSplits

    root = tmp_path_factory.mktemp("scoring")
    write_synthetic(2000, root / "all.tsv", seed=5)
    lines = (root / "all.tsv").read_text().splitlines(keepends=True)
    for name, part in (("train", lines[:1500]), ("valid", lines[1500:1700]), ("test", lines[1700:])):
        (root / f"{name}.tsv").write_text("".join(part))
    given = GivenSplits(*((root / f"{name}.tsv",) for name in ("train", "valid", "test")))
    prepare(
        builtin_spec("criteo"), given, root / "prepared", PrepareOptions(split="given", progress=False, min_count=2)
    )
    return root


@pytest.fixture(scope="session")
def scoring_run(scoring_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``scoring_run(name, model, *sets)``: a tiny ``ctr train`` run on ``scoring_data``, trained once per session."""
    from ctr.runs import train_run
    from ctr.training.defaults import load_run_config

    done: dict[str, Path] = {}
    root = tmp_path_factory.mktemp("scoring-runs")

    def run(name: str, model: str, *sets: str) -> Path:
        if name not in done:
            prepared = str(scoring_data / "prepared")
            train_run(load_run_config(None, [*SCORING_SETS, *sets], data=prepared, model=model), root / name)
            done[name] = root / name
        return done[name]

    return run
