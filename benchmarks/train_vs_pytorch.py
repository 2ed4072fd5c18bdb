"""Training throughput: the platform's DeepFM (``ctr.train.train``) against a plain-PyTorch reference.

Data: a synthetic Criteo TSV (``features.synth.write_synthetic``, 1M rows by default) prepared with
``features.prepare.prepare(builtin_spec("criteo"), ...)`` into a temporary directory, or an existing
prepared directory given with ``--data``. Model: DeepFM, ``embedding_dim`` 16, MLP [400, 400, 400] with
BatchNorm, batch 4096, Adam lr 1e-3 on the dense weights.

* **platform**: ``ctr.train.train`` (Lightning + TorchRec ``DistributedModelParallel``, FBGEMM tables with the
  fused EXACT_ROWWISE_ADAGRAD update applied inside backward; the first-order weights are 4 more columns of
  each table's rows, see :mod:`ctr.embedding`), one epoch; its ``samples_per_sec`` is
  measured over the training batches only (forward + backward + updates, no data loading). Run once with
  one process and once with two (``nproc=2``, one thread each, 2048 rows per rank: the same global batch), each
  in float32 and again with ``trainer.precision=bf16-mixed`` (the dense layers under bfloat16 autocast; the
  reference stays float32, as FuxiCTR and DeepCTR-Torch train). bf16-mixed runs once more as one process with
  two threads: on the two cores of the 2-thread reference, that uses them better than two processes (no
  collectives, no halved batches). Then bf16-mixed again with ``model.table_dtype=float16`` (tables stored in
  float16: half the memory, and FBGEMM's CPU row-wise Adagrad backward takes about half the time), at 1 x 1
  and 1 x 2.
* **reference** (:class:`ReferenceDeepFM` below; a baseline for this benchmark only, not library code): the
  same model written the way FuxiCTR and DeepCTR-Torch write it: one ``nn.Embedding`` per field with dense
  gradients (plus a 1-dim ``nn.Embedding`` per field for the first-order term), ``torch.optim.Adam`` over
  every parameter, embeddings included. It trains on the same batches in the same order (``load_split`` +
  ``make_loader`` with the platform's seed; each KJT turned into one id tensor per field with
  ``kjt[field].values()`` before the clock starts), and is timed after ``--warmup`` steps (forward + backward
  + ``optimizer.step``, no data loading), at 1 and 2 threads. The 1-thread reference trains the whole epoch
  and is timed over all of it after the warm-up, as the platform is over its epoch: both averages then span
  the same samples and similar stretches of time, on a VM whose speed drifts. The 2-thread reference (and
  any run with ``--no-ref-epoch``) is timed over ``--ref-steps`` steps and stops after them, or after
  ``--ref-time-limit`` timed seconds: on a loaded machine two OpenMP threads can spin against other
  processes and make every step several times slower.

On a machine with a CUDA GPU both sides train on it (``ctr.train`` takes the GPU, the reference moves its model
and each batch there before the clock starts) and every timed step ends with ``torch.cuda.synchronize``; run it
there with ``--skip-nproc2 --skip-ref-2threads`` (one GPU).

The reference process applies the platform's glibc malloc settings too (:func:`ctr.allocator.keep_freed_memory`,
on by default in ``ctr.train.train``), so the ratio does not come from an allocator setting either side could use.

``--rounds`` (default 2) runs every configuration that many times, interleaved (reference, platform runs,
reference at 2 threads; then again), and reports each round's samples/s, their median, and each round's ratio to
the reference of the same round: this VM's speed drifts by up to 40% over tens of minutes, so runs far apart in
time are not comparable, and one run per configuration says little.

Each measurement runs in a fresh subprocess of this script (``--worker ...``), so no run inherits another's
threads or allocator state; the two-process platform run needs one anyway (Lightning starts the second rank
by re-running the command line). Every process calls ``torch.set_num_threads`` with its thread count.

The 1-thread reference's test AUC after its epoch is printed next to the platform's, as a sanity check after
the same number of training samples (not a matched comparison: the reference updates its tables with Adam at
lr 1e-3, the platform with row-wise Adagrad at ``optim.sparse_lr``).

Example:
    >>> # python benchmarks/train_vs_pytorch.py --rows 1000000 --keep scratch/train-bench   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.metadata
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ctr.allocator import keep_freed_memory
from ctr.data import load_split, make_loader
from ctr.metrics import auc
from ctr.run_config import load_run_config
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import builtin_spec
from features.synth import write_synthetic

EMBEDDING_DIM = 16
MLP_SIZES = (400, 400, 400)
LR = 1e-3
RESULT = "bench_result.json"


# --------------------------------------------------------------------------------------------------
# plain-PyTorch reference (benchmark only)
# --------------------------------------------------------------------------------------------------


class ReferenceDeepFM(nn.Module):
    """DeepFM as FuxiCTR / DeepCTR-Torch write it: ``nn.Embedding`` per field, dense gradients.

    ``forward(ids, dense)``: ``ids`` one ``[B]`` int64 tensor per categorical field, ``dense`` ``[B, n_dense]``.
    Fields ``[B, F + n_dense, D]`` are the categorical embeddings (zero-padded to ``D``) followed by
    ``x_j * v_j`` per dense feature; logit = bias + sum_f w_f(id) + dense . w + FM(fields) + MLP(flatten).
    Initialisation mirrors the platform: tables U(+-sqrt(1/rows)), PyTorch defaults elsewhere.
    """

    def __init__(self, cardinalities: list[int], dims: list[int], n_dense: int, mlp: tuple[int, ...]) -> None:
        super().__init__()
        self.dim = max(dims)
        self.pads = [self.dim - d for d in dims]
        self.emb = nn.ModuleList(nn.Embedding(c, d) for c, d in zip(cardinalities, dims, strict=True))
        self.first = nn.ModuleList(nn.Embedding(c, 1) for c in cardinalities)
        for table in [*self.emb, *self.first]:
            bound = (1.0 / table.num_embeddings) ** 0.5
            nn.init.uniform_(table.weight, -bound, bound)
        self.dense_emb = nn.Parameter(torch.empty(n_dense, self.dim).uniform_(-(self.dim**-0.5), self.dim**-0.5))
        self.dense_first = nn.Linear(n_dense, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))
        layers: list[nn.Module] = []
        width = (len(dims) + n_dense) * self.dim
        for size in mlp:
            layers += [nn.Linear(width, size), nn.BatchNorm1d(size), nn.ReLU()]
            width = size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, 1))

    def forward(self, ids: list[torch.Tensor], dense: torch.Tensor) -> torch.Tensor:
        sparse = [F.pad(e(x), (0, pad)) for e, x, pad in zip(self.emb, ids, self.pads, strict=True)]
        fields = torch.cat([torch.stack(sparse, dim=1), dense.unsqueeze(-1) * self.dense_emb], dim=1)
        fm = 0.5 * (fields.sum(dim=1).square() - fields.square().sum(dim=1)).sum(dim=1)
        deep = self.mlp(fields.flatten(1)).squeeze(-1)
        first = torch.cat([w(x) for w, x in zip(self.first, ids, strict=True)], dim=1).sum(dim=1)
        logits: torch.Tensor = self.bias + first + self.dense_first(dense).squeeze(-1) + fm + deep
        return logits


def _per_field(batch: Any, names: list[str]) -> list[torch.Tensor]:
    """The KJT as one id tensor per field (every field single-valued: ``kjt[name].values()`` is ``[B]``)."""
    kjt = batch.sparse_features
    return [kjt[name].values() for name in names]


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":  # kernels run asynchronously: time them to their end
        torch.cuda.synchronize(device)


def reference_worker(
    data: Path,
    out: Path,
    threads: int,
    batch_size: int,
    seed: int,
    warmup: int,
    steps: int,
    epoch: bool,
    time_limit: float,
) -> None:
    torch.set_num_threads(threads)
    keep_freed_memory()  # the platform's malloc settings (trainer.keep_freed_memory): neither side gains by them
    torch.manual_seed(seed)
    fm = FeatureMap.load(data)
    multi = [f.name for f in fm.categorical if f.multi_valued]
    if multi:
        raise SystemExit(f"the reference handles single-valued fields only; {multi} are multi-valued")
    names = list(fm.sparse_names)
    cards = [f.cardinality for f in fm.categorical]
    device = _device()  # where the platform trains too (``ctr.train`` takes the GPU when there is one)
    model = ReferenceDeepFM(cards, [EMBEDDING_DIM] * len(names), len(fm.dense), MLP_SIZES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    train_split = load_split(data, fm, "train")
    loader = make_loader(train_split, batch_size, shuffle=True, seed=seed)  # epoch 0: the platform's order
    model.train()
    timed: list[float] = []
    samples = total = 0
    for i, batch in enumerate(loader):
        if not epoch and (i >= warmup + steps or sum(timed) > time_limit):
            break
        ids = [x.to(device) for x in _per_field(batch, names)]
        dense, labels = batch.dense_features.to(device), batch.labels.to(device)
        _synchronize(device)
        start = time.perf_counter()
        loss = F.binary_cross_entropy_with_logits(model(ids, dense), labels)
        optimizer.zero_grad()
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        _synchronize(device)
        seconds = time.perf_counter() - start
        total += labels.numel()
        if i >= warmup and (epoch or i < warmup + steps):  # the whole epoch after warm-up, like the platform
            timed.append(seconds)
            samples += labels.numel()
    result: dict[str, Any] = {
        "samples_per_sec": samples / sum(timed),
        "timed_steps": len(timed),
        "step_ms_median": 1000 * float(np.median(timed)),
        "train_samples": total,
        "params": sum(p.numel() for p in model.parameters()),
        "embedding_params": sum(p.numel() for m in [*model.emb, *model.first] for p in m.parameters()),
    }
    if epoch:
        model.eval()
        probs, ys = [], []
        with torch.no_grad():
            for batch in make_loader(load_split(data, fm, "test"), batch_size, shuffle=False, seed=seed):
                ids = [x.to(device) for x in _per_field(batch, names)]
                probs.append(torch.sigmoid(model(ids, batch.dense_features.to(device))).cpu())
                ys.append(batch.labels)
        result["test_auc"] = auc(torch.cat(probs).numpy(), torch.cat(ys).numpy())
    out.mkdir(parents=True, exist_ok=True)
    (out / RESULT).write_text(json.dumps(result))


def platform_worker(
    data: Path, out: Path, nproc: int, threads: int, batch_size: int, seed: int, precision: str, table_dtype: str
) -> None:
    from ctr.train import train  # imports Lightning; only the platform workers need it

    torch.set_num_threads(threads)
    overrides = [
        f"data.batch_size={batch_size}",
        f"data.seed={seed}",
        f"trainer.seed={seed}",
        "trainer.max_epochs=1",
        f"trainer.threads={threads}",
        "trainer.progress_bar=false",
        f"model.embedding_dim={EMBEDDING_DIM}",
        f"model.mlp=[{','.join(map(str, MLP_SIZES))}]",
        f"optim.lr={LR}",
        f"trainer.precision={precision}",
        f"model.table_dtype={table_dtype}",
    ]
    config = load_run_config(None, overrides, data=str(data), model="deepfm")
    train(config, out, nproc=nproc)  # rank 0 writes out/metrics.json


# --------------------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------------------


def _run_worker(args: list[str], log: Path, threads: int) -> float:
    """Run this script with ``--worker ...`` in a fresh process; its output goes to ``log``. Wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(
            [sys.executable, __file__, *args], stdout=f, stderr=subprocess.STDOUT, env=env, check=False
        )
    if proc.returncode:
        tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
        raise SystemExit(f"worker {' '.join(args)} failed with exit code {proc.returncode}; last lines:\n{tail}")
    return time.perf_counter() - started


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _prepare_data(root: Path, rows: int, seed: int, min_count: int) -> Path:
    """Synthetic Criteo TSV -> ``root/prepared`` (replaced if it exists); the TSV is deleted afterwards."""
    tsv, out = root / "criteo.tsv", root / "prepared"
    t = time.perf_counter()
    write_synthetic(rows, tsv, seed)
    print(f"  wrote {tsv} ({rows:,} rows) in {time.perf_counter() - t:.1f} s", flush=True)
    if out.exists():
        shutil.rmtree(out)
    t = time.perf_counter()
    prepare(builtin_spec("criteo"), [tsv], out, PrepareOptions(progress=False, min_count=min_count))
    print(f"  prepared it (min_count {min_count}) in {time.perf_counter() - t:.1f} s", flush=True)
    tsv.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DeepFM training throughput: the platform vs plain PyTorch.")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (ignored with --data)")
    parser.add_argument("--data", type=Path, help="an existing prepared directory (skips generate + prepare)")
    parser.add_argument("--min-count", type=int, default=1, help="prepare's vocabulary min_count (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4096, help="global batch size")
    parser.add_argument("--warmup", type=int, default=5, help="reference steps before timing")
    parser.add_argument(
        "--ref-steps", type=int, default=60, help="timed steps of a reference that does not train the whole epoch"
    )
    parser.add_argument(
        "--ref-epoch",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="train the 1-thread reference for the whole epoch and print its test AUC (default: yes)",
    )
    parser.add_argument(
        "--ref-time-limit",
        type=float,
        default=60.0,
        help="stop timing a reference that is not training the whole epoch after this many timed seconds",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="measure every configuration this many times, interleaved (default 2)"
    )
    parser.add_argument("--skip-ref-2threads", action="store_true")
    parser.add_argument("--skip-nproc2", action="store_true")
    parser.add_argument("--skip-float32", action="store_true", help="skip the platform runs in float32")
    parser.add_argument("--skip-fp16-tables", action="store_true", help="skip the model.table_dtype=float16 runs")
    parser.add_argument(
        "--skip-bf16", action="store_true", help="skip the platform runs with trainer.precision=bf16-mixed"
    )
    parser.add_argument(
        "--keep", type=Path, help="keep the prepared data, run directories and logs here (default: a temp dir)"
    )
    parser.add_argument("--worker", choices=["platform", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--nproc", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="32-true", help=argparse.SUPPRESS)
    parser.add_argument("--table-dtype", default="float32", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker == "platform":
        batch = args.batch_size // args.nproc
        platform_worker(
            args.data, args.out, args.nproc, args.threads, batch, args.seed, args.precision, args.table_dtype
        )
        return 0
    if args.worker == "reference":
        reference_worker(
            args.data,
            args.out,
            args.threads,
            args.batch_size,
            args.seed,
            args.warmup,
            args.ref_steps,
            args.ref_epoch,
            args.ref_time_limit,
        )
        return 0

    started = time.perf_counter()
    load_start = _load()
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tmp = Path(tempfile.mkdtemp(prefix="ctr-train-bench-"))
    work = args.keep or tmp
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}  # one result per round
    walls: dict[str, list[float]] = {}
    try:
        data = args.data.resolve() if args.data else _prepare_data(work, args.rows, args.seed, args.min_count)
        fm = FeatureMap.load(data)
        common = ["--data", str(data), "--seed", str(args.seed), "--batch-size", str(args.batch_size)]
        ref_args = ["--worker", "reference", "--warmup", str(args.warmup), "--ref-steps", str(args.ref_steps)]
        ref_args += ["--ref-time-limit", str(args.ref_time_limit)]
        # Reference first, then the platform runs, then the 2-thread reference: every round measures each
        # configuration once, so a ratio within a round compares runs minutes apart, not a whole benchmark apart
        # (the VM's speed drifts by up to 40% over tens of minutes, the same way for both sides).
        ref_epoch = "--ref-epoch" if args.ref_epoch else "--no-ref-epoch"
        plan: list[tuple[str, int, list[str]]] = [("reference-1x1", 1, [*ref_args, "--threads", "1", ref_epoch])]
        if not args.skip_float32:
            plan.append(("platform-1x1", 1, ["--worker", "platform", "--nproc", "1"]))
            if not args.skip_nproc2:
                plan.append(("platform-2x1", 1, ["--worker", "platform", "--nproc", "2"]))
        if not args.skip_bf16:
            bf16 = ["--worker", "platform", "--precision", "bf16-mixed", "--nproc"]
            plan.append(("platformbf16-1x1", 1, [*bf16, "1"]))
            if not args.skip_nproc2:
                plan.append(("platformbf16-2x1", 1, [*bf16, "2"]))
            if not args.skip_ref_2threads:  # the same two cores as the 2-thread reference, in one process
                plan.append(("platformbf16-1x2", 2, [*bf16, "1", "--threads", "2"]))
            if not args.skip_fp16_tables:
                half = ["--table-dtype", "float16", *bf16, "1"]
                plan.append(("platformbf16fp16-1x1", 1, half))
                if not args.skip_ref_2threads:
                    plan.append(("platformbf16fp16-1x2", 2, [*half, "--threads", "2"]))
        if not args.skip_ref_2threads:
            plan.append(("reference-1x2", 2, [*ref_args, "--threads", "2", "--no-ref-epoch"]))
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", flush=True)
            for name, threads, extra in plan:
                out = work / name
                if out.exists():
                    shutil.rmtree(out)
                out.mkdir(parents=True)
                wall = _run_worker([*extra, *common, "--out", str(out)], work / f"{name}.log", threads)
                result_file = out / ("metrics.json" if name.startswith("platform") else RESULT)
                result = json.loads(result_file.read_text())
                results.setdefault(name, []).append(result)
                walls.setdefault(name, []).append(wall)
                print(f"  {name}: {result['samples_per_sec']:,.0f} samples/s (process wall {wall:.0f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # with --keep, everything (prepared data included) is under it

    sps = {name: [r["samples_per_sec"] for r in rounds] for name, rounds in results.items()}
    median = {name: float(np.median(values)) for name, values in sps.items()}
    ref = results["reference-1x1"][0]  # round 1's runs: parameters, test AUC
    plat = next(rounds[0] for key, rounds in results.items() if key.endswith("-1x1") and key.startswith("platform"))
    cards = [f.cardinality for f in fm.categorical]
    source = (
        str(args.data)
        if args.data
        else f"synthetic Criteo (seed {args.seed}), {args.rows:,} rows, min_count {args.min_count}"
    )
    steps_ms = ", ".join(
        f"at {k[-1]} thread(s) median step "
        + "/".join(f"{r['step_ms_median']:.0f}" for r in results[k])
        + f" ms over {results[k][0]['timed_steps']} steps"
        for k in ("reference-1x1", "reference-1x2")
        if k in results
    )
    print()
    print("## Training benchmark: platform DeepFM vs a plain-PyTorch reference (benchmarks/train_vs_pytorch.py)")
    print()
    print(f"- date: {date}")
    print(
        f"- machine: {platform.machine()}, {_cpu_model()}, nproc={os.cpu_count()}, load average at start {load_start}"
        + (f"; both sides train on the GPU, {torch.cuda.get_device_name(0)}" if _device().type == "cuda" else "")
    )
    print(
        f"- python {platform.python_version()}, torch {torch.__version__}, torchrec {_version('torchrec')}, "
        f"fbgemm_gpu {_version('fbgemm_gpu')}, fbgemm_gpu-cpu {_version('fbgemm_gpu-cpu')}, "
        f"lightning {_version('lightning')}"
    )
    print(f"- load average at end {_load()} (other processes may share the CPU; timings are wall clock)")
    fields = f"{len(cards)} categorical fields, {sum(cards):,} embedding rows; {len(fm.dense)} dense fields"
    print(f"- data: {source}; {fields}")
    print(
        f"- model: DeepFM, dim {EMBEDDING_DIM}, MLP {list(MLP_SIZES)} + BatchNorm, global batch {args.batch_size}; "
        f"reference {ref['params']:,} parameters ({ref['embedding_params']:,} in embeddings), "
        f"platform {plat['embedding_params']:,} embedding parameters (4 first-order columns per id for FBGEMM)"
    )
    print(
        f"- platform: one epoch ({plat['global_step']} steps at 1 process), samples/s over its training batches; "
        f"reference: every step after {args.warmup} warm-up steps when it trains the epoch, else at most "
        f"{args.ref_steps} steps and {args.ref_time_limit:.0f} timed seconds ({steps_ms})"
    )
    print(f"- {args.rounds} round(s), each running every configuration once in the order of the table below")
    print("- process wall seconds: " + ", ".join(f"{k} " + "/".join(f"{w:.0f}" for w in v) for k, v in walls.items()))
    print(f"- total benchmark wall time {time.perf_counter() - started:.0f} s")
    print()
    print("| implementation | processes x threads | samples/s, each round | median | vs reference 1x1, each round |")
    print("|---|---|---:|---:|---:|")
    labels = {
        "reference": "plain PyTorch reference (`nn.Embedding` per field, dense grads, Adam on all)",
        "platform": "platform `ctr.train.train` (TorchRec DMP, FBGEMM fused row-wise Adagrad)",
        "platformbf16": "platform, `trainer.precision=bf16-mixed` (dense layers under bfloat16 autocast)",
        "platformbf16fp16": "platform, bf16-mixed and `model.table_dtype=float16` (tables stored in float16)",
    }
    for key in results:
        kind, shape = key.split("-")
        each = " / ".join(f"{v:,.0f}" for v in sps[key])
        vs_ref = " / ".join(f"{r:.2f}x" for r in _per_round(sps[key], sps["reference-1x1"]))
        print(f"| {labels[kind]} | {shape.replace('x', ' x ')} | {each} | {median[key]:,.0f} | {vs_ref} |")
    print()
    for key, base in (
        ("platform-1x1", "reference-1x1"),
        ("platformbf16-1x1", "reference-1x1"),
        ("platformbf16-2x1", "reference-1x2"),
        ("platformbf16-1x2", "reference-1x2"),
        ("platformbf16fp16-1x1", "reference-1x1"),
        ("platformbf16fp16-1x2", "reference-1x2"),
    ):
        if key in results and base in results:  # the same cores on both sides
            ratios = _per_round(sps[key], sps[base])
            print(f"{key} / {base}, same round: median {np.median(ratios):.2f}x (each: {_fmt(ratios)})")
    for one, two in (("platform-1x1", "platform-2x1"), ("platformbf16-1x1", "platformbf16-2x1")):
        if two in results:
            ratios = _per_round(sps[two], sps[one])
            print(f"{two} / {one}: median {np.median(ratios):.2f}x (each: {_fmt(ratios)})")
    aucs = [f"{key} {rounds[0]['test_auc']:.4f}" for key, rounds in results.items() if key.startswith("platform")]
    if args.ref_epoch:
        aucs.append(f"reference 1x1 {ref['test_auc']:.4f} (after the same epoch, {ref['train_samples']:,} samples)")
    print("test AUC after one epoch (round 1): " + ", ".join(aucs))
    return 0


def _per_round(num: list[float], den: list[float]) -> list[float]:
    """``num / den`` round by round (both measured in the same round)."""
    return [n / d for n, d in zip(num, den, strict=True)]


def _fmt(ratios: list[float]) -> str:
    return ", ".join(f"{r:.2f}x" for r in ratios)


if __name__ == "__main__":
    sys.exit(main())
