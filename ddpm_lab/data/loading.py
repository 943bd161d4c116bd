"""Data loaders whose order is a function of (seed, epoch) and that resume mid-epoch.

Exact resume needs the batches after a restart to be the ones the uninterrupted run would have
drawn. `EpochShuffle` draws epoch e's permutation from a generator seeded with (seed, e), so an
epoch's order never depends on global RNG state; `ResumableDataLoader` has the `state_dict` /
`load_state_dict` pair Lightning looks for, so its position (epoch, batches already yielded) goes
into every checkpoint and, after a restore, the next pass skips the batches already trained on.
Under DDP Lightning wraps the sampler in a DistributedSampler (seeded by epoch as well).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochShuffle(Sampler[int]):
    """A random permutation of range(n) per epoch, drawn from seed (seed, epoch); `set_epoch` is
    called by Lightning at the start of each epoch."""

    def __init__(self, num_items: int, seed: int = 0):
        self.num_items = num_items
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_items

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        yield from torch.randperm(self.num_items, generator=gen).tolist()


class ResumableDataLoader(DataLoader):
    """A DataLoader that Lightning can checkpoint and restore in the middle of an epoch.

    Skipped batches are read and dropped (cheap for in-memory data; one re-read of part of an
    epoch per resume for image folders).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._position = {"epoch": None, "batches": 0}
        self._restore: dict | None = None

    def _sampler_epoch(self) -> int | None:
        return getattr(self.sampler, "epoch", None)

    def __iter__(self) -> Iterator:
        epoch = self._sampler_epoch()
        skip = 0
        if self._restore is not None and self._restore["epoch"] == epoch:
            skip = self._restore["batches"]
        self._restore = None
        self._position = {"epoch": epoch, "batches": 0}
        for i, batch in enumerate(super().__iter__()):
            self._position["batches"] = i + 1
            if i >= skip:
                yield batch

    def state_dict(self) -> dict:
        return dict(self._position)

    def load_state_dict(self, state: dict) -> None:
        self._restore = dict(state)


def train_loader(dataset: Dataset, batch_size: int, seed: int, drop_last: bool,
                 num_workers: int = 0) -> ResumableDataLoader:
    """The shuffled, resumable training loader every data module uses.

    Its own `generator` (worker seeds) keeps `iter()` from drawing from the global generator,
    which would shift the training noise of a run resumed at an epoch boundary by one draw.
    """
    return ResumableDataLoader(dataset, batch_size=batch_size, sampler=EpochShuffle(len(dataset), seed),
                               drop_last=drop_last, num_workers=num_workers,
                               persistent_workers=num_workers > 0,
                               generator=torch.Generator().manual_seed(seed))
