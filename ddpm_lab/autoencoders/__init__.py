"""Latent diffusion's autoencoder: the frozen, scaled VAE that stage 2 diffuses through
(LatentAutoencoder: from a stage-1 run or a diffusers directory). Stage 1 trains it with
`ddpm_lab.modules.AutoencoderModule`."""

from ddpm_lab.autoencoders.autoencoder import (
                                               LatentAutoencoder,
                                               autoencoder_kl,
                                               from_pretrained,
                                               from_run,
                                               measure_scale,
)

__all__ = ["LatentAutoencoder", "autoencoder_kl", "from_pretrained", "from_run", "measure_scale"]
