import os

import pytest

# Under pytest-xdist (make test: -n 2) each worker gets its share of the cores, and so do the
# processes the tests start (console scripts, DDP ranks), through the inherited environment.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_threads = max(1, min(2, os.cpu_count() or 1) // _workers)
os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import torch  # noqa: E402

torch.set_num_threads(_threads)


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


@pytest.fixture(scope="package")
def tiny_checkpoint(tmp_path_factory):
    """`last.ckpt` of `ddpm-train debug=fast net=unet_tiny` (unconditional digits), trained once
    per test process and shared by the sampling and evaluation tests."""
    from ddpm_lab.train import run
    from tests.helpers import TINY_RUN, compose_train

    out = tmp_path_factory.mktemp("tiny_run")
    run(compose_train(TINY_RUN, out))
    return out / "checkpoints" / "last.ckpt"


def pytest_collection_modifyitems(config, items):
    """Modules with slow tests first: make test hands whole modules to its processes in this order,
    and a long module started last would leave the other process idle at the end."""
    slow_modules = {item.module.__name__ for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.module.__name__ not in slow_modules)
