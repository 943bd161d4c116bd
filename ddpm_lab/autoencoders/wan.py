"""Wan 2.1's causal 3-D video VAE (Wan Team 2025, "Wan: Open and Advanced Large-Scale Video
Generative Models", Sec. 3.1): diffusers' `AutoencoderKLWan` at a tiny size, and its frame rule.

The encoder is causal in time: the first frame is encoded alone, then every further
`temporal_factor` frames become one latent frame, so a clip of 1 + k * factor frames gives 1 + k
latent frames (and decodes back to 1 + k * factor frames). diffusers' `encode` always feeds the
encoder 4 frames at a time and silently drops the frames left over; `encode_causal` feeds it
`temporal_factor` frames at a time instead (the same latents where diffusers' chunks fit, since
every causal convolution carries its cache across chunks) and refuses a clip that does not fit.
diffusers' `decode` clamps its output to [-1, 1], which stops the gradient wherever the decoder
overshoots (a black background at -1 then never learns its shapes); `decode_causal` is the same
decoder, latent frame by latent frame, without the clamp, for training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d

from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def autoencoder_kl_wan(image_size: int = 32, in_channels: int = 3, z_dim: int = 4, base_dim: int = 32,
                       dim_mult: Sequence[int] = (1, 2, 2), num_res_blocks: int = 1,
                       temporal_downsample: Sequence[bool] = (False, True),
                       attn_scales: Sequence[float] = ()) -> AutoencoderKLWan:
    """An AutoencoderKLWan dividing the frame side by 2 ** (len(dim_mult) - 1) and time by 2 per
    True in `temporal_downsample` (one entry per downsampling level); `z_dim` latent channels.
    Its latent mean / std are measured from the data in stage 2, so the config's are 0 / 1."""
    levels = len(dim_mult) - 1
    if levels < 0 or len(temporal_downsample) != levels:
        raise UserError(f"vae.temporal_downsample={list(temporal_downsample)} needs one entry per downsampling "
                        f"level: {levels} for vae.dim_mult={list(dim_mult)}")
    if z_dim < 1:
        raise UserError(f"vae.z_dim={z_dim} must be >= 1")
    spatial = 2 ** levels
    if image_size % spatial:
        raise UserError(f"data.image_size={image_size} cannot be divided by the VAE: vae downsamples by "
                        f"{spatial}, so the image size must be a multiple of {spatial}")
    return AutoencoderKLWan(
        base_dim=base_dim, z_dim=z_dim, dim_mult=list(dim_mult), num_res_blocks=num_res_blocks,
        attn_scales=list(attn_scales), temperal_downsample=[bool(t) for t in temporal_downsample],
        latents_mean=[0.0] * z_dim, latents_std=[1.0] * z_dim, in_channels=in_channels, out_channels=in_channels,
        scale_factor_temporal=2 ** sum(bool(t) for t in temporal_downsample), scale_factor_spatial=spatial)


def wan_spatial_factor(config) -> int:
    """How much the VAE divides the frame side (its config: a diffusers FrozenDict or a dict)."""
    if config.get("patch_size"):
        raise UserError("vae: a Wan 2.2 VAE (patch_size set) is not supported; use a Wan 2.1 AutoencoderKLWan")
    return 2 ** (len(config["dim_mult"]) - 1)


def wan_temporal_factor(config) -> int:
    """How much the VAE divides time (after the first frame): 2 per temporal downsampling level."""
    levels = len(config["dim_mult"]) - 1
    return 2 ** sum(bool(t) for t in list(config["temperal_downsample"])[:levels])


def check_frames(frames: int, factor: int, vae: str = "the video VAE") -> int:
    """The latent frames of a clip of `frames` frames; a count the VAE cannot take is an error."""
    if frames < 1 or (frames - 1) % factor:
        allowed = ", ".join(str(1 + factor * k) for k in range(5))
        raise UserError(f"data.frames={frames}: {vae} compresses time by {factor} and takes 1 + {factor}k "
                        f"frames ({allowed}, ...)")
    return 1 + (frames - 1) // factor


def causal_cache(module: torch.nn.Module) -> list:
    """An empty feature cache: one slot per causal convolution of the encoder or decoder."""
    return [None] * sum(isinstance(m, WanCausalConv3d) for m in module.modules())


def encode_causal(model: AutoencoderKLWan, x: Tensor) -> Tensor:
    """The posterior parameters (mean and log-variance on the channel axis) of clips (N, C, F, H, W):
    the first frame, then `temporal_factor` frames at a time through the causal encoder."""
    factor = wan_temporal_factor(model.config)
    wan_spatial_factor(model.config)
    check_frames(x.shape[2], factor)
    cache = causal_cache(model.encoder)
    # (a one-frame clip is its first chunk alone: split() of zero frames would give one empty chunk)
    chunks = [x[:, :, :1], *x[:, :, 1:].split(factor, dim=2)] if x.shape[2] > 1 else [x]
    out = torch.cat([model.encoder(chunk, feat_cache=cache, feat_idx=[0]) for chunk in chunks], dim=2)
    return model.quant_conv(out)


def decode_causal(model: AutoencoderKLWan, z: Tensor) -> Tensor:
    """Clips from latents (N, C', F', h, w), one latent frame at a time through the causal decoder
    (the first gives one frame, every later one `temporal_factor` frames); not clamped."""
    wan_spatial_factor(model.config)
    x, cache = model.post_quant_conv(z), causal_cache(model.decoder)
    return torch.cat([model.decoder(x[:, :, i:i + 1], feat_cache=cache, feat_idx=[0], first_chunk=i == 0)
                      for i in range(x.shape[2])], dim=2)
