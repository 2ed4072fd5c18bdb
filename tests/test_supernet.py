"""OptEmbed building blocks: surrogate gradient values, masks, regulariser, dimension sampling."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from config.strict import ConfigError
from ctr.optembed.plan import EmbeddingPlan
from ctr.optembed.supernet import DimensionSampler, RowPruning, prefix_mask, row_keep_mask, surrogate_grad


@pytest.mark.parametrize(
    ("x", "g"),
    [(-1.5, 0.0), (-1.0, 0.4), (-0.8, 0.4), (-0.3, 0.8), (0.0, 2.0), (0.2, 1.2), (0.4, 0.4), (0.5, 0.4), (1.2, 0.0)],
)
def test_surrogate_gradient_at_chosen_points(x: float, g: float) -> None:
    assert surrogate_grad(torch.tensor(x)).item() == pytest.approx(g)


def test_step_forward_and_gradients_reach_threshold_with_minus_sign() -> None:
    # one field, one example: row [0.3, -0.1] has L1 norm 0.4; threshold 0.2 -> x = 0.2, kept, g(x) = 1.2
    emb = torch.tensor([[[0.3, -0.1]]], requires_grad=True)
    pruning = RowPruning(num_fields=1)
    with torch.no_grad():
        pruning.thresholds.fill_(0.2)
    mask = pruning.mask(emb)
    assert mask.tolist() == [[1.0]]
    mask.sum().backward()
    assert pruning.thresholds.grad is not None and emb.grad is not None
    assert pruning.thresholds.grad.item() == pytest.approx(-1.2)
    assert emb.grad.flatten().tolist() == pytest.approx([1.2, -1.2])  # through sign(e)


def test_rows_far_below_threshold_get_no_gradient() -> None:
    emb = torch.tensor([[[0.1, 0.1]]], requires_grad=True)  # norm 0.2; threshold 1.5 -> x = -1.3
    pruning = RowPruning(num_fields=1)
    with torch.no_grad():
        pruning.thresholds.fill_(1.5)
    out = pruning(emb)
    assert out.abs().sum().item() == 0.0
    pruning.mask(emb).sum().backward()
    assert emb.grad is not None and emb.grad.abs().sum().item() == 0.0


def test_pruning_zeroes_rows_per_field_and_checks_shape() -> None:
    emb = torch.tensor([[[1.0, 1.0], [0.1, 0.0]], [[0.0, 0.2], [2.0, 0.0]]])  # B=2, F=2
    pruning = RowPruning(num_fields=2)
    with torch.no_grad():
        pruning.thresholds.copy_(torch.tensor([0.5, 0.5]))
    out = pruning(emb)
    assert pruning.mask(emb).tolist() == [[1.0, 0.0], [0.0, 1.0]]
    assert out.tolist() == [[[1.0, 1.0], [0.0, 0.0]], [[0.0, 0.0], [2.0, 0.0]]]
    with pytest.raises(ValueError, match=r"expected \[B, 2, D\]"):
        pruning(torch.ones(2, 3, 2))


def test_regularizer_value() -> None:
    pruning = RowPruning(num_fields=2)
    with torch.no_grad():
        pruning.thresholds.copy_(torch.tensor([0.0, 1.0]))
    assert pruning.regularizer(0.5).item() == pytest.approx(0.5 * (1 + math.exp(-1)))


def test_row_keep_mask_on_a_full_table() -> None:
    weight = torch.tensor([[0.1, -0.1], [1.0, 0.0], [0.0, 0.0]])
    assert row_keep_mask(weight, 0.15).tolist() == [True, True, False]


def test_prefix_mask_and_dimension_sampler() -> None:
    assert prefix_mask(torch.tensor([[4, 8]]), 8).sum(-1).tolist() == [[4, 8]]
    sampler = DimensionSampler(16, generator=torch.Generator().manual_seed(1))
    assert sampler.candidates == (4, 8, 12, 16)
    out = sampler(torch.ones(200, 3, 16))
    kept = (out != 0).sum(-1)
    assert set(kept.unique().tolist()) == {4, 8, 12, 16}  # every candidate drawn
    assert torch.equal(out, out * prefix_mask(kept, 16))  # masks are prefixes
    again = DimensionSampler(16, generator=torch.Generator().manual_seed(1))(torch.ones(200, 3, 16))
    assert torch.equal(out, again)  # state is explicit: same generator seed, same draws
    sampler.eval()
    assert torch.equal(sampler(torch.ones(2, 3, 16)), torch.ones(2, 3, 16))


@pytest.mark.parametrize("candidates", [(6,), (4, 20), (), (0,), (-4, 8)])
def test_dimension_candidates_must_be_multiples_of_4(candidates: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        DimensionSampler(16, candidates)


def test_supernet_trains_under_lightning_and_thresholds_learn(tmp_path: Path) -> None:
    from ctr.runs import train_run
    from ctr.training.defaults import load_run_config
    from features.prepare import PrepareOptions, prepare
    from features.spec import builtin_spec
    from features.synth import write_synthetic

    write_synthetic(6000, tmp_path / "s.tsv", seed=2)
    prepare(builtin_spec("criteo"), [tmp_path / "s.tsv"], tmp_path / "p", PrepareOptions(progress=False))
    sets = ["trainer.progress_bar=false", "trainer.max_epochs=1", "model.mlp=[32]", "model.embedding_dim=8"]
    sets += [
        "supernet.alpha=0.5",
        "supernet.threshold_lr=0.1",
        "supernet.relative=false",
        "trainer.threads=1",
        "trainer.log_every_n_steps=1",
    ]
    sets += ["data.batch_size=256"]
    metrics = train_run(load_run_config(None, sets, data=str(tmp_path / "p"), model="deepfm"), tmp_path / "run")
    # The previous stage on the same rows: the base model with full tables (OptEmbed's baseline). The supernet
    # prunes rows and samples dims, yet keeps most of the baseline's lift over a constant predictor (AUC 0.5).
    base_sets = [s for s in sets if not s.startswith("supernet.")]
    base = train_run(load_run_config(None, base_sets, data=str(tmp_path / "p"), model="deepfm"), tmp_path / "base")
    print(f"test AUC: baseline {base['test_auc']:.4f}, supernet {metrics['test_auc']:.4f}")
    assert base["test_auc"] > 0.55, base
    assert metrics["test_auc"] - 0.5 > 0.5 * (base["test_auc"] - 0.5), (metrics["test_auc"], base["test_auc"])
    meta = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt" / "lightning_meta.pt", weights_only=True)
    assert meta["ctr_spec"]["model"]["name"] == "deepfm"
    logs = (next((tmp_path / "run" / "logs").rglob("metrics.csv"))).read_text().splitlines()
    header = logs[0].split(",")
    assert "threshold_mean" in header
    means = [
        float(row.split(",")[header.index("threshold_mean")])
        for row in logs[1:]
        if row.split(",")[header.index("threshold_mean")]
    ]
    assert means and means[-1] > 0.0  # the regulariser pushed the thresholds up from 0
    plan = EmbeddingPlan.load(tmp_path / "run" / "plan.json")
    assert [f.name for f in plan.fields] == [f"C{i}" for i in range(1, 27)]
    assert all(0 <= f.rows_kept <= f.rows_total and f.dim == 8 for f in plan.fields)
    assert metrics["row_sparsity"] == pytest.approx(plan.row_sparsity)
    assert 0.0 < plan.row_sparsity < 1.0, "with alpha 0.5 the thresholds prune some rows, not all"


@pytest.mark.parametrize("model", ["deepfm", "fnn", "ipnn", "dcn", "dcnv2", "fm", "dlrm"])
def test_supernet_wraps_every_base_model_with_field_embeddings(model: str) -> None:
    from torchrec import KeyedJaggedTensor
    from torchrec.datasets.utils import Batch

    from ctr.optembed.module import SupernetModule, find_pruning
    from ctr.training.defaults import load_run_config
    from features.schema import CategoricalField, DenseField, FeatureMap

    fm = FeatureMap(
        dataset="toy", label="y", splits={}, source_spec={}, seed=0, split_method="random",
        dense=(DenseField("x", "none", 0.0, 0.0, 1.0),),
        categorical=(CategoricalField("a", "vocab", 20), CategoricalField("b", "vocab", 30)),
    )  # fmt: skip
    sets = ["model.embedding_dim=8", "model.mlp=[8]", "model.dense_mlp=[4]", "supernet.small_field_rows=0"]
    module = SupernetModule(load_run_config(None, sets, data="x", model=model, sections=("supernet",)), fm)
    half = load_run_config(None, [*sets, "model.table_dtype=float16"], data="x", model=model, sections=("supernet",))
    with pytest.raises(ConfigError, match="the OptEmbed supernet needs float32 tables"):
        SupernetModule(half, fm)
    net = module.build_unsharded(torch.device("cpu"))
    pruning = find_pruning(net)
    assert pruning is not None and pruning.thresholds.shape == (2,)
    kjt = KeyedJaggedTensor.from_lengths_sync(["a", "b"], torch.tensor([3, 4, 5, 6]), torch.tensor([1, 1, 1, 1]))
    batch = Batch(dense_features=torch.randn(2, 1), sparse_features=kjt, labels=torch.zeros(2))
    net.train()
    with torch.no_grad():
        pruning.thresholds.fill_(0.1)  # inside every row's surrogate window: the threshold gets a gradient
    net(batch).sum().backward()
    assert pruning.thresholds.grad is not None and bool(pruning.thresholds.grad.ne(0).any())


def test_pressure_by_rows_weights_each_fields_regulariser_term() -> None:
    from ctr.optembed.module import field_pressure
    from features.schema import CategoricalField, FeatureMap

    fm = FeatureMap(
        dataset="toy", label="y", dense=(), splits={}, source_spec={}, seed=0, split_method="random",
        categorical=(
            CategoricalField("big", "vocab", 300),
            CategoricalField("mid", "vocab", 100),
            CategoricalField("tiny", "vocab", 5),
        ),
    )  # fmt: skip
    weights = field_pressure(fm)  # mean rows 135: min(1, rows / 135)
    assert weights == pytest.approx([1.0, 100 / 135, 5 / 135])
    pruning = RowPruning(num_fields=3, relative=True, weights=weights)
    pruning.thresholds.data = torch.tensor([0.0, 0.0, 1.0])
    reg = pruning.regularizer(alpha=2.0)  # 2 * (1 + 100/135 + 5/135 * e^-1)
    assert reg.item() == pytest.approx(2.0 * (1.0 + 100 / 135 + 5 / 135 * math.exp(-1.0)), rel=1e-6)
    reg.backward()  # the push on each threshold: -alpha * w_f * exp(-t_f)
    assert pruning.thresholds.grad is not None
    expected = [-2.0, -2.0 * 100 / 135, -2.0 * 5 / 135 * math.exp(-1.0)]
    assert pruning.thresholds.grad.tolist() == pytest.approx(expected, rel=1e-6)
    assert "pressure" not in pruning.state_dict()  # derived from the config: checkpoints keep their keys
    with pytest.raises(ValueError, match="RowPruning weights: 3 values >= 0 expected"):
        RowPruning(num_fields=3, weights=[1.0, 1.0])


def test_a_field_that_is_not_prunable_keeps_every_row_and_its_threshold_gets_no_push() -> None:
    """Field 1 (``prunable`` False) keeps its rows, even a row of norm 0, whatever its threshold; only field 0's
    threshold feels the data and the regulariser."""
    pruning = RowPruning(num_fields=2, relative=False, prunable=[True, False])
    pruning.thresholds.data = torch.tensor([0.5, 0.5])
    emb = torch.tensor([[[0.2, 0.2], [0.1, 0.1]], [[0.6, 0.0], [0.0, 0.0]]], requires_grad=True)  # [B=2, F=2, D=2]
    keep = pruning.mask(emb)  # L1 norms: field 0: 0.4, 0.6 (threshold 0.5: cut, kept); field 1: 0.2, 0.0
    assert keep.tolist() == [[0.0, 1.0], [1.0, 1.0]]
    (keep.sum() + pruning.regularizer(alpha=2.0)).backward()  # regulariser: 2 * exp(-0.5), field 0 only
    assert pruning.thresholds.grad is not None
    # field 0: the surrogate at x = -0.1 and 0.1 is 2 - 4 * 0.1 = 1.6 each, so d(keep)/dt = -3.2; -2 e^-0.5 more
    assert pruning.thresholds.grad.tolist() == pytest.approx([-3.2 - 2.0 * math.exp(-0.5), 0.0], rel=1e-6)
    assert pruning.effective_thresholds().tolist() == [0.5, float("-inf")]
    table = torch.tensor([[0.0, 0.0], [0.3, 0.3]])  # a never-seen row of norm 0 is kept in the frozen mask too
    assert row_keep_mask(table, float(pruning.effective_thresholds()[1])).tolist() == [True, True]
    assert "prunable" not in pruning.state_dict()  # derived from the config: checkpoints keep their keys
    with pytest.raises(ValueError, match="RowPruning prunable: 2 flags expected"):
        RowPruning(num_fields=2, prunable=[True])
