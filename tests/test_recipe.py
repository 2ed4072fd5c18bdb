"""FuxiCTR's recipe in the fused path: table optimisers and the row L2 regulariser (one step on a 3-row table, by
hand), FBGEMM weight decay refused where its kernels ignore it, reduce-LR-on-plateau (dense and tables, resumed),
and embedding dims that are no multiple of 4."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

from config.run import OptimConfig
from config.strict import ConfigError
from ctr.data.columnar import ColumnarSplit
from ctr.data.shards import load_split
from ctr.runs import load_run, train_run
from ctr.tables.seeded_init import table_init
from ctr.training.defaults import load_run_config
from ctr.training.metrics import auc
from features.prepare import PrepareOptions, prepare
from features.schema import FeatureMap
from features.spec import load_spec

QUIET = ["trainer.progress_bar=false", "trainer.threads=1"]
SPEC = "name: tiny\ndelimiter: ','\nheader: true\nlabel: {column: y}\ncategorical:\n  - {name: c}\n"


@pytest.fixture(scope="module")
def three_ids(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """60 rows of one categorical field with 3 values (a 3-row table, plus what the vocabulary reserves)."""
    root = tmp_path_factory.mktemp("three")
    (root / "spec.yaml").write_text(SPEC)
    rows = ["c,y"] + [f"{'abc'[i % 3]},{int(i % 3 == 0 or i % 5 == 0)}" for i in range(60)]
    (root / "data.csv").write_text("\n".join(rows) + "\n")
    prepare(load_spec(root / "spec.yaml"), [root / "data.csv"], root / "prepared", PrepareOptions(progress=False))
    return root / "prepared"


@pytest.fixture(scope="module")
def synth(synth_data: Callable[..., Path]) -> Path:
    return synth_data("synth", 3000, seed=5, min_count=5)


INIT_STD = 0.1


def _one_step_table(data: Path, run: Path, sets: list[str]) -> np.ndarray:
    """LR's first-order table after one training step over the whole training split."""
    one = [*QUIET, "trainer.max_epochs=1", "trainer.limit_train_batches=1", "data.batch_size=4096"]
    one.append(f"model.init_std={INIT_STD}")  # a start large enough for the L2 term to tell the optimisers apart
    train_run(load_run_config(None, [*one, *sets], data=str(data), model="lr"), run)
    model = load_run(run, "checkpoints/last.ckpt").model
    assert model.linear_arch is not None and model.linear_arch.ebc_linear is not None
    table: np.ndarray = model.linear_arch.ebc_linear.embedding_bags["lin_c"].weight.detach().double().numpy()
    return table


def _reference(data: Path, sparse: str, lr: float, l2: float) -> tuple[np.ndarray, np.ndarray]:
    """(start, after one step) of LR's table ``lin_c`` by the formulas of ctr/tables/optimizers.py and
    ctr/training/row_l2.py."""
    fm = FeatureMap.load(data)
    split = load_split(data, fm, "train")
    ids, labels = split.sparse[:, 0].astype(np.int64), split.labels.astype(np.float64)
    w0 = table_init("lin_c", fm.categorical[0].cardinality, 4, seed=0, std=INIT_STD).double().numpy()
    logits = w0[ids].mean(axis=1)  # the bias starts at 0; an id's weight is the mean of its 4 columns
    grad = np.zeros_like(w0)
    np.add.at(grad, ids, ((1 / (1 + np.exp(-logits)) - labels) / len(ids) / 4)[:, None])
    seen = np.unique(ids)
    grad[seen] += l2 * w0[seen]  # each distinct looked-up row once, not divided by the batch size
    # LR's 4 columns of a row get the same loss gradient, so only l2 > 0 tells adagrad from rowwise_adagrad
    eps = 1e-8
    w1 = w0.copy()
    if sparse == "sgd":
        w1[seen] -= lr * grad[seen]
    elif sparse == "adagrad":
        w1[seen] -= lr * grad[seen] / (np.sqrt(grad[seen] ** 2) + eps)
    else:  # rowwise_adagrad
        w1[seen] -= lr * grad[seen] / (np.sqrt((grad[seen] ** 2).mean(axis=1, keepdims=True)) + eps)
    return w0, w1


@pytest.mark.parametrize("sparse", ["sgd", "adagrad", "rowwise_adagrad"])
@pytest.mark.parametrize("l2", [0.0, 0.5])
def test_one_step_of_each_table_optimiser_and_the_row_l2_matches_the_formula(
    sparse: str, l2: float, three_ids: Path, tmp_path: Path
) -> None:
    lr = 0.3
    sets = [f"optim.sparse={sparse}", f"optim.sparse_lr={lr}", f"optim.embedding_l2={l2}"]
    got = _one_step_table(three_ids, tmp_path / "run", sets)
    w0, want = _reference(three_ids, sparse, lr, l2)
    assert got.shape == want.shape and got.shape[0] >= 3
    np.testing.assert_allclose(got, want, atol=1e-6, rtol=0)
    assert np.abs(got - w0).max() > 1e-3  # the step moved the rows
    if l2 > 0:  # and the regulariser changed the step
        assert np.abs(got - _reference(three_ids, sparse, lr, 0.0)[1]).max() > 1e-3


def test_fbgemm_weight_decay_is_refused_where_its_kernels_ignore_it(three_ids: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"OptimConfig\.sparse_weight_decay: FBGEMM's sgd ignores weight decay"):
        OptimConfig(sparse="sgd", sparse_weight_decay=0.1)
    config = load_run_config(None, [*QUIET, "optim.sparse_weight_decay=0.1"], data=str(three_ids), model="lr")
    with pytest.raises(ConfigError, match=r"^optim\.sparse_weight_decay: FBGEMM's CPU kernels ignore weight decay"):
        train_run(config, tmp_path / "run")


class _LearningRates(Callback):
    """Dense and table learning rates at the start of every epoch, and every epoch's validation AUC."""

    def __init__(self) -> None:
        self.dense: list[float] = []
        self.table: list[float] = []
        self.val_auc: list[float] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        self.dense.append(float(trainer.optimizers[0].param_groups[0]["lr"]))
        self.table.append(pl_module.table_lr)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.state.fn == "fit":
            self.val_auc.append(float(trainer.callback_metrics["val_auc"]))


def _probed_train(monkeypatch: pytest.MonkeyPatch, sets: list[str], data: Path, run: Path, **kw: Any) -> Any:
    probe = _LearningRates()
    trainer_cls = pl.Trainer  # what ctr.training.train builds its Trainer from
    monkeypatch.setattr(pl, "Trainer", lambda *a, **k: trainer_cls(*a, **{**k, "callbacks": [*k["callbacks"], probe]}))
    metrics = train_run(load_run_config(None, sets, data=str(data), model="lr"), run, **kw)
    monkeypatch.undo()
    return probe, metrics


def test_plateau_divides_dense_and_table_learning_rates_and_survives_resume(
    three_ids: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 3 ids: the validation AUC reaches its ceiling at once, so every later epoch is a plateau
    sets = [*QUIET, "optim.scheduler=plateau", "optim.lr=0.01", "optim.sparse_lr=0.05", "data.batch_size=16"]
    sets += ["trainer.patience=10", "optim.min_lr=1e-5"]
    probe, metrics = _probed_train(monkeypatch, [*sets, "trainer.max_epochs=5"], three_ids, tmp_path / "a")
    assert len(probe.dense) == 5 and len(probe.val_auc) == 5
    best, dense, table = -1.0, 0.01, 0.05
    for epoch in range(4):  # the rate of epoch e + 1 from the AUC of epoch e, FuxiCTR's rule
        assert probe.dense[epoch] == pytest.approx(dense, rel=1e-6) and probe.table[epoch] == pytest.approx(table)
        if probe.val_auc[epoch] > best:
            best = probe.val_auc[epoch]
        else:
            dense, table = max(dense * 0.1, 1e-5), max(table * 0.1, 1e-5)
    assert probe.dense[4] == pytest.approx(dense, rel=1e-6) and probe.table[4] == pytest.approx(table)
    assert probe.dense[4] < 0.01 and probe.table[4] < 0.05  # the planted plateau happened
    assert metrics["val_auc"] == pytest.approx(max(probe.val_auc), abs=1e-6)  # the best epoch is what is reported

    # interrupted after 3 epochs and resumed to 5: the same rates and the same final weights
    _probed_train(monkeypatch, [*sets, "trainer.max_epochs=3"], three_ids, tmp_path / "b")
    resumed, _ = _probed_train(monkeypatch, [*sets, "trainer.max_epochs=5"], three_ids, tmp_path / "b", resume=True)
    assert resumed.dense == pytest.approx(probe.dense[3:], rel=1e-6)
    assert resumed.table == pytest.approx(probe.table[3:], rel=1e-6)
    a, b = (load_run(tmp_path / r, "checkpoints/last.ckpt").model.state_dict() for r in ("a", "b"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _logits(model: torch.nn.Module, split: ColumnarSplit) -> np.ndarray:
    with torch.no_grad():
        batches = [split.batch(np.arange(s, min(s + 4096, len(split)))) for s in range(0, len(split), 4096)]
        return torch.cat([model(b) for b in batches]).numpy()


def _table(model: torch.nn.Module, name: str) -> torch.Tensor:
    weight: torch.Tensor = model.sparse_arch.ebc.embedding_bags[f"t_{name}"].weight  # type: ignore[union-attr, index]
    return weight


@pytest.mark.parametrize(("model", "dim"), [("deepfm", 10), ("dcnv2", 7)])
def test_a_dim_that_is_no_multiple_of_4_trains_counts_logical_params_and_restores(
    model: str, dim: int, synth: Path, tmp_path: Path
) -> None:
    sets = [*QUIET, f"model.embedding_dim={dim}", "model.mlp=[16]", "trainer.max_epochs=2", "data.batch_size=256"]
    sets += ["optim.embedding_l2=0.01", "optim.sparse_lr=0.01", "optim.scheduler=none"]  # not the data-aware ones
    sets += ["model.init_std=null", "model.batch_norm=true"]  # 2 epochs: the uniform start learns sooner
    metrics = train_run(load_run_config(None, sets, data=str(synth), model=model), tmp_path / "run")
    fm = FeatureMap.load(synth)
    first_order = 4 if model == "deepfm" else 0
    assert metrics["embedding_params"] == sum(f.cardinality * (dim + first_order) for f in fm.categorical)
    assert metrics["test_auc"] > 0.55
    trained = load_run(tmp_path / "run")
    stored = -(-dim // 4) * 4
    for f in fm.categorical:
        table = _table(trained.model, f.name)
        assert table.shape == (f.cardinality, stored + first_order)
        assert torch.count_nonzero(table[:, dim:stored]) == 0  # the padding stayed exactly zero
    split = load_split(synth, fm, "test")
    before = _logits(trained.model, split)
    with torch.no_grad():
        for f in fm.categorical:  # padding that is not zero changes nothing: it is never read
            _table(trained.model, f.name)[:, dim:stored] = 5.0
    np.testing.assert_array_equal(before, _logits(trained.model, split))
    assert auc(before, split.labels) == pytest.approx(metrics["test_auc"], abs=1e-6)  # restored = best


def test_the_supernet_refuses_a_dim_that_is_no_multiple_of_4(synth: Path) -> None:
    from ctr.runs import build_module

    config = load_run_config(None, ["model.embedding_dim=10"], data=str(synth), model="deepfm", sections=["supernet"])
    with pytest.raises(ConfigError, match=r"^model\.embedding_dim: 10 is not a multiple of 4, which the OptEmbed"):
        build_module(config, FeatureMap.load(synth))


class _Restores(Callback):
    """The logits of one fixed validation batch: at each new best validation AUC, and at the start of every epoch
    that follows an epoch without one (each such start with the best logits so far)."""

    def __init__(self) -> None:
        self.batch: Any = None
        self.best_auc = -1.0
        self.best: torch.Tensor | None = None
        self.bad = False
        self.after_bad: list[tuple[torch.Tensor, torch.Tensor]] = []

    def _logits(self, pl_module: Any) -> torch.Tensor:
        training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            logits: torch.Tensor = pl_module.model(self.batch).detach().clone()
        pl_module.train(training)
        return logits

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: Any, batch: Any, *args: Any) -> None:
        if self.batch is None:
            self.batch = batch

    def on_validation_end(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if trainer.state.fn != "fit" or trainer.sanity_checking:
            return
        value = float(trainer.callback_metrics["val_auc"])
        self.bad = value <= self.best_auc
        if not self.bad:
            self.best_auc, self.best = value, self._logits(pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        if self.bad and self.best is not None:
            self.after_bad.append((self.best, self._logits(pl_module)))


@pytest.mark.parametrize("restore", [True, False])
def test_plateau_restore_puts_the_best_epochs_weights_back_after_a_bad_epoch(
    restore: bool, tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a table rate that over-fits 2.4k rows within an epoch or two, so the run has epochs without a new best
    sets = [*QUIET, "model.mlp=[16]", "model.embedding_dim=8", "trainer.max_epochs=6", "trainer.patience=3"]
    sets += ["data.batch_size=256", "optim.sparse_lr=0.5", "optim.lr=0.03", "model.init_std=null"]
    sets.append(f"optim.plateau_restore={str(restore).lower()}")
    probe = _Restores()
    trainer_cls = pl.Trainer
    monkeypatch.setattr(pl, "Trainer", lambda *a, **k: trainer_cls(*a, **{**k, "callbacks": [*k["callbacks"], probe]}))
    config = load_run_config(None, sets, data=str(tiny), model="deepfm")
    assert config.optim.scheduler == "plateau" and config.optim.plateau_restore is restore
    train_run(config, tmp_path / "run")
    assert probe.after_bad, "the run had no epoch without a new best: nothing was tested"
    gaps = [float((best - start).abs().max()) for best, start in probe.after_bad]
    if restore:  # every epoch after a bad one starts from exactly the best epoch's model
        assert max(gaps) <= 1e-6, gaps
    else:  # without the restore it starts from the last epoch's, which over-fitted
        assert min(gaps) > 1e-3, gaps


class _CorruptsBest(Callback):
    """Truncates every shard file of the best checkpoint at the start of every epoch after the first (so the restore
    after a bad epoch reads a truncated one)."""

    def __init__(self) -> None:
        self.truncated: list[Path] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: Any) -> None:
        best = getattr(trainer.checkpoint_callback, "best_model_path", "")
        if trainer.current_epoch >= 1 and best:
            for shard in Path(best).glob("*.distcp"):
                shard.write_bytes(shard.read_bytes()[:16])
                self.truncated.append(shard)


def test_a_corrupt_best_checkpoint_stops_the_restore_with_one_line_naming_it(
    tiny: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctr.training.strategy import CheckpointError

    sets = [*QUIET, "model.mlp=[16]", "model.embedding_dim=8", "trainer.max_epochs=6", "trainer.patience=3"]
    sets += ["data.batch_size=256", "optim.sparse_lr=0.5", "optim.lr=0.03", "model.init_std=null"]
    sets.append("optim.plateau_restore=true")
    probe = _CorruptsBest()
    trainer_cls = pl.Trainer
    monkeypatch.setattr(pl, "Trainer", lambda *a, **k: trainer_cls(*a, **{**k, "callbacks": [*k["callbacks"], probe]}))
    config = load_run_config(None, sets, data=str(tiny), model="deepfm")
    with pytest.raises(CheckpointError) as caught:
        train_run(config, tmp_path / "run")
    assert probe.truncated, "no shard file was truncated: nothing was tested"
    message = str(caught.value)
    assert "\n" not in message and "best.ckpt" in message and "optim.plateau_restore=false" in message, message
