"""Latent diffusion's autoencoder: the frozen, scaled VAE that stage 2 diffuses through
(LatentAutoencoder: from a stage-1 run or a diffusers directory; an image AutoencoderKL, which
encodes clips frame by frame, or Wan 2.1's causal video AutoencoderKLWan). Stage 1 trains it with
`ddpm_lab.modules.AutoencoderModule`."""

from ddpm_lab.autoencoders.autoencoder import (
                                               LatentAutoencoder,
                                               autoencoder_kl,
                                               from_pretrained,
                                               from_run,
                                               measure_normalisation,
                                               measure_scale,
)
from ddpm_lab.autoencoders.codec import decode as decode_latents
from ddpm_lab.autoencoders.codec import kl_per_example, latent_shape, posterior
from ddpm_lab.autoencoders.wan import autoencoder_kl_wan, check_frames

__all__ = ["LatentAutoencoder", "autoencoder_kl", "autoencoder_kl_wan", "check_frames", "decode_latents",
           "from_pretrained", "from_run", "kl_per_example", "latent_shape", "measure_normalisation",
           "measure_scale", "posterior"]
