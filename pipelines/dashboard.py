"""``ctr dashboard``: optuna-dashboard on the storage of a search's study (a SQLite file or PostgreSQL).

The server is optuna-dashboard's own (bottle on wsgiref, one thread), bound to ``127.0.0.1`` unless ``--host``
says otherwise. It has no authentication and can change studies (notes, deletions): keep it on the loopback
interface and reach it through an SSH tunnel (``ssh -L 8080:127.0.0.1:8080 HOST``) or ``kubectl port-forward``.
It serves the studies' artifacts (the plots of :func:`search.storage.attach_plots`) from the directories the
studies recorded, or from ``--artifact-dir``.

Usage::

    ctr dashboard --storage sqlite:///runs/x/search/study.db [--host 127.0.0.1] [--port 8080] [--artifact-dir DIR]
    python -m pipelines.dashboard --storage postgresql+psycopg2://optuna:secret@127.0.0.1:5432/optuna
"""

from __future__ import annotations

import argparse
import errno
import socket
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, TypeVar

if TYPE_CHECKING:
    from optuna.artifacts import FileSystemArtifactStore
    from optuna.storages import BaseStorage

__all__ = ["ArtifactDirs", "add_parser", "artifact_dirs", "main", "run_dashboard"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


T = TypeVar("T")


class ArtifactDirs:
    """Optuna's artifact store over several :class:`~optuna.artifacts.FileSystemArtifactStore` directories (one per
    search, as each study records its own): an artifact is read from (or removed in) whichever holds it; uploads
    from the dashboard go to the first."""

    def __init__(self, dirs: Sequence[Path]) -> None:
        from optuna.artifacts import FileSystemArtifactStore

        self.dirs = tuple(dirs)
        self._stores = [FileSystemArtifactStore(str(d)) for d in self.dirs]

    def _first(self, artifact_id: str, call: Callable[[FileSystemArtifactStore], T]) -> T:
        """``call`` on the first store that holds ``artifact_id``."""
        from optuna.artifacts.exceptions import ArtifactNotFound

        for store in self._stores:
            try:
                return call(store)
            except ArtifactNotFound:
                continue
        raise ArtifactNotFound(f"artifact {artifact_id} is in none of {', '.join(map(str, self.dirs))}")

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self._first(artifact_id, lambda store: store.open_reader(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self._stores[0].write(artifact_id, content_body)

    def remove(self, artifact_id: str) -> None:
        self._first(artifact_id, lambda store: store.remove(artifact_id))


def artifact_dirs(storage: str, rdb: BaseStorage) -> list[Path]:
    """The artifact directories of the studies in ``storage`` that exist here: those the studies recorded
    (:func:`search.storage.attach_plots`), else, for a SQLite file, an ``artifacts`` directory beside it."""
    from sqlalchemy.engine import make_url

    from search.storage import ARTIFACT_DIR_KEY

    recorded = [s.user_attrs.get(ARTIFACT_DIR_KEY) for s in rdb.get_all_studies()]
    dirs = [Path(d) for d in dict.fromkeys(d for d in recorded if isinstance(d, str))]
    url = make_url(storage)
    if url.get_backend_name() == "sqlite" and url.database:  # a search run before studies recorded theirs
        dirs.append(Path(url.database).resolve().parent / "artifacts")
    return list(dict.fromkeys(d for d in dirs if d.is_dir()))


def _check_listen(host: str, port: int) -> None:
    """Bind ``host:port`` as the dashboard's server will (wsgiref, address reuse on) and let it go again, so a
    busy port or a foreign address ends in one line before anything is printed."""
    from config.strict import ConfigError

    where = f"[{host}]" if ":" in host else host
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as e:
            option = f"--port {port}" if e.errno == errno.EADDRINUSE else f"--host {host}"
            raise ConfigError(f"{option}: cannot listen on {where}:{port}: {e.strerror or e}") from None


def run_dashboard(
    storage: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, artifact_dir: Path | str | None = None
) -> None:
    """Serve optuna-dashboard for ``storage`` on ``host:port`` until interrupted (Ctrl-C).

    ``storage`` is a SQLAlchemy URL (a SQLite file must exist). ``artifact_dir`` is the
    :class:`~optuna.artifacts.FileSystemArtifactStore` directory of the studies' artifacts (it must exist); by
    default, the directories of :func:`artifact_dirs`.
    """
    import optuna_dashboard

    from config.strict import ConfigError
    from search.storage import open_storage, redact

    rdb = open_storage(storage)
    if artifact_dir is not None:
        if not Path(artifact_dir).is_dir():
            raise FileNotFoundError(f"{artifact_dir}: no such artifact directory")
        dirs = [Path(artifact_dir)]
    else:
        dirs = artifact_dirs(storage, rdb)
    _check_listen(host, port)
    if host not in _LOOPBACK:
        print(
            f"ctr dashboard: warning: listening on {host}; the dashboard has no authentication and can modify studies",
            file=sys.stderr,
        )
    where = f"[{host}]" if ":" in host else host
    served = f"; artifacts from {', '.join(map(str, dirs))}" if dirs else "; no artifact directory"
    print(f"ctr dashboard: {redact(storage)} at http://{where}:{port}/dashboard{served}", file=sys.stderr, flush=True)
    try:
        optuna_dashboard.run_server(rdb, host=host, port=port, artifact_store=ArtifactDirs(dirs) if dirs else None)
    except OSError as e:  # the address was taken since it was checked
        raise ConfigError(f"--port {port}: cannot listen on {where}:{port}: {e.strerror or e}") from None


def _dashboard(args: argparse.Namespace) -> None:
    run_dashboard(args.storage, host=args.host, port=args.port, artifact_dir=args.artifact_dir)


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"port must be in 1..65535, got {port}")
    return port


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        required=True,
        metavar="URL",
        help="Optuna storage: sqlite:///RUN/search/study.db or postgresql+psycopg2://USER:PASS@HOST:PORT/DB",
    )
    p.add_argument("--host", default=DEFAULT_HOST, metavar="HOST", help=f"address to bind (default {DEFAULT_HOST})")
    p.add_argument("--port", type=_port, default=DEFAULT_PORT, metavar="PORT", help=f"default {DEFAULT_PORT}")
    p.add_argument(
        "--artifact-dir",
        metavar="DIR",
        help="artifact store directory of the studies' plots (default: the directories the studies recorded)",
    )
    p.set_defaults(func=_dashboard)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``ctr dashboard`` on the sub-parsers of the ``ctr`` command."""
    p = sub.add_parser("dashboard", help="watch search studies in optuna-dashboard (SQLite or PostgreSQL storage)")
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipelines.dashboard``: the same options as ``ctr dashboard``."""
    from config.strict import ConfigError

    parser = argparse.ArgumentParser(prog="ctr dashboard", description="optuna-dashboard on a search's study storage")
    _add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError) as e:
        print(f"ctr dashboard: error: {e}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
