"""The embedding tables' fused optimiser: which FBGEMM kernel, with which arguments, from ``optim.*``.

TorchRec hands an ``apply_optimizer_in_backward`` class and its keyword arguments to FBGEMM's TBE as
``fused_params`` (``lr`` becomes ``learning_rate``; ``weight_decay``, ``weight_decay_mode`` pass through). What
fbgemm-gpu-cpu 1.8.0 runs on CPU, tried one step at a time on a 3-row table (``tests/test_recipe.py``):

===================  ===========================================================  ================================
``optim.sparse``     update of a looked-up row ``w`` with gradient ``g`` (lr, eps)  CPU weight decay
===================  ===========================================================  ================================
``sgd``              ``w -= lr * g``                                              ignored (any mode)
``adagrad``          ``s += g**2`` (per element); ``w -= lr * g / (sqrt(s) + eps)``  ignored (any mode)
``rowwise_adagrad``  ``s += mean(g**2)`` (per row); ``w -= lr * g / (sqrt(s) + eps)``  ignored (any mode)
===================  ===========================================================  ================================

``eps`` is FBGEMM's default, 1e-8. FBGEMM's ``ADAM``, ``PARTIAL_ROWWISE_ADAM``, ``LAMB`` and
``PARTIAL_ROWWISE_LAMB`` refuse a CPU table ("Optimizer adam is not supported in CPU mode": the TBE builds CPU
optimiser state for exact SGD and the Adagrads only), so they are not offered. The CPU kernels take
``weight_decay`` and ``weight_decay_mode`` but leave the rows as without them, so ``optim.sparse_weight_decay``
is refused on CPU (:func:`check_device`); ``optim.embedding_l2`` (:mod:`ctr.training.row_l2`) regularises on
every device.

Example:
    >>> from config.run import OptimConfig
    >>> cls, kwargs = table_optimizer(OptimConfig(sparse="sgd", sparse_lr=0.1))
    >>> cls.__name__, kwargs
    ('SGD', {'lr': 0.1})
"""

from __future__ import annotations

from typing import Any

import torch
from fbgemm_gpu.tbe.config.optimizer_config import WeightDecayMode
from torchrec.optim.rowwise_adagrad import RowWiseAdagrad

from config.run import OptimConfig
from config.strict import ConfigError

__all__ = ["check_device", "table_optimizer"]

_CLASSES: dict[str, type[torch.optim.Optimizer]] = {
    "rowwise_adagrad": RowWiseAdagrad,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
}
_MODES = {"l2": WeightDecayMode.L2, "decoupled": WeightDecayMode.DECOUPLE}


def table_optimizer(optim: OptimConfig) -> tuple[type[torch.optim.Optimizer], dict[str, Any]]:
    """The ``apply_optimizer_in_backward`` class and keyword arguments (TorchRec's fused params) of ``optim``."""
    kwargs: dict[str, Any] = {"lr": optim.sparse_lr}
    if optim.sparse_weight_decay > 0:
        kwargs["weight_decay"] = optim.sparse_weight_decay
        kwargs["weight_decay_mode"] = _MODES[optim.sparse_weight_decay_mode]
    return _CLASSES[optim.sparse], kwargs


def check_device(optim: OptimConfig, device: torch.device) -> None:
    """Refuse what the tables' kernels on ``device`` would silently ignore (weight decay on CPU)."""
    if optim.sparse_weight_decay > 0 and device.type != "cuda":
        raise ConfigError(
            f"optim.sparse_weight_decay: FBGEMM's CPU kernels ignore weight decay (got {optim.sparse_weight_decay}); "
            "on CPU use optim.embedding_l2"
        )
