"""Latent diffusion's autoencoder: stage-1 training (AutoencoderModule) and the frozen, scaled VAE
that stage 2 diffuses through (LatentAutoencoder: from a stage-1 run or a diffusers directory)."""

from ddpm_lab.autoencoders.autoencoder import (
                                               LatentAutoencoder,
                                               autoencoder_kl,
                                               from_pretrained,
                                               from_run,
                                               measure_scale,
)
from ddpm_lab.autoencoders.module import AutoencoderModule

__all__ = ["AutoencoderModule", "LatentAutoencoder", "autoencoder_kl", "from_pretrained", "from_run", "measure_scale"]
