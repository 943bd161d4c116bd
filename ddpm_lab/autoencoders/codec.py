"""One interface over the two kinds of VAE latent diffusion runs through: diffusers' image
`AutoencoderKL` ("kl"; Rombach et al. 2022), which encodes video clips frame by frame, and Wan 2.1's
causal 3-D `AutoencoderKLWan` ("wan"), which also compresses time.

Images are (N, C, H, W), clips (N, C, F, H, W); a VAE's geometry is read from its config, so the
latent shape is known from a checkpoint's hyper-parameters alone.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKL, AutoencoderKLWan
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution

from ddpm_lab.autoencoders.wan import (
                                       check_frames,
                                       decode_causal,
                                       encode_causal,
                                       wan_spatial_factor,
                                       wan_temporal_factor,
)
from ddpm_lab.errors import UserError, choice_error

Tensor = torch.Tensor
KINDS = {"kl": AutoencoderKL, "wan": AutoencoderKLWan}


def kind_of(config, kind: str | None = None) -> str:
    """"kl" or "wan": `kind` when given, else read from the config (a Wan config has `z_dim`)."""
    if kind is None:
        return "wan" if "z_dim" in config else "kl"
    if kind not in KINDS:
        raise choice_error("latent.kind", kind, tuple(KINDS))
    return kind


def spatial_factor(config) -> int:
    if kind_of(config) == "wan":
        return wan_spatial_factor(config)
    return 2 ** (len(config["block_out_channels"]) - 1)


def temporal_factor(config) -> int:
    """How much the VAE divides time; 1 for an image VAE (clips frame by frame)."""
    return wan_temporal_factor(config) if kind_of(config) == "wan" else 1


def latent_channels(config) -> int:
    return int(config["z_dim"] if kind_of(config) == "wan" else config["latent_channels"])


def latent_shape(config, image_shape: tuple[int, ...], vae: str = "the VAE") -> tuple[int, ...]:
    """(C', h, w) of images (C, H, W); (C', F', h, w) of clips (C, F, H, W). `vae` names it in errors."""
    if len(image_shape) not in (3, 4):
        raise UserError(f"{vae} encodes images (C, H, W) or clips (C, F, H, W), not data of shape {tuple(image_shape)}")
    factor = spatial_factor(config)
    c, *frames, h, w = image_shape
    if c != config["in_channels"]:
        raise UserError(f"{vae} encodes {config['in_channels']}-channel images, the data has {c} channels")
    for side in (h, w):
        if side % factor:
            raise UserError(f"data.image_size={side} cannot be divided by the VAE: {vae} downsamples by "
                            f"{factor}, so the image size must be a multiple of {factor}")
    if kind_of(config) == "wan" and not frames:
        raise UserError(f"{vae} is a video VAE: it encodes clips (C, F, H, W), and the data gives images "
                        f"{tuple(image_shape)}; use an image VAE (vae=f4, f8, trained or pretrained)")
    latent_frames = [check_frames(frames[0], temporal_factor(config), vae)] if frames else []
    return (latent_channels(config), *latent_frames, h // factor, w // factor)


def fold(x: Tensor) -> Tensor:
    """Clips (N, C, F, H, W) -> their frames as images (N * F, C, H, W)."""
    n, c, f, h, w = x.shape
    return x.transpose(1, 2).reshape(n * f, c, h, w)


def unfold(x: Tensor, frames: int) -> Tensor:
    """Images (N * F, C, H, W) -> clips (N, C, F, H, W)."""
    nf, c, h, w = x.shape
    return x.reshape(nf // frames, frames, c, h, w).transpose(1, 2)


def posterior(model, x: Tensor) -> DiagonalGaussianDistribution:
    """q(z | x) of images or clips (an image VAE encodes clips frame by frame; its moments are then
    (N, 2C', F, h, w) as a video VAE's are)."""
    if isinstance(model, AutoencoderKLWan):
        return DiagonalGaussianDistribution(encode_causal(model, x))
    if x.dim() == 5:
        return DiagonalGaussianDistribution(unfold(model.encode(fold(x)).latent_dist.parameters, x.shape[2]))
    return model.encode(x).latent_dist


def decode(model, z: Tensor) -> Tensor:
    """Images or clips from (unscaled) latents, not clamped (diffusers' AutoencoderKLWan clamps)."""
    if isinstance(model, AutoencoderKLWan):
        return decode_causal(model, z)
    if z.dim() == 5:
        return unfold(model.decode(fold(z)).sample, z.shape[2])
    return model.decode(z).sample


def kl_per_example(dist: DiagonalGaussianDistribution) -> Tensor:
    """KL(q(z | x) || N(0, I)) summed over each latent (diffusers' `kl` sums only dims 1-3, which
    leaves a clip's last axis unsummed)."""
    return 0.5 * (dist.mean.pow(2) + dist.var - 1.0 - dist.logvar).flatten(1).sum(1)
