"""The ``data`` section of a run config: where the prepared data lives and how it is batched."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from config.strict import from_dict


@dataclass(frozen=True)
class DataConfig:
    """Where the prepared data lives and how it is batched.

    ``batch_size`` and ``eval_batch_size`` are per rank; ``eval_batch_size=None`` means ``batch_size``.
    ``seed`` and the epoch number fix the training order (see :class:`EpochBatchSampler`).
    """

    path: str
    batch_size: int = 4096
    eval_batch_size: int | None = None
    shuffle: bool = True
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.path, str) or not self.path:
            raise ValueError(f"DataConfig.path must be a non-empty string, got {self.path!r}")
        for name in ("batch_size", "eval_batch_size", "seed", "num_workers"):
            value = getattr(self, name)
            if value is None and name == "eval_batch_size":
                continue
            if not isinstance(value, int) or isinstance(value, bool):
                raise ValueError(f"DataConfig.{name} must be an int, got {value!r}")
        if not isinstance(self.shuffle, bool):
            raise ValueError(f"DataConfig.shuffle must be a bool, got {self.shuffle!r}")
        if self.batch_size < 1:
            raise ValueError(f"DataConfig.batch_size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size is not None and self.eval_batch_size < 1:
            raise ValueError(f"DataConfig.eval_batch_size must be >= 1 or None, got {self.eval_batch_size}")
        if self.seed < 0:
            raise ValueError(f"DataConfig.seed must be >= 0, got {self.seed}")
        if self.num_workers < 0:
            raise ValueError(f"DataConfig.num_workers must be >= 0, got {self.num_workers}")

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> DataConfig:
        """Strict loader: an unknown key is an error naming it and the nearest valid key."""
        return from_dict(cls, dict(raw))

    @property
    def resolved_eval_batch_size(self) -> int:
        return self.batch_size if self.eval_batch_size is None else self.eval_batch_size
