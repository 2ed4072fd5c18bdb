"""Study storage helpers: open an Optuna RDB storage by URL, and attach a search's plots to its study.

Storage URLs are SQLAlchemy URLs: ``sqlite:///runs/x/search/study.db`` (a file) or
``postgresql+psycopg2://user:password@127.0.0.1:5432/optuna`` (a PostgreSQL database; the driver is the
``psycopg2-binary`` dependency). Passwords never appear in messages (:func:`redact`).

Plots (``dims.png``, ``generations.png``, ``pareto.png`` of ``ctr search``) become Optuna artifacts of the study,
kept in a :class:`~optuna.artifacts.FileSystemArtifactStore` directory, and the study's dashboard note describes
the plan written and shows the plots. The study records the directory (user attribute ``artifact_dir``), so
``ctr dashboard`` serves them without ``--artifact-dir`` wherever that path is readable.

Example:
    >>> attach_plots("sqlite:///runs/x/search/study.db", "optembed", sorted(Path("runs/x/search/plots").glob("*.png")),
    ...              Path("runs/x/search/artifacts"))  # doctest: +SKIP
    [ArtifactMeta(artifact_id='0d7c...', filename='dims.png', mimetype='image/png', encoding=None), ...]
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
from optuna.artifacts import ArtifactMeta, FileSystemArtifactStore, get_all_artifact_meta, upload_artifact
from optuna.artifacts.exceptions import ArtifactNotFound
from optuna.storages import RDBStorage
from optuna.trial import FrozenTrial, TrialState

from config.strict import ConfigError

ARTIFACT_DIR_KEY = "artifact_dir"
"""The study user attribute holding the absolute directory of the study's artifact store."""

__all__ = [
    "ARTIFACT_DIR_KEY",
    "PlanNote",
    "attach_plots",
    "best_candidate_note",
    "claim_spec",
    "open_storage",
    "redact",
]


def redact(url: str) -> str:
    """The URL with its password replaced by ``***`` (unchanged when it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def open_storage(url: str, *, create: bool = False) -> RDBStorage:
    """The RDB storage at ``url``; a SQLite file must exist unless ``create`` (then its folder must).

    Failures raise :class:`ConfigError` (or :class:`FileNotFoundError`) with one line.
    """
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError, SQLAlchemyError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{url!r} is not a storage URL (sqlite:///FILE or postgresql+psycopg2://...)") from None
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if not path or path == ":memory:":
            raise ConfigError(f"{url}: not a SQLite study file (sqlite:///FILE)")
        if not (Path(path).parent.is_dir() if create else Path(path).is_file()):
            raise FileNotFoundError(f"{url}: no such SQLite study {'folder' if create else 'file'}")
    try:
        return RDBStorage(url)
    except ImportError as e:  # optuna re-raises a missing driver module as ImportError
        raise ConfigError(f"{redact(url)}: the database driver is not installed ({e})") from None
    except SQLAlchemyError as e:
        orig = getattr(e, "orig", None)  # the driver's own error, without SQLAlchemy's SQL and links
        reason = (str(orig if orig is not None else e).strip().splitlines() or [type(e).__name__])[0]
        raise ConfigError(f"cannot open storage {redact(url)}: {reason}") from None


def claim_spec(study: optuna.Study, key: str, spec: dict[str, Any], *, storage: str, what: str) -> None:
    """Record ``spec`` (JSON data: what the study searches) in user attribute ``key`` of a new study; refuse, by
    the names of the differing entries, a study that recorded another one (``what``: "search", "tune")."""
    saved = study.user_attrs.get(key)
    if saved is None:
        study.set_user_attr(key, spec)
        return
    if json.loads(json.dumps(saved)) != json.loads(json.dumps(spec)):
        diff = sorted(k for k in set(saved) | set(spec) if saved.get(k) != spec.get(k))
        name, where = study.study_name, redact(storage)
        raise ConfigError(f"study {name!r} in {where} belongs to another {what} (differs in: {', '.join(diff)})")


def _best(study: optuna.Study) -> FrozenTrial | None:
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        return None
    if len(study.directions) == 1:
        return study.best_trial
    # Multi-objective (AUC, parameters): the Pareto candidate with the highest AUC.
    return max(study.best_trials, key=lambda t: (t.values[0], -t.values[1], -t.number))


@dataclass(frozen=True)
class PlanNote:
    """What a search wrote to ``plan.json``, for the study's note: the dims per field, the embedding parameters of
    the retrained tables, the validation AUC on the supernet, the trial it was picked from and the fields
    ``search.shrink`` stepped down after that."""

    dims: dict[str, int]
    embedding_params: int
    val_auc: float
    trial: int
    shrunk: tuple[str, ...] = ()


def _dims_table(dims: dict[str, Any]) -> list[str]:
    if not dims:
        return []
    return ["| field | dim |", "|---|---|", *(f"| {name} | {int(dim)} |" for name, dim in dims.items()), ""]


def _trial_text(trial: FrozenTrial) -> str:
    auc = trial.user_attrs.get("val_auc", trial.values[0])
    params = trial.user_attrs.get("embedding_params")
    generation = trial.user_attrs.get("generation")
    text = f"**trial {trial.number}**" + (f" (generation {generation})" if generation is not None else "")
    text += f", validation AUC **{float(auc):.6f}**"
    return text + (f", {int(params):,} embedding parameters" if params is not None else "")


def best_candidate_note(
    study: optuna.Study, artifacts: Sequence[ArtifactMeta] = (), plan: PlanNote | None = None
) -> str:
    """Markdown for the study's dashboard note: the plan written (else the best candidate), its dims, the plots."""
    lines = [f"## OptEmbed search `{study.study_name}`", ""]
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    best = _best(study)
    if plan is not None:
        shrunk = f", then `search.shrink` stepped down {', '.join(plan.shrunk)}" if plan.shrunk else ""
        lines += [
            f"Plan written to `plan.json`: **{plan.embedding_params:,} embedding parameters**, validation AUC "
            f"**{plan.val_auc:.6f}** on the supernet; picked from trial {plan.trial}{shrunk}. "
            f"{len(complete)} candidates scored.",
            "",
            *_dims_table(plan.dims),
        ]
        if best is not None:
            lines += [f"Highest-scoring candidate: {_trial_text(best)}.", ""]
    elif best is None:
        lines.append("No finished candidate yet.")
    else:
        lines += [f"Best candidate: {_trial_text(best)}; {len(complete)} candidates scored.", ""]
        lines += _dims_table(best.user_attrs.get("dims", best.params))
    if artifacts:
        lines += ["### Plots", ""]
        for meta in artifacts:
            url = f"/artifacts/{study._study_id}/{meta.artifact_id}"
            lines += [f"**{meta.filename}**", "", f"![{meta.filename}]({url})", ""]
    return "\n".join(lines).rstrip() + "\n"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def attach_plots(
    storage: str | optuna.storages.BaseStorage,
    study_name: str,
    paths: Sequence[Path],
    artifact_dir: Path,
    *,
    note: bool = True,
    plan: PlanNote | None = None,
) -> list[ArtifactMeta]:
    """Upload ``paths`` (PNG plots) as artifacts of study ``study_name``, kept under ``artifact_dir``.

    A file already attached with the same name and bytes is not uploaded again, so attaching after a resumed
    search is idempotent. With ``note``, the study's dashboard note is (re)written by :func:`best_candidate_note`
    (describing ``plan``, the plan the search wrote, when given).
    Returns the study's artifacts for ``paths``, in their order.
    """
    files = [Path(p) for p in paths]
    for path in files:
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such plot file")
    artifact_dir.mkdir(parents=True, exist_ok=True)
    store = FileSystemArtifactStore(str(artifact_dir))
    study = optuna.load_study(
        study_name=study_name, storage=open_storage(storage) if isinstance(storage, str) else storage
    )
    study.set_user_attr(ARTIFACT_DIR_KEY, str(artifact_dir.resolve()))  # where `ctr dashboard` finds them
    existing: dict[tuple[str, str], ArtifactMeta] = {}
    for meta in get_all_artifact_meta(study):
        try:
            with store.open_reader(meta.artifact_id) as reader:
                existing[(meta.filename, _sha256(reader.read()))] = meta
        except ArtifactNotFound:  # kept in another store (or gone): not reused
            continue
    attached = []
    for path in files:
        key = (path.name, _sha256(path.read_bytes()))
        if key not in existing:
            artifact_id = upload_artifact(artifact_store=store, file_path=str(path), study_or_trial=study)
            existing[key] = next(m for m in get_all_artifact_meta(study) if m.artifact_id == artifact_id)
        attached.append(existing[key])
    if note:
        from optuna_dashboard import save_note

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            save_note(study, best_candidate_note(study, attached, plan))
    return attached
