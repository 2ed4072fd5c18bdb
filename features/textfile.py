"""The bytes of raw input files: what Polars' line reader cannot take, found before it reads them.

- a compressed file (gzip, zstd, xz, bzip2, zip, lz4) or UTF-16 text is refused in one line naming the file;
- the same file given twice (same path, link or inode) is refused in one line;
- a UTF-8 byte-order mark is noted, so the first line can drop it;
- lines that are not valid UTF-8 are found (one streamed pass, about 1 GB/s: an ASCII chunk is checked by
  ``bytes.isascii`` alone). Polars' line reader fails on the whole file for one such byte, so a file that has
  them is read from a copy in ``scratch`` where each bad line shows its bytes as ``\\xNN``; those lines are
  rejected by number (``encoding``), the others are read as they are.

:func:`line_blocks` and :func:`line_windows` read a file in blocks of whole lines (of about a size, or of a
number of lines), each with the number of its first line: the UTF-8 check above, and ``ctr predict``'s windows.

Example:
    >>> import tempfile
    >>> d = Path(tempfile.mkdtemp())
    >>> _ = (d / "a.tsv").write_bytes(b"\\xef\\xbb\\xbfok\\nb\\xffad\\nok\\n")
    >>> text = read_text(d / "a.tsv", d / "scratch", 0)
    >>> text.bom, text.bad_lines, text.scan.read_bytes().splitlines()[1]
    (True, (2,), b'b\\\\xffad')
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from features.spec import InputError

__all__ = ["BOM", "TextFile", "check_distinct", "check_not_packed", "line_blocks", "line_windows", "read_text"]

BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 24
_NEWLINE = ord("\n")
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"PK\x03\x04", "zip"),
    (b"\x04\x22\x4d\x18", "lz4"),
)
_UTF16 = (b"\xff\xfe", b"\xfe\xff")


@dataclass(frozen=True)
class TextFile:
    """An input file as the line reader should see it: ``scan`` is ``path`` or its repaired copy."""

    path: Path
    scan: Path
    bom: bool
    bad_lines: tuple[int, ...]


def check_distinct(paths: list[Path]) -> None:
    """Refuse a file given twice: its rows would be read, split and counted twice."""
    seen: dict[tuple[int, int], Path] = {}
    for path in paths:
        st = path.stat()
        first = seen.setdefault((st.st_dev, st.st_ino), path)
        if first is not path or paths.count(path) > 1:  # the same Path object twice is the same file too
            raise InputError(f"{path}: given twice (same file as {first})")


def check_not_packed(path: Path) -> None:
    """Refuse compressed or UTF-16 files by name, before they reach a reader as garbage."""
    with path.open("rb") as f:
        head = f.read(10)
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            raise InputError(f"{path}: compressed ({kind}); decompress it first")
    if head.startswith(b"BZh") and head[4:10] == b"1AY&SY":
        raise InputError(f"{path}: compressed (bzip2); decompress it first")
    if head.startswith(_UTF16):
        raise InputError(f"{path}: UTF-16 text; convert it to UTF-8 first")


def read_text(path: Path, scratch: Path, index: int) -> TextFile:
    """``path`` checked for a BOM and invalid UTF-8 lines; repaired into ``scratch`` (as ``<index>-<name>``)
    when it has any."""
    with path.open("rb") as f:
        bom = f.read(len(BOM)) == BOM
    bad = _invalid_lines(path)
    if not bad:
        return TextFile(path, path, bom, ())
    scratch.mkdir(parents=True, exist_ok=True)
    copy = scratch / f"{index}-{path.name}"
    wanted = set(bad)
    with path.open("rb") as src, copy.open("wb") as dst:
        for number, line in enumerate(src, start=1):
            dst.write(line.decode("utf-8", "backslashreplace").encode() if number in wanted else line)
    return TextFile(path, copy, bom, tuple(bad))


def line_blocks(path: Path, size: int = _CHUNK) -> Iterator[tuple[int, bytes]]:
    """``path`` in blocks of whole lines (split at ``\\n``, as Polars' line reader splits) of about ``size``
    bytes (a longer line is one block), each with the 1-based number of its first line."""
    line = 1  # the number of the first line in ``block``
    tail = b""
    with path.open("rb") as f:
        while chunk := f.read(size):
            block = tail + chunk if tail else chunk
            cut = block.rfind(b"\n") + 1
            block, tail = block[:cut], block[cut:]
            if block:
                yield line, block
                line += block.count(b"\n")
    if tail:
        yield line, tail


def line_windows(path: Path, lines: int, size: int = _CHUNK) -> Iterator[tuple[int, bytes]]:
    """``path`` in windows of ``lines`` whole lines (the last may hold fewer), each with the 1-based number of
    its first line: what a reader holds at once is bounded by the window, not by the file."""
    if lines < 1:
        raise ValueError(f"lines: must be >= 1, got {lines}")
    first = 1  # the number of the first line in ``rest``
    rest = b""
    for _, block in line_blocks(path, size):
        data = rest + block if rest else block
        ends = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == _NEWLINE)
        start = 0
        for k in range(lines - 1, len(ends), lines):
            end = int(ends[k]) + 1
            yield first, data[start:end]
            first, start = first + lines, end
        rest = data[start:]
    if rest:
        yield first, rest


def _invalid_lines(path: Path) -> list[int]:
    """1-based numbers of the lines (split at ``\\n``, as Polars' line reader splits) that are not UTF-8."""
    return [n for first, block in line_blocks(path) for n in _invalid_in(block, first)]


def _invalid_in(block: bytes, first: int) -> list[int]:
    if block.isascii():
        return []
    try:
        block.decode()
        return []
    except UnicodeDecodeError:
        return [first + i for i, line in enumerate(block.split(b"\n")) if not _is_utf8(line)]


def _is_utf8(line: bytes) -> bool:
    try:
        line.decode()
    except UnicodeDecodeError:
        return False
    return True
