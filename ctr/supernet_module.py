"""The OptEmbed supernet under Lightning: a ``CTRModule`` whose model prunes rows and samples dimensions.

The base model gets a ``field_transform`` of :class:`~ctr.supernet.RowPruning` followed by
:class:`~ctr.supernet.DimensionSampler` (optional, for OptEmbed-E). The loss adds ``alpha * sum(exp(-t))``.
The thresholds stay out of the dense optimiser: after every backward pass they take a plain SGD step of
their own (``threshold_lr``, no momentum, no weight decay), as the method prescribes. DDP (inside DMP) has
already averaged their gradients over the ranks by then.

Example:
    >>> cfg = load_run_config(None, ["supernet.alpha=1e-4"], data="prepared", model="deepfm")  # doctest: +SKIP
    >>> trainer.fit(SupernetModule(cfg, feature_map), CTRDataModule(cfg.data))  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import nn
from torchrec.datasets.utils import Batch

from ctr.lit import CTRModule
from ctr.models import CTRModel
from ctr.run_config import RunConfig, SupernetConfig
from ctr.supernet import DimensionSampler, RowPruning
from features.schema import FeatureMap

__all__ = ["SupernetModule"]


class SupernetModule(CTRModule):
    def __init__(self, config: RunConfig, feature_map: FeatureMap) -> None:
        if config.supernet is None:
            raise ValueError("SupernetModule needs a `supernet` section in the run config")
        if config.model.name == "lr":
            raise ValueError("the OptEmbed supernet needs field embeddings; model 'lr' has none")
        super().__init__(config, feature_map)
        self.supernet_config: SupernetConfig = config.supernet
        self._pruning: RowPruning | None = None

    def build_unsharded(self, device: torch.device) -> CTRModel:
        model = super().build_unsharded(device)
        assert model.sparse_arch is not None
        pruning = RowPruning(model.sparse_arch.num_fields, device=device)
        steps: list[nn.Module] = [pruning]
        if self.supernet_config.sample_dims:
            steps.append(DimensionSampler(model.sparse_arch.embedding_dim, self.supernet_config.candidates))
        model.field_transform = nn.Sequential(*steps)
        return model

    @property
    def thresholds(self) -> nn.Parameter:
        for name, param in self._dmp().named_parameters():
            if name.endswith("field_transform.0.thresholds"):
                assert isinstance(param, nn.Parameter)
                return param
        raise RuntimeError("the supernet's thresholds are missing")

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        loss = super().training_step(batch, batch_idx)
        reg = self.supernet_config.alpha * torch.exp(-self.thresholds).sum()
        self.log("threshold_mean", self.thresholds.detach().mean(), prog_bar=False)
        return loss + reg

    def on_after_backward(self) -> None:
        t = self.thresholds
        if t.grad is not None:
            with torch.no_grad():
                t.sub_(self.supernet_config.threshold_lr * t.grad)
            t.grad = None

    def dense_parameters(self) -> list[nn.Parameter]:
        """As ``CTRModule``'s, minus the thresholds (they take :meth:`on_after_backward`'s SGD step)."""
        threshold = self.thresholds
        return [p for p in super().dense_parameters() if p is not threshold]
