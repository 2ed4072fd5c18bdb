"""A write that the disk refused (full, over quota, over the file size limit, read-only) as an ``OSError`` naming
the file, so that the ``ctr`` command reports it as one line: ``ctr train: error: <path>: File too large``.

Torch loses both the file name and, often, the errno: its checkpoint writers report a short write (the OS took
part of a buffer, then refused the rest) as ``RuntimeError: ... unexpected pos`` or ``file write failed``, and
``torch.distributed.checkpoint`` wraps whatever its writer raised in a ``CheckpointException``.
:func:`refused_writes` finds the cause again: an ``OSError`` with an errno, or a short write on a file that
reached ``RLIMIT_FSIZE`` (``EFBIG``) or on a file system with no free blocks (``ENOSPC``). Anything else passes
through unchanged: it may be a bug.

Example:
    >>> import errno, tempfile
    >>> with tempfile.TemporaryDirectory() as tmp:
    ...     try:
    ...         with refused_writes(Path(tmp) / "best.ckpt.partial"):
    ...             raise OSError(errno.ENOSPC, "No space left on device")
    ...     except OSError as e:
    ...         print(e.errno == errno.ENOSPC, e.filename.endswith("best.ckpt.partial"), e.strerror)
    True True No space left on device
"""

from __future__ import annotations

import errno
import os
import resource
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from torch.distributed.checkpoint.api import CheckpointException

__all__ = ["refused_writes"]

_SHORT_WRITE = ("unexpected pos", "file write failed")  # torch's serialisation writers on a short write


@contextmanager
def refused_writes(path: Path) -> Iterator[None]:
    """Re-raise a refused write under ``path`` (a file or a checkpoint directory) as ``OSError(errno, path)``."""
    try:
        yield
    except (CheckpointException, OSError, RuntimeError) as e:
        cause = _cause(e)
        code = cause.errno if isinstance(cause, OSError) else None
        if code is None and isinstance(cause, RuntimeError) and any(s in str(cause) for s in _SHORT_WRITE):
            code = _why_short(path)
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def _cause(e: BaseException) -> BaseException:
    """What a ``CheckpointException`` wraps (the first failing rank's exception), else ``e`` itself."""
    if isinstance(e, CheckpointException) and e.failures:
        return next(iter(e.failures.values()))[0]
    return e


def _why_short(path: Path) -> int | None:
    """The errno behind a short write under ``path``, where it can be told; else None."""
    limit, _ = resource.getrlimit(resource.RLIMIT_FSIZE)
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()] if path.is_dir() else []
    if limit != resource.RLIM_INFINITY and any(f.stat().st_size >= limit for f in files):
        return errno.EFBIG
    existing = path if path.exists() else path.parent
    if existing.exists() and os.statvfs(existing).f_bavail == 0:
        return errno.ENOSPC
    return None
