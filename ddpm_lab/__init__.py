"""ddpm_lab: an experiment framework for denoising diffusion models."""

__version__ = "0.1.0"
