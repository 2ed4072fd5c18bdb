"""Output folders the platform owns: a marker, an advisory lock, and replacement by rename.

Every command writes only into a folder that it created or that carries its marker, ``.ctr-output.json``
(``{"made_by": "ctr train", ...}``). A folder holding anything else, or made by another command, is refused,
naming the first file the platform did not write; ``--overwrite`` never changes that. Two kinds of writers:

* :func:`owned_dir` (train, supernet, retrain, search, optembed, compress-bench): the command writes in place
  and can resume, so the folder is created (or adopted when empty) and kept.
* :func:`replaced_dir` (prepare, apply, export): the output is built in a temporary sibling
  ``.<name>.ctr-tmp-*`` and renamed into place at the end, so a failed or killed run leaves the old output
  as it was; with ``overwrite`` a finished output of the same command is replaced, never anything else.
  Inputs may not lie inside the output folder.

Both take an advisory ``fcntl.flock`` on the output folder for as long as they write, so a second writer is
refused at once, in one line naming the holder (``.ctr-lock`` inside the folder says who). The kernel drops
the lock when its holder dies, so a killed run never blocks the next one, and the next run of a replacing
command removes the temporary siblings a killed one left (they carry the marker, and the lock proves nobody
is writing them).

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> with owned_dir(root / "run", "ctr train") as run:
    ...     _ = (run / "metrics.json").write_text("{}")
    >>> (root / "notes").mkdir(); _ = (root / "notes" / "todo.txt").write_text("mine")
    >>> with owned_dir(root / "notes", "ctr train"):
    ...     pass
    Traceback (most recent call last):
    ...
    features.outputs.OutputError: ... holds todo.txt, which ctr did not write; choose a new or empty folder
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from features.spec import InputError

__all__ = ["LOCK", "MARKER", "OutputError", "is_secondary_rank", "made_by", "owned_dir", "remove_owned", "replaced_dir"]

MARKER = ".ctr-output.json"
LOCK = ".ctr-lock"
_OURS = {MARKER, LOCK}
_TMP = ".ctr-tmp-"
_OLD = ".ctr-old-"

# Folders this process holds (resolved path -> [fd, depth]): a nested claim of the same folder is re-entrant.
_held: dict[Path, list[int]] = {}


class OutputError(InputError):
    """An output folder that is not the platform's to write, or is being written by another process."""


def made_by(folder: Path) -> str | None:
    """The command recorded in ``folder``'s marker, or None when it has none (or it is unreadable)."""
    try:
        value = json.loads((folder / MARKER).read_text())["made_by"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(value) if isinstance(value, str) else None


def is_secondary_rank() -> bool:
    """A rank > 0 started by Lightning's launcher re-runs the command: rank 0 already holds the folder (and
    reports the results)."""
    return any(int(os.environ.get(k, "0") or 0) > 0 for k in ("LOCAL_RANK", "RANK", "NODE_RANK"))


def _check_ours(folder: Path, command: str, *, what: str) -> None:
    """Refuse ``folder`` unless it is empty (of anything but our own files) or marked by ``command``."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; choose a folder for --out")
    if not folder.exists():
        return
    foreign = sorted(p.name for p in folder.iterdir() if p.name not in _OURS)
    owner = made_by(folder)
    if owner is None and foreign:
        raise OutputError(f"{folder}: holds {foreign[0]}, which ctr did not write; choose a new or empty folder")
    if owner is not None and owner != command:
        raise OutputError(f"{folder}: made by `{owner}`, not `{command}`; {what} only into its own folders")


def _write_marker(folder: Path, command: str) -> None:
    if made_by(folder) == command:
        return
    record = {"made_by": command, "format": 1, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    (folder / MARKER).write_text(json.dumps(record) + "\n")


def _holder(folder: Path) -> str:
    try:
        h = json.loads((folder / LOCK).read_text())
        return f"pid {h['pid']} on {h['host']} (`{h['command']}`, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


def _oserror(folder: Path, e: OSError) -> OutputError:
    return OutputError(f"{folder}: cannot write here: {e.strerror or e}")


@contextlib.contextmanager
def _locked(folder: Path, command: str) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``folder`` (re-entrant within this process); refuse a held one."""
    key = folder.resolve()
    if key in _held:
        _held[key][1] += 1
        try:
            yield
        finally:
            _held[key][1] -= 1
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"{folder}: in use by {_holder(folder)}; wait for it or choose another folder") from None
        _held[key] = [fd, 1]
        try:
            holder = {
                "pid": os.getpid(),
                "host": socket.gethostname(),
                "command": " ".join([command, *sys.argv[1:]]) if sys.argv[1:] else command,
                "since": time.strftime("%Y-%m-%d %H:%M:%S"),
            }
            (folder / LOCK).write_text(json.dumps(holder) + "\n")
            yield
        finally:
            del _held[key]
            with contextlib.suppress(OSError):
                (folder / LOCK).unlink()
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def _create(folder: Path) -> bool:
    """Make ``folder`` (and its parents); True when this call created it."""
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{folder}: is a file, not a folder; choose a folder for --out")
    try:
        folder.mkdir(parents=True)
        return True
    except FileExistsError:
        return False
    except OSError as e:
        raise _oserror(folder, e) from None


@contextlib.contextmanager
def owned_dir(out: Path, command: str) -> Iterator[Path]:
    """Write in place into ``out``: created, or adopted when empty, or resumed when ``command`` made it.

    The folder keeps its marker after the run; the lock is held until the block ends. Ranks > 0 of a
    multi-process run (their rank 0 holds the folder) get ``out`` as it is.
    """
    out = Path(out)
    if is_secondary_rank():
        yield out
        return
    _check_ours(out, command, what="it writes")
    created = _create(out)
    with _locked(out, command):
        try:
            _check_ours(out, command, what="it writes")  # again, now that nobody else can change it
            try:
                _write_marker(out, command)
            except OSError as e:
                raise _oserror(out, e) from None
            yield out
        except BaseException:
            if created:
                _remove_if_unused(out)
            raise


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve().is_relative_to(folder.resolve())


def _remove_stale(out: Path) -> None:
    """Temporary siblings of ``out`` left by killed runs (ours by their marker; we hold ``out``'s lock)."""
    for sibling in out.parent.glob(f".{out.name}.ctr-*"):
        if (_TMP in sibling.name or _OLD in sibling.name) and sibling.is_dir() and made_by(sibling) is not None:
            shutil.rmtree(sibling, ignore_errors=True)


@contextlib.contextmanager
def replaced_dir(out: Path, command: str, *, overwrite: bool = False, inputs: Iterable[Path] = ()) -> Iterator[Path]:
    """Build the output in a temporary sibling of ``out``; rename it into place when the block succeeds.

    ``out`` may be missing or empty; a finished output of ``command`` is replaced only with ``overwrite``.
    Nothing else is ever removed, and ``inputs`` may not lie inside ``out``.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out}: is a file, not a folder; choose a folder for --out")
    for path in inputs:
        if _inside(Path(path), out):
            raise OutputError(f"{out}: holds the input {path}; write the output somewhere else")
    _check_ours(out, command, what="it writes")
    created = _create(out)
    with _locked(out, command):
        try:
            _check_ours(out, command, what="it writes")
            if any(p.name not in _OURS for p in out.iterdir()) and not overwrite:
                raise OutputError(f"{out}: holds a finished output of `{command}` (use --overwrite to replace it)")
            _remove_stale(out)
            try:
                _write_marker(out, command)  # so a concurrent writer sees whose it is while this one works
                work = Path(tempfile.mkdtemp(prefix=f".{out.name}{_TMP}", dir=out.parent))
                work.chmod(out.stat().st_mode & 0o7777)  # mkdtemp makes it private; keep the folder's own mode
            except OSError as e:
                raise _oserror(out, e) from None
            try:
                _write_marker(work, command)
                yield work
                old = out.with_name(f".{out.name}{_OLD}{os.getpid()}")
                out.rename(old)
                work.rename(out)
                shutil.rmtree(old, ignore_errors=True)
            except BaseException:
                shutil.rmtree(work, ignore_errors=True)
                raise
        except BaseException:
            if created:
                _remove_if_unused(out)
            raise


def _remove_if_unused(folder: Path) -> None:
    """Remove a folder this run created (holding its lock) when nothing but the platform's own files is in it."""
    if folder.is_dir() and not any(p.name not in _OURS for p in folder.iterdir()):
        shutil.rmtree(folder, ignore_errors=True)


def remove_owned(out: Path, command: str) -> None:
    """Delete ``out`` only if ``command`` made it (its marker); anything else is refused, never removed."""
    out = Path(out)
    if not out.exists():
        return
    owner = made_by(out)
    if owner != command:
        _check_ours(out, command, what="it removes")
        if any(p.name not in _OURS for p in out.iterdir()):
            raise OutputError(f"{out}: not made by `{command}`; not removing it")
    try:
        shutil.rmtree(out)
    except OSError as e:
        if e.errno != errno.ENOENT:
            raise _oserror(out, e) from None
