"""A 2-D mixture of three Gaussians with component labels: the data of the guidance figure
(Ho & Salimans 2022, Figure 2). Points are drawn once from a fixed seed; the exact density is
`ddpm_lab.diffusion.analytic.GaussianMixture`, so samples can be checked against it.

`separation` scales the component means: guidance changes little where the classes do not
overlap (there the conditional and unconditional scores agree), so the figure uses overlapping
classes (0.5).
"""

from __future__ import annotations

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from ddpm_lab.data.loading import train_loader
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.errors import UserError

# well separated, unequal weights, full covariances
THREE_GAUSSIANS = dict(weights=[0.5, 0.3, 0.2], means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
                       covs=[[[0.30, 0.10], [0.10, 0.20]], [[0.20, -0.05], [-0.05, 0.25]],
                             [[0.15, 0.0], [0.0, 0.10]]])


class GaussianMixtureDataModule(L.LightningDataModule):
    """(point, label) batches from `THREE_GAUSSIANS`."""

    name = "gmm"
    num_classes = 3

    def __init__(self, num_points: int = 20_000, batch_size: int = 512, val_fraction: float = 0.05,
                 separation: float = 0.5, data_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__()
        if num_points < 20:
            raise UserError(f"data.num_points={num_points} must be >= 20")
        self.num_points, self.batch_size, self.val_fraction = num_points, batch_size, val_fraction
        self.data_seed, self.seed, self.num_workers = data_seed, seed, num_workers
        if separation <= 0:
            raise UserError(f"data.separation={separation} must be > 0")
        self.mixture = GaussianMixture(THREE_GAUSSIANS["weights"],
                                       [[separation * v for v in m] for m in THREE_GAUSSIANS["means"]],
                                       THREE_GAUSSIANS["covs"])
        self.train_set = self.val_set = None

    @property
    def image_shape(self) -> tuple[int]:
        return (self.mixture.dim,)

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        x, y = self.mixture.sample(self.num_points, generator=torch.Generator().manual_seed(self.data_seed))
        n_val = max(1, round(self.val_fraction * self.num_points))
        self.val_set = TensorDataset(x[:n_val].float(), y[:n_val])
        self.train_set = TensorDataset(x[n_val:].float(), y[n_val:])

    def train_dataloader(self) -> DataLoader:
        return train_loader(self.train_set, self.batch_size, self.seed, drop_last=True,
                            num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=self.batch_size, num_workers=self.num_workers)
