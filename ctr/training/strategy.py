"""Lightning strategy for TorchRec's DistributedModelParallel: no outer DDP, checkpoints of every rank's shards.

``TorchRecStrategy`` is a ``DDPStrategy`` with three changes (see ../shared/ref/lightning_torchrec.md):

* ``configure_ddp`` does nothing: DMP already wraps the dense part in DDP, a second wrap breaks.
* ``setup`` is DDPStrategy's minus the DDP wrap and minus ``_sync_module_states``, which would broadcast
  rank 0's embedding shards over every other rank's when validating or testing (silent corruption).
* checkpoints are ``torch.distributed.checkpoint`` directories written by every rank (``.metadata`` plus one
  ``__<rank>_0.distcp`` per rank, holding the sharded tables and the fused optimiser state), with the
  replicated rest (loops, dense optimiser, hyper-parameters) in ``lightning_meta.pt`` from rank 0.

Before any shard is read, the module checks the checkpoint's spec (config, feature-map hash, world size)
through ``check_checkpoint_spec`` and refuses a mismatch by name. ``lightning_meta.pt`` loads with
``weights_only=True``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.optimizer import _optimizers_to_device
from lightning.pytorch.strategies import DDPStrategy
from lightning.pytorch.trainer.states import TrainerFn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict_loader import load as dcp_load
from torch.distributed.checkpoint.state_dict_saver import save as dcp_save

from ctr.training.writes import refused_writes

__all__ = ["CheckpointError", "ShardedModule", "TorchRecStrategy", "complete_checkpoint", "ray_strategy", "read_shards"]

META_FILE = "lightning_meta.pt"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or was written for another config, feature map or world size."""


def read_shards(state: dict[str, Any], path: str | Path, problem: str, *, no_dist: bool = False) -> None:
    """The checkpoint at ``path`` read into ``state`` in place (``torch.distributed.checkpoint.load``); a failed read
    raises a one-line :class:`CheckpointError`: ``{path}: {problem} ({the error})``.

    torch's ``CheckpointException`` (a rank's error, e.g. a truncated shard file) derives from BaseException, not
    Exception, and carries each failed rank's traceback, whose last line is the error itself."""
    try:
        dcp_load(state, checkpoint_id=str(path), no_dist=no_dist)
    except (Exception, CheckpointException) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        if isinstance(e, CheckpointException) and lines:
            error = lines[-1]
        else:
            error = f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__
        raise CheckpointError(f"{path}: {problem} ({error})") from e


@runtime_checkable
class ShardedModule(Protocol):
    """What the strategy needs from the LightningModule."""

    def fused_optimizer_state(self) -> dict[str, Any]: ...

    def load_fused_optimizer_state(self, state: dict[str, Any]) -> None: ...

    def check_checkpoint_spec(self, meta: dict[str, Any], path: str) -> None: ...


class TorchRecStrategy(DDPStrategy):
    strategy_name = "torchrec"

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("process_group_backend", "nccl" if torch.cuda.is_available() else "gloo")
        super().__init__(**kwargs)

    def configure_ddp(self) -> None:
        """DMP wraps the dense part in DDP itself; wrapping again fails (params appear not to match)."""

    def setup(self, trainer: pl.Trainer) -> None:
        assert self.accelerator is not None
        self.accelerator.setup(trainer)
        assert self.model is not None
        self.precision_plugin.convert_module(self.model)
        self.model_to_device()
        fitting = trainer.state.fn == TrainerFn.FITTING
        if fitting:
            self.setup_optimizers(trainer)
        self.setup_precision_plugin()
        if fitting:
            _optimizers_to_device(self.optimizers, self.root_device)

    @property
    def restore_checkpoint_after_setup(self) -> bool:
        return True  # shards and fused optimiser state exist only after configure_model

    def _module(self) -> ShardedModule:
        module = self.lightning_module
        if not isinstance(module, ShardedModule):
            raise TypeError(f"TorchRecStrategy needs a module implementing ShardedModule, got {type(module)}")
        return module

    def save_checkpoint(self, checkpoint: dict[str, Any], filepath: Any, storage_options: Any = None) -> None:
        """Write into ``<path>.partial`` and swap it in whole, so a kill mid-save never leaves a mixed checkpoint.

        The previous checkpoint of the same name is moved to ``<path>.stale`` before the swap and deleted after
        it; a kill between the two renames leaves the stale one complete, and ``load_checkpoint`` falls back to it.
        """
        path = Path(self.broadcast(str(filepath)))
        partial, stale = _sibling(path, "partial"), _sibling(path, "stale")
        module = self._module()
        state = _with_fused_state({"state_dict": checkpoint["state_dict"]}, module.fused_optimizer_state())
        rest = {k: v for k, v in checkpoint.items() if k != "state_dict"}
        if self.is_global_zero and partial.exists():
            shutil.rmtree(partial)  # left by a run killed mid-save
        self.barrier("torchrec_save_checkpoint_begin")
        with refused_writes(partial):  # a full disk: one line naming the checkpoint, not torch's traceback
            dcp_save(state, checkpoint_id=str(partial))
        self.barrier("torchrec_save_checkpoint_shards")
        if self.is_global_zero:
            with refused_writes(partial / META_FILE):  # the meta file last: it marks a complete checkpoint
                torch.save(rest, partial / META_FILE)
            if stale.exists():
                _remove(stale)
            if path.exists():
                path.rename(stale)
            partial.rename(path)
            _remove(stale)
        self.barrier("torchrec_save_checkpoint")

    def load_checkpoint(self, checkpoint_path: Any, weights_only: bool | None = None) -> dict[str, Any]:
        path = Path(self.broadcast(str(checkpoint_path)))
        path = complete_checkpoint(path) or path
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise CheckpointError(f"{path}: not a complete checkpoint ({META_FILE} missing)")
        try:
            meta: dict[str, Any] = torch.load(meta_path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{meta_path}: corrupt checkpoint metadata ({type(e).__name__}: {e})") from e
        module = self._module()
        module.check_checkpoint_spec(meta, str(path))
        assert self.lightning_module is not None
        state = _with_fused_state({"state_dict": self.lightning_module.state_dict()}, module.fused_optimizer_state())
        read_shards(state, path, "corrupt or incompatible checkpoint shards")
        if "fused_optim" in state:
            module.load_fused_optimizer_state(state["fused_optim"])
        meta["state_dict"] = state["state_dict"]
        return meta

    def remove_checkpoint(self, filepath: Any) -> None:
        if self.is_global_zero:
            _remove(Path(filepath))


def complete_checkpoint(path: Path) -> Path | None:
    """``path`` if it holds a complete checkpoint; else its ``.stale`` sibling if a kill mid-swap left one whole."""
    for candidate in (path, _sibling(path, "stale")):
        if (candidate / META_FILE).is_file():
            return candidate
    return None


def _pruned(tree: Any) -> Any:
    """``tree`` without empty dicts, at any depth (DCP cannot save or load a dict that holds no value)."""
    if not isinstance(tree, dict):
        return tree
    kept = {k: _pruned(v) for k, v in tree.items()}
    return {k: v for k, v in kept.items() if not (isinstance(v, dict) and not v)}


def _with_fused_state(state: dict[str, Any], fused: dict[str, Any]) -> dict[str, Any]:
    """``state`` plus the fused optimiser's state under ``fused_optim``, unless it has none (SGD keeps no state)."""
    pruned = _pruned(fused)
    return state | {"fused_optim": pruned} if pruned else state


def _sibling(path: Path, suffix: str) -> Path:
    return path.with_name(f"{path.name}.{suffix}")


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def ray_strategy() -> TorchRecStrategy:
    """``TorchRecStrategy`` inside Ray Train: Ray's DDP strategy supplies rank and world size from the Ray worker
    group (whose gloo/NCCL process group Lightning reuses); TorchRecStrategy's overrides take precedence.
    """
    from ray.train.lightning import RayDDPStrategy

    class RayTorchRecStrategy(TorchRecStrategy, RayDDPStrategy):
        strategy_name = "ray_torchrec"

    return RayTorchRecStrategy()
