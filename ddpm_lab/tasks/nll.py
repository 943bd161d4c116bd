"""Bits per dimension of images under a trained DDPM checkpoint: the variational bound of
`ddpm_lab.diffusion.likelihood` on the images quantised to 256 levels (the Python API behind
`ddpm-eval metrics=[nll]`).

A class-conditional or text checkpoint is scored unconditionally (its learned null condition), so
the figure is log p(x), comparable with an unconditional model's. Flow-matching and latent
checkpoints are refused: a flow model's likelihood needs the probability-flow ODE (not
implemented), and a latent model's bound is on its latents, whose decoder is not a discrete
distribution over pixels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ddpm_lab.diffusion.likelihood import (
    BINS,
    VariationalBound,
    bits_per_dim,
    full_sum,
    monte_carlo,
    quantise,
    rows_of_terms,
)
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.errors import UserError

if TYPE_CHECKING:
    from ddpm_lab.modules import DiffusionModule


def check_nll_model(module: DiffusionModule) -> None:
    """One line when the checkpoint has no discrete likelihood bound here."""
    if not isinstance(module.diffusion, GaussianDiffusion):
        raise UserError("metrics: 'nll' needs a DDPM checkpoint; this one is flow matching (its likelihood "
                        "needs the probability-flow ODE, which ddpm-eval does not compute)")
    if module.autoencoder is not None:
        raise UserError("metrics: 'nll' needs a pixel-space checkpoint; this one is latent diffusion, whose "
                        "decoder is not a discrete distribution over pixels, so it has no bits/dim of the images")
    if len(module.image_shape) != 3:
        raise UserError(f"metrics: 'nll' needs an image checkpoint (C, H, W) in [-1, 1]; this one makes "
                        f"data of shape {tuple(module.image_shape)}")


@torch.no_grad()
def image_bits_per_dim(module: DiffusionModule, images: torch.Tensor, draws: int = 32, exact: bool = False,
                       t_sampling: str = "importance", variance: str | None = None, clip_x0: bool = True,
                       seed: int = 0, batch_size: int = 256) -> dict:
    """The bound in bits/dim of `images` (N, C, H, W) in [-1, 1], quantised to 256 levels first.

    exact=False: the Monte-Carlo estimate with `draws` (t, x_t) per image, t drawn by `t_sampling`
    (`monte_carlo`); its standard error `se` is the Monte-Carlo error for these images.
    exact=True: every t (T calls per image; `se` None). Both report `image_se`, the spread of the
    per-image bounds over sqrt(N), the prior term L_T and the decoder term L_0, all in bits/dim.
    `variance` None is the checkpoint's sampler.variance: the bound of the reverse process it samples
    with (DDPM checkpoints sample with fixed_small, beta~_t, unless trained otherwise).
    """
    check_nll_model(module)
    variance = module.sampler.variance if variance is None else variance
    x0 = quantise(images.float()).to(module.device)
    bound = VariationalBound(module.diffusion, variance, clip_x0)
    generator = torch.Generator().manual_seed(seed)
    dims, n = x0[0].numel(), len(x0)
    if exact:
        run = full_sum(bound, module.net, x0, generator, batch_size)
        run["decoder"], se = run["terms"][:, 0], None
    else:
        run = monte_carlo(bound, module.net, x0, draws, generator, batch_size, t_sampling=t_sampling)
        se = float(bits_per_dim(run["se"].pow(2).sum().sqrt() / n, dims))
        if run["decoder"] is None:          # uniform t: the decoder shown from one more call per image
            run["decoder"] = rows_of_terms(bound, module.net, x0, torch.arange(n), torch.zeros(n, dtype=torch.long),
                                           generator, batch_size)
    per_image = bits_per_dim(run["total"], dims)
    return {"bpd": float(per_image.mean()), "se": se,
            "image_se": float(per_image.std() / n ** 0.5) if n > 1 else 0.0,
            "prior": float(bits_per_dim(run["prior"].mean(), dims)),
            "decoder": float(bits_per_dim(run["decoder"].mean(), dims)),
            "num_images": n, "exact": exact, "draws": bound.num_steps if exact else draws,
            "t_sampling": None if exact else t_sampling,
            "calls_per_image": bound.num_steps if exact else draws + (t_sampling == "uniform"),
            "variance": variance, "clip_x0": clip_x0, "levels": BINS, "per_image": per_image}
