"""A 2-D mixture of three Gaussians with component labels: the data of the guidance figure
(Ho & Salimans 2022, Figure 2). Points are drawn once from a fixed seed; the exact density is
`ddpm_lab.diffusion.analytic.GaussianMixture`, so samples can be checked against it.

`separation` scales the component means: guidance changes little where the classes do not
overlap (there the conditional and unconditional scores agree), so the figure uses overlapping
classes (0.5).
"""

from __future__ import annotations

import torch

from ddpm_lab.data.base import BatchDataModule, split_indices
from ddpm_lab.data.batch import Batch, BatchDataset
from ddpm_lab.diffusion.analytic import GaussianMixture
from ddpm_lab.errors import UserError

# well separated, unequal weights, full covariances
THREE_GAUSSIANS = dict(weights=[0.5, 0.3, 0.2], means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
                       covs=[[[0.30, 0.10], [0.10, 0.20]], [[0.20, -0.05], [-0.05, 0.25]],
                             [[0.15, 0.0], [0.0, 0.10]]])


class GaussianMixtureDataModule(BatchDataModule):
    """Batches of 2-D points (`image`, shape (N, 2)) and their component `label` from `THREE_GAUSSIANS`."""

    name = "gmm"
    num_classes = 3

    def __init__(self, num_points: int = 20_000, batch_size: int = 512, val_fraction: float = 0.05,
                 separation: float = 0.5, data_seed: int = 0, seed: int = 0, num_workers: int = 0):
        super().__init__(batch_size, seed, num_workers, val_fraction)
        if num_points < 20:
            raise UserError(f"data.num_points={num_points} must be >= 20")
        if separation <= 0:
            raise UserError(f"data.separation={separation} must be > 0")
        self.num_points, self.data_seed = num_points, data_seed
        self.mixture = GaussianMixture(THREE_GAUSSIANS["weights"],
                                       [[separation * v for v in m] for m in THREE_GAUSSIANS["means"]],
                                       THREE_GAUSSIANS["covs"])

    @property
    def image_shape(self) -> tuple[int]:
        return (self.mixture.dim,)

    def make_splits(self) -> tuple[BatchDataset, BatchDataset]:
        x, y = self.mixture.sample(self.num_points, generator=torch.Generator().manual_seed(self.data_seed))
        data = Batch(image=x.float(), label=y)
        train, val = split_indices(self.num_points, self.val_fraction)
        return BatchDataset(data.select(train)), BatchDataset(data.select(val))
