"""Index batches per rank and epoch (:class:`EpochBatchSampler`) and the resumable ``DataLoader`` over a
:class:`~ctr.data.columnar.ColumnarSplit` (:func:`make_loader`).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import numpy.typing as npt
from torch.utils.data import DataLoader, Dataset, Sampler
from torchrec.datasets.utils import Batch

from ctr.data.columnar import ColumnarSplit

IndexBatch = npt.NDArray[np.int64]


class EpochBatchSampler(Sampler[IndexBatch]):
    """Index batches for one rank, reshuffled every epoch, identical in count and size on every rank.

    The global order is ``np.random.default_rng([seed, epoch]).permutation(num_rows)`` (``arange`` when
    ``shuffle=False``); every rank computes the same order and cuts it into *global* batches of
    ``batch_size * world_size`` rows; rank ``r`` takes the ``r``-th ``batch_size`` slice of each. So N ranks at
    ``batch_size`` see exactly the global batches one process sees at ``N * batch_size`` (the same SGD steps),
    and every rank yields the same number of equally sized batches, as TorchRec's collectives require.

    A trailing partial global batch is dropped with ``drop_last``; otherwise its rows are split equally over
    the ranks (up to ``world_size - 1`` rows are left out when they do not divide evenly). No index appears
    twice in one epoch across all ranks. ``set_epoch`` takes effect for iterators that have not yet drawn
    their first batch; ``resume_from`` skips batches already trained on (mid-epoch resume).
    """

    def __init__(
        self,
        num_rows: int,
        batch_size: int,
        *,
        shuffle: bool,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        drop_last: bool = False,
    ) -> None:
        super().__init__()
        if num_rows < 0:
            raise ValueError(f"num_rows must be >= 0, got {num_rows}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        self.num_rows = num_rows
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.drop_last = drop_last
        self.epoch = 0
        global_batch = batch_size * world_size
        self._full = num_rows // global_batch
        self._tail = 0 if drop_last else (num_rows - self._full * global_batch) // world_size
        self._resume: tuple[int, int] | None = None

    def resume_from(self, epoch: int, batches_done: int) -> None:
        """Skip the first ``batches_done`` batches of ``epoch`` (mid-epoch resume after an interruption)."""
        self._resume = (epoch, batches_done)

    def set_epoch(self, epoch: int) -> None:
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        self.epoch = epoch

    def __len__(self) -> int:
        return self._full + (1 if self._tail > 0 else 0)

    def __iter__(self) -> Iterator[IndexBatch]:
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.num_rows)
        else:
            order = np.arange(self.num_rows, dtype=np.int64)
        skip = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            skip = self._resume[1]
        self._resume = None
        bs, g = self.batch_size, self.batch_size * self.world_size
        for i in range(skip, self._full):
            start = i * g + self.rank * bs
            yield order[start : start + bs]
        if self._tail > 0 and skip <= self._full:
            start = self._full * g + self.rank * self._tail
            yield order[start : start + self._tail]


class _SplitDataset(Dataset[Batch]):
    """Map-style dataset whose items are whole batches: ``dataset[index_array] -> Batch``."""

    def __init__(self, split: ColumnarSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, indices: IndexBatch) -> Batch:
        return self.split.batch(indices)


def _identity(batch: Batch) -> Batch:
    return batch


class ResumableLoader(DataLoader[Batch]):
    """A DataLoader whose position Lightning saves in checkpoints (``state_dict``/``load_state_dict``).

    ``batches_done`` is kept up to date by the training loop (see ``ctr.training.train.LoaderProgress``); on resume
    the sampler skips the batches of the interrupted epoch that were already trained on.
    """

    batches_done: int = 0

    def state_dict(self) -> dict[str, int]:
        sampler = self.sampler
        assert isinstance(sampler, EpochBatchSampler)
        return {"epoch": sampler.epoch, "batches_done": self.batches_done}

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler = self.sampler
        assert isinstance(sampler, EpochBatchSampler)
        sampler.resume_from(int(state["epoch"]), int(state["batches_done"]))
        self.batches_done = int(state["batches_done"])


def make_loader(
    split: ColumnarSplit,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
    drop_last: bool = False,
    num_workers: int = 0,
) -> DataLoader[Batch]:
    """A ``DataLoader`` of :class:`Batch` whose ``.sampler`` is an :class:`EpochBatchSampler`.

    ``batch_size`` is per rank. The sampler runs in the main process, so ``loader.sampler.set_epoch`` (called
    by Lightning each epoch) works with workers too; workers only gather batches.
    """
    sampler = EpochBatchSampler(
        len(split),
        batch_size,
        shuffle=shuffle,
        seed=seed,
        rank=rank,
        world_size=world_size,
        drop_last=drop_last,
    )
    return ResumableLoader(
        _SplitDataset(split),
        batch_size=None,
        sampler=sampler,
        collate_fn=_identity,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
    )
