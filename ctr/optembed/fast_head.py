"""A frozen model's head for inference only: BatchNorm folded, ReLU fused, every matmul through oneDNN.

The search scores hundreds of candidates with the same frozen head, so the head is worth preparing once:

* each :class:`~ctr.models.layers.MLP` becomes a chain of :class:`FusedLinear` (``Linear -> BatchNorm -> ReLU`` is one
  affine map and a ReLU in evaluation: ``W' = W * g / sqrt(v + eps)``, ``b' = beta + (b - mu) * g / sqrt(v + eps)``;
  dropout is the identity);
* each matmul runs through oneDNN (``torch.ops.mkldnn._linear_pointwise``, bias and ReLU fused into it). On
  CPUs that PyTorch's MKL serves on its AVX2 code path (AMD EPYC here), oneDNN's float32 kernels are about 2x
  faster for the same arithmetic (docs/benchmarks.md). Where the op is missing, ``torch.nn.functional.linear``.
* ``dtype=torch.bfloat16`` keeps the weights and activations in bfloat16 (float32 accumulation in oneDNN), a
  further 2x where the CPU has bf16 instructions (:func:`bf16_supported`), at the price of logits off by about
  1e-2: AUCs then move by about 1e-4 (measured in docs/benchmarks.md), so float32 stays the default.

The prepared head is the same function as the model's (up to float32 rounding: the logits agree to about 1e-6,
a test checks it).

Example:
    >>> from ctr.models.layers import MLP
    >>> mlp = MLP(8, (4,)).eval()
    >>> fused = fuse_mlp(mlp)
    >>> x = torch.randn(5, 8)
    >>> bool(torch.allclose(fused(x), mlp(x), atol=1e-5))
    True
"""

from __future__ import annotations

import copy
from typing import TypeVar, cast

import torch
from torch import nn

from ctr.models.layers import MLP

__all__ = ["FusedLinear", "bf16_supported", "fast_head", "fuse_mlp", "linear", "onednn_available"]

_M = TypeVar("_M", bound=nn.Module)


def onednn_available() -> bool:
    """Whether :class:`FusedLinear` runs through oneDNN here (else ``torch.nn.functional.linear``)."""
    return _ONEDNN


def _onednn_linear_available() -> bool:
    try:
        torch.ops.mkldnn._linear_pointwise.default  # noqa: B018  (looked up, not called: present or not)
    except (AttributeError, RuntimeError):
        return False
    return bool(torch.backends.mkldnn.is_available())  # type: ignore[no-untyped-call]


_ONEDNN = _onednn_linear_available()


def bf16_supported() -> bool:
    """Whether this CPU has oneDNN's bfloat16 fast path (AVX512-BF16, AMX or similar)."""
    return _ONEDNN and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


class FusedLinear(nn.Module):
    """``y = x W^T + b``, then ReLU when ``relu``: one oneDNN call (bias and ReLU fused), in ``weight.dtype``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, relu: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias.detach().contiguous(), requires_grad=False)
        self.relu = relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias, relu=self.relu)


def linear(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, *, relu: bool = False
) -> torch.Tensor:
    """``x W^T + b`` (then ReLU) in ``weight.dtype``, through oneDNN where it is available."""
    x = x.to(weight.dtype).contiguous()
    if _ONEDNN and weight.shape[1] > 0:
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, weight, bias, "relu" if relu else "none", [], "")
        return out
    out = nn.functional.linear(x, weight, bias)
    return torch.relu_(out) if relu else out


def fuse_mlp(mlp: MLP, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``mlp`` (in evaluation) as one :class:`FusedLinear` per layer: BatchNorm folded, ReLU fused, no dropout."""
    fused: list[nn.Module] = []
    layers = [m for m in mlp.layers if not isinstance(m, nn.Dropout)]
    i = 0
    while i < len(layers):
        linear = layers[i]
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"unexpected {type(linear).__name__} in an MLP (expected Linear)")
        weight = linear.weight.detach().double()
        bias = linear.bias.detach().double() if linear.bias is not None else torch.zeros(weight.shape[0]).double()
        i += 1
        if i < len(layers) and isinstance(layers[i], nn.BatchNorm1d):
            bn = layers[i]
            assert isinstance(bn, nn.BatchNorm1d) and bn.running_mean is not None and bn.running_var is not None
            scale = torch.rsqrt(bn.running_var.double() + bn.eps)
            if bn.weight is not None:
                scale = scale * bn.weight.detach().double()
            shift = bn.bias.detach().double() if bn.bias is not None else torch.zeros_like(scale)
            weight, bias = weight * scale[:, None], shift + (bias - bn.running_mean.double()) * scale
            i += 1
        relu = i < len(layers) and isinstance(layers[i], nn.ReLU)
        i += int(relu)
        fused.append(FusedLinear(weight.to(dtype), bias.to(dtype), relu))
    return nn.Sequential(*fused)


def _fast(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    if isinstance(module, MLP):
        return fuse_mlp(module, dtype)
    if isinstance(module, nn.Linear):
        return FusedLinear(module.weight.to(dtype), None if module.bias is None else module.bias.to(dtype), False)
    for name, child in list(module.named_children()):
        setattr(module, name, _fast(child, dtype))
    return module


def fast_head(model: _M, dtype: torch.dtype = torch.float32) -> _M:
    """A copy of ``model`` (in evaluation) whose MLPs and Linear layers are :class:`FusedLinear` chains.

    Everything else (FM interaction, cross networks, products) is kept as it is, in float32.
    """
    out = cast(_M, _fast(copy.deepcopy(model).eval(), dtype))
    for p in out.parameters():
        p.requires_grad_(False)
    return out
