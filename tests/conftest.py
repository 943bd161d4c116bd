import os

import pytest
import torch

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def three_gaussians():
    """A well-separated 2-D mixture of three Gaussians with unequal weights and full covariances."""
    from ddpm_lab.diffusion.analytic import GaussianMixture

    return GaussianMixture(
        weights=[0.5, 0.3, 0.2],
        means=[[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]],
        covs=[[[0.30, 0.10], [0.10, 0.20]],
              [[0.20, -0.05], [-0.05, 0.25]],
              [[0.15, 0.0], [0.0, 0.10]]],
    )
