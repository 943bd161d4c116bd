"""The latent autoencoder of latent diffusion (Rombach et al. 2022): diffusers' AutoencoderKL (or
Wan 2.1's video AutoencoderKLWan, `ddpm_lab.autoencoders.wan`), and the frozen, scaled
encoder/decoder the diffusion model works through.

Stage 1 trains a VAE (`autoencoder_kl` / `autoencoder_kl_wan` build one from a `conf/vae/` preset).
Stage 2 diffuses in its latent space: z = scale * (E(x) - shift), x = D(z / scale + shift), with
`scale` 1 / std of the training latents (Sec. 4.3 / App. G of the paper: latents of unit variance,
so the noise schedule means what it does in pixel space) unless a pretrained VAE brings its own
(`scaling_factor`, and `shift_factor` where it has one). A video VAE is normalised per channel as
Wan does, (z_c - mean_c) / std_c: `scale` and `shift` are then lists, one value per channel.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

from ddpm_lab.autoencoders.codec import (
                                          KINDS,
                                          decode,
                                          kind_of,
                                          latent_channels,
                                          latent_shape,
                                          posterior,
                                          spatial_factor,
                                          temporal_factor,
)
from ddpm_lab.checkpoint_io import CHECKPOINT_KEY, find_checkpoint, read_checkpoint
from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def check_divisible(image_size: int, downsample: int, key: str = "vae") -> None:
    if image_size % downsample:
        raise UserError(f"data.image_size={image_size} cannot be divided by the VAE: {key} downsamples by "
                        f"{downsample}, so the image size must be a multiple of {downsample}")


def autoencoder_kl(image_size: int = 32, in_channels: int = 3, latent_channels: int = 4, downsample: int = 4,
                   base_channels: int = 32, max_mult: int = 2, layers_per_block: int = 1,
                   norm_num_groups: int = 8, mid_attention: bool = True) -> AutoencoderKL:
    """An AutoencoderKL that divides the image side by `downsample` (a power of two): one encoder
    level per halving plus the first; channels base * 1, 2, ... capped at base * max_mult."""
    levels = int(round(math.log2(downsample))) + 1 if downsample >= 1 else 0
    if downsample < 1 or 2 ** (levels - 1) != downsample:
        raise UserError(f"vae.downsample={downsample} must be a power of two (1, 2, 4, 8, ...)")
    check_divisible(image_size, downsample)
    if latent_channels < 1:
        raise UserError(f"vae.latent_channels={latent_channels} must be >= 1")
    channels = tuple(base_channels * min(2 ** i, max_mult) for i in range(levels))
    return AutoencoderKL(
        in_channels=in_channels, out_channels=in_channels, latent_channels=latent_channels,
        down_block_types=("DownEncoderBlock2D",) * levels, up_block_types=("UpDecoderBlock2D",) * levels,
        block_out_channels=channels, layers_per_block=layers_per_block, norm_num_groups=norm_num_groups,
        sample_size=image_size, scaling_factor=1.0, mid_block_add_attention=mid_attention)


def downsample_of(model) -> int:
    return spatial_factor(model.config)


def as_floats(value: float | Sequence[float]) -> float | list[float]:
    """A scale or shift: one float for all latent channels, or a list with one per channel."""
    return float(value) if isinstance(value, (int, float)) else [float(v) for v in value]


class LatentAutoencoder(nn.Module):
    """A frozen VAE with its latent normalisation: `encode` images or clips -> normalised latents,
    `decode` back.

    `model` is the diffusers AutoencoderKL (`kind` "kl": clips frame by frame) or AutoencoderKLWan
    ("wan"), built from `config` (saved in diffusion checkpoints, so the module can be rebuilt; the
    weights travel in the checkpoint's state_dict); `kind` None reads it from the config. `scale` and
    `shift` are floats or one value per latent channel (Wan: 1 / std_c and mean_c).
    """

    def __init__(self, config: dict, scale: float | Sequence[float] = 1.0, shift: float | Sequence[float] = 0.0,
                 source: str = "", kind: str | None = None):
        super().__init__()
        self.kind = kind_of(config, kind)
        self.model = KINDS[self.kind].from_config(config)
        self.model.requires_grad_(False).eval()
        self.scale, self.shift, self.source = as_floats(scale), as_floats(shift), source
        for key, value in (("scale", self.scale), ("shift", self.shift)):
            if isinstance(value, list) and len(value) != self.latent_channels:
                raise UserError(f"latent.{key} has {len(value)} values for the VAE's {self.latent_channels} "
                                f"latent channels; give one value or one per channel")
        self.needs_scale = False       # True for a stage-1 run's VAE: measured from the data

    def train(self, mode: bool = True) -> LatentAutoencoder:
        return super().train(False)          # frozen: always in eval mode

    @property
    def downsample(self) -> int:
        return spatial_factor(self.model.config)

    @property
    def temporal_factor(self) -> int:
        return temporal_factor(self.model.config)

    @property
    def latent_channels(self) -> int:
        return latent_channels(self.model.config)

    def latent_shape(self, image_shape: tuple[int, ...], vae: str = "the VAE") -> tuple[int, ...]:
        """(C', h, w) for images (C, H, W), (C', F', h, w) for clips (C, F, H, W)."""
        return latent_shape(self.model.config, tuple(image_shape), vae)

    def per_channel(self, value: float | list[float], z: Tensor) -> float | Tensor:
        if isinstance(value, float):
            return value
        return torch.tensor(value, dtype=z.dtype, device=z.device).view(1, -1, *([1] * (z.dim() - 2)))

    @torch.no_grad()
    def moments(self, x: Tensor) -> Tensor:
        """The encoder's posterior (mean, log-variance) stacked on the channel axis (unscaled)."""
        dist = posterior(self.model, x)
        return torch.cat([dist.mean, dist.logvar], dim=1)

    def scaled(self, moments: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """A latent drawn from (or the mean of) the posterior with these moments (diffusers'
        DiagonalGaussianDistribution), normalised for diffusion: (z - shift) * scale."""
        posterior_ = DiagonalGaussianDistribution(moments)
        z = posterior_.sample(generator) if sample else posterior_.mode()
        return (z - self.per_channel(self.shift, z)) * self.per_channel(self.scale, z)

    def encode(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        return self.scaled(self.moments(x), sample, generator)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return decode(self.model, z / self.per_channel(self.scale, z) + self.per_channel(self.shift, z))


@torch.no_grad()
def posterior_samples(moments: Tensor, batch_size: int = 256) -> Tensor:
    """Latents drawn from the posteriors with these (unscaled) moments, batch by batch from one
    generator seeded 0."""
    gen = torch.Generator().manual_seed(0)
    return torch.cat([DiagonalGaussianDistribution(moments[i:i + batch_size]).sample(gen)
                      for i in range(0, len(moments), batch_size)])


def scale_of(moments: Tensor, batch_size: int = 256) -> float:
    """1 / std of posterior samples of the latents (latent diffusion's scale factor)."""
    return float(1.0 / posterior_samples(moments, batch_size).float().std())


def channel_stats_of(moments: Tensor, batch_size: int = 256) -> tuple[list[float], list[float]]:
    """(1 / std_c, mean_c) of posterior samples per latent channel (Wan's latent normalisation)."""
    z = posterior_samples(moments, batch_size).transpose(0, 1).flatten(1).double()
    return (1.0 / z.std(dim=1)).tolist(), z.mean(dim=1).tolist()


@torch.no_grad()
def encoded_moments(autoencoder: LatentAutoencoder, images: Tensor, batch_size: int = 256) -> Tensor:
    return torch.cat([autoencoder.moments(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])


def measure_scale(autoencoder: LatentAutoencoder, images: Tensor, batch_size: int = 256) -> float:
    """The scale factor of the training latents of `images` (see `scale_of`)."""
    return scale_of(encoded_moments(autoencoder, images, batch_size), batch_size)


def measure_normalisation(autoencoder: LatentAutoencoder, images: Tensor,
                          batch_size: int = 256) -> tuple[float | list[float], float | list[float]]:
    """(scale, shift) of the training latents of `images`: an image VAE's one scale (its shift kept),
    a video VAE's per-channel 1 / std_c and mean_c (Wan 2.1's latents_std and latents_mean)."""
    moments = encoded_moments(autoencoder, images, batch_size)
    if autoencoder.kind == "wan":
        return channel_stats_of(moments, batch_size)
    return scale_of(moments, batch_size), autoencoder.shift


def from_pretrained(path: str) -> LatentAutoencoder:
    """Any diffusers AutoencoderKL directory (config.json + weights), e.g. Stable Diffusion's `vae/`,
    with its own scaling (and shift) factor, or AutoencoderKLWan directory (Wan 2.1's `vae/`) with its
    per-channel latents_mean / latents_std. Local files only: nothing is downloaded."""
    folder = Path(str(path)).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"vae.path={str(path)!r} is not a diffusers AutoencoderKL directory (no config.json); "
                        f"give the folder written by AutoencoderKL.save_pretrained (e.g. a model's vae/)")
    config = json.loads(config_file.read_text())
    classes = {"AutoencoderKL": "kl", "AutoencoderKLWan": "wan"}
    if config.get("_class_name") not in classes:
        raise UserError(f"vae.path={str(path)!r} holds a {config.get('_class_name')!r}, not an AutoencoderKL "
                        f"or AutoencoderKLWan")
    kind = classes[config["_class_name"]]
    try:
        model = KINDS[kind].from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise UserError(f"vae.path={str(path)!r}: the {config['_class_name']} weights cannot be read ({err})") from None
    if kind == "wan":       # Wan normalises per channel: (z - latents_mean) / latents_std
        scale, shift = [1.0 / s for s in model.config.latents_std], list(model.config.latents_mean)
    else:
        scale, shift = model.config.scaling_factor, model.config.get("shift_factor") or 0.0
    out = LatentAutoencoder(dict(model.config), scale=scale, shift=shift, source=str(folder), kind=kind)
    out.model.load_state_dict(model.state_dict())
    return out


def from_run(path: str, runs_root: str | Path | None = None) -> LatentAutoencoder:
    """The (EMA) AutoencoderKL or AutoencoderKLWan of a stage-1 run: a checkpoint file, a run folder,
    or `last` (the newest run under `runs_root`). Its scale (and a video VAE's shift) is measured
    later, from the data."""
    try:
        ckpt_file = find_checkpoint(str(path), runs_root or ".")
        ckpt = read_checkpoint(ckpt_file)
    except UserError as err:
        raise UserError(f"vae.path: {err} (a stage-1 run: ddpm-train experiment=shapes_vae)") from None
    if ckpt[CHECKPOINT_KEY].get("kind") != "autoencoder":
        raise UserError(f"vae.path={str(path)!r} is a diffusion checkpoint, not a stage-1 autoencoder "
                        f"(train one with ddpm-train experiment=shapes_vae)")
    from hydra.utils import instantiate
    model = instantiate(ckpt["hyper_parameters"]["vae"], _convert_="all")      # AutoencoderKL or AutoencoderKLWan
    kind = "wan" if isinstance(model, KINDS["wan"]) else "kl"
    out = LatentAutoencoder(dict(model.config), source=str(ckpt_file), kind=kind)
    out.needs_scale = True
    prefix = "model."
    out.model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return out
