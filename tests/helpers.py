"""Shared helpers for the tests that compose configs or run the console scripts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hydra import compose, initialize_config_dir

from ddpm_lab.cli import CONF_DIR

BIN = Path(sys.executable).parent
# small and quick: a few sampling steps, a handful of samples
QUICK = ["sampler.steps=5", "callbacks.sample_grid.num_samples=4", "logger=csv"]


def compose_train(overrides: list[str], out_dir: Path):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("train", overrides=[*overrides, f"paths.output_dir={out_dir}"])


def run_cli(script: str, *args: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run([str(BIN / script), *args], cwd=cwd, env=full_env, capture_output=True,
                          text=True, timeout=600)


def last_error_line(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def assert_reproduces_mixture(gmm, x, weight_tol: float = 0.015, mean_tol: float = 0.04, cov_tol: float = 0.03):
    """Assign samples to their most likely component; compare weights, means and covariances."""
    import torch

    k = gmm.classify(x)
    for c in range(len(gmm.weights)):
        xs = x[k == c]
        assert abs(len(xs) / len(x) - gmm.weights[c].item()) < weight_tol
        assert (xs.mean(0) - gmm.means[c]).abs().max() < mean_tol
        assert (torch.cov(xs.T) - gmm.covs[c]).abs().max() < cov_tol
