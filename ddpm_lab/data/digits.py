"""scikit-learn's handwritten digits (1,797 real 8x8 images, 10 classes), shipped with the package.

Pixels 0..16 are scaled to [-1, 1] and resized (bilinear) to `image_size`; labels are kept.
The train/val split is a fixed permutation drawn from `split_seed`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.errors import UserError, choice_error


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


class DigitsDataModule(BatchDataModule):
    """Batches of `image` and `label` from the digits data set."""

    name = "digits"
    num_classes = 10

    def __init__(self, image_size: int = 16, channels: int = 1, batch_size: int = 128,
                 val_fraction: float = 0.1, split_seed: int = 0, num_workers: int = 0,
                 seed: int = 0):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if channels != 1:
            raise choice_error("data.channels", channels, (1,), "digits are grey-scale")
        self.channels, self.image_size, self.split_seed = channels, image_size, split_seed

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        x, y = load_digits_tensors(self.image_size)
        data = Batch(image=x, label=y)
        train, val = split_indices(len(x), self.val_fraction, self.split_seed)
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))
