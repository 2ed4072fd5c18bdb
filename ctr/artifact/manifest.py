"""The file manifest of an artifact directory: every file's SHA-256, checked before any file is read.

A manifest maps each file's path relative to the directory (``/``-separated, ``vocab/C1.parquet``) to the
SHA-256 of its bytes. :func:`verify` refuses a missing file, a file the manifest does not list, and a file whose
bytes changed, naming the file; the manifest itself (``exclude``) is not listed in itself.

Example:
    >>> import tempfile
    >>> root = Path(tempfile.mkdtemp())
    >>> _ = (root / "a.txt").write_text("a")
    >>> files = manifest(root, exclude="model.json")
    >>> files
    {'a.txt': 'ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb'}
    >>> _ = (root / "a.txt").write_text("b")
    >>> verify(root, files, exclude="model.json")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    config.strict.ConfigError: .../a.txt: sha256 mismatch (model.json lists ca978112ca1b, the file has 3e23e8160039)
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

from config.strict import ConfigError
from features.outputs import LOCK, MARKER

__all__ = ["manifest", "sha256", "verify"]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(root: Path, exclude: str) -> list[str]:
    """Every file under ``root`` but ``exclude`` and the output folder's marker and lock (features.outputs)."""
    skip = {root / exclude, root / MARKER, root / LOCK}
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file() and p not in skip)


def manifest(root: Path, exclude: str) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` except ``root/exclude``, sorted by path."""
    return {name: sha256(root / name) for name in _files(root, exclude)}


def verify(root: Path, files: Mapping[str, str], exclude: str) -> None:
    """Refuse the first file (by path) that is missing, not listed in ``exclude``, or whose SHA-256 differs."""
    present = set(_files(root, exclude))
    for name in sorted(present | set(files)):
        if name not in present:
            raise ConfigError(f"{root / name}: missing (listed in {exclude})")
        if name not in files:
            raise ConfigError(f"{root / name}: not part of the artifact (not listed in {exclude})")
        got = sha256(root / name)
        if got != files[name]:
            raise ConfigError(
                f"{root / name}: sha256 mismatch ({exclude} lists {files[name][:12]}, the file has {got[:12]})"
            )
