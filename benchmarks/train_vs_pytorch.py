"""Training throughput: the platform's DeepFM (``ctr.runs.train``) against a plain-PyTorch reference.

Data: a synthetic Criteo TSV (``features.synth.write_synthetic``, 1M rows by default) prepared with
``features.prepare.prepare(builtin_spec("criteo"), ...)`` into a temporary directory, or an existing
prepared directory given with ``--data``. Model: DeepFM, ``embedding_dim`` 16, MLP [400, 400, 400] with
BatchNorm, batch 4096, Adam lr 1e-3 on the dense weights.

* **platform**: ``ctr.runs.train`` (Lightning + TorchRec ``DistributedModelParallel``, FBGEMM tables with the
  fused EXACT_ROWWISE_ADAGRAD update applied inside backward; the first-order weights are 4 more columns of
  each table's rows, see :mod:`ctr.tables.embedding`), one epoch; its ``samples_per_sec`` is measured over the
  training batches only (forward + backward + updates, no data loading). Configurations (:func:`_settings`):
  float32; ``trainer.precision=bf16-mixed`` (the dense layers under bfloat16 autocast; the reference stays
  float32, as FuxiCTR and DeepCTR-Torch train); bf16-mixed with ``model.table_dtype=float16`` (tables stored in
  float16: half the memory, and FBGEMM's CPU row-wise Adagrad backward takes about half the time). Each as one
  process with one thread, as two processes (``nproc=2``, one thread each, 2048 rows per rank: the same
  global batch), and (bf16-mixed only) as one process with two threads, which uses two cores better than two
  processes (no collectives, no halved batches).
* **reference** (:class:`ReferenceDeepFM` below; a baseline for this benchmark only, not library code): the
  same model written the way FuxiCTR and DeepCTR-Torch write it: one ``nn.Embedding`` per field with dense
  gradients (plus a 1-dim ``nn.Embedding`` per field for the first-order term), ``torch.optim.Adam`` over
  every parameter, embeddings included. It trains on the same batches in the same order (``load_split`` +
  ``make_loader`` with the platform's seed; each KJT turned into one id tensor per field with
  ``kjt[field].values()`` before the clock starts) for the same epoch, and is timed over every step after
  ``--warmup`` steps (forward + backward + ``optimizer.step``, no data loading).

**Pairs.** This VM's speed drifts by 20-40 % within minutes, for both sides, so two runs one after the other
compare two different machines. Every one-process platform configuration therefore runs side by side with a
reference of its own on the same number of threads: two processes that take turns (:class:`Baton`, two FIFOs),
each training ``--turn`` steps (default 14: 1-2 s of the platform, 4-5 s of the reference) while the other
waits, untimed, until both have trained the whole epoch. Both sides then sample the VM's state over the same
minutes, and the ratio of a pair is the platform's samples/s over its own reference's. The two-process runs
are not paired (the second rank would wait inside a collective); they are compared with the one-process run
of the same configuration and round.

On a machine with a CUDA GPU both sides train on it (``ctr.training.train`` takes the GPU, the reference moves its model
and each batch there before the clock starts) and every timed step ends with ``torch.cuda.synchronize``; run it
there with ``--skip-nproc2 --skip-2threads`` (one GPU).

The reference process applies the platform's glibc malloc settings too (:func:`ctr.training.memory.keep_freed_memory`,
on by default in ``ctr.runs.train``), so the ratio does not come from an allocator setting either side could use.

``--rounds`` (default 2) runs every configuration that many times, in the same order each round, and reports
each round's samples/s and ratios, and their medians.

Each measurement runs in fresh subprocesses of this script (``--worker ...``), so no run inherits another's
threads or allocator state; the two-process platform run needs one anyway (Lightning starts the second rank
by re-running the command line). Every process calls ``torch.set_num_threads`` with its thread count.

The references' test AUC after their epoch is printed next to the platform's, as a sanity check after the
same number of training samples (not a matched comparison: the reference updates its tables with Adam at
lr 1e-3, the platform with row-wise Adagrad at ``optim.sparse_lr``).

Example:
    >>> # python benchmarks/train_vs_pytorch.py --rows 1000000 --keep scratch/train-bench   # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
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

from ctr.data.loader import make_loader
from ctr.data.shards import load_split
from ctr.training.defaults import load_run_config
from ctr.training.memory import keep_freed_memory
from ctr.training.metrics import auc
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


class Baton:
    """Takes turns between two worker processes: one trains ``turn`` steps while the other waits, untimed.

    Each process reads its own FIFO (``mine``) and writes its partner's (``theirs``); both are opened ``O_RDWR``,
    so neither open waits for the other process. :meth:`step` counts a step and, every ``turn`` steps, hands
    the turn over and blocks until it comes back. :meth:`finish` tells the partner, then waits for the partner to
    finish too: neither side does untimed work (evaluation, writing results) while the other is timing steps.
    Both sides see the VM in the same state to within a turn, which pairs their timings (see the module
    docstring).
    """

    TURN, END = b"t", b"e"

    def __init__(self, mine: Path, theirs: Path, turn: int) -> None:
        if turn < 1:
            raise ValueError(f"a turn is at least one step, got {turn}")
        self._mine = os.open(mine, os.O_RDWR)
        self._theirs = os.open(theirs, os.O_RDWR)
        self.turn = turn
        self.steps = 0
        self.partner_done = False
        self.waited = 0.0  # seconds spent waiting for the turn (for the log)

    def wait(self) -> None:
        """Block until the partner hands the turn over or finishes."""
        if self.partner_done:
            return
        started = time.perf_counter()
        if os.read(self._mine, 1) == self.END:
            self.partner_done = True
        self.waited += time.perf_counter() - started

    def step(self) -> None:
        self.steps += 1
        if self.steps % self.turn == 0 and not self.partner_done:
            os.write(self._theirs, self.TURN)
            self.wait()

    def finish(self) -> None:
        os.write(self._theirs, self.END)
        while not self.partner_done:  # the partner's remaining steps, then its END
            self.wait()
        os.close(self._mine)
        os.close(self._theirs)
        print(f"baton: {self.steps} steps, {self.waited:.1f} s waiting for the partner", flush=True)


def reference_worker(
    data: Path,
    out: Path,
    threads: int,
    batch_size: int,
    seed: int,
    warmup: int,
    baton: Baton | None,
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
    device = _device()  # where the platform trains too (``ctr.training.train`` takes the GPU when there is one)
    model = ReferenceDeepFM(cards, [EMBEDDING_DIM] * len(names), len(fm.dense), MLP_SIZES).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    train_split = load_split(data, fm, "train")
    loader = make_loader(train_split, batch_size, shuffle=True, seed=seed)  # epoch 0: the platform's order
    model.train()
    timed: list[float] = []
    samples = total = 0
    if baton is not None:
        baton.wait()  # the platform trains first
    for i, batch in enumerate(loader):
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
        if i >= warmup:  # the whole epoch after warm-up, like the platform
            timed.append(seconds)
            samples += labels.numel()
        if baton is not None:
            baton.step()
    if baton is not None:
        baton.finish()
    result: dict[str, Any] = {
        "samples_per_sec": samples / sum(timed),
        "timed_steps": len(timed),
        "step_ms_median": 1000 * float(np.median(timed)),
        "train_samples": total,
        "params": sum(p.numel() for p in model.parameters()),
        "embedding_params": sum(p.numel() for m in [*model.emb, *model.first] for p in m.parameters()),
    }
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
    data: Path,
    out: Path,
    nproc: int,
    threads: int,
    batch_size: int,
    seed: int,
    precision: str,
    table_dtype: str,
    baton: Baton | None,
) -> None:
    import lightning.pytorch as pl  # only the platform workers need Lightning

    from ctr.runs import train_run

    class TakeTurns(pl.Callback):
        """Runs after ``ctr.training.train.Throughput`` has stopped its clock, so the waits are not timed."""

        def __init__(self, baton: Baton) -> None:
            self.baton = baton

        def on_train_batch_end(self, *args: Any) -> None:
            self.baton.step()

        def on_train_epoch_end(self, *args: Any) -> None:  # once: the benchmark trains one epoch
            self.baton.finish()

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
    # rank 0 writes out/metrics.json
    train_run(config, out, nproc=nproc, callbacks=[TakeTurns(baton)] if baton is not None else [])


# --------------------------------------------------------------------------------------------------
# harness
# --------------------------------------------------------------------------------------------------


def _worker_command(args: list[str]) -> list[str]:
    return [sys.executable, __file__, *args]


def _failed(args: list[str], code: int, log: Path) -> SystemExit:
    tail = "".join(log.read_text().splitlines(keepends=True)[-30:])
    return SystemExit(f"worker {' '.join(args)} failed with exit code {code}; last lines:\n{tail}")


def _run_worker(args: list[str], log: Path, threads: int) -> float:
    """Run this script with ``--worker ...`` in a fresh process; its output goes to ``log``. Wall seconds."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    with log.open("w") as f:
        proc = subprocess.run(_worker_command(args), stdout=f, stderr=subprocess.STDOUT, env=env, check=False)
    if proc.returncode:
        raise _failed(args, proc.returncode, log)
    return time.perf_counter() - started


def _run_pair(platform: list[str], reference: list[str], logs: tuple[Path, Path], threads: int, turn: int) -> float:
    """The platform and the reference in two processes that take turns every ``turn`` steps (:class:`Baton`).

    Two FIFOs next to the logs carry the turns. If either process fails, the other is killed. Wall seconds.
    """
    fifos = [log.with_suffix(".fifo") for log in logs]
    for fifo in fifos:
        fifo.unlink(missing_ok=True)
        os.mkfifo(fifo)
    args = (
        [*platform, "--baton", str(fifos[0]), str(fifos[1]), "--turn", str(turn)],
        [*reference, "--baton", str(fifos[1]), str(fifos[0]), "--turn", str(turn)],
    )
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    started = time.perf_counter()
    files = [log.open("w") for log in logs]
    procs = [
        subprocess.Popen(_worker_command(a), stdout=f, stderr=subprocess.STDOUT, env=env)
        for a, f in zip(args, files, strict=True)
    ]
    try:
        while True:
            codes = [p.poll() for p in procs]  # every process polled: a failed one's partner waits forever
            for a, code, log in zip(args, codes, logs, strict=True):
                if code:
                    raise _failed(a, code, log)
            if None not in codes:
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for f in files:
            f.close()
        for fifo in fifos:
            fifo.unlink(missing_ok=True)
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


@dataclasses.dataclass(frozen=True)
class Setting:
    """One platform configuration; with one process it is paired with a reference on the same threads."""

    name: str
    nproc: int
    threads: int
    precision: str
    table_dtype: str

    @property
    def paired(self) -> bool:
        return self.nproc == 1

    def worker_args(self) -> list[str]:
        return [
            *("--worker", "platform", "--nproc", str(self.nproc), "--threads", str(self.threads)),
            *("--precision", self.precision, "--table-dtype", self.table_dtype),
        ]


def _settings(args: argparse.Namespace) -> list[Setting]:
    """The platform configurations of one round, in the order they run."""
    precisions = [] if args.skip_float32 else [("float32", "32-true", "float32")]
    if not args.skip_bf16:
        precisions.append(("bf16", "bf16-mixed", "float32"))
        if not args.skip_fp16_tables:
            precisions.append(("bf16fp16", "bf16-mixed", "float16"))
    shapes = [(1, 1)]
    if not args.skip_nproc2:
        shapes.append((2, 1))
    if not args.skip_2threads:
        shapes.append((1, 2))
    return [
        Setting(f"{label}-{nproc}x{threads}", nproc, threads, precision, table_dtype)
        for label, precision, table_dtype in precisions
        for nproc, threads in shapes
        if not (label == "float32" and threads == 2)  # float32 is the slow baseline of the platform itself
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="DeepFM training throughput: the platform vs plain PyTorch.")
    parser.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (ignored with --data)")
    parser.add_argument("--data", type=Path, help="an existing prepared directory (skips generate + prepare)")
    parser.add_argument("--min-count", type=int, default=1, help="prepare's vocabulary min_count (default 1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4096, help="global batch size")
    parser.add_argument("--warmup", type=int, default=5, help="reference steps before timing")
    parser.add_argument(
        "--turn",
        type=int,
        default=14,
        help="steps each side of a pair trains before handing the turn over (default 14: 14 turns of a 196-step epoch)",
    )
    parser.add_argument(
        "--rounds", type=int, default=2, help="measure every configuration this many times, interleaved (default 2)"
    )
    parser.add_argument("--skip-2threads", action="store_true", help="skip the one-process, two-thread pairs")
    parser.add_argument("--skip-nproc2", action="store_true", help="skip the two-process platform runs")
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
    parser.add_argument("--baton", nargs=2, metavar=("MINE", "THEIRS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    baton = None if args.baton is None else Baton(Path(args.baton[0]), Path(args.baton[1]), args.turn)
    if args.worker == "platform":
        batch = args.batch_size // args.nproc
        platform_worker(
            args.data, args.out, args.nproc, args.threads, batch, args.seed, args.precision, args.table_dtype, baton
        )
        return 0
    if args.worker == "reference":
        reference_worker(args.data, args.out, args.threads, args.batch_size, args.seed, args.warmup, baton)
        return 0

    started = time.perf_counter()
    load_start = _load()
    date = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    tmp = Path(tempfile.mkdtemp(prefix="ctr-train-bench-"))
    work = args.keep or tmp
    work.mkdir(parents=True, exist_ok=True)
    settings = _settings(args)
    if not settings:
        raise SystemExit("every platform configuration is skipped")
    plat: dict[str, list[dict[str, Any]]] = {}  # one result per round
    ref: dict[str, list[dict[str, Any]]] = {}  # the paired reference's result per round
    walls: dict[str, list[float]] = {}
    try:
        data = args.data.resolve() if args.data else _prepare_data(work, args.rows, args.seed, args.min_count)
        fm = FeatureMap.load(data)
        common = ["--data", str(data), "--seed", str(args.seed), "--batch-size", str(args.batch_size)]
        for round_no in range(args.rounds):
            print(f"round {round_no + 1} of {args.rounds}", flush=True)
            for setting in settings:
                outs = work / setting.name, work / f"{setting.name}.reference"
                for out in outs[: 1 + setting.paired]:
                    if out.exists():
                        shutil.rmtree(out)
                    out.mkdir(parents=True)
                platform_args = [*setting.worker_args(), *common, "--out", str(outs[0])]
                if setting.paired:
                    reference_args = ["--worker", "reference", "--threads", str(setting.threads)]
                    reference_args += ["--warmup", str(args.warmup), *common, "--out", str(outs[1])]
                    logs = work / f"{setting.name}.log", work / f"{setting.name}.reference.log"
                    wall = _run_pair(platform_args, reference_args, logs, setting.threads, args.turn)
                    ref.setdefault(setting.name, []).append(json.loads((outs[1] / RESULT).read_text()))
                else:
                    wall = _run_worker(platform_args, work / f"{setting.name}.log", setting.threads)
                plat.setdefault(setting.name, []).append(json.loads((outs[0] / "metrics.json").read_text()))
                walls.setdefault(setting.name, []).append(wall)
                line = f"  {setting.name}: {plat[setting.name][-1]['samples_per_sec']:,.0f} samples/s"
                if setting.paired:
                    theirs = ref[setting.name][-1]["samples_per_sec"]
                    line += f", its reference {theirs:,.0f} ({plat[setting.name][-1]['samples_per_sec'] / theirs:.2f}x)"
                print(f"{line} (wall {wall:.0f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # with --keep, everything (prepared data included) is under it

    _report(args, settings, plat, ref, walls, fm, date, load_start, time.perf_counter() - started)
    return 0


def _report(
    args: argparse.Namespace,
    settings: list[Setting],
    plat: dict[str, list[dict[str, Any]]],
    ref: dict[str, list[dict[str, Any]]],
    walls: dict[str, list[float]],
    fm: FeatureMap,
    date: str,
    load_start: str,
    seconds: float,
) -> None:
    sps = {name: [r["samples_per_sec"] for r in rounds] for name, rounds in plat.items()}
    ref_sps = {name: [r["samples_per_sec"] for r in rounds] for name, rounds in ref.items()}
    ratios = {name: _per_round(sps[name], theirs) for name, theirs in ref_sps.items()}  # the paired settings
    first_plat = plat[settings[0].name][0]
    first_ref = next(iter(ref.values()), [None])[0]
    cards = [f.cardinality for f in fm.categorical]
    source = (
        str(args.data)
        if args.data
        else f"synthetic Criteo (seed {args.seed}), {args.rows:,} rows, min_count {args.min_count}"
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
    model = f"- model: DeepFM, dim {EMBEDDING_DIM}, MLP {list(MLP_SIZES)} + BatchNorm, global batch {args.batch_size}"
    if first_ref is not None:
        model += f"; reference {first_ref['params']:,} parameters ({first_ref['embedding_params']:,} in embeddings)"
    print(f"{model}; platform {first_plat['embedding_params']:,} embedding parameters (4 first-order columns per id)")
    print(
        f"- platform: one epoch ({first_plat['global_step']} steps at 1 process), samples/s over its training "
        f"batches. Reference: the same epoch, every step after {args.warmup} warm-up steps. Each one-process "
        f"configuration runs side by side with its own reference on the same threads, the two taking turns every "
        f"{args.turn} steps (the waits untimed)"
    )
    steps_ms = [
        f"{name} " + "/".join(f"{r['step_ms_median']:.0f}" for r in rounds) + " ms" for name, rounds in ref.items()
    ]
    if steps_ms:
        print("- the references' median step, each round: " + ", ".join(steps_ms))
    print(f"- {args.rounds} round(s), each running every configuration once in the order of the table below")
    print(
        "- wall seconds (a pair: both processes): "
        + ", ".join(f"{k} " + "/".join(f"{w:.0f}" for w in v) for k, v in walls.items())
    )
    print(f"- total benchmark wall time {seconds:.0f} s")
    print()
    print(
        "| platform configuration | processes x threads | samples/s, each round | its reference's samples/s, each "
        "round | platform / reference, each round | median |"
    )
    print("|---|---|---:|---:|---:|---:|")
    labels = {
        "float32": "float32",
        "bf16": "`trainer.precision=bf16-mixed` (dense layers under bfloat16 autocast)",
        "bf16fp16": "bf16-mixed and `model.table_dtype=float16` (tables stored in float16)",
    }
    for setting in settings:
        kind, shape = setting.name.split("-")
        each = " / ".join(f"{v:,.0f}" for v in sps[setting.name])
        if setting.paired:
            theirs = " / ".join(f"{v:,.0f}" for v in ref_sps[setting.name])
            ratio, median = _fmt(ratios[setting.name]), f"{np.median(ratios[setting.name]):.2f}x"
        else:
            theirs, ratio, median = "(not paired)", "", ""
        print(f"| {labels[kind]} | {shape.replace('x', ' x ')} | {each} | {theirs} | {ratio} | {median} |")
    print()
    for name, each_round in ratios.items():
        at_least = sum(r >= 3.0 for r in each_round)
        print(
            f"{name} / its reference: median {np.median(each_round):.2f}x, "
            f"{min(each_round):.2f}-{max(each_round):.2f}x, {at_least} of {len(each_round)} rounds at or above 3x"
        )
    for setting in settings:
        one = setting.name.replace("-2x1", "-1x1")
        if setting.nproc == 2 and one in sps:
            two_vs_one = _per_round(sps[setting.name], sps[one])
            print(
                f"{setting.name} / {one} (2 processes vs 1, same round): median {np.median(two_vs_one):.2f}x "
                f"(each: {_fmt(two_vs_one)})"
            )
    aucs = [f"{name} {rounds[0]['test_auc']:.4f}" for name, rounds in plat.items()]
    aucs += [f"reference ({name}) {rounds[0]['test_auc']:.4f}" for name, rounds in ref.items()]
    print("test AUC after one epoch (round 1): " + ", ".join(aucs))


def _per_round(num: list[float], den: list[float]) -> list[float]:
    """``num / den`` round by round (both measured in the same round)."""
    return [n / d for n, d in zip(num, den, strict=True)]


def _fmt(ratios: list[float]) -> str:
    return ", ".join(f"{r:.2f}x" for r in ratios)


if __name__ == "__main__":
    sys.exit(main())
