"""The search's fast path: many candidates per pass, the prepared (fused, oneDNN) head, bf16, the sample size.

Real small supernets (DeepFM and DCNv2, dim 8, MLP [64, 32] with BatchNorm, one epoch on 40,000 planted rows) are
scored by :meth:`CandidateScorer.score_many` and compared with one-by-one scoring (:meth:`CandidateScorer.score`,
the model's own float32 head) and with the naive full forward pass. DeLong's noise of an AUC difference is
checked against a bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from config.strict import ConfigError
from ctr.data.shards import load_split
from ctr.models.layers import MLP
from ctr.optembed.fast_head import FusedLinear, bf16_supported, fuse_mlp
from ctr.optembed.module import find_pruning, model_row_masks
from ctr.optembed.scorer import CandidateScorer
from ctr.runs import load_run, train_run
from ctr.training.defaults import load_run_config
from ctr.training.metrics import auc
from search.sample_size import auc_difference_se, rows_for_auc_noise, sized_sample

SMALL = ["trainer.progress_bar=false", "model.mlp=[64,32]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=512", "optim.sparse_lr=0.05"]
SMALL += ["supernet.alpha=0.5", "supernet.threshold_lr=0.2", "supernet.relative=false"]


@pytest.fixture(scope="module")
def data(synth_data: Callable[..., Path]) -> Path:
    return synth_data("batched", 40_000, seed=5)


@pytest.fixture(scope="module")
def supernets(data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One supernet per model, trained on first use."""
    root = tmp_path_factory.mktemp("supernets")

    class Trained(dict[str, Path]):
        def __missing__(self, model: str) -> Path:
            config = load_run_config(None, SMALL, data=str(data), model=model, sections=("supernet",))
            train_run(config, root / model)
            self[model] = root / model
            return root / model

    return Trained()


def _scorer(supernet: Path, **kw: object) -> CandidateScorer:
    run = load_run(supernet)
    masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
    split = load_split(run.config.data.path, run.feature_map, "valid")
    return CandidateScorer(run.model, masks, split, **kw)  # type: ignore[arg-type]


def _candidates(n: int, fields: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(d) for d in rng.choice([0, 4, 8], fields)) for _ in range(n)]


@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
def test_batched_scoring_equals_one_by_one_and_the_naive_pass(supernets: dict[str, Path], model: str) -> None:
    # batch_size 1500 over ~4,000 validation rows: three row blocks, the last one short; DeepFM takes the tower
    # path (first layer on the kept columns only), DCNv2 the generic one (masked fields through the whole head)
    scorer = _scorer(supernets[model], batch_size=1500)
    cands = [*_candidates(9, len(scorer.fields), 0), tuple(8 for _ in scorer.fields)]
    one_by_one = [scorer.score(c) for c in cands]
    batched = scorer.score_many(cands)
    assert len(set(one_by_one)) > 5  # the candidates really differ: equality below is not trivial
    assert batched == pytest.approx(one_by_one, abs=1e-6)
    assert batched[:3] == pytest.approx([scorer.score_naive(c) for c in cands[:3]], abs=1e-6)
    # the logits themselves, not only their ranks
    got = scorer._batched.logits(scorer.sparse, scorer.dense, scorer.first_order, cands[:2])  # type: ignore[union-attr]
    assert torch.allclose(got[1], scorer.logits(cands[1]), atol=1e-5)
    assert scorer.score_many(list(reversed(cands))) == pytest.approx(batched[::-1], abs=1e-6)  # order-free
    assert scorer.score_many([]) == []
    with pytest.raises(ValueError, match="is not 26 dims"):
        scorer.score_many([(4, 4)])


def test_small_samples_stack_candidates_in_the_batch_dimension(supernets: dict[str, Path]) -> None:
    # 2,000 sampled rows, batch 10,000: five candidates share one head call; the AUCs are one-by-one scoring's
    scorer = _scorer(supernets["dcnv2"], batch_size=10_000, max_rows=2000, seed=1)
    cands = _candidates(7, len(scorer.fields), 1)
    assert scorer.num_rows == 2000
    assert scorer.score_many(cands) == pytest.approx([scorer.score(c) for c in cands], abs=1e-6)


def test_bf16_head_stays_close_where_the_cpu_has_it(supernets: dict[str, Path]) -> None:
    scorer = _scorer(supernets["deepfm"], head_dtype=torch.bfloat16)
    cands = _candidates(4, len(scorer.fields), 2)
    got, want = scorer.score_many(cands), [scorer.score(c) for c in cands]
    # bfloat16 keeps 8 bits of mantissa: the logits move by ~1e-2 and a few ranks swap, not more
    assert got == pytest.approx(want, abs=5e-3)
    if bf16_supported():
        assert scorer._batched is not None
        layers = [m for m in scorer._batched.head.modules() if isinstance(m, FusedLinear)]
        assert layers and all(m.weight.dtype == torch.bfloat16 for m in layers)


def test_fused_mlp_is_the_mlp_in_evaluation() -> None:
    torch.manual_seed(0)
    mlp = MLP(12, (16, 8), dropout=0.3)
    with torch.no_grad():  # BatchNorm statistics far from the identity, so that folding them is tested
        for bn in (m for m in mlp.layers if isinstance(m, torch.nn.BatchNorm1d)):
            assert bn.running_mean is not None and bn.running_var is not None
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.2, 3)
            bn.weight.uniform_(0.5, 2)
            bn.bias.uniform_(-1, 1)
    mlp.eval()
    fused = fuse_mlp(mlp)
    assert len(fused) == 2 and all(layer.relu for layer in fused)  # Linear+BN+ReLU(+Dropout) -> one layer
    x = torch.randn(64, 12)
    assert torch.allclose(fused(x), mlp(x), atol=1e-5)
    no_bn = MLP(12, (16,), batch_norm=False).eval()
    assert torch.allclose(fuse_mlp(no_bn)(x), no_bn(x), atol=1e-5)


# ---------------------------------------------------------------------- the sample sized by the AUC's noise
def test_delong_difference_noise_matches_a_bootstrap_and_scales_with_rows() -> None:
    rng = np.random.default_rng(0)
    n = 6000
    y = rng.integers(0, 2, n).astype(np.float64)
    a = y + rng.normal(0, 1.0, n)
    b = a + rng.normal(0, 0.4, n)  # a correlated second candidate, as two dims of one supernet are
    se = auc_difference_se(a, b, y)
    boot = []
    for _ in range(400):
        i = rng.integers(0, n, n)
        boot.append(auc(a[i], y[i]) - auc(b[i], y[i]))
    assert se == pytest.approx(float(np.std(boot)), rel=0.15)
    quarter = rng.choice(n, n // 4, replace=False)
    assert auc_difference_se(a[quarter], b[quarter], y[quarter]) == pytest.approx(2 * se, rel=0.2)  # 1/sqrt(rows)
    assert auc_difference_se(a, a, y) == 0.0
    # sized: se on all rows is ~0.003; a target of twice that needs a quarter of the rows, a tiny one all of them
    rows, all_se = rows_for_auc_noise([a, b], y, 2 * se, min_rows=100)
    assert all_se == se and rows == pytest.approx(n / 4, abs=2)
    assert rows_for_auc_noise([a, b], y, se / 10)[0] == n
    assert rows_for_auc_noise([a, b], y, 1.0, min_rows=500)[0] == 500
    with pytest.raises(ValueError, match="must be positive, got 0"):
        rows_for_auc_noise([a, b], y, 0.0)


def test_sized_sample_scores_a_seeded_subset(supernets: dict[str, Path]) -> None:
    scorer = _scorer(supernets["deepfm"])
    choices = tuple((4, 8) for _ in scorer.fields)
    kept, info = sized_sample(scorer, choices, 1e-6)  # noisier than that on ~4,000 rows: all of them
    assert kept is scorer and info["rows"] == info["of_rows"] == scorer.num_rows and info["se_all_rows"] > 1e-6
    sampled, info = sized_sample(scorer, choices, info["se_all_rows"] * 2, seed=3, min_rows=100)
    assert sampled.num_rows == info["rows"] < scorer.num_rows
    cand = tuple(8 for _ in scorer.fields)
    logits = sampled.logits(cand)  # the sample's rows, scored by the reference path, are the full scorer's rows
    full = scorer.logits(cand)
    assert all(bool(torch.isclose(full, v).any()) for v in logits[:20])
    assert sampled.score_many([cand]) == pytest.approx([sampled.score(cand)], abs=1e-6)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("search.auc_noise=0", "SearchConfig.auc_noise: must be finite and > 0, got 0"),
        ("search.head_dtype=float16", "float16"),
    ],
)
def test_bad_search_settings_fail_by_name(data: Path, setting: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_run_config(None, [setting], data=str(data), model="deepfm", sections=("supernet", "search"))
    config = load_run_config(None, ["search.auc_noise=null"], data=str(data), model="deepfm", sections=("search",))
    assert config.search is not None and config.search.auc_noise is None and config.search.head_dtype == "float32"
