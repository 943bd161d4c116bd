"""The diffusion math in plain PyTorch: schedules, the Gaussian process, samplers, guidance."""

from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.schedules import NoiseSchedule

__all__ = ["GaussianDiffusion", "NoiseSchedule"]
