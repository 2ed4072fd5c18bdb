"""The ``tables`` section of a run config: the table method (hashing, QR, MDE, Unified Embedding), its budget
and its knobs. The methods themselves live in :mod:`ctr.tables`."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from config.strict import ConfigError

__all__ = ["METHODS", "Method", "TablesConfig"]

Method = Literal["full", "hash", "shared_hash", "qr", "mde", "unified"]
METHODS: tuple[str, ...] = ("full", "hash", "shared_hash", "qr", "mde", "unified")


@dataclass(frozen=True)
class TablesConfig:
    """The ``tables`` section of a run config: the table method, its budget and its knobs.

    ``budget``: fraction of the full table's parameters (1 = as many as the full tables). ``chunk``: the
    Unified Embedding row width ``c`` (a multiple of 4); ``probes``: per-field probe counts, 0 drops a field (default
    ``embedding_dim / chunk`` for every field, so every field keeps the full width). ``mde_alpha``: the MDE
    temperature. ``size``: the method's size knob, set instead of derived from ``budget`` (``ctr compress-bench``
    sets it so that the whole model's embedding parameters fit its budget: :mod:`ctr.tables.sizing`): total
    rows for ``hash`` (each field ``ceil(size V_f / N)`` buckets), ``shared_hash`` and ``unified``; the
    remainder rows ``m`` for ``qr``; the main tables' parameter allowance for ``mde``; ``full`` has none.
    """

    method: Method = "full"
    budget: float = 1.0
    chunk: int = 4
    probes: dict[str, int] = dataclasses.field(default_factory=dict)
    mde_alpha: float = 0.3
    size: int | None = None

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"TablesConfig.method: {self.method!r} is not one of {', '.join(METHODS)}")
        if not 0.0 < self.budget <= 1.0:
            raise ConfigError(f"TablesConfig.budget: a fraction in (0, 1], got {self.budget}")
        if self.chunk < 4 or self.chunk % 4:
            raise ConfigError(f"TablesConfig.chunk: {self.chunk} is not a positive multiple of 4 (FBGEMM needs it)")
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1):
            raise ConfigError(f"TablesConfig.size: an int >= 1 (the method's size knob) or unset, got {self.size!r}")
        bad = {k: v for k, v in self.probes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 0}
        if bad:
            raise ConfigError(f"TablesConfig.probes: counts must be ints >= 0 (0 drops the field), got {bad}")
