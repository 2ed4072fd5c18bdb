"""Peak memory of ``ctr prepare`` on a large synthetic Criteo file, against a 10x smaller one.

Generates a ``--rows`` (default 10M, about 2.5 GB) Criteo TSV with ``ctr synth`` under ``--workdir``
(or uses ``--data FILE``), takes its first ``--small-rows`` lines (default 1M; ``ctr synth`` files are
prefix-stable, so this is the file ``ctr synth --rows 1000000`` would write) as the comparison, and runs
``ctr prepare --dataset criteo --quiet`` on each as a subprocess. For each run it reports the input size,
wall seconds, rows/s and the child's peak RSS (``ru_maxrss`` from ``os.wait4``, what ``/usr/bin/time -v``
prints as "Maximum resident set size"). A sampler also reads ``VmRSS`` from ``/proc/<pid>/status`` every
0.1 s and splits the peak by phase: the fit pass ends when ``rejects.parquet`` appears in prepare's
temporary output directory, then the encode pass runs. Files created here are deleted unless ``--keep``.

Example:
    >>> # python benchmarks/prepare_memory.py --rows 10000000 --workdir scratch/mem   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import polars as pl

CTR = Path(sys.executable).with_name("ctr")


@dataclass
class Run:
    label: str
    rows: int
    input_bytes: int
    seconds: float
    peak_rss_mb: float
    fit_rss_mb: float
    encode_rss_mb: float
    fit_seconds: float


def count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def head_lines(src: Path, dst: Path, n: int) -> int:
    """Copy the first ``n`` lines of ``src`` to ``dst``; returns the number copied."""
    copied = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        for line in fin:
            if copied >= n:
                break
            fout.write(line)
            copied += 1
    return copied


class RssSampler(threading.Thread):
    """Polls a process's VmRSS; peak before and after ``marker_glob`` first matches (the fit/encode boundary)."""

    def __init__(self, pid: int, marker_dir: Path, marker_glob: str, interval: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.pid, self.marker_dir, self.marker_glob, self.interval = pid, marker_dir, marker_glob, interval
        self.fit_kb = self.encode_kb = 0
        self.fit_end: float | None = None
        self.started = time.perf_counter()
        self.stop = threading.Event()

    def run(self) -> None:
        status = Path(f"/proc/{self.pid}/status")
        while not self.stop.is_set():
            try:
                text = status.read_text()
            except OSError:
                break
            kb = next((int(ln.split()[1]) for ln in text.splitlines() if ln.startswith("VmRSS:")), 0)
            if self.fit_end is None and any(self.marker_dir.glob(self.marker_glob)):
                self.fit_end = time.perf_counter() - self.started
            if self.fit_end is None:
                self.fit_kb = max(self.fit_kb, kb)
            else:
                self.encode_kb = max(self.encode_kb, kb)
            self.stop.wait(self.interval)


def run_prepare(label: str, data: Path, rows: int, workdir: Path) -> Run:
    out = workdir / f"prepared-{label}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(CTR), "prepare", "--dataset", "criteo", "--input", str(data), "--out", str(out), "--quiet"]
    print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    sampler = RssSampler(proc.pid, workdir, f".{out.name}.*/rejects.parquet")
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    sampler.stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"ctr prepare failed with exit code {proc.returncode}")
    report = json.loads((out / "report.json").read_text())
    if report["rows_read"] != rows:
        raise SystemExit(f"{data}: prepare read {report['rows_read']} rows, expected {rows}")
    shutil.rmtree(out)
    result = Run(
        label=label,
        rows=rows,
        input_bytes=data.stat().st_size,
        seconds=seconds,
        peak_rss_mb=usage.ru_maxrss / 1024,  # kilobytes on Linux
        fit_rss_mb=sampler.fit_kb / 1024,
        encode_rss_mb=sampler.encode_kb / 1024,
        fit_seconds=sampler.fit_end or float("nan"),
    )
    print(f"  {label}: {seconds:.1f} s, peak RSS {result.peak_rss_mb:,.0f} MB", file=sys.stderr, flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=10_000_000, help="rows of the large synthetic file")
    parser.add_argument("--small-rows", type=int, default=1_000_000, help="rows of the comparison file")
    parser.add_argument("--data", type=Path, help="use this Criteo TSV as the large file instead of generating one")
    parser.add_argument("--workdir", type=Path, help="where temporary files go (default: a new dir under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the generated files")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="ctr-prepare-mem-", dir=args.workdir or "/tmp"))
    load_start = " ".join(f"{x:.2f}" for x in os.getloadavg())
    try:
        if args.data is not None:
            big = args.data
            synth_note = f"{big} (given)"
        else:
            big = workdir / f"criteo-{args.rows}.tsv"
            cmd = [str(CTR), "synth", "--rows", str(args.rows), "--out", str(big), "--seed", str(args.seed), "--quiet"]
            print(f"  $ {' '.join(cmd)}", file=sys.stderr, flush=True)
            t0 = time.perf_counter()
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            synth_note = f"`ctr synth --rows {args.rows} --seed {args.seed}` ({time.perf_counter() - t0:.0f} s)"
        big_rows = count_lines(big)
        small = workdir / f"criteo-head-{args.small_rows}.tsv"
        small_rows = head_lines(big, small, args.small_rows)

        runs = [
            run_prepare("small", small, small_rows, workdir),
            run_prepare("large", big, big_rows, workdir),
        ]
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    load_end = " ".join(f"{x:.2f}" for x in os.getloadavg())

    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    cpu = next((ln.split(":", 1)[1].strip() for ln in cpuinfo.splitlines() if "model name" in ln), "?")
    mem_kb = next(
        (int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal:")), 0
    )
    print("## `ctr prepare` peak memory (benchmarks/prepare_memory.py)\n")
    print(f"- date: {dt.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(
        f"- machine: {platform.machine()}, {cpu}, nproc={len(os.sched_getaffinity(0))}, "
        f"RAM {mem_kb / 2**20:.1f} GiB; load average {load_start} at start, {load_end} at end "
        "(other processes may share the CPU; timings are wall clock)"
    )
    print(f"- python {sys.version.split()[0]}, polars {pl.__version__}")
    print(f"- large file: {synth_note}; small file: its first {small_rows:,} lines")
    print(
        "- peak RSS: the child's ru_maxrss (os.wait4); fit / encode: the largest VmRSS sampled every 0.1 s "
        "before / after rejects.parquet appears (end of the fit pass)\n"
    )
    print("| input | rows | input bytes | wall s | fit s | rows/s | peak RSS MB | fit peak MB | encode peak MB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        print(
            f"| {r.label} | {r.rows:,} | {r.input_bytes:,} | {r.seconds:.1f} | {r.fit_seconds:.1f} | "
            f"{r.rows / r.seconds:,.0f} | {r.peak_rss_mb:,.0f} | {r.fit_rss_mb:,.0f} | {r.encode_rss_mb:,.0f} |"
        )
    a, b = runs
    print(
        f"\nlarge vs small: rows x{b.rows / a.rows:.1f}, input bytes x{b.input_bytes / a.input_bytes:.1f}, "
        f"wall x{b.seconds / a.seconds:.1f}, peak RSS x{b.peak_rss_mb / a.peak_rss_mb:.2f}"
    )


if __name__ == "__main__":
    main()
