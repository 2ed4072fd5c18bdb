"""Search studies in PostgreSQL storage (a real server, tests/conftest.py::postgres_url) behave as in SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import psycopg2
import pytest
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import make_url

from config.strict import ConfigError
from search.storage import open_storage, redact

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _rows(storage: str, study: str) -> list[tuple[Any, ...]]:
    """Every trial of the study, as comparable plain data (number, state, params, values, user attrs)."""

    def row(t: FrozenTrial) -> tuple[Any, ...]:
        return (t.number, t.state, t.params, t.values, t.user_attrs)

    return [row(t) for t in optuna.load_study(study_name=study, storage=open_storage(storage)).get_trials()]


def _count_in_postgres(url: str, study: str) -> int:
    u = make_url(url)
    with psycopg2.connect(host=u.host, port=u.port, user=u.username, dbname=u.database) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM trials JOIN studies USING (study_id) WHERE studies.study_name = %s", (study,))
        (count,) = cur.fetchone()
    conn.close()
    return int(count)


def test_search_study_round_trips_through_postgresql(postgres_url: str, toy_search: Any, tmp_path: Path) -> None:
    sqlite = f"sqlite:///{tmp_path / 'study.db'}"
    in_pg = toy_search(postgres_url, "roundtrip")
    in_sqlite = toy_search(sqlite, "roundtrip")
    assert in_pg.storage == postgres_url
    assert (in_pg.best, in_pg.pareto, in_pg.best_per_generation, in_pg.trials, in_pg.evaluated) == (
        in_sqlite.best,
        in_sqlite.pareto,
        in_sqlite.best_per_generation,
        in_sqlite.trials,
        in_sqlite.evaluated,
    )
    assert in_pg.trials == in_pg.evaluated == 18
    # The trials really are rows of the PostgreSQL server, and read back (a new connection) exactly.
    assert _count_in_postgres(postgres_url, "roundtrip") == 18
    rows = _rows(postgres_url, "roundtrip")
    assert rows == _rows(sqlite, "roundtrip")
    assert all(state == TrialState.COMPLETE for _, state, *_ in rows)
    study = optuna.load_study(study_name="roundtrip", storage=open_storage(postgres_url))
    for trial in study.get_trials():
        attrs = trial.user_attrs
        assert set(attrs) >= {"dims", "embedding_params", "val_auc", "generation"}
        assert attrs["dims"] == {f: int(trial.params[f]) for f in ("C0", "C1", "C2", "C3")}
        assert attrs["val_auc"] == trial.value
        assert attrs["embedding_params"] == 7 + sum(
            r * d for r, d in zip((50, 400, 30, 200), attrs["dims"].values(), strict=True)
        )
    assert study.best_value == in_pg.best.val_auc
    assert study.best_trial.user_attrs["dims"] == in_pg.best.dims
    assert study.best_trial.user_attrs["embedding_params"] == in_pg.best.embedding_params
    assert study.user_attrs["search_spec"]["fields"] == ["C0", "C1", "C2", "C3"]
    assert study.metric_names == ["val_auc"]


@pytest.mark.parametrize(("how", "at"), [("fail_after", 9), ("stop_after", 0)])
def test_interrupted_search_resumes_from_postgresql_as_from_sqlite(
    postgres_url: str, toy_search: Any, tmp_path: Path, how: str, at: int
) -> None:
    """Killed mid-generation (trials left RUNNING) or between generations: resuming gives the same study."""
    sqlite = f"sqlite:///{tmp_path / 'study.db'}"
    whole = toy_search(sqlite, "whole")
    name = f"cut-{how}"
    for storage in (postgres_url, sqlite):
        with pytest.raises(toy_search.Stop):
            toy_search(storage, name, **{how: at})
    running = [r for r in _rows(postgres_url, name) if r[1] == TrialState.RUNNING]
    assert len(running) == (6 if how == "fail_after" else 0)  # generation 1 was asked, never told
    resumed = {storage: toy_search(storage, name) for storage in (postgres_url, sqlite)}
    pg, lite = resumed[postgres_url], resumed[sqlite]
    assert (pg.best, pg.best_per_generation, pg.trials, pg.evaluated) == (
        lite.best,
        lite.best_per_generation,
        lite.trials,
        lite.evaluated,
    )
    assert pg.trials == whole.trials and pg.evaluated == whole.trials - 6  # generation 0 never re-scored
    assert pg.best_per_generation == whole.best_per_generation
    assert pg.best.dims == whole.best.dims and pg.best.val_auc == whole.best.val_auc
    rows = _rows(postgres_url, name)
    assert rows == _rows(sqlite, name)
    assert [r[1] for r in rows].count(TrialState.FAIL) == len(running)  # stale RUNNING trials marked FAIL
    assert toy_search(postgres_url, name).evaluated == 0  # a finished study: nothing re-scored


def test_postgres_errors_are_one_line_and_hide_the_password(postgres_url: str) -> None:
    url = make_url(postgres_url)
    wrong = url.set(password="s3cret", database="no_such_db").render_as_string(hide_password=False)
    assert "s3cret" not in redact(wrong)
    with pytest.raises(ConfigError, match=r"cannot open storage .*no_such_db") as info:
        open_storage(wrong)
    assert "s3cret" not in str(info.value) and "\n" not in str(info.value)
