"""Denoising networks: our own UNet and DiT and diffusers adapters, all called as net(x_t, t, cond)."""

from ddpm_lab.nets.dit import DiT
from ddpm_lab.nets.mlp import MLPDenoiser
from ddpm_lab.nets.unet import UNet

__all__ = ["DiT", "MLPDenoiser", "UNet"]
