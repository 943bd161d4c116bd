"""The latent autoencoder of latent diffusion (Rombach et al. 2022): diffusers' AutoencoderKL, and
the frozen, scaled encoder/decoder the diffusion model works through.

Stage 1 trains an AutoencoderKL (`autoencoder_kl` builds one from a `conf/vae/` preset). Stage 2
diffuses in its latent space: z = scale * (E(x) - shift), x = D(z / scale + shift), with `scale`
1 / std of the training latents (Sec. 4.3 / App. G of the paper: latents of unit variance, so the
noise schedule means what it does in pixel space) unless a pretrained VAE brings its own
(`scaling_factor`, and `shift_factor` where it has one).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from diffusers import AutoencoderKL
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from torch import nn

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


def downsample_of(model: AutoencoderKL) -> int:
    return 2 ** (len(model.config.block_out_channels) - 1)


class LatentAutoencoder(nn.Module):
    """A frozen AutoencoderKL with its latent scale: `encode` images -> scaled latents, `decode` back.

    `model` is the diffusers AutoencoderKL, built from `config` (saved in diffusion checkpoints, so
    the module can be rebuilt; the weights travel in the checkpoint's state_dict).
    """

    def __init__(self, config: dict, scale: float = 1.0, shift: float = 0.0, source: str = ""):
        super().__init__()
        self.model = AutoencoderKL.from_config(config)
        self.model.requires_grad_(False).eval()
        self.scale, self.shift, self.source = float(scale), float(shift), source
        self.needs_scale = False       # True for a stage-1 run's VAE: measured from the data

    def train(self, mode: bool = True) -> LatentAutoencoder:
        return super().train(False)          # frozen: always in eval mode

    @property
    def downsample(self) -> int:
        return downsample_of(self.model)

    @property
    def latent_channels(self) -> int:
        return int(self.model.config.latent_channels)

    def latent_shape(self, image_shape: tuple[int, ...]) -> tuple[int, int, int]:
        c, h, w = image_shape
        check_divisible(h, self.downsample)
        if c != self.model.config.in_channels:
            raise UserError(f"the VAE encodes {self.model.config.in_channels}-channel images, the data has {c} channels")
        return (self.latent_channels, h // self.downsample, w // self.downsample)

    @torch.no_grad()
    def moments(self, x: Tensor) -> Tensor:
        """The encoder's posterior (mean, log-variance) stacked on the channel axis (unscaled)."""
        dist = self.model.encode(x).latent_dist
        return torch.cat([dist.mean, dist.logvar], dim=1)

    def scaled(self, moments: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        """A latent drawn from (or the mean of) the posterior with these moments (diffusers'
        DiagonalGaussianDistribution), scaled for diffusion."""
        posterior = DiagonalGaussianDistribution(moments)
        z = posterior.sample(generator) if sample else posterior.mode()
        return (z - self.shift) * self.scale

    def encode(self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None) -> Tensor:
        return self.scaled(self.moments(x), sample, generator)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        return self.model.decode(z / self.scale + self.shift).sample


@torch.no_grad()
def scale_of(moments: Tensor, batch_size: int = 256) -> float:
    """1 / std of posterior samples of the latents with these (unscaled) moments, drawn batch by
    batch from one generator seeded 0 (latent diffusion's scale factor)."""
    gen = torch.Generator().manual_seed(0)
    z = torch.cat([DiagonalGaussianDistribution(moments[i:i + batch_size]).sample(gen)
                   for i in range(0, len(moments), batch_size)])
    return float(1.0 / z.float().std())


@torch.no_grad()
def measure_scale(autoencoder: LatentAutoencoder, images: Tensor, batch_size: int = 256) -> float:
    """The scale factor of the training latents of `images` (see `scale_of`)."""
    moments = torch.cat([autoencoder.moments(images[i:i + batch_size]) for i in range(0, len(images), batch_size)])
    return scale_of(moments, batch_size)


def from_pretrained(path: str) -> LatentAutoencoder:
    """Any diffusers AutoencoderKL directory (config.json + weights), e.g. Stable Diffusion's `vae/`,
    with its own scaling (and shift) factor. Local files only: nothing is downloaded."""
    folder = Path(str(path)).expanduser()
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise UserError(f"vae.path={str(path)!r} is not a diffusers AutoencoderKL directory (no config.json); "
                        f"give the folder written by AutoencoderKL.save_pretrained (e.g. a model's vae/)")
    config = json.loads(config_file.read_text())
    if config.get("_class_name") != "AutoencoderKL":
        raise UserError(f"vae.path={str(path)!r} holds a {config.get('_class_name')!r}, not an AutoencoderKL")
    try:
        model = AutoencoderKL.from_pretrained(folder, local_files_only=True, low_cpu_mem_usage=False)
    except (OSError, ValueError) as err:
        raise UserError(f"vae.path={str(path)!r}: the AutoencoderKL weights cannot be read ({err})") from None
    out = LatentAutoencoder(dict(model.config), scale=model.config.scaling_factor,
                            shift=model.config.get("shift_factor") or 0.0, source=str(folder))
    out.model.load_state_dict(model.state_dict())
    return out


def from_run(path: str, runs_root: str | Path | None = None) -> LatentAutoencoder:
    """The (EMA) AutoencoderKL of a stage-1 run: a checkpoint file, a run folder, or `last` (the
    newest run under `runs_root`). Its scale is measured later, from the data."""
    try:
        ckpt_file = find_checkpoint(str(path), runs_root or ".")
        ckpt = read_checkpoint(ckpt_file)
    except UserError as err:
        raise UserError(f"vae.path: {err} (a stage-1 run: ddpm-train experiment=shapes_vae)") from None
    if ckpt[CHECKPOINT_KEY].get("kind") != "autoencoder":
        raise UserError(f"vae.path={str(path)!r} is a diffusion checkpoint, not a stage-1 autoencoder "
                        f"(train one with ddpm-train experiment=shapes_vae)")
    from hydra.utils import instantiate
    model: AutoencoderKL = instantiate(ckpt["hyper_parameters"]["vae"], _convert_="all")
    out = LatentAutoencoder(dict(model.config), source=str(ckpt_file))
    out.needs_scale = True
    prefix = "model."
    out.model.load_state_dict({k[len(prefix):]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)})
    return out
