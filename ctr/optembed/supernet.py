"""OptEmbed building blocks: learnable row pruning and per-example prefix-dimension sampling.

This is the first piece of the OptEmbed supernet (see ../shared/ref/optembed.md, sections 3 and 4); the
supernet LightningModule, the search and the retraining build on it. Both pieces act on the field embeddings
``[B, F, D]`` that ``SparseArch`` returns, so they compose with every base model.

* :class:`RowPruning`: one learnable threshold per field (initialised at 0). A looked-up row is kept when
  its L1 norm exceeds its field's threshold: a hard step forward, the long-tailed surrogate gradient
  backward (:func:`surrogate_grad`), and the regulariser ``alpha * sum(exp(-t))``. The norm is taken on the
  pooled output, which is the row itself for single-valued fields.
* :class:`DimensionSampler`: in training, for every example and every field, a prefix dimension drawn
  uniformly from ``candidates`` (multiples of 4 by default, as FBGEMM tables need); in evaluation the full
  dimension. :func:`prefix_mask` applies a fixed per-field choice (a search candidate).

Example:
    >>> import torch
    >>> emb = torch.tensor([[[0.5, -0.5, 0.0, 0.0], [0.1, 0.0, 0.0, 0.0]]])  # B=1, F=2, D=4
    >>> pruning = RowPruning(num_fields=2)
    >>> with torch.no_grad():
    ...     _ = pruning.thresholds.copy_(torch.tensor([0.5, 0.05]))
    >>> pruning(emb)[0, :, 0].tolist()  # field 0: norm 1.0 > 0.5 kept; field 1: 0.1 > 0.05 kept
    [0.5, 0.10000000149011612]
    >>> prefix_mask((4, 8), 8).int().tolist()
    [[1, 1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1]]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

__all__ = ["DimensionSampler", "RowPruning", "prefix_mask", "row_keep_mask", "surrogate_grad"]


def surrogate_grad(x: torch.Tensor) -> torch.Tensor:
    """The long-tailed surrogate of the step's derivative: 2 - 4|x| on |x| <= 0.4, 0.4 up to |x| <= 1, else 0."""
    a = x.abs()
    return torch.where(a <= 0.4, 2 - 4 * a, torch.where(a <= 1.0, torch.full_like(a, 0.4), torch.zeros_like(a)))


class _Step(torch.autograd.Function):
    """Hard step ``x > 0`` forward, :func:`surrogate_grad` backward."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad * surrogate_grad(x)


def row_keep_mask(weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """Which rows of a full table ``[N, D]`` survive ``threshold`` (the frozen mask of the search stage)."""
    return weight.abs().sum(dim=1) > threshold


class RowPruning(nn.Module):
    """Per-field learnable thresholds on the L1 norm of each looked-up row (OptEmbed-E).

    ``relative=False`` is the paper's form: a row is kept when ``||e||_1 > t_f``, in the table's own units.
    ``relative=True`` (the platform's default, see docs/optembed.md) compares ``||e||_1 / c_f`` with ``t_f``,
    where ``c_f`` (buffer ``scales``) is a running mean of the L1 norm of field ``f``'s looked-up rows in
    training (momentum ``momentum``, set from the first batch): the thresholds, the surrogate's window and the
    regulariser then act in units of the field's typical row norm, whatever the initialisation, the table's
    size or the table learning rate. Evaluation and the frozen mask use the stored ``c_f``.
    ``prunable`` (default: every field): a field marked ``False`` keeps every row; its threshold gets no
    gradient and no regulariser term (``SupernetConfig.small_field_rows``).

    Example:
        >>> pruning = RowPruning(num_fields=3)
        >>> pruning.thresholds.tolist(), round(pruning.regularizer(alpha=1e-4).item(), 6)
        ([0.0, 0.0, 0.0], 0.0003)
        >>> rel = RowPruning(num_fields=1, relative=True)
        >>> rel(torch.tensor([[[2.0, 0.0]], [[1.0, 0.0]]])).flatten().tolist()  # scale set to 1.5; t = 0 keeps
        [2.0, 0.0, 1.0, 0.0]
        >>> rel.scales.tolist(), rel.effective_thresholds().tolist()
        ([1.5], [0.0])
    """

    scales: torch.Tensor
    alpha_log2: torch.Tensor
    pressure: torch.Tensor
    prunable: torch.Tensor

    def __init__(
        self,
        num_fields: int,
        device: torch.device | None = None,
        relative: bool = False,
        momentum: float = 0.9,
        controlled: bool = False,
        weights: Sequence[float] | None = None,
        prunable: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if num_fields < 1:
            raise ValueError(f"RowPruning needs at least one field, got {num_fields}")
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"RowPruning momentum must be in [0, 1), got {momentum}")
        self.thresholds = nn.Parameter(torch.zeros(num_fields, device=device))
        self.relative = relative
        self.momentum = momentum
        if relative:  # zeros until the first training batch (also what DMP writes into a meta-device buffer)
            self.register_buffer("scales", torch.zeros(num_fields, device=device))
        if weights is not None and (len(weights) != num_fields or min(weights) < 0):
            raise ValueError(f"RowPruning weights: {num_fields} values >= 0 expected, got {list(weights)}")
        # each field's share of the regulariser (SupernetConfig.pressure); derived from the config, not checkpointed
        self._weights = [1.0] * num_fields if weights is None else [float(w) for w in weights]
        self.register_buffer("pressure", torch.tensor(self._weights, device=device), persistent=False)
        if prunable is not None and len(prunable) != num_fields:
            raise ValueError(f"RowPruning prunable: {num_fields} flags expected, got {list(prunable)}")
        self._prunable = [True] * num_fields if prunable is None else [bool(p) for p in prunable]
        self.register_buffer("prunable", torch.tensor(self._prunable, device=device), persistent=False)
        self.controlled = controlled
        if controlled:  # log2 of the factor ctr.optembed.threshold_control puts on alpha (0: none), kept in checkpoints
            self.register_buffer("alpha_log2", torch.zeros((), device=device))

    def reset_parameters(self) -> None:
        # also what fills the buffers of a model DistributedModelParallel built on the meta device
        nn.init.zeros_(self.thresholds)
        with torch.no_grad():
            self.pressure.copy_(torch.tensor(self._weights))
            self.prunable.copy_(torch.tensor(self._prunable))
        if self.relative:
            nn.init.zeros_(self.scales)
        if self.controlled:
            nn.init.zeros_(self.alpha_log2)

    @torch.no_grad()
    def _track(self, norms: torch.Tensor) -> None:
        batch = norms.mean(dim=0)
        unset = self.scales == 0
        self.scales.copy_(torch.where(unset, batch, self.momentum * self.scales + (1 - self.momentum) * batch))

    def _unit(self) -> torch.Tensor:
        return self.scales.clamp_min(1e-12)

    def effective_thresholds(self) -> torch.Tensor:
        """The thresholds in the table's own L1 units (what :func:`row_keep_mask` compares row norms with);
        ``-inf`` for a field that is not pruned."""
        t = self.thresholds.detach()
        t = t * self.scales if self.relative else t
        return torch.where(self.prunable, t, float("-inf"))

    def mask(self, emb: torch.Tensor) -> torch.Tensor:
        """``[B, F]`` keep mask (1.0 or 0.0) for field embeddings ``[B, F, D]``, differentiable by surrogate."""
        if emb.dim() != 3 or emb.shape[1] != self.thresholds.numel():
            raise ValueError(f"expected [B, {self.thresholds.numel()}, D] field embeddings, got {tuple(emb.shape)}")
        norms = emb.abs().sum(dim=2)
        if self.relative:
            if self.training:
                self._track(norms.detach())
            norms = norms / self._unit()
        keep: torch.Tensor = _Step.apply(norms - self.thresholds)  # type: ignore[no-untyped-call]
        return torch.where(self.prunable, keep, torch.ones_like(keep))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return emb * self.mask(emb).unsqueeze(-1)

    def regularizer(self, alpha: float) -> torch.Tensor:
        """``alpha * sum_f w_f exp(-t_f)`` (``w_f``: the field's pressure, 1 by default), times the controller's
        factor: pushes thresholds up, weaker as they grow."""
        if self.controlled:
            alpha = alpha * 2.0 ** float(self.alpha_log2)
        return alpha * (self.pressure * self.prunable * torch.exp(-self.thresholds)).sum()


def prefix_mask(dims: Sequence[int] | torch.Tensor, full_dim: int) -> torch.Tensor:
    """Boolean ``[..., full_dim]`` mask keeping the first ``dims[...]`` columns."""
    d = torch.as_tensor(dims)
    return torch.arange(full_dim, device=d.device) < d.unsqueeze(-1)


class DimensionSampler(nn.Module):
    """Uniform per-example, per-field prefix dimensions in training; the full dimension in evaluation.

    Example:
        >>> sampler = DimensionSampler(full_dim=8, generator=torch.Generator().manual_seed(0))
        >>> sampler.candidates
        (4, 8)
        >>> out = sampler(torch.ones(5, 3, 8))
        >>> sorted({int(n) for n in (out != 0).sum(-1).flatten()}) <= [4, 8]
        True
        >>> bool(sampler.eval()(torch.ones(5, 3, 8)).all())
        True
    """

    def __init__(
        self, full_dim: int, candidates: Sequence[int] | None = None, generator: torch.Generator | None = None
    ) -> None:
        super().__init__()
        cands = tuple(candidates) if candidates is not None else tuple(range(4, full_dim + 1, 4))
        bad = [c for c in cands if c < 0 or c > full_dim or c % 4]
        if not cands or bad or max(cands) == 0:
            raise ValueError(
                f"dimension candidates must be multiples of 4 in [0, {full_dim}] (FBGEMM tables need it; 0 drops "
                f"the field), not all 0, got {cands}"
            )
        self.full_dim = full_dim
        self.candidates = cands
        self.generator = generator  # no buffer: DMP zero-fills buffers of modules built on the meta device

    def sample(self, batch: int, fields: int) -> torch.Tensor:
        """``[batch, fields]`` dimensions drawn uniformly from the candidates."""
        idx = torch.randint(len(self.candidates), (batch, fields), generator=self.generator)
        return torch.tensor(self.candidates)[idx]

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return emb
        dims = self.sample(emb.shape[0], emb.shape[1]).to(emb.device)
        return emb * prefix_mask(dims, emb.shape[2]).to(emb.dtype)
