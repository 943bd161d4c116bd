"""A data set as tensors: its images, its labels, or every column of its tuples (read in order
through a DataLoader, or taken as they are from a TensorDataset)."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset


def columns_of(dataset: Dataset, batch_size: int = 512) -> list[torch.Tensor]:
    """A data set of tuples as one tensor per tuple position."""
    if isinstance(dataset, TensorDataset):
        return list(dataset.tensors)
    cols = None
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        batch = batch if isinstance(batch, (tuple, list)) else [batch]
        cols = [[] for _ in batch] if cols is None else cols
        for col, part in zip(cols, batch):
            col.append(part)
    return [torch.cat(c) for c in cols or []]


def images_of(dataset: Dataset, limit: int | None = None, batch_size: int = 512) -> torch.Tensor:
    """The first `limit` images of a data set of (image, label) pairs, as one tensor."""
    out, n = [], 0
    for x, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out.append(x)
        n += len(x)
        if limit is not None and n >= limit:
            break
    images = torch.cat(out)
    return images if limit is None else images[:limit]


def labels_of(dataset: Dataset, batch_size: int = 512) -> torch.Tensor:
    """The labels of a data set of (image, label) pairs, as one tensor."""
    return torch.cat([y for _, y, *_ in DataLoader(dataset, batch_size=batch_size, shuffle=False)])
