"""DDNM and DDNM+ (Wang et al. 2023, "Zero-Shot Image Restoration Using Denoising Diffusion
Null-Space Model"): a trained denoiser solves y = A x + n for a linear A without retraining.

At every reverse step (Algorithm 1 for DDNM, Sec. 3.3 for DDNM+):
1. x0|t, the model's estimate of x_0 at x_t (Eq. 12), and its eps;
2. the range-space correction x^0|t = x0|t - lambda_t A^+ (A x0|t - y) (Eq. 17); lambda_t = 1
   (noiseless y, DDNM) replaces the range part of x0|t by A^+ y: A^+ y + (I - A^+ A) x0|t;
3. x_{t-1} from x^0|t: the DDIM step (Song et al. 2021, Eq. 12) with x^0|t in place of x0|t and
   the model's eps, x_{t-1} = sqrt(abar_{t-1}) x^0|t + sqrt(1 - abar_{t-1} - sigma_t^2) eps
   + sigma_t z, with sigma_t = eta sqrt(1 - abar_{t-1}): the sampler of the official DDNM code
   (github.com/wyhuai/DDNM, its `eta`, 0.85 there and here; eta = 0 is deterministic DDIM, eta = 1
   re-noises x^0|t afresh at every step).

DDNM+ noise-aware scaling (Sec. 3.3): with y = A x + n, n ~ N(0, sigma_y^2 I), step 2 carries
lambda_t A^+ n into x_{t-1} with standard deviation a_t lambda_t sigma_y / s along each range
direction (a_t = sqrt(abar_{t-1}), the weight of x^0|t; s: the operator's singular value,
operators.py). lambda_t is the largest value in [0, 1] for which the step's fresh noise can make
up the rest of its variance sigma_t^2 there: lambda_t = 1 and Phi_t = sigma_t^2 - (a_t sigma_y /
s)^2 when sigma_t >= a_t sigma_y / s, else lambda_t = s sigma_t / (a_t sigma_y) and Phi_t = 0; the
range part of the fresh noise has variance Phi_t, the null part keeps sigma_t^2 (per singular
direction, as the official code). At the last step (sigma = 0) lambda = 0 for noisy y: the
result is the model's estimate there, not y.

Noiseless, the last step lands on x^0|t itself (abar = 1), so A x_0 = y up to rounding, whatever
the model. Flow-matching models run through the flow/DDPM correspondence (flow.py): at flow time
s the DDPM state is x_t = ddpm_x_scale(s) x_s at abar(s), with the same x_0.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import pairwise
from typing import Any

import torch

from ddpm_lab.diffusion.flow import FlowMatching, abar_of_s, ddpm_x_scale
from ddpm_lab.diffusion.guidance import Guider
from ddpm_lab.diffusion.operators import LinearOperator
from ddpm_lab.diffusion.process import GaussianDiffusion
from ddpm_lab.diffusion.samplers.flow_loops import flow_grid, time_batch
from ddpm_lab.diffusion.samplers.loops import Callback, randn, randn_like, report, timestep_batch
from ddpm_lab.diffusion.samplers.steps import abar_at
from ddpm_lab.diffusion.samplers.timesteps import ddpm_grid
from ddpm_lab.errors import UserError

Tensor = torch.Tensor


def noise_aware_scale(a: float, sigma: float, sigma_y: float, singular_value: float = 1.0) -> tuple[float, float]:
    """DDNM+'s (lambda_t, Phi_t) for a step whose x^0|t weight is `a` and fresh noise std `sigma`."""
    carried = a * sigma_y / singular_value          # std of a_t A^+ n along a range direction
    if carried <= sigma:
        return 1.0, sigma ** 2 - carried ** 2
    return sigma / carried, 0.0


def ddnm_step(operator: LinearOperator, y: Tensor, x0: Tensor, eps: Tensor, abar_prev: float,
              noise: Tensor | None, eta: float = 0.85, sigma_y: float = 0.0) -> tuple[Tensor, Tensor]:
    """One DDNM (sigma_y = 0) or DDNM+ step from the model's x0|t and eps at x_t to x_{t-1} (at
    abar_prev); returns (x_{t-1}, x^0|t). `noise` ~ N(0, I) (None: no fresh noise, as at eta = 0)."""
    sigma = eta * (1 - abar_prev) ** 0.5
    a = abar_prev ** 0.5
    lam, phi = noise_aware_scale(a, sigma, sigma_y, operator.singular_value) if sigma_y > 0 else (1.0, sigma ** 2)
    x0_hat = x0 - lam * operator.pinv(operator.A(x0) - y) if lam != 1.0 else operator.consistent(x0, y)
    x_prev = a * x0_hat + max(1 - abar_prev - sigma ** 2, 0.0) ** 0.5 * eps
    if noise is not None and sigma > 0:
        in_range = operator.range_part(noise)
        x_prev = x_prev + sigma * (noise - in_range) + phi ** 0.5 * in_range
    return x_prev, x0_hat


def check_ddnm_options(eta: object, sigma_y: object, prefix: str = "") -> None:
    """eta in [0, 1]; sigma_y >= 0, and a noisy y needs fresh noise (eta > 0) to trade against.
    `prefix` goes before the key names in the messages (e.g. "task.")."""
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not 0.0 <= eta <= 1.0:
        raise UserError(f"{prefix}eta={eta!r} must be a number in [0, 1] (0 = deterministic DDIM steps, "
                        f"1 = fresh noise only)")
    if isinstance(sigma_y, bool) or not isinstance(sigma_y, (int, float)) or not sigma_y >= 0:
        raise UserError(f"{prefix}sigma={sigma_y!r} must be a number >= 0 (the noise std of y in [-1, 1] units)")
    if sigma_y > 0 and eta == 0:
        raise UserError(f"{prefix}eta=0 with {prefix}sigma={sigma_y}: DDNM+ trades the noise of y against the "
                        f"step's fresh noise, and eta = 0 has none; use eta > 0 (0.85 as the official code)")


@torch.no_grad()
def ddnm(model_fn: Callable, y: Tensor, operator: LinearOperator, shape: tuple[int, ...],
         diffusion: GaussianDiffusion | FlowMatching, steps: int = 100, spacing: str = "leading",
         eta: float = 0.85, sigma_y: float = 0.0, clip_x0: bool = False, cond: Any = None,
         guidance_scale: float = 1.0, shift: float | None = None, x_T: Tensor | None = None,
         generator: torch.Generator | None = None, device: torch.device | str = "cpu",
         dtype: torch.dtype = torch.float32, callback: Callback | None = None) -> Tensor:
    """Solve y = A x (+ n) with DDNM / DDNM+ from x_T ~ N(0, I) (drawn from `generator`).

    `model_fn(x_t, t, cond)` is the diffusion's network (or an exact denoiser); the grid is DDIM's
    (`steps`, `spacing`) on a DDPM process and the flow samplers' (`steps`, `shift`) on a flow one.
    `clip_x0` clips x0|t to [-1, 1] before the correction. The result is x_0 (no clipping):
    A x_0 = y exactly (to rounding) when sigma_y = 0.
    """
    check_ddnm_options(eta, sigma_y)
    flow = isinstance(diffusion, FlowMatching)
    grid = flow_grid(diffusion, steps, shift=shift) if flow else ddpm_grid(diffusion, steps, spacing)
    x = randn(shape, generator, device, dtype) if x_T is None else x_T.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=dtype)
    model = Guider(guidance_scale).bind(model_fn, cond)
    report(callback, 0, grid[0], x)
    for i, (t, t_prev) in enumerate(pairwise(grid)):
        if flow:      # x_s = x_t / ddpm_x_scale(s) shares (x_0, eps) with the DDPM state x_t
            output = model(x, diffusion.network_time(time_batch(x, t))).to(dtype)
            abar_prev, scale_prev = abar_of_s(t_prev), ddpm_x_scale(t_prev)
        else:
            output = model(x, timestep_batch(x, t)).to(dtype)
            abar_prev, scale_prev = abar_at(diffusion, t_prev), 1.0
        x0, eps = diffusion.predict_x0_eps(output, x, t)
        if clip_x0:
            x0 = x0.clamp(-1.0, 1.0)
        z = randn_like(x, generator) if eta > 0 and abar_prev < 1 else None
        x_prev, _ = ddnm_step(operator, y, x0, eps, abar_prev, z, eta, sigma_y)
        x = x_prev / scale_prev
        report(callback, i + 1, t_prev, x)
    return x
