"""The named batch every data module yields, the in-memory data set of them, and stacking a data
set into one batch.

`Batch(image, label, tokens, moments)` is a NamedTuple: torch's `default_collate` collates a list
of them field by field (registered below; a field that is None in every item stays None), and
Lightning moves it to the device as it moves any named tuple. A module reads `batch.image`,
`batch.label`, ... and never a position.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch.utils.data import DataLoader, Dataset
from torch.utils.data._utils.collate import collate, default_collate_fn_map

Tensor = torch.Tensor


class Batch(NamedTuple):
    """One item or a batch of items; fields a data set does not have are None."""

    image: Tensor | None = None      # (N, C, H, W) images or (N, C, F, H, W) video clips in [-1, 1], or (N, D) points
    label: Tensor | None = None      # (N,) int64 class labels
    tokens: Tensor | None = None     # (N, L) int64 caption token ids
    moments: Tensor | None = None    # (N, 2 C', h, w) a VAE posterior's mean and log-variance (latent data)

    def select(self, index) -> Batch:
        """The items at `index` (an int, a slice or an index tensor) of every field present."""
        return Batch(*(None if field is None else field[index] for field in self))


def collate_batches(items: list[Batch], *, collate_fn_map: dict | None = None) -> Batch:
    """Items to one Batch: each field collated as `default_collate` would, None fields kept None."""
    fields = zip(*items)
    return Batch(*(None if column[0] is None else collate(list(column), collate_fn_map=collate_fn_map)
                   for column in fields))


default_collate_fn_map[Batch] = collate_batches


class BatchDataset(Dataset):
    """A data set held in memory as one Batch of whole-split tensors (`columns`)."""

    def __init__(self, columns: Batch):
        sizes = {len(field) for field in columns if field is not None}
        if len(sizes) != 1:
            raise ValueError(f"every field needs the same number of items, got sizes {sorted(sizes)}")
        self.columns = columns

    def __len__(self) -> int:
        return next(len(field) for field in self.columns if field is not None)

    def __getitem__(self, index) -> Batch:
        return self.columns.select(index)


def stack_dataset(dataset: Dataset, limit: int | None = None, batch_size: int = 512) -> Batch:
    """The first `limit` items (all when None) of a data set of Batch items as one Batch of tensors,
    read in order through a DataLoader (whose iterator draws its base seed from the global
    generator, as every DataLoader without a generator of its own does)."""
    parts, count = [], 0
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        parts.append(batch)
        count += len(next(field for field in batch if field is not None))
        if limit is not None and count >= limit:
            break
    stacked = Batch(*(None if column[0] is None else torch.cat(column) for column in zip(*parts)))
    return stacked if limit is None else stacked.select(slice(0, limit))
