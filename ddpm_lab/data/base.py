"""`BatchDataModule`: what every data module shares. A subclass says how to make its two splits
(`make_splits`); the base holds them, gives the seeded, resumable training loader (data/loading.py)
and the validation loader, and tells the model the data's `image_shape` and `num_classes`.
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from ddpm_lab.data.loading import train_loader
from ddpm_lab.errors import UserError


def split_indices(num_items: int, val_fraction: float, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, held-out) indices: the first max(1, round(val_fraction * n)) items of a permutation
    drawn from `seed` (of range(n) when None: for data drawn at random already) are held out. With a
    single item, or a fraction that leaves a split empty, that split gets every item."""
    order = torch.arange(num_items) if seed is None else \
        torch.randperm(num_items, generator=torch.Generator().manual_seed(seed))
    n_val = max(1, round(val_fraction * num_items)) if num_items > 1 else 0
    val = order[:n_val] if n_val else order
    train = order[n_val:] if n_val < num_items else order
    return train, val


class BatchDataModule(L.LightningDataModule):
    """A data module of `Batch` items (data/batch.py) with a training and a held-out split."""

    name = ""                        # the data set's name (reference extractors, cache file names)
    num_classes: int | None = None   # class labels 0..num_classes-1, or None without labels

    def __init__(self, batch_size: int, seed: int = 0, num_workers: int = 0, val_fraction: float | None = None):
        super().__init__()
        if val_fraction is not None and not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must lie in (0, 1)")
        self.val_fraction = val_fraction   # the held-out share, for modules that split (split_indices)
        self.batch_size = batch_size
        self.seed = seed              # shuffling order: a function of (seed, epoch), see data/loading.py
        self.num_workers = num_workers
        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None

    @property
    def image_shape(self) -> tuple[int, ...]:
        """One item's shape: (channels, size, size) for square images."""
        return (self.channels, self.image_size, self.image_size)

    def make_splits(self) -> tuple[Dataset, Dataset]:
        """(training split, held-out split)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is None:
            self.train_set, self.val_set = self.make_splits()

    def train_dataloader(self) -> DataLoader:
        """Shuffled by (seed, epoch) and resumable mid-epoch; a last partial batch is dropped unless
        the split is smaller than one batch."""
        return train_loader(self.train_set, self.batch_size, self.seed,
                            drop_last=len(self.train_set) >= self.batch_size, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)
