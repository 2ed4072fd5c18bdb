"""The relative threshold regulariser's invariances (docs/optembed.md, "A regulariser that needs no tuning").

* Exact: scaling every row by ``k`` (another initialisation, another table learning rate) leaves the relative
  form's masks and threshold gradients unchanged; the paper's form prunes differently.
* Measured: one supernet epoch on planted data at two lengths and two batch sizes, 4x apart in steps, learns
  the same relative thresholds (mean within 25 %, per field within 0.4 on average) and prunes the same share of
  rows (within 0.1); the paper's form, with per-step settings, moves its thresholds 2x or more apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ctr.restore import load_run
from ctr.run_config import load_run_config
from ctr.supernet import RowPruning
from ctr.supernet_module import find_pruning
from ctr.train import train
from features.prepare import PrepareOptions, prepare
from features.spec import builtin_spec
from features.synth import write_synthetic


def _threshold_grad(pruning: RowPruning, emb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    pruning.thresholds.grad = None
    mask = pruning.mask(emb)
    weights = torch.arange(1.0, mask.shape[0] + 1).unsqueeze(1)  # a loss that weighs the examples differently
    torch.autograd.backward((mask * weights).sum())
    assert pruning.thresholds.grad is not None
    return mask.detach(), pruning.thresholds.grad.clone()


@pytest.mark.parametrize("k", [0.01, 7.0])
def test_relative_form_is_exactly_invariant_to_the_scale_of_the_rows(k: float) -> None:
    gen = torch.Generator().manual_seed(0)
    emb = torch.rand(64, 3, 8, generator=gen) * torch.tensor([0.1, 1.0, 3.0]).view(1, 3, 1)
    masks, grads = [], []
    for scale in (1.0, k):
        pruning = RowPruning(num_fields=3, relative=True, momentum=0.0)
        with torch.no_grad():
            pruning.thresholds.copy_(torch.tensor([0.9, 1.0, 1.1]))
        mask, grad = _threshold_grad(pruning, emb * scale)
        masks.append(mask)
        grads.append(grad)
        assert pruning.effective_thresholds().tolist() == pytest.approx((pruning.scales * pruning.thresholds).tolist())
    assert 0 < int(masks[0].sum()) < masks[0].numel()  # the case prunes some rows and keeps others
    assert torch.equal(masks[0], masks[1])
    assert torch.allclose(grads[0], grads[1], rtol=1e-5)
    paper = RowPruning(num_fields=3)
    with torch.no_grad():
        paper.thresholds.copy_(torch.tensor([0.9, 1.0, 1.1]))
    assert not torch.equal(paper.mask(emb), paper.mask(emb * k))  # the paper's form depends on the scale


def test_relative_scales_track_the_rows_and_freeze_in_evaluation() -> None:
    pruning = RowPruning(num_fields=1, relative=True, momentum=0.5)
    pruning(torch.full((4, 1, 2), 1.0))  # L1 norm 2: the first batch sets the scale
    assert pruning.scales.tolist() == [2.0]
    pruning(torch.full((4, 1, 2), 3.0))  # norm 6: 0.5 * 2 + 0.5 * 6
    assert pruning.scales.tolist() == [4.0]
    pruning.eval()
    pruning(torch.full((4, 1, 2), 10.0))
    assert pruning.scales.tolist() == [4.0]
    with torch.no_grad():
        pruning.thresholds.fill_(1.5)  # keeps rows whose norm exceeds 1.5 * 4 = 6
    assert pruning.mask(torch.tensor([[[2.0, 3.9]], [[4.0, 2.1]]])).flatten().tolist() == [0.0, 1.0]


def _thresholds(root: Path, rows: int, batch: int, relative: bool, extra: list[str]) -> tuple[torch.Tensor, float]:
    data = root / f"p{rows}"
    if not data.exists():
        write_synthetic(rows, root / f"s{rows}.tsv", seed=3)
        prepare(builtin_spec("criteo"), [root / f"s{rows}.tsv"], data, PrepareOptions(progress=False))
    sets = ["trainer.progress_bar=false", "trainer.max_epochs=1", "model.mlp=[32]", "model.embedding_dim=8"]
    sets += ["trainer.threads=1", f"data.batch_size={batch}", f"supernet.relative={str(relative).lower()}", *extra]
    run = root / f"run-{relative}-{rows}-{batch}"
    config = load_run_config(None, sets, data=str(data), model="deepfm", sections=("supernet",))
    metrics = train(config, run)
    pruning = find_pruning(load_run(run).model)
    assert pruning is not None
    return pruning.thresholds.detach(), float(metrics["row_sparsity"])


@pytest.mark.slow
def test_relative_thresholds_do_not_depend_on_length_or_batch_size(tmp_path: Path) -> None:
    # 16k rows at batch 256 (50 steps) and 32k rows at batch 128 (200 steps): 4x the steps, same data source
    short, long_ = (16_000, 256), (32_000, 128)
    t_short, sparsity_short = _thresholds(tmp_path, *short, relative=True, extra=[])
    t_long, sparsity_long = _thresholds(tmp_path, *long_, relative=True, extra=[])
    ratio = float(t_long.mean() / t_short.mean())
    print(
        f"relative: mean thresholds {t_short.mean():.3f} / {t_long.mean():.3f}, row sparsity "
        f"{sparsity_short:.3f} / {sparsity_long:.3f}"
    )
    assert t_short.mean() > 0.5  # the regulariser moved them (0 at the start)
    assert 0.8 < ratio < 1.25
    assert float((t_long - t_short).abs().mean()) < 0.4
    assert abs(sparsity_long - sparsity_short) < 0.1
    paper = ["supernet.alpha=0.01", "supernet.threshold_lr=1.0"]  # configs/optembed.yaml's per-step settings
    p_short, _ = _thresholds(tmp_path, *short, relative=False, extra=paper)
    p_long, _ = _thresholds(tmp_path, *long_, relative=False, extra=paper)
    print(f"paper's form: mean thresholds {p_short.mean():.3f} / {p_long.mean():.3f}")
    assert float(p_long.mean() / p_short.mean()) > 2.0
