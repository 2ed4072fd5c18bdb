"""``ctr serve`` under load: a closed-loop load generator on 127.0.0.1, bounded in requests and in time.

Setup (not timed): planted Criteo-format rows, prepared; a DeepFM with the data-aware defaults trained a few
steps, exported; ``ctr serve``'s application started in this process (:func:`pipelines.serve.serving`, a local Ray,
the HTTP proxy on 127.0.0.1). The expected score of every record comes from ``ctr predict`` on the same raw rows.

Phases, each a closed loop (every client sends its next request when the last one is answered), stopped after
``--requests`` requests or ``--seconds`` seconds, whichever comes first:

1. latency at low load: one client, 1 record a request, then 256 records a request (p50, p99);
2. saturation: ``--clients`` clients of 1-record requests (requests/s and p50/p99), where dynamic batching
   (``serve.batch``) groups concurrent requests into one forward pass;
3. robustness: ``--malformed`` malformed requests (missing field, wrong type, unknown column, unparseable
   number, bad label, not a list, not JSON) mixed with good ones (1 in 4) by the same clients; every malformed one
   must get a 400 and every good one a 200 with its records' expected scores (1e-6).

The baseline, in the same command: the same requests scored in this process without HTTP or Ray (validate,
encode, predict: what each replica does per request, unbatched); the ratios are served latency over it.

Example:
    >>> # python benchmarks/serve_load.py --clients 8 --malformed 10000   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import itertools
import json
import os
import platform
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import requests

from ctr.artifact.export import export_run, load_exported
from ctr.artifact.predict import predict_files, split_of_frame
from ctr.runs import train_run
from ctr.training.defaults import load_run_config
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.stream import Encoder, RecordEncoder, check_records
from features.synth import write_synthetic
from pipelines.serve import ServeOptions, serving

COLUMNS = ["label", *(f"I{i}" for i in range(1, 14)), *(f"C{i}" for i in range(1, 27))]
TRAIN = ["trainer.progress_bar=false", "trainer.max_epochs=1", "trainer.limit_train_batches=20"]


def _records(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text().splitlines():
        values = line.split("\t")
        out.append(
            {c: (None if v == "" else int(v) if c[0] in "lI" else v) for c, v in zip(COLUMNS, values, strict=True)}
        )
    return out


def _malformed(good: dict[str, Any], i: int) -> bytes:
    kinds: list[Any] = [
        {k: v for k, v in good.items() if k != "C3"},  # missing field
        {**good, "I2": [1, 2]},  # wrong type
        {**good, "C99": "x"},  # unknown column
        {**good, "I4": "abc"},  # unparseable number
        {**good, "label": 5},  # bad label
    ]
    if i % 7 == 5:
        return b'{"not": "a list"}'
    if i % 7 == 6:
        return b"[{not json"
    return json.dumps([good, kinds[i % 7]]).encode()


def _loop(
    clients: int,
    requests_max: int,
    seconds: float,
    make: Callable[[int], tuple[bytes, Callable[[Any], bool]]],
    url: str,
) -> dict[str, Any]:
    """A closed loop: ``clients`` threads, each sending request ``make(i)`` once its previous one is answered."""
    counter = itertools.count()
    lock = threading.Lock()
    latencies: list[float] = []
    failures: list[str] = []
    deadline = time.perf_counter() + seconds

    def client() -> None:
        session = requests.Session()
        while time.perf_counter() < deadline:
            i = next(counter)
            if i >= requests_max:
                return
            body, check = make(i)
            started = time.perf_counter()
            answer = session.post(url, data=body, headers={"content-type": "application/json"}, timeout=60)
            took = time.perf_counter() - started
            ok = check(answer)
            with lock:
                latencies.append(took)
                if not ok:
                    failures.append(f"request {i}: {answer.status_code} {answer.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    ms = np.array(latencies or [float("nan")]) * 1e3
    return {
        "requests": len(latencies),
        "seconds": round(wall, 2),
        "requests_per_sec": round(len(latencies) / wall, 1),
        "p50_ms": round(float(np.percentile(ms, 50)), 2),
        "p99_ms": round(float(np.percentile(ms, 99)), 2),
        "failures": len(failures),
        "first_failures": failures[:3],
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train-rows", type=int, default=100_000)
    parser.add_argument("--requests", type=int, default=2000, help="at most this many requests per phase")
    parser.add_argument("--seconds", type=float, default=60.0, help="at most this long per phase")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients at saturation")
    parser.add_argument("--malformed", type=int, default=10_000)
    parser.add_argument("--replicas", type=int, default=1)
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    try:
        write_synthetic(args.train_rows, root / "train.tsv", seed=1)
        prepare(builtin_spec("criteo"), [root / "train.tsv"], root / "prepared", PrepareOptions(progress=False))
        train_run(load_run_config(None, TRAIN, data=str(root / "prepared"), model="deepfm"), root / "run")
        artifact = root / "artifact"
        export_run(root / "run", artifact)
        write_synthetic(2048, root / "requests.tsv", seed=9)
        predict_files(artifact, [root / "requests.tsv"], root / "expected.parquet", progress=False)
        expected = pl.read_parquet(root / "expected.parquet")["probability"].to_numpy()
        records = _records(root / "requests.tsv")
        n = len(records)

        def good(size: int) -> Callable[[int], tuple[bytes, Callable[[Any], bool]]]:
            def make(i: int) -> tuple[bytes, Callable[[Any], bool]]:
                start = (i * size) % (n - size + 1)
                want = expected[start : start + size]

                def check(answer: Any) -> bool:
                    return bool(answer.status_code == 200 and np.abs(np.array(answer.json()) - want).max() <= 1e-6)

                return json.dumps(records[start : start + size]).encode(), check

            return make

        def mixed(i: int) -> tuple[bytes, Callable[[Any], bool]]:
            if i % 5 == 4:
                return good(1)(i)
            bad = i - i // 5  # the index among the malformed ones
            return _malformed(records[bad % n], bad), lambda answer: answer.status_code == 400

        # the baseline: the replica's own work for one request, in this process (no HTTP, no Ray, no batching)
        model = load_exported(artifact)
        encoder = Encoder.load(artifact, model.feature_map)
        records_encoder = RecordEncoder(encoder)
        baseline: dict[str, float] = {}
        for size in (1, 256):
            times = []
            for i in range(min(args.requests, 300)):
                body = records[(i * size) % (n - size + 1) :][:size]
                started = time.perf_counter()
                chunk = records_encoder.encode(check_records(body, encoder.columns, "label"))
                model.predict(split_of_frame(model.feature_map, chunk.rows))
                times.append(time.perf_counter() - started)
            baseline[f"{size}_p50_ms"] = round(statistics.median(times) * 1e3, 2)
            baseline[f"{size}_p99_ms"] = round(float(np.percentile(times, 99)) * 1e3, 2)

        port = _free_port()
        with serving(ServeOptions(str(artifact), port=port, replicas=args.replicas)) as base:
            url = base + "/predict"
            for _ in range(20):  # warm-up
                requests.post(url, data=good(1)(0)[0], timeout=60)
            phases = {
                "1 record, 1 client": _loop(1, args.requests, args.seconds, good(1), url),
                "256 records, 1 client": _loop(1, args.requests // 4, args.seconds, good(256), url),
                f"1 record, {args.clients} clients": _loop(args.clients, args.requests * 2, args.seconds, good(1), url),
            }
            total = args.malformed + args.malformed // 4
            robust = _loop(args.clients, total, max(args.seconds, 600.0), mixed, url)
            after = _loop(1, 50, args.seconds, good(1), url)
        report = {
            "date": dt.date.today().isoformat(),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}",
            "replicas": args.replicas,
            "baseline_in_process": baseline,
            "phases": phases,
            "ratio_p50_vs_in_process": {
                "1 record": round(phases["1 record, 1 client"]["p50_ms"] / baseline["1_p50_ms"], 2),
                "256 records": round(phases["256 records, 1 client"]["p50_ms"] / baseline["256_p50_ms"], 2),
            },
            "malformed_mix": {**robust, "malformed_sent": sum(1 for i in range(robust["requests"]) if i % 5 != 4)},
            "good_after_malformed": after,
        }
        print(json.dumps(report, indent=2))
        return 0 if robust["failures"] == 0 and after["failures"] == 0 else 1
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
