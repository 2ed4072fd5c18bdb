"""Dense building blocks of the model zoo: MLP, FM, inner products, cross networks, DLRM dot interaction.

Every module works on plain tensors (``[B, F, D]`` field embeddings or ``[B, d]`` vectors), keeps its
parameters as direct ``nn.Parameter`` attributes or standard ``nn.Linear``/``nn.BatchNorm1d`` children, and
has a ``reset_parameters`` where it owns parameters: a model built on ``torch.device("meta")`` is then
materialised correctly by ``DistributedModelParallel`` (which allocates each meta parameter with
``empty_like`` and calls the owning module's ``reset_parameters``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

__all__ = ["MLP", "CrossNet", "CrossNetV2", "DotInteraction", "FMInteraction", "InnerProduct", "LearnedVector"]


class MLP(nn.Module):
    """``(Linear -> BatchNorm1d (optional) -> ReLU -> Dropout) x len(hidden)``: ``[B, in_dim] -> [B, out_dim]``.

    With BatchNorm the Linear layers have no bias (BatchNorm's shift is the bias).

    ``out_dim`` is ``hidden[-1]``; an empty ``hidden`` is the identity (``out_dim == in_dim``).

    Example:
        >>> mlp = MLP(8, (16, 4), dropout=0.1)
        >>> mlp.out_dim, mlp(torch.randn(3, 8)).shape
        (4, torch.Size([3, 4]))
    """

    def __init__(
        self,
        in_dim: int,
        hidden: tuple[int, ...],
        dropout: float = 0.0,
        batch_norm: bool = True,
        device: torch.device | None = None,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for size in hidden:
            # no bias before BatchNorm: the batch mean removes it and BatchNorm's shift takes its place, so it is
            # the same function without a redundant parameter (as ResNets drop it before their BatchNorms); the
            # bias add and its gradient's sum cost 5-9 % of a bf16 DeepFM MLP step (docs/benchmarks.md)
            layers.append(nn.Linear(width, size, bias=not batch_norm, device=device))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size, device=device))
            # in place: the Linear and BatchNorm backward need their inputs, not their outputs (autograd would
            # raise, not miscompute, if one did); one activation fewer a layer, 3-6 % of DeepFM's MLP step
            layers.append(nn.ReLU(inplace=True))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = size
        self.layers = nn.Sequential(*layers)
        self.out_dim = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.layers(x)
        return out


class FMInteraction(nn.Module):
    """Factorisation-machine second-order term: ``sum_{i<j} <e_i, e_j> = 0.5 * sum_d((sum_f e)^2 - sum_f e^2)``.

    ``[B, F, D] -> [B]``.

    Example:
        >>> e = torch.tensor([[[1.0, 2.0], [3.0, 4.0]]])
        >>> FMInteraction()(e).round(decimals=5)  # 1*3 + 2*4, up to float32 rounding
        tensor([11.])
    """

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = _FMFunction.apply(emb)  # type: ignore[no-untyped-call]
        return out


class _FMFunction(torch.autograd.Function):
    """The FM term with a hand-written backward: ``d FM / d e_f = sum_g e_g - e_f``.

    Autograd of the textbook formula keeps ``e^2`` and builds its gradient in several full ``[B, F, D]`` passes;
    here nothing of that size is kept, and the backward writes the gradient in one pass (forward + backward of
    ``[4096, 39, 16]`` on one core take less than half the time autograd's do). Checked against the formula by
    ``torch.autograd.gradcheck`` in the tests.
    """

    @staticmethod
    def forward(ctx: Any, emb: torch.Tensor) -> torch.Tensor:
        total = emb.sum(dim=1)  # [B, D]
        # one reduction with nothing of emb's size written: 2.5x faster than a square and a sum
        sum_of_square = torch.linalg.vector_norm(emb.flatten(1), dim=1).square()
        ctx.save_for_backward(emb, total)
        fm: torch.Tensor = 0.5 * (total.square().sum(dim=1) - sum_of_square)
        return fm

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        emb, total = ctx.saved_tensors
        g = grad.view(-1, 1, 1)
        out: torch.Tensor = torch.addcmul(total.unsqueeze(1) * g, emb, g, value=-1.0)  # g * (total - e_f)
        return out


class InnerProduct(nn.Module):
    """All pairwise field inner products ``<e_i, e_j>`` for ``i < j`` (row-major): ``[B, F, D] -> [B, F(F-1)/2]``.

    Example:
        >>> e = torch.tensor([[[1.0, 0.0], [2.0, 1.0], [0.0, 3.0]]])
        >>> InnerProduct(3)(e)  # pairs (0,1), (0,2), (1,2)
        tensor([[2., 0., 3.]])
    """

    def __init__(self, num_fields: int) -> None:
        super().__init__()
        if num_fields < 2:
            raise ValueError(f"InnerProduct needs at least 2 fields, got {num_fields}")
        self.num_fields = num_fields
        self.out_dim = num_fields * (num_fields - 1) // 2

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        gram = torch.bmm(emb, emb.transpose(1, 2))
        # Built on the input's device each call (a tiny kernel): a buffer would not survive meta -> DMP.
        rows, cols = torch.triu_indices(self.num_fields, self.num_fields, offset=1, device=emb.device)
        return gram[:, rows, cols]


class CrossNet(nn.Module):
    """DCN cross network: ``x_{l+1} = x_0 * (x_l . w_l) + b_l + x_l``, ``[B, in_dim] -> [B, in_dim]``.

    ``weight`` and ``bias`` are ``[num_layers, in_dim]``.

    Example:
        >>> net = CrossNet(4, num_layers=2)
        >>> net(torch.randn(3, 4)).shape
        torch.Size([3, 4])
    """

    def __init__(self, in_dim: int, num_layers: int, device: torch.device | None = None) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CrossNet needs at least one layer, got num_layers={num_layers}")
        self.weight = nn.Parameter(torch.empty(num_layers, in_dim, device=device))
        self.bias = nn.Parameter(torch.empty(num_layers, in_dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.weight.shape[1] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for w, b in zip(self.weight, self.bias, strict=True):
            x = x0 * (x @ w).unsqueeze(-1) + b + x
        return x


class CrossNetV2(nn.Module):
    """DCNv2 cross network: ``x_{l+1} = x_0 * (W_l x_l + b_l) + x_l``, ``[B, in_dim] -> [B, in_dim]``.

    Full rank: ``weight`` is ``W`` (``[num_layers, in_dim, in_dim]``, ``weight_up`` is ``None``). With
    ``low_rank=r``: ``W = U V`` with ``V = weight`` (``[num_layers, r, in_dim]``) and ``U = weight_up``
    (``[num_layers, in_dim, r]``).

    Example:
        >>> net = CrossNetV2(6, num_layers=2, low_rank=2)
        >>> net(torch.randn(3, 6)).shape, tuple(net.weight.shape), tuple(net.weight_up.shape)
        (torch.Size([3, 6]), (2, 2, 6), (2, 6, 2))
    """

    weight_up: nn.Parameter | None

    def __init__(
        self, in_dim: int, num_layers: int, low_rank: int | None = None, device: torch.device | None = None
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"CrossNetV2 needs at least one layer, got num_layers={num_layers}")
        if low_rank is not None and low_rank < 1:
            raise ValueError(f"CrossNetV2 low_rank must be positive or None, got {low_rank}")
        rank = in_dim if low_rank is None else low_rank
        self.weight = nn.Parameter(torch.empty(num_layers, rank, in_dim, device=device))
        if low_rank is None:
            self.register_parameter("weight_up", None)
        else:
            self.weight_up = nn.Parameter(torch.empty(num_layers, in_dim, rank, device=device))
        self.bias = nn.Parameter(torch.empty(num_layers, in_dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """``nn.Linear``'s bound ``1/sqrt(fan_in)`` for each factor; zero biases."""
        bound = self.weight.shape[2] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)
        if self.weight_up is not None:
            bound_up = self.weight_up.shape[2] ** -0.5
            nn.init.uniform_(self.weight_up, -bound_up, bound_up)
        nn.init.zeros_(self.bias)

    def forward(self, x0: torch.Tensor) -> torch.Tensor:
        x = x0
        for layer in range(self.weight.shape[0]):
            h = x @ self.weight[layer].T
            if self.weight_up is not None:
                h = h @ self.weight_up[layer].T
            x = x0 * (h + self.bias[layer]) + x
        return x


class DotInteraction(nn.Module):
    """DLRM interaction: ``[dense_vec, pairwise dots of (dense_vec, e_1 .. e_F) for i < j]``.

    ``([B, D], [B, F, D]) -> [B, D + (F+1)F/2]``; the dots are the upper triangle (row-major) of the Gram
    matrix of the ``F + 1`` vectors, the dense vector first.

    Example:
        >>> dense = torch.tensor([[1.0, 0.0]])
        >>> sparse = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
        >>> DotInteraction(2)(dense, sparse)  # dense, then (d,s0), (d,s1), (s0,s1)
        tensor([[1., 0., 1., 0., 2.]])
    """

    def __init__(self, num_sparse: int) -> None:
        super().__init__()
        if num_sparse < 1:
            raise ValueError(f"DotInteraction needs at least one sparse field, got {num_sparse}")
        self.num_vectors = num_sparse + 1
        self.num_pairs = self.num_vectors * num_sparse // 2

    def out_dim(self, dense_dim: int) -> int:
        return dense_dim + self.num_pairs

    def forward(self, dense: torch.Tensor, sparse: torch.Tensor) -> torch.Tensor:
        combined = torch.cat([dense.unsqueeze(1), sparse], dim=1)
        gram = torch.bmm(combined, combined.transpose(1, 2))
        rows, cols = torch.triu_indices(self.num_vectors, self.num_vectors, offset=1, device=dense.device)
        return torch.cat([dense, gram[:, rows, cols]], dim=1)


class LearnedVector(nn.Module):
    """One learned vector for every row: ``[B, 0] -> [B, 1, dim]``, DLRM's bottom vector on data without numeric
    fields (a bottom MLP of a constant input), so each field still meets it in the dot interaction.

    Example:
        >>> vec = LearnedVector(3)
        >>> out = vec(torch.zeros(2, 0))
        >>> out.shape, bool((out[0] == out[1]).all())
        (torch.Size([2, 1, 3]), True)
    """

    def __init__(self, dim: int, device: torch.device | None = None) -> None:
        super().__init__()
        if dim < 1:
            raise ValueError(f"LearnedVector needs dim >= 1, got {dim}")
        self.weight = nn.Parameter(torch.empty(dim, device=device))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = self.weight.shape[0] ** -0.5
        nn.init.uniform_(self.weight, -bound, bound)

    def forward(self, dense: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(dense.shape[0], 1, -1)
