"""LightningModules: thin wrappers that call the diffusion math, log and hold the optimizer."""

from ddpm_lab.modules.autoencoder import AutoencoderModule
from ddpm_lab.modules.diffusion_module import DiffusionModule

__all__ = ["AutoencoderModule", "DiffusionModule"]
