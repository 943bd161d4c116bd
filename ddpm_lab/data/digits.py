"""scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shipped with the package.

Pixels 0..16 are scaled to [-1, 1] and resized (bilinear) to `image_size`; labels are kept.
The train/val split is a fixed permutation drawn from `split_seed`.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.data.loading import train_loader
from ddpm_lab.errors import UserError


def load_digits_tensors(image_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 1, image_size, image_size) float32 in [-1, 1] and int64 labels."""
    from sklearn.datasets import load_digits

    if image_size < 1:
        raise UserError(f"data.image_size={image_size} must be >= 1")
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    if image_size != 8:
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False)
    x = (x.clamp(0, 1) * 2 - 1).contiguous()
    return x, torch.tensor(digits.target, dtype=torch.long)


class DigitsDataModule(L.LightningDataModule):
    """Batches of (image, label) from the digits data set."""

    name = "digits"
    num_classes = 10

    def __init__(self, image_size: int = 16, channels: int = 1, batch_size: int = 128,
                 val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 0,
                 seed: int = 0):
        super().__init__()
        if channels != 1:
            raise UserError(f"data.channels={channels} is not allowed for digits (grey-scale): use 1")
        self.channels = channels
        if not 0 < val_fraction < 1:
            raise UserError(f"data.val_fraction={val_fraction} must lie in (0, 1)")
        self.image_size = image_size
        self.batch_size = batch_size
        self.val_fraction = val_fraction
        self.split_seed = split_seed
        self.num_workers = num_workers
        self.seed = seed   # shuffling order: a function of (seed, epoch), see data/loading.py
        self.train_set = self.val_set = None

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = load_digits_tensors(self.image_size)
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(self.split_seed))
        n_val = max(1, round(self.val_fraction * len(x)))
        val_idx, train_idx = perm[:n_val], perm[n_val:]
        self.train_set = TensorDataset(x[train_idx], y[train_idx])
        self.val_set = TensorDataset(x[val_idx], y[val_idx])

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.seed, drop_last=True,
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False,
                          num_workers=self.num_workers)
