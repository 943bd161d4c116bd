"""The diffusion math in plain PyTorch: schedules, the Gaussian process, flow matching, samplers,
guidance."""

from ddpm_lab.diffusion.flow import FlowMatching
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.schedules import NoiseSchedule

__all__ = ["FlowMatching", "GaussianDiffusion", "NoiseSchedule"]
