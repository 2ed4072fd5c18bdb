"""The search's fast path: many candidates per pass, the prepared (fused, oneDNN) head, bf16, the sample size.

A real small supernet (DeepFM and DCNv2, dim 8, MLP [64, 32] with BatchNorm, one epoch on 8,000 planted rows) is
scored by :meth:`CandidateScorer.score_many` and compared with one-by-one scoring (:meth:`CandidateScorer.score`,
the model's own float32 head) and with the naive full forward pass.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ctr.data import load_split
from ctr.layers import MLP
from ctr.restore import load_run
from ctr.run_config import load_run_config
from ctr.supernet_module import find_pruning, model_row_masks
from ctr.train import train
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic
from search.fast_head import FusedLinear, bf16_supported, fuse_mlp
from search.scorer import CandidateScorer

SMALL = ["trainer.progress_bar=false", "model.mlp=[64,32]", "model.embedding_dim=8", "trainer.threads=1"]
SMALL += ["trainer.max_epochs=1", "data.batch_size=512", "optim.sparse_lr=0.05"]
SMALL += ["supernet.alpha=0.5", "supernet.threshold_lr=0.2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("batched")
    write_synthetic(8000, root / "s.tsv", seed=5)
    prepare(builtin_spec("criteo"), [root / "s.tsv"], root / "p", PrepareOptions(progress=False, min_count=3))
    return root / "p"


def _scorer(data: Path, out: Path, model: str, **kw: object) -> CandidateScorer:
    train(load_run_config(None, SMALL, data=str(data), model=model, sections=("supernet",)), out)
    run = load_run(out)
    masks = model_row_masks(run.model, run.feature_map, find_pruning(run.model))
    split = load_split(run.config.data.path, run.feature_map, "valid")
    return CandidateScorer(run.model, masks, split, **kw)  # type: ignore[arg-type]


def _candidates(n: int, fields: int, seed: int) -> list[tuple[int, ...]]:
    rng = np.random.default_rng(seed)
    return [tuple(int(d) for d in rng.choice([0, 4, 8], fields)) for _ in range(n)]


@pytest.mark.parametrize("model", ["deepfm", "dcnv2"])
def test_batched_scoring_equals_one_by_one_and_the_naive_pass(data: Path, tmp_path: Path, model: str) -> None:
    # batch_size 300 over ~800 validation rows: three row blocks, the last one short, one candidate per call
    scorer = _scorer(data, tmp_path / "sn", model, batch_size=300)
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


def test_small_samples_stack_candidates_in_the_batch_dimension(data: Path, tmp_path: Path) -> None:
    # 200 sampled rows, batch 1000: five candidates share one head call; the AUCs are those of one-by-one scoring
    scorer = _scorer(data, tmp_path / "sn", "deepfm", batch_size=1000, max_rows=200, seed=1)
    cands = _candidates(7, len(scorer.fields), 1)
    assert scorer.num_rows == 200
    assert scorer.score_many(cands) == pytest.approx([scorer.score(c) for c in cands], abs=1e-6)


def test_bf16_head_stays_close_where_the_cpu_has_it(data: Path, tmp_path: Path) -> None:
    scorer = _scorer(data, tmp_path / "sn", "deepfm", head_dtype=torch.bfloat16)
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
