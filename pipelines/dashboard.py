"""``ctr dashboard``: optuna-dashboard on the storage of a search's study (a SQLite file or PostgreSQL).

The server is optuna-dashboard's own (bottle on wsgiref, one thread), bound to ``127.0.0.1`` unless ``--host``
says otherwise. It has no authentication and can change studies (notes, deletions): keep it on the loopback
interface and reach it through an SSH tunnel (``ssh -L 8080:127.0.0.1:8080 HOST``) or ``kubectl port-forward``.
With ``--artifact-dir`` it serves the study's artifacts (the plots of :func:`search.storage.attach_plots`).

Usage::

    ctr dashboard --storage sqlite:///runs/x/search/study.db [--host 127.0.0.1] [--port 8080] [--artifact-dir DIR]
    python -m pipelines.dashboard --storage postgresql+psycopg2://optuna:secret@127.0.0.1:5432/optuna
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["add_parser", "main", "run_dashboard"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def run_dashboard(
    storage: str, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT, artifact_dir: Path | str | None = None
) -> None:
    """Serve optuna-dashboard for ``storage`` on ``host:port`` until interrupted (Ctrl-C).

    ``storage`` is a SQLAlchemy URL (a SQLite file must exist). ``artifact_dir`` is the
    :class:`~optuna.artifacts.FileSystemArtifactStore` directory of the studies' artifacts (it must exist).
    """
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    from features.strict import ConfigError
    from search.storage import open_storage, redact

    rdb = open_storage(storage)
    store = None
    if artifact_dir is not None:
        if not Path(artifact_dir).is_dir():
            raise FileNotFoundError(f"{artifact_dir}: no such artifact directory")
        store = FileSystemArtifactStore(str(artifact_dir))
    if host not in _LOOPBACK:
        print(
            f"ctr dashboard: warning: listening on {host}; the dashboard has no authentication and can modify studies",
            file=sys.stderr,
        )
    where = f"[{host}]" if ":" in host else host
    print(f"ctr dashboard: {redact(storage)} at http://{where}:{port}/dashboard", file=sys.stderr, flush=True)
    try:
        optuna_dashboard.run_server(rdb, host=host, port=port, artifact_store=store)
    except OSError as e:  # the address is taken or not local
        raise ConfigError(f"cannot listen on {where}:{port}: {e.strerror or e}") from None


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
    p.add_argument("--artifact-dir", metavar="DIR", help="artifact store directory of the studies' plots")
    p.set_defaults(func=_dashboard)


def add_parser(sub: argparse._SubParsersAction[Any]) -> None:
    """Register ``ctr dashboard`` on the sub-parsers of the ``ctr`` command."""
    p = sub.add_parser("dashboard", help="watch search studies in optuna-dashboard (SQLite or PostgreSQL storage)")
    _add_arguments(p)


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m pipelines.dashboard``: the same options as ``ctr dashboard``."""
    from features.strict import ConfigError

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
