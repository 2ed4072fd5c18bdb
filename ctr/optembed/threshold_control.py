"""A controller on OptEmbed's threshold regulariser: hold the supernet's validation AUC within a tolerance of a
reference while pruning as much as that allows (``supernet.hold_auc``; docs/optembed.md).

After each validation epoch of the supernet (:meth:`ctr.optembed.module.SupernetModule.on_validation_epoch_end`):

* validation AUC >= reference - tolerance: ``alpha`` doubles (the thresholds may climb faster);
* otherwise ``alpha`` is divided by 4 and every threshold is halved towards 0 (0 keeps every row): the rows just
  cut come back inside the surrogate's window, where the data can defend them.

The factor is kept as ``log2`` in ``[-MAX_LOG2, MAX_LOG2]``. The reference is ``supernet.reference_auc`` when
set (``ctr optembed`` passes its baseline's validation AUC), else the best validation AUC of the supernet so far.

Example:
    >>> control_step(val_auc=0.750, reference=0.751, tolerance=0.002, log2_scale=0)
    ControlStep(log2_scale=1, pull_back=False)
    >>> control_step(val_auc=0.740, reference=0.751, tolerance=0.002, log2_scale=1)
    ControlStep(log2_scale=-1, pull_back=True)
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MAX_LOG2", "PULL_BACK", "ControlStep", "control_step"]

MAX_LOG2 = 10  # alpha moves within [alpha / 1024, alpha * 1024]
PULL_BACK = 0.5  # thresholds are multiplied by this after an epoch below the tolerance


@dataclass(frozen=True)
class ControlStep:
    log2_scale: int
    pull_back: bool


def control_step(val_auc: float, reference: float, tolerance: float, log2_scale: int) -> ControlStep:
    """The next ``log2`` factor on ``alpha`` and whether to pull the thresholds back, after one validation."""
    if val_auc >= reference - tolerance:
        return ControlStep(min(log2_scale + 1, MAX_LOG2), False)
    return ControlStep(max(log2_scale - 2, -MAX_LOG2), True)
