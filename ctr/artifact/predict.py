"""``ctr predict``: score raw files with an exported model, streamed in chunks, every row accounted for.

The artifact's feature map encodes the raw files in the data set's own format (:mod:`features.stream`: one
streaming pass, unseen values to the OOV id); each chunk is scored by the artifact's model
(:meth:`~ctr.artifact.export.ExportedModel.predict`, under ``torch.inference_mode``, in forward passes of
``FORWARD_BATCH`` rows), ``threads`` chunks at once, each on one core, while the next chunks are parsed and
encoded in a background thread (Polars and PyTorch both release the GIL); the scores are written in input order.
Each input is read and encoded in windows of a few thousand lines (rows of a parquet file;
:func:`features.sources.scan_windows`, ``features.stream.WINDOW_LINES``), handed to the scoring side in chunks of at
most ``CHUNK_ROWS`` rows, which holds at most ``threads`` + 3 chunks: peak memory does not grow with the number of rows
(docs/benchmarks.md) but for the AUC over the labelled rows (8 bytes a row kept, more for a moment at the end).

Output: ``SCORES`` (parquet): ``file``, ``line`` (1-based line in that file; row number for parquet),
``probability`` and, when the input has labels, ``label``. Rejected rows go to ``SCORES`` with the suffix
``.rejects.parquet`` (``file``, ``line``, ``reason``, ``raw``), and ``rows_read == rows_scored +
rows_rejected`` is checked on the written files. Both are written to temporary siblings and renamed into
place at the end; an existing file is replaced only with ``overwrite`` and only if ``ctr predict`` wrote it
(its parquet metadata says so).

Example:
    >>> summary = predict_files(Path("artifact"), [Path("day_1.tsv")], Path("scores.parquet"))  # doctest: +SKIP
    >>> summary["rows_read"] == summary["rows_scored"] + summary["rows_rejected"]  # doctest: +SKIP
    True
"""

from __future__ import annotations

import os
import queue
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm import tqdm

from config.strict import ConfigError
from ctr.artifact.export import FORWARD_BATCH, ExportedModel, load_exported
from ctr.data.columnar import ColumnarSplit, CSRColumn
from ctr.training.metrics import auc, logloss
from ctr.training.threads import torch_threads
from features.schema import FeatureMap
from features.spec import InputError
from features.stream import EncodedChunk, encoded_chunks

__all__ = ["predict_files", "rejects_path", "split_of_frame"]

CHUNK_ROWS = 8192  # rows per chunk handed from the encoding thread (scored in forward passes of FORWARD_BATCH rows)
_MARKER_KEY = b"ctr-output"
_MARKER = b"ctr predict"
SCORES_SCHEMA = pa.schema(
    [("file", pa.string()), ("line", pa.uint64()), ("probability", pa.float32()), ("label", pa.float32())]
)
REJECTS_SCHEMA = pa.schema(
    [("file", pa.string()), ("line", pa.uint64()), ("reason", pa.string()), ("raw", pa.string())]
)


def split_of_frame(fm: FeatureMap, frame: pl.DataFrame) -> ColumnarSplit:
    """Encoded rows (the columns ``ctr apply`` writes) as a :class:`ColumnarSplit`, dense values standardised
    with the feature map's training mean and std as :func:`ctr.data.shards.load_split` does; a null label is NaN."""
    n = frame.height
    labels = frame["label"].cast(pl.Float32).fill_null(float("nan")).to_numpy().astype(np.float32, copy=False)
    dense = np.empty((n, len(fm.dense)), dtype=np.float32)
    for j, f in enumerate(fm.dense):
        dense[:, j] = (frame[f.name].to_numpy() - np.float32(f.mean)) / np.float32(f.std if f.std > 0 else 1.0)
    single = [f.name for f in fm.categorical if not f.multi_valued]
    sparse = np.empty((n, len(single)), dtype=np.int32)
    for j, name in enumerate(single):
        sparse[:, j] = frame[name].to_numpy()
    multi = {}
    for c in fm.categorical:
        if c.multi_valued:
            column = frame[c.name]
            offsets = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(column.list.len().to_numpy(), out=offsets[1:])
            values = column.explode(empty_as_null=False).drop_nulls().to_numpy().astype(np.int32, copy=False)
            multi[c.name] = CSRColumn(offsets, values)
    return ColumnarSplit(fm, dense=dense, labels=labels, sparse=sparse, multi=multi)


def rejects_path(out: Path) -> Path:
    """``scores.parquet`` -> ``scores.rejects.parquet``."""
    return out.with_name(f"{out.stem if out.suffix == '.parquet' else out.name}.rejects.parquet")


def _check_target(path: Path, overwrite: bool) -> None:
    if not path.exists():
        return
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; --out names the scores file")
    try:
        ours = (pq.read_schema(path).metadata or {}).get(_MARKER_KEY) == _MARKER
    except (pa.ArrowException, OSError):
        ours = False
    if not ours:
        raise ConfigError(f"{path}: exists and ctr predict did not write it; choose another --out")
    if not overwrite:
        raise ConfigError(f"{path}: exists (written by ctr predict); use --overwrite to replace it")


def _background(chunks: Iterator[EncodedChunk], depth: int = 2) -> Iterator[EncodedChunk]:
    """``chunks`` produced by a thread, at most ``depth`` ahead; its exception is raised here."""
    items: queue.Queue[EncodedChunk | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for chunk in chunks:
                while not stop.is_set():
                    try:
                        items.put(chunk, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            items.put(None)
        except BaseException as e:  # handed to the consumer, which raises it
            items.put(e)

    thread = threading.Thread(target=produce, name="ctr-predict-encode", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=5)


def predict_files(
    artifact: Path,
    inputs: Sequence[Path],
    out: Path,
    *,
    batch_size: int = 65536,
    progress: bool = True,
    overwrite: bool = False,
    bf16: bool = False,
    model: ExportedModel | None = None,
    threads: int | None = None,
) -> dict[str, Any]:
    """Score ``inputs`` with the artifact in ``artifact`` into ``out`` (and its rejects file); returns the summary.

    ``batch_size``: rows per chunk (at most ``CHUNK_ROWS``) and per forward pass (at most ``FORWARD_BATCH``); ``out``
    is written in row groups of about ``batch_size`` rows.

    ``threads``: scoring threads (``None``: PyTorch's thread count, ``OMP_NUM_THREADS`` if set, else one per core).
    Each scores whole chunks with PyTorch on one core, and the chunks are written in input order: several
    single-threaded forward passes at once keep the cores busy where one pass split over OpenMP threads spins at
    every layer's barrier (docs/benchmarks.md). On a machine shared with other busy processes, 1 is the setting.

    ``bf16``: run the dense layers under bfloat16 autocast (faster on CPUs with AVX-512 BF16 or AMX); the scores
    then differ from the float32 ones (``load_exported(...).predict``) by up to about 1e-2."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size: must be >= 1, got {batch_size}")
    if threads is not None and threads < 1:
        raise ConfigError(f"--threads: must be >= 1, got {threads}")
    out = Path(out)
    rejects = rejects_path(out)
    for target in (out, rejects):
        _check_target(target, overwrite)
    for path in inputs:
        if out.exists() and path.exists() and path.resolve() == out.resolve():
            raise InputError(f"{path}: is the --out file")
    exported = model if model is not None else load_exported(artifact)
    out.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    scorer = _Scorer(exported, min(batch_size, FORWARD_BATCH), bf16)
    workers = threads if threads is not None else torch.get_num_threads()
    try:
        with (
            torch_threads(1),  # each scoring thread runs its forward passes on one core (restored after)
            ThreadPoolExecutor(workers, "ctr-predict-score", initializer=torch.set_num_threads, initargs=(1,)) as pool,
        ):
            summary = _score(scorer, pool, workers, artifact, inputs, scratch, out, rejects, batch_size, progress)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.perf_counter() - started
    rate = round(summary["rows_read"] / seconds, 1)
    return {**summary, "bf16": bf16, "seconds": round(seconds, 3), "rows_per_sec": rate}


class _Scorer:
    """One chunk's probabilities, computed on a scoring thread (autocast is per thread, so it is entered here)."""

    def __init__(self, exported: ExportedModel, forward_batch: int, bf16: bool) -> None:
        self.exported, self.forward_batch, self.bf16 = exported, forward_batch, bf16

    def __call__(self, chunk: EncodedChunk) -> tuple[EncodedChunk, npt.NDArray[np.float32]]:
        split = split_of_frame(self.exported.feature_map, chunk.rows)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            return chunk, self.exported.predict(split, batch_size=self.forward_batch)


def _in_order(
    scorer: _Scorer, pool: ThreadPoolExecutor, workers: int, chunks: Iterator[EncodedChunk]
) -> Iterator[tuple[EncodedChunk, npt.NDArray[np.float32]]]:
    """``scorer(chunk)`` for every chunk, ``workers`` chunks scored at once, yielded in input order."""
    pending: deque[Future[tuple[EncodedChunk, npt.NDArray[np.float32]]]] = deque()
    try:
        for chunk in chunks:
            pending.append(pool.submit(scorer, chunk))
            if len(pending) > workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for future in pending:
            future.cancel()


def _score(
    scorer: _Scorer,
    pool: ThreadPoolExecutor,
    workers: int,
    artifact: Path,
    inputs: Sequence[Path],
    scratch: Path,
    out: Path,
    rejects: Path,
    batch_size: int,
    progress: bool,
) -> dict[str, Any]:
    metadata = {_MARKER_KEY: _MARKER, b"artifact": str(artifact).encode()}
    tmp_out, tmp_rejects = scratch / "scores.parquet", scratch / "rejects.parquet"
    counts = {"rows_read": 0, "rows_scored": 0, "rows_rejected": 0}
    probs: list[npt.NDArray[np.float32]] = []
    labels: list[npt.NDArray[np.float32]] = []
    # Chunks of at most CHUNK_ROWS rows cross the thread: larger ones let the two threads' memory pile up
    # (docs/benchmarks.md); the scores are written in row groups of ``batch_size`` rows.
    chunks = encoded_chunks(artifact, inputs, scratch / "repaired", min(batch_size, CHUNK_ROWS))
    held: list[pa.Table] = []  # scores not yet written
    with (
        pq.ParquetWriter(tmp_out, SCORES_SCHEMA.with_metadata(metadata), compression="zstd") as scores,
        pq.ParquetWriter(tmp_rejects, REJECTS_SCHEMA.with_metadata(metadata), compression="zstd") as bad,
        tqdm(desc="score", unit=" rows", unit_scale=True, disable=not progress, mininterval=0.5, delay=1.0) as bar,
    ):
        for chunk, p in _in_order(scorer, pool, workers, _background(chunks)):
            rows = chunk.rows
            y = rows["label"].cast(pl.Float32).to_arrow()
            table = pa.table(
                [rows["__file"].to_arrow(), rows["__line"].to_arrow(), pa.array(p, pa.float32()), y],
                schema=SCORES_SCHEMA,
            )
            held.append(table)
            if sum(t.num_rows for t in held) >= batch_size:
                scores.write_table(pa.concat_tables(held))
                held = []
            if chunk.rejects.height:
                bad.write_table(chunk.rejects.to_arrow().cast(REJECTS_SCHEMA))
            known = rows["label"].is_not_null().to_numpy()
            if known.any():
                probs.append(p[known])
                labels.append(rows["label"].to_numpy()[known].astype(np.float32))
            counts["rows_scored"] += rows.height
            counts["rows_rejected"] += chunk.rejects.height
            counts["rows_read"] += rows.height + chunk.rejects.height
            bar.update(rows.height + chunk.rejects.height)
        if held:
            scores.write_table(pa.concat_tables(held))
    written = pq.ParquetFile(tmp_out).metadata.num_rows, pq.ParquetFile(tmp_rejects).metadata.num_rows
    if written != (counts["rows_scored"], counts["rows_rejected"]) or counts["rows_read"] != sum(written):
        raise RuntimeError(f"row accounting failed: {counts}, written {written}; output discarded")
    os.replace(tmp_rejects, rejects)
    os.replace(tmp_out, out)
    summary: dict[str, Any] = {**counts, "out": str(out), "rejects": str(rejects)}
    if probs:
        p_all, y_all = np.concatenate(probs), np.concatenate(labels)
        summary |= {"labelled_rows": int(y_all.shape[0]), "auc": auc(p_all, y_all), "logloss": logloss(p_all, y_all)}
    return summary
